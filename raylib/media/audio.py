"""Audio track -> mono waveform -> speech spectrogram or log-Mel with deltas (docs/method.md, section 1).

The track is read with PyAV rather than decord's AudioReader: AudioReader leaks ~0.65 MB per
opened file (a batch worker over 10k clips grows by GBs) and gives up on a whole track at the
first damaged packet, where PyAV lets us skip that packet and keep the rest.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from raylib.errors import ClipError
from raylib.media.video import Clip, open_clip, open_media, short_cause
from raylib.sources import is_audio_file

SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.040  # Hamming window of 40 ms
HOP_SECONDS = 0.010  # hop of 10 ms
N_FFT = int(round(WINDOW_SECONDS * SAMPLE_RATE))  # 640 samples at 16 kHz
HOP_LENGTH = int(round(HOP_SECONDS * SAMPLE_RATE))  # 160 samples at 16 kHz
SPECTROGRAM_BINS = 200  # the 200 lowest-frequency bins (0 .. ~5 kHz at 16 kHz)
N_MELS = 40  # log-Mel bands, as Chen et al. 2018
LOG_FLOOR = 1e-5  # magnitudes below this are clipped before the log
DELTA_WIDTH = 9
SILENCE_RMS = 1e-4  # about -80 dBFS: quieter tracks are flagged "silent"
# A WAV header declares the codec, rate and length: FFmpeg's stream probe reads at most 32 KiB of
# it, not its default 5 MB (the whole of a short file, decoded): 1.4 ms to open a 3 s wav, not 2.6.
WAV_OPEN = {"probesize": "32768"}

# Audio status values a caller can record per clip.
AUDIO_OK = "ok"
AUDIO_MISSING = "no_audio"
AUDIO_SILENT = "silent"
AUDIO_TRUNCATED = "truncated"


@dataclass
class AudioTrack:
    """Mono waveform [S] float32 in [-1, 1] at `sample_rate`, with a status for the caller."""

    uri: str
    samples: np.ndarray
    sample_rate: int
    status: str
    skipped_packets: int = 0
    declared: float = 0.0  # seconds the file declares (0 when it declares none)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def riff_shortfall(src) -> float:
    """How many times longer a WAV file's RIFF header says the file is than it is (1.0 when whole,
    or not a RIFF WAV). ffmpeg takes a WAV's duration from the file's size, so a cut WAV would
    otherwise decode as a whole one."""
    if isinstance(src, io.BytesIO):
        head, size = bytes(src.getbuffer()[:12]), src.getbuffer().nbytes
    else:
        with open(src, "rb") as f:
            head, size = f.read(12), os.path.getsize(src)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 1.0
    riff = int.from_bytes(head[4:8], "little")
    if riff in (0, 0xFFFFFFFF):  # streamed WAVs leave the size unset
        return 1.0
    return max((riff + 8) / size, 1.0)


def load_audio(clip: str | Clip, sample_rate: int = SAMPLE_RATE) -> AudioTrack:
    """Decode the clip's audio track (a URI, or a Clip open_clip gave, e.g. shared with the video)
    to mono float32 at sample_rate.

    A missing stream gives status "no_audio" (empty samples), a near-zero track "silent", a track
    much shorter than declared "truncated". Unreadable files raise ClipError.
    """
    import av

    if isinstance(clip, str) and is_audio_file(clip):  # its container declares the duration: no probe
        uri, src, declared = clip, open_media(clip), None  # (a second open, ~40% of a 3 s wav's cost)
    else:  # a video file's probe also reads what its video stream declares (AVI: the frame count)
        clip = open_clip(clip)
        uri, src, declared = clip.uri, clip.source(), clip.probe.duration
    try:
        container = av.open(src, options=WAV_OPEN if uri.lower().endswith(".wav") else None)
    except Exception as e:  # PyAV raises many types (InvalidDataError, OSError, ...)
        raise ClipError(uri, f"not a readable media file ({short_cause(e)})") from None
    with container:
        if declared is None and container.duration:
            declared = container.duration / 1e6
        if not container.streams.audio:
            return AudioTrack(uri, np.zeros(0, np.float32), sample_rate, AUDIO_MISSING)
        stream = container.streams.audio[0]
        if stream.duration and stream.time_base:
            declared = max(declared or 0.0, float(stream.duration * stream.time_base))
        if declared:
            declared *= riff_shortfall(src)
        samples, skipped = _decode_track(container, stream, sample_rate)
    if samples.size == 0:
        return AudioTrack(uri, samples, sample_rate, AUDIO_MISSING, skipped, declared or 0.0)
    status = AUDIO_OK
    if declared and len(samples) / sample_rate < 0.9 * declared - 0.05:
        status = AUDIO_TRUNCATED
    elif float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) < SILENCE_RMS:
        status = AUDIO_SILENT
    return AudioTrack(uri, samples, sample_rate, status, skipped, declared or 0.0)


def _decode_track(container, stream, sample_rate: int) -> tuple[np.ndarray, int]:
    """(mono float32 samples at sample_rate, packets skipped) of an audio stream: what decodes of
    a damaged track is kept, packet by packet."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks, skipped = [], 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError:
            skipped += 1  # damaged container data: keep what decodes
            if skipped > 1000:
                break
            continue
        try:
            for frame in packet.decode():
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError:
            skipped += 1  # one damaged packet: skip it, keep the rest of the track
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    return (np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)), skipped


def stft_magnitude(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """|STFT| with a periodic Hamming window of 40 ms and hop 10 ms, centred frames (the signal
    padded with n_fft // 2 zeros at each end) -> [n_fft//2+1, T], T = 1 + S // hop. Numpy only:
    importing an audio library cost every new decode worker ~2.5 s, more than 100 clips' spectrograms."""
    n_fft = int(round(WINDOW_SECONDS * sample_rate))
    hop = int(round(HOP_SECONDS * sample_rate))
    y = np.asarray(samples, dtype=np.float32)
    if len(y) < n_fft // 2 + 1:  # shorter than half a window: pad with silence (one frame's worth)
        y = np.pad(y, (0, n_fft // 2 + 1 - len(y)))
    padded = np.pad(y, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # [T, n_fft], no copy
    window = (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    return np.abs(np.fft.rfft(frames * window, axis=1)).T.astype(np.float32)


def speech_spectrogram(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Log-magnitude spectrogram, 200 lowest bins -> [200, T] float32, T = 1 + S // hop."""
    mag = stft_magnitude(samples, sample_rate)[:SPECTROGRAM_BINS]
    return np.log(np.maximum(mag, LOG_FLOOR)).astype(np.float32)


def log_mel(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS) -> np.ndarray:
    """Log-Mel (40 bands) with deltas and delta-deltas -> [3, n_mels, T] float32."""
    import librosa

    power = stft_magnitude(samples, sample_rate) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=sample_rate, n_mels=n_mels)
    logmel = np.log(np.maximum(mel, LOG_FLOOR ** 2))
    # "nearest" edges keep clips shorter than the delta window valid
    d1 = librosa.feature.delta(logmel, width=DELTA_WIDTH, order=1, mode="nearest")
    d2 = librosa.feature.delta(logmel, width=DELTA_WIDTH, order=2, mode="nearest")
    return np.stack([logmel, d1, d2]).astype(np.float32)


AUDIO_MODES = ("spectrogram", "logmel")
INPUT_SHAPES = {"spectrogram": (1, SPECTROGRAM_BINS), "logmel": (3, N_MELS)}  # (channels, frequency bins)


def input_shape(channels: int) -> tuple[int, int]:
    """(channels, frequency bins) of the audio features with that many channels."""
    for shape in INPUT_SHAPES.values():
        if shape[0] == channels:
            return shape
    raise ValueError(f"no audio features have {channels} channel(s); expected one of "
                     f"{', '.join(str(c) for c, _ in INPUT_SHAPES.values())}")


def audio_features(samples: np.ndarray, mode: str = "spectrogram", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio input of the audio CNN: 'spectrogram' -> [1, 200, T], 'logmel' -> [3, 40, T]."""
    if mode == "spectrogram":
        return speech_spectrogram(samples, sample_rate)[None]
    if mode == "logmel":
        return log_mel(samples, sample_rate)
    raise ValueError(f"unknown audio mode {mode!r}; expected one of {', '.join(AUDIO_MODES)}")
