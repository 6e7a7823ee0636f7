import os

import numpy as np
import pytest
import torch

from raylib.errors import WeightsError
from raylib.models.backbones import build_backbone
from raylib.models.ir50 import IR50


def _ir50_checkpoint(tmp_path_factory, size: int, seed: int):
    """(IR50 at `size` in eval mode, the path of its state dict saved with torch.save)."""
    torch.manual_seed(seed)
    model = IR50(size).eval()
    path = str(tmp_path_factory.mktemp(f"ckpt{size}") / f"backbone_ir50_{size}.pth")
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def ir50_checkpoint(tmp_path_factory):
    return _ir50_checkpoint(tmp_path_factory, 112, 0)


@pytest.fixture(scope="module")
def ir50_224_checkpoint(tmp_path_factory):
    """An IR50 at the paper's 224 px chip: its output linear is (512, 512 * 14 * 14)."""
    return _ir50_checkpoint(tmp_path_factory, 224, 1)


def chips(n=2, size=224, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("size, params", [(112, 43_574_976), (224, 82_110_144)])
def test_ir50_shapes_and_parameter_count(size, params):
    model = IR50(size).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 512)


def test_ir50_state_dict_keys_follow_face_evolve():
    keys = IR50(112).state_dict()
    for key, shape in [("input_layer.0.weight", (64, 3, 3, 3)), ("input_layer.2.weight", (64,)),
                       ("body.0.res_layer.0.running_mean", (64,)), ("body.0.res_layer.1.weight", (64, 64, 3, 3)),
                       ("body.3.shortcut_layer.0.weight", (128, 64, 1, 1)), ("body.3.shortcut_layer.1.running_var", (128,)),
                       ("body.23.res_layer.3.weight", (512, 512, 3, 3)), ("output_layer.3.weight", (512, 512 * 7 * 7)),
                       ("output_layer.4.num_batches_tracked", ())]:
        assert tuple(keys[key].shape) == shape, key
    assert not any(k.startswith("body.0.shortcut_layer") for k in keys)  # identity units: MaxPool2d(1, s)
    # 24 units of 13 tensors (BN 5, conv, PReLU, conv, BN 5) + 3 projection shortcuts (conv, BN 5)
    assert len([k for k in keys if k.startswith("body.")]) == 24 * 13 + 3 * 6


def test_checkpoint_reloads_strictly_with_identical_outputs(ir50_checkpoint):
    model, path = ir50_checkpoint
    enc = build_backbone("ir50", path)
    x = chips()
    with torch.no_grad():
        expected = model(enc.preprocess(x))
    torch.testing.assert_close(enc.embed(x), expected, atol=0, rtol=0)
    assert enc.weights == path and len(enc.weights_digest) == 64 and enc.dtype is None  # fp32 on CPU
    assert enc.spec.input_size == 112  # read from output_layer.3.weight (512, 25088): 512 * 7 * 7


def test_common_wrappers_are_unwrapped(ir50_checkpoint, tmp_path):
    model, path = ir50_checkpoint
    wrapped = {"epoch": torch.tensor(120), "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}
    wpath = str(tmp_path / "wrapped.pth")
    torch.save(wrapped, wpath)
    x = chips(1)
    torch.testing.assert_close(build_backbone("ir50", wpath).embed(x), build_backbone("ir50", path).embed(x))


def test_renamed_key_lists_missing_and_unexpected(ir50_checkpoint, tmp_path):
    model, _ = ir50_checkpoint
    state = model.state_dict()
    state["body.0.res_layer.1.weights"] = state.pop("body.0.res_layer.1.weight")
    bad = str(tmp_path / "renamed.pth")
    torch.save(state, bad)
    with pytest.raises(WeightsError) as info:
        build_backbone("ir50", bad)
    msg = str(info.value)
    assert "missing keys in ir50 checkpoint" in msg and "body.0.res_layer.1.weight" in msg
    assert "unexpected keys in ir50 checkpoint" in msg and "body.0.res_layer.1.weights" in msg


def test_ir50_at_224_is_read_from_its_checkpoint_and_embeds_extraction_chips_unresized(ir50_224_checkpoint):
    from raylib.media.faces import CHIP_SIZE
    from raylib.extract.config import ExtractConfig, FeatureRecipe
    from raylib.extract.graph import FeatureStage

    model, path = ir50_224_checkpoint
    stage = FeatureStage(ExtractConfig(recipe=FeatureRecipe(backbone="ir50", weights=path)))  # the extraction's feature actor
    assert stage.encoder.spec.input_size == CHIP_SIZE == 224
    x = chips(2, size=CHIP_SIZE)
    with torch.no_grad():  # no resize: the chip itself, scaled to [-1, 1] (mean 0.5, std 0.5)
        expected = model(x.float() / 127.5 - 1.0)
    rows = x.permute(0, 2, 3, 1).numpy()  # two clips of one chip each, [N, S, S, 3] as the CPU stage makes them
    out = stage({"clip_id": np.asarray(["a", "b"]), "chips": [rows[:1], rows[1:]]})
    torch.testing.assert_close(torch.from_numpy(np.concatenate(list(out["visual_features"]))), expected,
                               atol=1e-4, rtol=1e-4)


def test_input_size_that_contradicts_the_checkpoint_is_one_line(ir50_checkpoint, cremad_clips, tmp_path, capsys):
    from jobs_extract import main

    _, path = ir50_checkpoint
    with pytest.raises(WeightsError) as info:
        build_backbone("ir50", path, input_size=224)
    assert str(info.value) == (f"ir50 checkpoint {path} takes 112 px inputs, not --input-size 224: leave "
                               f"--input-size out (the checkpoint sets it) or give 112")
    # the job says so on the driver, before starting any work
    assert main(["--input", os.path.dirname(cremad_clips[0]), "--output", str(tmp_path / "o"), "--backbone", "ir50",
                 "--weights", path, "--input-size", "224", "--quiet"]) == 1
    assert capsys.readouterr().err == f"extract: error: {info.value}\n"
    assert not (tmp_path / "o").exists()


def test_an_input_size_only_the_flag_sets_is_part_of_the_store_recipe(ir50_checkpoint):
    from raylib.extract.config import FeatureRecipe
    from raylib.extract.graph import provenance

    def backbone(**kw):
        return provenance(FeatureRecipe(**kw))["backbone"]

    assert backbone(backbone="ir50", weights=ir50_checkpoint[1], input_size=112) == "ir50"  # the checkpoint's
    assert backbone(backbone="resnet18", weights="random", input_size=224) == "resnet18"  # its own size
    assert backbone(backbone="resnet18", weights="random", input_size=112) == "resnet18@112"


def test_checkpoint_on_s3_loads_through_the_uri(ir50_checkpoint, s3_bucket):
    from raylib import storage

    model, path = ir50_checkpoint
    uri = f"{s3_bucket}/weights/ir50.pth"
    fs, key = storage.filesystem(uri)
    fs.put(path, key)
    x = chips(1)
    torch.testing.assert_close(build_backbone("ir50", uri).embed(x), build_backbone("ir50", path).embed(x))
    with pytest.raises(WeightsError, match="not found"):
        build_backbone("ir50", f"{s3_bucket}/weights/absent.pth")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/raylib-exploit-ran",))


def test_pickled_code_is_refused(tmp_path):
    marker = "/tmp/raylib-exploit-ran"
    if os.path.exists(marker):
        os.remove(marker)
    bad = str(tmp_path / "evil.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit()}, bad)
    with pytest.raises(WeightsError, match="refused: it holds pickled objects other than tensors"):
        build_backbone("ir50", bad)
    assert not os.path.exists(marker)


def test_no_silent_random_weights():
    with pytest.raises(WeightsError, match="needs weights.*'random'"):
        build_backbone("resnet18")
    enc = build_backbone("resnet18", "random")
    assert enc.weights == "random" and enc.weights_digest == "random"
    with pytest.raises(WeightsError, match="no random initialisation"):
        build_backbone("dlib_resnet", "random")
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        build_backbone("vit", "random")


def test_resnet18_checkpoint_with_a_classifier_head(tmp_path):
    import torchvision

    torch.manual_seed(0)
    full = torchvision.models.resnet18(num_classes=7).eval()  # an emotion-fine-tuned layout
    path = str(tmp_path / "resnet18_affectnet.pth")
    torch.save(full.state_dict(), path)
    enc = build_backbone("resnet18", path)
    x = chips(2)
    feats = enc.embed(x)
    assert feats.shape == (2, 512)
    with torch.no_grad():
        logits = full(enc.preprocess(x))
    torch.testing.assert_close(full.fc(feats), logits, atol=1e-5, rtol=1e-5)  # the trunk is the same


def test_vggface_fc7_output():
    enc = build_backbone("vggface", "random")
    assert enc.embed(chips(1)).shape == (1, 4096)
    assert "fc8.weight" not in enc.module.state_dict()


def test_dlib_resnet_real_weights_tell_faces_apart(astronaut, cremad_clips):
    from PIL import Image

    from raylib.media.faces import align_frames
    from raylib.media.video import decode_video

    enc = build_backbone("dlib_resnet")
    moved = np.asarray(Image.fromarray(astronaut).rotate(10, translate=(30, 10)))
    actor = decode_video(cremad_clips[0], "uniform:1").frames
    aligned = [align_frames(astronaut[None]), align_frames(moved[None]), align_frames(actor)]
    assert all(a.found.all() for a in aligned)
    f = enc.embed(torch.from_numpy(np.concatenate([a.chips for a in aligned])).permute(0, 3, 1, 2))
    assert f.shape == (3, 128)
    same, different = (f[0] - f[1]).norm().item(), (f[0] - f[2]).norm().item()
    assert same < 0.4 < 0.6 < different  # dlib's documented same-person threshold is 0.6
