import os

import numpy as np
import pytest

from raylib.labels import EMOTIONS
from raylib.media.audio import load_audio, speech_spectrogram
from raylib.media.faces import align_frames
from raylib.media.video import decode_video
from raylib.sample import SampleConfig, audio_factor, generate_sample_set, visual_factor
from raylib.sources import list_clips


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample"))
    paths = generate_sample_set(SampleConfig(out_dir=root, train_per_class=2, val_per_class=1))
    return root, paths


def test_layout_formats_and_labels(sample):
    root, paths = sample
    assert len(paths) == 21 and all(os.path.getsize(p) > 0 for p in paths)
    recs = list_clips(root)  # auto-detected as AFEW
    assert {r.dataset for r in recs} == {"afew"}
    assert sorted({r.label for r in recs}) == sorted(EMOTIONS)
    assert sum(r.split == "train" for r in recs) == 14 and sum(r.split == "val" for r in recs) == 7
    assert {os.path.splitext(p)[1] for p in paths} == {".mp4", ".avi"}
    assert not [f for f in os.listdir(os.path.join(root, "Train", "Angry")) if f.startswith(".")]


def test_rerun_keeps_existing_files(sample):
    root, paths = sample
    before = {p: os.path.getmtime(p) for p in paths}
    generate_sample_set(SampleConfig(out_dir=root, train_per_class=2, val_per_class=1))
    assert {p: os.path.getmtime(p) for p in paths} == before


def face_aspect(path: str) -> float:
    """Median ratio of eye distance to eye-to-nose height, from 5-point landmarks per frame."""
    import dlib

    from raylib.media.faces import _landmarks

    frames = decode_video(path, "uniform:6").frames
    faces = align_frames(frames)
    assert faces.found.mean() >= 0.8
    ratios = []
    for frame, box in zip(frames[faces.found], faces.boxes[faces.found]):
        shape = _landmarks()(frame, dlib.rectangle(*(int(v) for v in box)))
        p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
        eye_a, eye_b, nose = p[0:2].mean(0), p[2:4].mean(0), p[4]
        ratios.append(np.linalg.norm(eye_a - eye_b) / np.linalg.norm(nose - (eye_a + eye_b) / 2))
    return float(np.median(ratios))


def pitch_trend(path: str) -> float:
    """Peak frequency bin of the last third minus the first third of the clip."""
    spec = speech_spectrogram(load_audio(path).samples)
    peaks = np.argmax(spec[:60], axis=0)  # the fundamental lies below 1.5 kHz
    third = spec.shape[1] // 3
    return float(np.median(peaks[-third:]) - np.median(peaks[:third]))


def test_visual_signal_is_the_face_width(sample):
    root, _ = sample
    by_factor = {}
    for i, label in enumerate(EMOTIONS):
        path = os.path.join(root, "Train", label, f"{label.lower()}_000.mp4")
        by_factor.setdefault(visual_factor(i), []).append(face_aspect(path))
    means = [np.mean(by_factor[v]) for v in sorted(by_factor)]
    assert all(b > a for a, b in zip(means, means[1:])), means  # wider face, higher v


def test_audio_signal_is_the_pitch_contour(sample):
    root, _ = sample
    for i, label in enumerate(EMOTIONS):
        for k, ext in ((0, "mp4"), (1, "avi")):
            trend = pitch_trend(os.path.join(root, "Train", label, f"{label.lower()}_{k:03d}.{ext}"))
            assert (trend > 0) == (audio_factor(i) == 0), (label, ext, trend)


def test_visual_signal_survives_the_default_backbone(sample):
    """Clip-mean features of the default backbone identify the visual factor (leave-one-out
    nearest centroid)."""
    import torch

    from raylib.models.backbones import build_backbone
    from raylib.extract.config import FeatureRecipe

    root, _ = sample
    enc = build_backbone(FeatureRecipe().backbone, FeatureRecipe().weights)
    feats, factors = [], []
    for r in list_clips(root):
        chips = align_frames(decode_video(r.uri, "uniform:4").frames).chips
        feats.append(enc.embed(torch.from_numpy(chips).permute(0, 3, 1, 2)).mean(0).numpy())
        factors.append(visual_factor(EMOTIONS.index(r.label)))
    feats, factors = np.array(feats), np.array(factors)
    hits = 0
    for i in range(len(feats)):
        rest = np.arange(len(feats)) != i
        centroids = {v: feats[rest & (factors == v)].mean(0) for v in set(factors[rest])}
        hits += min(centroids, key=lambda v: np.linalg.norm(feats[i] - centroids[v])) == factors[i]
    print(f"visual factor from {enc.spec.name} features: {hits}/{len(feats)} clips")
    assert hits / len(feats) >= 0.85  # chance is ~0.29
