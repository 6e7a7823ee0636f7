"""One source of truth for the model's defaults: ModelConfig -> TrainConfig (jobs/train.py) ->
TuneConfig (jobs/tune.py); checkpoints rebuild from the config they store."""

from dataclasses import asdict, fields

import pytest
import torch

from raylib.config import parse
from raylib.models.fusion import ModelConfig, build_model
from raylib.models.model_config import MODEL_DEFAULTS
from raylib.train.config import TrainConfig
from raylib.train.sweep import NOT_PER_TRIAL, SWEEP_DEFAULTS, SWEEP_HELP, SWEPT, TuneConfig


def test_training_defaults_build_exactly_the_model_config_defaults():
    built = TrainConfig().model_config(MODEL_DEFAULTS.visual_dim, MODEL_DEFAULTS.audio_channels)
    assert asdict(built) == asdict(ModelConfig())
    # the values the training job used before they were defined once (docs/method.md, section 4)
    assert (built.attention_hidden, built.fbp_k, built.fbp_o, built.dropout) == (64, 5, 128, 0.2)
    model = build_model(built)
    assert model.visual_attention.W2.out_features == 64 and model.audio_attention.W2.out_features == 64
    assert model.fusion.U.out_features == 5 * 128 and model.fusion.out_dim == 128
    assert model.fusion.dropout.p == model.dropout.p == 0.2


def test_every_training_knob_is_a_sweep_flag_with_the_same_default_and_help():
    tune = {f.name: f for f in fields(TuneConfig)}
    assert set(SWEEP_DEFAULTS) == {"output", "experiment", "epochs", "num_workers"}
    for f in fields(TrainConfig):
        if f.name in SWEPT + NOT_PER_TRIAL:
            assert f.name not in tune, f.name
            continue
        assert f.name in tune, f"jobs/tune.py has no --{f.name.replace('_', '-')}"
        assert tune[f.name].default == SWEEP_DEFAULTS.get(f.name, f.default), f.name
        assert tune[f.name].metadata["help"] == SWEEP_HELP.get(f.name, f.metadata["help"]), f.name
        assert tune[f.name].metadata.get("choices") == f.metadata.get("choices"), f.name
    cfg = parse(TuneConfig, "", ["--power-norm", "--modalities", "visual", "--audio-attentions", "self",
                                 "--fusions", "concat", "--fbp-o", "32"])
    base = cfg.base_train_config()
    assert (base.power_norm, base.modalities, base.fbp_o, base.epochs, base.num_workers) == (True, "visual", 32, 8, 1)


def test_a_sweep_refuses_per_run_flags_and_grids_its_modalities_do_not_use(capsys):
    with pytest.raises(SystemExit):
        parse(TuneConfig, "", ["--resume-from", "data/demo/runs/x"])
    assert "unrecognized arguments: --resume-from" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--modalities visual does not use --audio-attentions or --fusions"):
        TuneConfig(modalities="visual")
    with pytest.raises(ValueError, match="--epochs"):
        TuneConfig(epochs=0)  # TrainConfig's own checks hold for a sweep


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
