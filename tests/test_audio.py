import numpy as np
import pytest

from conftest import FPS, NUM_FRAMES, tone
from raylib.errors import ClipError
from raylib.media import audio as A


def best_correlation(x: np.ndarray, ref: np.ndarray, max_lag: int = 3000) -> float:
    """Max normalised correlation of x against ref over lags 0..max_lag (codec delay)."""
    n = len(ref) - max_lag
    r = ref[:n] / np.linalg.norm(ref[:n])
    return max(float(np.dot(x[lag:lag + n], r) / (np.linalg.norm(x[lag:lag + n]) + 1e-12))
               for lag in range(0, max_lag, 1))


@pytest.mark.parametrize("ext", ["mp4", "avi"])
def test_audio_track_matches_the_encoded_tone(clips, ext):
    track = A.load_audio(clips[ext])
    assert track.status == A.AUDIO_OK
    assert track.sample_rate == 16000 and track.samples.dtype == np.float32
    assert track.seconds == pytest.approx(NUM_FRAMES / FPS, abs=0.1)
    ref = tone(NUM_FRAMES / FPS)
    assert best_correlation(track.samples, ref) > 0.98


def test_resampling_to_another_rate_keeps_the_tone(clips):
    track = A.load_audio(clips["avi"], sample_rate=8000)
    assert track.sample_rate == 8000 and len(track.samples) == pytest.approx(16000, abs=50)
    assert best_correlation(track.samples, tone(2.0, sr=8000), max_lag=200) > 0.98


def test_missing_and_silent_tracks_are_statuses_not_errors(clips):
    missing = A.load_audio(clips["no_audio"])
    assert missing.status == A.AUDIO_MISSING and missing.samples.size == 0
    assert A.load_audio(clips["silent"]).status == A.AUDIO_SILENT


def test_cremad_mp3_track(cremad_clips):
    track = A.load_audio(cremad_clips[0])
    assert track.status == A.AUDIO_OK
    assert track.seconds == pytest.approx(2.27, abs=0.05)
    assert np.abs(track.samples).max() > 0.05  # real speech, not silence


@pytest.mark.parametrize("kind", ["truncated_avi", "corrupt"])
def test_damaged_tracks_are_flagged_truncated(bad_files, kind):
    assert A.load_audio(bad_files[kind]).status == A.AUDIO_TRUNCATED


@pytest.mark.parametrize("kind", ["zero_byte", "text", "truncated_mp4", "missing"])
def test_unreadable_files_raise_clip_error(bad_files, kind):
    with pytest.raises(ClipError):
        A.load_audio(bad_files[kind])


def reference_spectrogram(y: np.ndarray) -> np.ndarray:
    """Independent numpy computation of docs/method.md, section 1: periodic Hamming 640, hop 160,
    frames centred with zero padding, |rfft|, 200 lowest bins, natural log with floor 1e-5."""
    n_fft, hop = 640, 160
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    padded = np.pad(y.astype(np.float64), n_fft // 2)
    frames = np.stack([padded[i:i + n_fft] for i in range(0, len(padded) - n_fft + 1, hop)])
    mag = np.abs(np.fft.rfft(frames * window, axis=1)).T
    return np.log(np.maximum(mag[:200], 1e-5))


def test_speech_spectrogram_matches_the_formula_on_a_pure_tone():
    y = tone(1.0, hz=1000.0)
    spec = A.speech_spectrogram(y)
    assert spec.shape == (200, 101) and spec.dtype == np.float32  # T = 1 + 16000 // 160
    np.testing.assert_allclose(spec, reference_spectrogram(y), atol=2e-3)
    # bin spacing is 16000 / 640 = 25 Hz: 1000 Hz is row 40 in every interior frame
    assert (np.argmax(spec[:, 2:-2], axis=0) == 40).all()
    assert A.N_FFT == 640 and A.HOP_LENGTH == 160 and A.SPECTROGRAM_BINS == 200


def test_spectrogram_keeps_only_bins_below_5khz():
    high = A.speech_spectrogram(tone(1.0, hz=6000.0))
    low = A.speech_spectrogram(tone(1.0, hz=3000.0))
    assert np.argmax(low[:, 50]) == 120
    assert high[:, 50].max() < low[:, 50].max() - 3  # 6 kHz falls outside the 200 rows


def test_log_mel_deltas_of_a_stationary_tone_are_near_zero():
    feats = A.log_mel(tone(2.0, hz=500.0))
    assert feats.shape == (3, 40, 201) and feats.dtype == np.float32
    interior = feats[:, :, 10:-10]
    assert np.abs(interior[1]).max() < 1e-3 and np.abs(interior[2]).max() < 1e-3
    band = np.argmax(interior[0].mean(axis=1))
    assert interior[0, band].std() < 1e-3  # the static band is constant over time


def test_audio_features_by_mode_and_short_input():
    y = tone(0.02)  # 320 samples: shorter than one window
    assert A.audio_features(y, "spectrogram").shape == (1, 200, 3)
    assert A.audio_features(y, "logmel").shape == (3, 40, 3)
    with pytest.raises(ValueError, match="unknown audio mode"):
        A.audio_features(y, "mfcc")


def test_stft_magnitude_of_a_cosine_on_a_bin_is_half_the_window_sum_by_hand():
    # cos(2 pi 1000 t) at 16 kHz sits on bin 40 (25 Hz bins): an interior frame's magnitude there is
    # sum(window) / 2 = 0.54 * 640 / 2 = 172.8 (the periodic Hamming window's cosine sums to zero),
    # and the bins more than 2 away (past the window's main lobe) hold ~0
    t = np.arange(16000) / 16000
    mag = A.stft_magnitude(np.cos(2 * np.pi * 1000 * t).astype(np.float32))
    assert mag.shape == (321, 101)
    np.testing.assert_allclose(mag[40, 5:-5], 172.8, rtol=1e-4)
    np.testing.assert_allclose(mag[41, 5:-5], 0.23 * 640 / 2, rtol=1e-3)  # the window's -0.46 cos term: 0.46 / 2 x 640 / 2
    assert mag[[37, 43], 5:-5].max() < 1e-2
