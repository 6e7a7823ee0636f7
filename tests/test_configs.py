"""One source of truth for the model's defaults: ModelConfig -> TrainConfig (jobs/train.py) ->
TuneConfig (jobs/tune.py); checkpoints rebuild from the config they store."""

import argparse
from dataclasses import asdict, fields, replace

import pytest
import torch

from raylib.config import add_arguments, parse
from raylib.models.fusion import ModelConfig, build_model
from raylib.models.model_config import MODEL_DEFAULTS
from raylib.train.config import TrainConfig
from raylib.train.sweep import NOT_PER_TRIAL, SWEEP_HELP, SWEEP_TRAIN, SWEPT, TuneConfig

MODEL_FLAGS = {f.name for f in fields(ModelConfig)}


def test_training_defaults_build_exactly_the_model_config_defaults():
    built = TrainConfig().model_config(MODEL_DEFAULTS.visual_dim, MODEL_DEFAULTS.audio_channels)
    assert asdict(built) == asdict(ModelConfig())
    # the values the training job used before they were defined once (docs/method.md, section 4)
    assert (built.attention_hidden, built.fbp_k, built.fbp_o, built.dropout) == (64, 5, 128, 0.2)
    model = build_model(built)
    assert model.visual_attention.W2.out_features == 64 and model.audio_attention.W2.out_features == 64
    assert model.fusion.U.out_features == 5 * 128 and model.fusion.out_dim == 128
    assert model.fusion.dropout.p == model.dropout.p == 0.2


def flags(cls) -> dict:
    """{dest: argparse action} of a job config's flags."""
    parser = add_arguments(argparse.ArgumentParser(), cls)
    return {a.dest.rsplit(".", 1)[-1]: a for a in parser._actions if a.dest != "help"}


def test_every_training_knob_is_a_sweep_flag_with_the_same_default_and_help():
    tune, train = flags(TuneConfig), flags(TrainConfig)
    changed = {f.name for f in fields(TrainConfig) if getattr(SWEEP_TRAIN, f.name) != getattr(TrainConfig(), f.name)}
    assert changed == {"output", "experiment", "epochs", "num_workers"}
    assert {"fusion", "modalities", "fbp_o", "speaker_norm"} <= set(train)  # the model's knobs are train's flags
    for name, action in train.items():
        if name in SWEPT + NOT_PER_TRIAL:
            assert name not in tune, name
            continue
        assert name in tune, f"jobs/tune.py has no {action.option_strings[0]}"
        assert tune[name].default == getattr(SWEEP_TRAIN.model if name in MODEL_FLAGS else SWEEP_TRAIN, name), name
        assert tune[name].help == SWEEP_HELP.get(name, action.help), name
        assert tune[name].choices == action.choices, name
    cfg = parse(TuneConfig, "", ["--power-norm", "--modalities", "visual", "--audio-attentions", "self",
                                 "--fusions", "concat", "--fbp-o", "32"])
    base = cfg.train
    assert (base.model.power_norm, base.model.modalities, base.model.fbp_o, base.epochs, base.num_workers) == \
        (True, "visual", 32, 8, 1)


def test_a_sweep_refuses_per_run_flags_and_grids_its_modalities_do_not_use(capsys):
    with pytest.raises(SystemExit):
        parse(TuneConfig, "", ["--resume-from", "data/demo/runs/x"])
    assert "unrecognized arguments: --resume-from" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--modalities visual does not use --audio-attentions or --fusions"):
        TuneConfig(train=replace(SWEEP_TRAIN, model=ModelConfig(modalities="visual")))
    with pytest.raises(SystemExit):
        parse(TuneConfig, "", ["--epochs", "0"])  # TrainConfig's own checks hold for a sweep
    assert "--epochs" in capsys.readouterr().err


def test_a_train_config_of_an_older_checkpoint_with_flat_model_knobs_still_loads():
    flat = {k: v for k, v in asdict(TrainConfig()).items() if k != "model"}
    flat.update(fusion="concat", modalities="audio", fbp_o=32)
    cfg = TrainConfig.from_dict(flat)
    assert (cfg.model.fusion, cfg.model.modalities, cfg.model.fbp_o, cfg.epochs) == ("concat", "audio", 32, 12)
    assert TrainConfig.from_dict(asdict(cfg)) == cfg


def test_a_checkpoint_made_under_other_defaults_rebuilds_with_its_own_sizes(tmp_path):
    from raylib.checkpoints import model_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    old = ModelConfig(visual_dim=16, attention_hidden=128, fbp_o=256, dropout=0.3)  # the former ModelConfig defaults
    model = build_model(old).eval()
    save_checkpoint(str(tmp_path), model, None, 0, 0.0, old, TrainConfig(), {})
    loaded, state = model_from_checkpoint(str(tmp_path))
    assert loaded.cfg == old and loaded.fusion.U.out_features == 5 * 256
    visual, mask = torch.randn(2, 4, 16), torch.ones(2, 4, dtype=torch.bool)
    audio, lengths = torch.randn(2, 1, 200, 80), torch.tensor([80, 60])
    with torch.no_grad():
        torch.testing.assert_close(loaded(visual, mask, audio, lengths)[0], model(visual, mask, audio, lengths)[0],
                                   atol=0, rtol=0)
