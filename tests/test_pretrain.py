"""Pretraining on face images: sources, the chip both ways, Ray Train fine-tuning into extraction,
the linear probe and the Table-1 report. Images are generated (raylib.sample_faces)."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from raylib.errors import SourceError
from raylib.images import decode_image, image_chip, list_images, model_input
from raylib.labels import EMOTIONS
from raylib.media.faces import align_frames
from raylib.models.backbones import SPECS, build_backbone
from raylib.sample_faces import write_face_folders
from raylib.pretrain.job import decode_batch

CHANCE = 1 / len(EMOTIONS)


def _png(path, image):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)
    return str(path)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---- sources -----------------------------------------------------------------------------------

def test_class_folders_map_synonyms_drop_contempt_and_report_empty_folders(tmp_path, capsys):
    img = np.full((48, 48, 3), 128, np.uint8)
    for rel in ("train/anger/a.png", "train/Happiness/b.jpg", "train/contempt/c.png", "train/contempt/d.png",
                "val/surprised/e.png", "test/sad/PublicTest_1.png",
                "test/sad/PrivateTest_2.png", "train/fear/Training_3.png"):
        _png(tmp_path / rel, img)
    os.makedirs(tmp_path / "train" / "disgust")  # an empty class folder
    listing = list_images(str(tmp_path))
    by_name = {os.path.basename(r.uri): (r.label, r.split) for r in listing.records}
    assert by_name == {"a.png": ("Angry", "train"), "b.jpg": ("Happy", "train"), "e.png": ("Surprise", "val"),
                       "PublicTest_1.png": ("Sad", "val"), "PrivateTest_2.png": ("Sad", "test"),
                       "Training_3.png": ("Fear", "train")}
    assert listing.dropped == {"contempt": 2}
    assert [os.path.basename(f) for f in listing.empty_folders] == ["disgust"]
    assert "holds no images" in capsys.readouterr().err
    assert "dropped classes outside the 7: contempt 2" in listing.summary()


def test_unknown_class_folder_is_an_error_listing_the_files(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    _png(tmp_path / "train" / "happy" / "ok.png", img)
    _png(tmp_path / "train" / "hapy" / "typo.png", img)
    with pytest.raises(SourceError, match=r"typo\.png \(class folder 'hapy'\)"):
        list_images(str(tmp_path))


def test_manifest_with_subjects_synonyms_and_an_unknown_label(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    for name in ("a", "b", "c"):
        _png(tmp_path / f"{name}.png", img)
    (tmp_path / "m.csv").write_text("uri,label,split,subject\na.png,happiness,train,s1\nb.png,contempt,train,s2\n"
                                    "c.png,sadness,valid,s3\n")
    listing = list_images(str(tmp_path / "m.csv"))
    assert [(r.label, r.split, r.subject) for r in listing.records] == [("Happy", "train", "s1"), ("Sad", "val", "s3")]
    assert listing.dropped == {"contempt": 1}
    (tmp_path / "bad.csv").write_text("uri,label\na.png,joyful\n")
    with pytest.raises(SourceError, match=r"a\.png \(label 'joyful'\)"):
        list_images(str(tmp_path / "bad.csv"))


# ---- the chip ----------------------------------------------------------------------------------

def extraction_input(frame: np.ndarray) -> torch.Tensor:
    """What extraction feeds ResNet18 for one video frame: align_frames, then the encoder's preprocess."""
    chips = torch.from_numpy(align_frames(frame[None]).chips).permute(0, 3, 1, 2)
    return build_backbone("resnet18", "random").preprocess(chips)


def test_same_face_image_gives_the_same_backbone_input_as_extraction(tmp_path, astronaut):
    path = _png(tmp_path / "face.png", astronaut)
    out = decode_batch({"uri": [path], "label": ["Happy"], "split": ["train"]}, "resnet18", 224, True, False)
    assert out["ok"][0] and out["face_found"][0]
    assert torch.equal(torch.from_numpy(out["x"]), extraction_input(astronaut))


def test_grayscale_image_becomes_three_equal_channels_like_a_grey_video_frame(tmp_path, astronaut):
    from PIL import Image

    grey = np.asarray(Image.fromarray(astronaut).convert("L"))
    path = str(tmp_path / "grey.png")
    Image.fromarray(grey).save(path)
    image = decode_image(open(path, "rb").read())
    assert image.shape == astronaut.shape and np.array_equal(image[..., 0], image[..., 2])
    out = decode_batch({"uri": [path], "label": ["Sad"], "split": ["train"]}, "resnet18", 224, True, False)
    assert torch.equal(torch.from_numpy(out["x"]), extraction_input(np.repeat(grey[..., None], 3, axis=2)))


def test_without_a_face_the_whole_image_is_the_chip_like_extraction(tmp_path):
    flat = np.full((60, 80, 3), 90, np.uint8)
    flat[10:20, 10:30] = 200
    chip, found = image_chip(flat, align=True)
    assert not found
    assert np.array_equal(chip, image_chip(flat, align=False)[0])
    assert torch.equal(model_input(chip[None], SPECS["resnet18"]), extraction_input(flat))


def test_an_unreadable_image_is_a_row_with_its_error(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    good = _png(tmp_path / "good.png", np.zeros((48, 48, 3), np.uint8))
    out = decode_batch({"uri": [str(bad), good], "label": ["Fear", "Fear"], "split": ["train", "train"]},
                       "resnet18", 32, False, False)
    assert out["ok"].tolist() == [False, True]
    assert "UnidentifiedImageError" in out["error"][0] and out["x"].shape == (2, 3, 32, 32)


# ---- on a local Ray ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    import ray

    # address="local": a new Ray even when another one was started on this machine with `ray start`
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Generated faces (20 train + 6 val per class), an unreadable file and an empty class folder."""
    root = tmp_path_factory.mktemp("faces")
    write_face_folders(str(root), {"train": 20, "val": 6}, size=96)
    (root / "train" / "fear" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    os.makedirs(root / "val" / "contempt")
    return str(root)


@pytest.fixture(scope="module")
def pretrained(faces, mlflow_uri, ray_local, tmp_path_factory):
    from raylib.pretrain.job import PretrainConfig, run_pretrain

    out = tmp_path_factory.mktemp("pretrain")
    cfg = PretrainConfig(input=faces, output=str(out), backbone="resnet18", init="random", input_size=48, epochs=8,
                         batch_size=16, optimizer="adamw", lr=2e-3, augment=False, num_workers=2,
                         select_metric="val_accuracy", quiet=True)
    return run_pretrain(cfg)


@pytest.mark.slow
def test_two_workers_learn_the_planted_expression_and_skip_the_broken_file(pretrained):
    assert pretrained["val_accuracy"] >= 3 * CHANCE, pretrained
    assert [os.path.basename(s["uri"]) for s in pretrained["skipped"]] == ["broken.jpg"]
    assert "train 141" in pretrained["images"] and "1 empty class folder" in pretrained["images"]


@pytest.mark.slow
def test_the_run_records_metrics_confusion_matrix_and_the_backbone(pretrained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(pretrained["run_id"])
    assert {"Val/UAR", "Val_recall/Happy", "train/images_per_s_per_worker", "Val/best_accuracy"} <= set(run.data.metrics)
    assert run.data.tags["backbone_digest"] == sha256(pretrained["backbone_weights"])
    names = {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id)}
    assert "confusion_val.png" in names
    assert {"backbone.pt", "head.pt", "backbone.json"} <= {os.path.basename(a.path) for a in
                                                           client.list_artifacts(run.info.run_id, "backbone")}


@pytest.mark.slow
def test_extraction_loads_the_result_strictly_and_stores_its_embedding(pretrained, tmp_path, astronaut):
    from raylib.sample import write_clip
    from raylib.extract.config import ExtractConfig, FeatureRecipe
    from raylib.extract.job import run_extract
    from raylib.extract.preprocess import PreprocessConfig, preprocess_clip
    from raylib.pretrain.loop import Classifier, load_state
    from raylib.models.backbones import architecture
    from raylib.store import read_store

    weights = pretrained["backbone_weights"]
    state = torch.load(weights, weights_only=True)
    assert set(state) == set(architecture("resnet18").state_dict())  # the loaders' keys, no head
    videos = tmp_path / "videos"
    frames = np.stack([np.roll(astronaut, 3 * i, axis=1) for i in range(6)])
    for rel in ("Train/Happy/a.mp4", "Val/Sad/b.mp4"):
        write_clip(str(videos / rel), frames, None, 25)
    cfg = ExtractConfig(input=str(videos), output=str(tmp_path / "store"), quiet=True, max_failure_rate=1.0,
                        recipe=FeatureRecipe(backbone="resnet18", weights=weights, frames="uniform:3"))
    run_extract(cfg)
    rows = read_store(cfg.output, ["uri", "visual_features", "weights", "weights_digest"]).to_pylist()
    assert len(rows) == 2 and {r["weights_digest"] for r in rows} == {pretrained["backbone_digest"]}
    model = Classifier(architecture("resnet18"), 512, 0.0)
    model.load_state_dict(load_state(pretrained["best_checkpoint"])["model"])
    model.eval()
    for row in rows:
        chips = preprocess_clip(row["uri"], PreprocessConfig(frames="uniform:3", faces=cfg.preprocess().faces))["chips"]
        with torch.no_grad():
            expected = model.backbone(model_input(chips, SPECS["resnet18"], 48)).numpy()
        np.testing.assert_allclose(np.array(row["visual_features"], np.float32), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_linear_probe_table1_leaves_the_backbone_unchanged(pretrained, faces, tmp_path):
    from mlflow.tracking import MlflowClient

    from raylib.pretrain.job import PretrainConfig
    from raylib.pretrain.loop import load_state
    from raylib.pretrain.table1 import run_table1

    weights = pretrained["backbone_weights"]
    before = sha256(weights)
    cfg = PretrainConfig(input=faces, output=str(tmp_path), table1_features=f"resnet18:{weights}", epochs=3,
                         batch_size=32, optimizer="adamw", lr=1e-2, num_workers=1, quiet=True)
    out = run_table1(cfg)
    (row,) = out["rows"]
    assert "error" not in row, row
    assert sha256(weights) == before == row["backbone_digest"]
    assert all(k.startswith("head.") for k in load_state(row["best_checkpoint"])["model"])
    assert not os.path.exists(os.path.join(row["best_checkpoint"], "backbone.pt"))
    assert row["val_accuracy"] > CHANCE
    assert "| resnet18:backbone.pt |" in open(out["report_markdown"]).read()
    assert os.path.getsize(out["report_png"]) > 1000
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    child = client.get_run(row["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == out["parent_run_id"]
    assert json.loads(open(os.path.join(row["best_checkpoint"], "backbone.json")).read())["linear_probe"]


def test_augmentation_without_rotation_scale_or_shift_only_mirrors():
    from raylib.pretrain.loop import augment

    x = torch.rand(16, 3, 24, 24)
    out = augment(x, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0)
    mirrored = [torch.allclose(o, torch.flip(i, dims=[-1]), atol=1e-5) for o, i in zip(out, x)]
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)
    moved = augment(x, torch.Generator().manual_seed(0), 10.0, 0.1, 0.08)
    assert moved.shape == x.shape and not torch.allclose(moved, out)
    lit = augment(x, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0, 0.3)
    spread = lit.std(dim=(1, 2, 3)) / out.std(dim=(1, 2, 3))
    assert spread.min() < 0.97 and spread.max() > 1.03 and spread.min() > 0.69 and spread.max() < 1.31


def test_gpu_memory_order_is_channels_last_and_checkpoints_leave_it_behind():
    from raylib.pretrain.loop import Classifier, channels_last, plain_tensors

    gpu, cpu = torch.device("cuda"), torch.device("cpu")  # the order only: no GPU needed
    x = torch.rand(4, 3, 8, 8)
    assert channels_last(x, cpu) is x
    on_gpu = channels_last(x, gpu)
    assert on_gpu.is_contiguous(memory_format=torch.channels_last) and not on_gpu.is_contiguous()
    assert torch.equal(on_gpu, x)
    features = torch.rand(4, 512)
    assert channels_last(features, gpu) is features  # a probe's features have no spatial order
    model = Classifier(torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1),
                                           torch.nn.Flatten()), 5, 0.0)
    model = channels_last(model, gpu)
    conv = model.backbone[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    saved = plain_tensors(model.backbone)
    assert saved["0.weight"].is_contiguous() and torch.equal(saved["0.weight"], conv)
    assert saved["0.weight"].data_ptr() != conv.data_ptr()  # a copy: training goes on after a save
