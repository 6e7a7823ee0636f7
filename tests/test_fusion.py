import itertools

import numpy as np
import pytest
import torch

from raylib.models import ATTENTIONS, FUSIONS
from raylib.models.audio_cnn import AudioAlexNet, MaskedBatchNorm2d, pool5_length, recalibrate_norms
from raylib.models.fusion import Concat, FactorizedBilinearPooling, ModelConfig, build_model


def test_fbp_output_dimension_and_norm_sqrt_o():
    """l2-normalised, then scaled by sqrt(o): entries O(1), as the frame features are."""
    torch.manual_seed(0)
    fbp = FactorizedBilinearPooling(6, 4, k=3, o=5, dropout=0.5, power_norm=False).eval()
    z = fbp(torch.randn(8, 6), torch.randn(8, 4))
    assert z.shape == (8, 5)
    torch.testing.assert_close(z.norm(dim=-1), torch.full((8,), 5 ** 0.5))


def test_fbp_equals_the_explicit_bilinear_form():
    """z_i = a~^T W_i v~ with W_i = sum_{j in window i} U_j V_j^T, on inputs augmented with 1
    to carry the FC biases, then l2-normalised and scaled by sqrt(o)."""
    torch.manual_seed(1)
    k, o = 3, 4
    fbp = FactorizedBilinearPooling(5, 2, k=k, o=o, dropout=0.0, power_norm=False).eval()
    a, v = torch.randn(5, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    U = torch.cat([fbp.U.weight, fbp.U.bias[:, None]], 1).double()  # [k*o, 6]
    V = torch.cat([fbp.V.weight, fbp.V.bias[:, None]], 1).double()  # [k*o, 3]
    a1, v1 = torch.cat([a, torch.ones(1, dtype=torch.float64)]), torch.cat([v, torch.ones(1, dtype=torch.float64)])
    z = []
    for i in range(o):
        W = sum(torch.outer(U[j], V[j]) for j in range(i * k, (i + 1) * k))
        z.append(a1 @ W @ v1)
    z = torch.stack(z)
    z = z / z.norm() * o ** 0.5
    got = fbp.double()(a[None], v[None])[0]
    torch.testing.assert_close(got, z, atol=1e-10, rtol=0)


def test_fbp_power_norm_is_signed_sqrt_before_l2():
    torch.manual_seed(2)
    plain = FactorizedBilinearPooling(3, 3, k=2, o=4, dropout=0.0, power_norm=False).eval()
    signed = FactorizedBilinearPooling(3, 3, k=2, o=4, dropout=0.0, power_norm=True).eval()
    signed.load_state_dict(plain.state_dict())
    a, v = torch.randn(1, 3), torch.randn(1, 3)
    raw = (plain.U(a) * plain.V(v)).view(1, 4, 2).sum(-1)
    expected = torch.sign(raw) * raw.abs().sqrt()
    torch.testing.assert_close(signed(a, v), expected / expected.norm() * 2.0, atol=1e-5, rtol=0)


def test_concat():
    c = Concat(2, 3)
    assert c.out_dim == 5
    torch.testing.assert_close(c(torch.ones(1, 2), torch.zeros(1, 3)), torch.tensor([[1.0, 1, 0, 0, 0]]))


def test_audio_cnn_pool5_vectors_and_time_mask():
    cnn = AudioAlexNet(1).eval()
    spec = torch.randn(2, 1, 200, 300)
    spec[1, :, :, 150:] = 0
    items, mask = cnn(spec, torch.tensor([300, 150]))
    # H: 200 -> 49 -> 24 -> 24 -> 11 -> 5;  W: 300 -> 74 -> 36 -> 17 -> 8
    assert items.shape == (2, 5 * 8, 256)
    assert mask[0].all() and mask[1].sum() == 5 * int(pool5_length(torch.tensor(150)))
    assert int(pool5_length(torch.tensor(150))) == 3
    logmel_items, logmel_mask = AudioAlexNet(3)(torch.randn(1, 3, 40, 20), torch.tensor([20]))  # short log-Mel
    assert logmel_items.shape == (1, 5, 256) and logmel_mask.all()


def test_masked_batch_norm_takes_statistics_from_real_time_steps_only():
    bn = MaskedBatchNorm2d(1, momentum=1.0)
    x = torch.tensor([[[[1.0, 3.0, 100.0]]], [[[5.0, 7.0, -50.0]]]])  # [2, 1, 1, 3]
    mask = torch.tensor([[True, True, False], [True, True, False]])
    y = bn(x, mask)
    # real values 1, 3, 5, 7: mean 4, biased var 5 -> (x - 4) / sqrt(5); unbiased var 20/3 kept
    expected = torch.tensor([[[[-3.0, -1.0, 0.0]]], [[[1.0, 3.0, 0.0]]]]) / (5.0 + bn.eps) ** 0.5
    torch.testing.assert_close(y, expected * torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(bn.running_mean, torch.tensor([4.0]))
    torch.testing.assert_close(bn.running_var, torch.tensor([20.0 / 3]))
    bn.eval()  # eval: the running statistics, padding still zero
    torch.testing.assert_close(bn(x, mask)[0, 0, 0], torch.tensor([-3.0, -1.0, 0.0]) / (20 / 3 + bn.eps) ** 0.5)


def test_recalibrated_norms_make_eval_mode_match_the_batch_statistics():
    """After training steps the running statistics trail the weights; recalibrated on a batch,
    eval mode on that batch gives what train mode (batch statistics) gives; the input's own
    statistics are left alone."""
    torch.manual_seed(4)
    model = build_model(ModelConfig(modalities="audio", audio_attention="mean", dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    spec, lengths = torch.randn(6, 1, 200, 140) - 4, torch.tensor([140, 120, 100, 90, 80, 140])
    for _ in range(4):
        logits, _ = model(None, None, spec, lengths)
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(6) % 7)
        opt.zero_grad(), loss.backward(), opt.step()
    with torch.no_grad():
        model.train()
        batch_stats, _ = model(None, None, spec, lengths)
        before, _ = model.eval()(None, None, spec, lengths)
    input_mean = model.audio_cnn.input_norm.running_mean.clone()
    assert recalibrate_norms(model, [(None, None, spec, lengths)]) == 5  # the five convolutions' norms
    with torch.no_grad():
        after, _ = model.eval()(None, None, spec, lengths)
    assert not model.training
    torch.testing.assert_close(model.audio_cnn.input_norm.running_mean, input_mean)
    assert (before - batch_stats).abs().max() > 10 * (after - batch_stats).abs().max()
    torch.testing.assert_close(after, batch_stats, atol=2e-2 * float(batch_stats.abs().max()), rtol=0)


@pytest.mark.parametrize("attention", ["transformer", "self", "relation", "mean"])
def test_a_clips_audio_logits_do_not_depend_on_its_batch(attention):
    """The same clip alone and batched with a longer one (zero-padded to it): same logits."""
    torch.manual_seed(3)
    model = build_model(ModelConfig(modalities="audio", audio_attention=attention)).double()
    model.train()
    for _ in range(2):  # move the batch-norm statistics away from their initial values
        model(None, None, torch.randn(3, 1, 200, 150, dtype=torch.float64) - 4, torch.tensor([150, 120, 60]))
    model.eval()
    clip, other = torch.randn(1, 1, 200, 300, dtype=torch.float64) * 2 - 5, torch.randn(1, 1, 200, 300, dtype=torch.float64)
    for frames in (50, 67, 101, 160):  # shorter than the receptive field, at it, odd, long
        alone, _ = model(None, None, clip[..., :frames], torch.tensor([frames]))
        both = torch.zeros(2, 1, 200, 300, dtype=torch.float64)
        both[0, ..., :frames], both[1] = clip[0, ..., :frames], other[0]
        batched, _ = model(None, None, both, torch.tensor([frames, 300]))
        torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)


def test_log_mel_batch_without_any_audio_collates_and_runs():
    import pyarrow as pa

    from raylib.batches import collate

    table = pa.table({"visual_features": pa.array([[[1.0, 0.0]], [[0.0, 1.0]]], pa.list_(pa.list_(pa.float32()))),
                      "visual_dim": [2, 2], "audio_shape": pa.array([None, None], pa.list_(pa.int32())),
                      "audio": pa.array([None, None], pa.list_(pa.float32())), "label_index": [0, 1]})
    batch = collate(table, audio_channels=3)
    assert batch["audio"].shape == (2, 3, 40, 1) and batch["audio_lengths"].tolist() == [0, 0]
    model = build_model(ModelConfig(visual_dim=2, audio_channels=3)).eval()
    logits, weights = model(batch["visual"], batch["visual_mask"], batch["audio"], batch["audio_lengths"])
    assert torch.isfinite(logits).all() and float(weights["audio"].detach().abs().sum()) == 0.0
    norm = model.audio_cnn.norms[0]
    before = norm.running_mean.clone()
    model.train()(batch["visual"], batch["visual_mask"], batch["audio"], batch["audio_lengths"])
    torch.testing.assert_close(norm.running_mean, before)  # a batch without audio leaves the statistics alone


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown fusion 'sum'"):
        ModelConfig(fusion="sum")
    with pytest.raises(ValueError, match="unknown visual_attention"):
        ModelConfig(visual_attention="lstm")


def batch(b=3, n=6, d=16, t=120):
    visual = torch.randn(b, n, d)
    vmask = torch.ones(b, n, dtype=torch.bool)
    vmask[0, 4:] = False
    audio = torch.randn(b, 1, 200, t)
    lengths = torch.tensor([t, t - 30, t - 50])[:b]
    return visual, vmask, audio, lengths


@pytest.mark.parametrize("va, aa, fu", list(itertools.product(ATTENTIONS, ATTENTIONS, FUSIONS)))
def test_gradients_reach_every_parameter(va, aa, fu):
    torch.manual_seed(0)
    model = build_model(ModelConfig(visual_dim=16, visual_attention=va, audio_attention=aa, fusion=fu,
                                    attention_hidden=8, fbp_k=2, fbp_o=8, dropout=0.0))
    logits, weights = model(*batch())
    assert logits.shape == (3, 7)
    assert weights["visual"].shape == (3, 6) and (weights["visual"][0, 4:] == 0).all()
    logits.logsumexp(-1).sum().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, silent


@pytest.mark.parametrize("modalities", ["visual", "audio"])
def test_single_modality_variants(modalities):
    model = build_model(dict(visual_dim=16, modalities=modalities, attention_hidden=8))
    v, m, a, l = batch()
    logits, weights = model(v, m, a, l)
    assert logits.shape == (3, 7) and set(weights) == {modalities}
    assert (hasattr(model, "audio_cnn")) == (modalities == "audio")


def frame_table(rng, common, directions, per_class: int, spread: float, frames: int = 8):
    """Store rows of generated frame features: a large vector all clips share, plus a small class
    direction and noise of size `spread` (how a face embedding's frames of one person look)."""
    from raylib.labels import EMOTIONS
    from raylib.schema import to_table

    rows = []
    for k, name in enumerate(EMOTIONS):
        for i in range(per_class):
            f = common + spread * directions[k] + spread * rng.normal(size=(frames, len(common)))
            rows.append({"clip_id": f"{k}-{i}", "uri": f"/{k}-{i}", "label": name, "split": "train", "dataset": "gen",
                         "status": "ok", "visual_features": f.astype(np.float32)})
    return to_table(rows)


def fit_visual_branch(table, norm: bool, visual_lr_scale: float | None = None):
    """The visual branch trained by the training loop's pieces on the training defaults (epochs,
    batch size, optimiser, learning rate and its schedule, the visual branch's rate scale)."""
    from raylib.batches import collate
    from raylib.train.config import TrainConfig
    from raylib.train.loop import make_optimizer, set_lr, train_epoch

    cfg = TrainConfig() if visual_lr_scale is None else TrainConfig(visual_lr_scale=visual_lr_scale)
    torch.manual_seed(0)
    model = build_model(ModelConfig(visual_dim=table.column("visual_dim")[0].as_py(), modalities="visual",
                                    visual_input_norm=norm))
    opt = make_optimizer(cfg.optimizer, model.param_groups(cfg.visual_lr_scale), cfg.lr, cfg.weight_decay)
    order = np.random.default_rng(0)
    for epoch in range(cfg.epochs):
        set_lr(opt, cfg, epoch)
        idx = order.permutation(table.num_rows)
        train_epoch(model, opt, (collate(table.take(idx[i:i + cfg.batch_size])) for i in range(0, len(idx), cfg.batch_size)))
    return model


def test_the_visual_branch_fits_features_that_differ_little_around_a_large_shared_part():
    """Face features of one cast share a large component; emotions move them a little (spread
    0.02 of a unit-variance vector here). The visual branch must fit such clips on the default
    schedule and score new clips of the same classes: with the frame features standardised
    (FrameNorm) it does; without (the branch before), it stays at chance."""
    from raylib.prediction import val_metrics

    rng = np.random.default_rng(0)
    common, directions = rng.normal(size=128), rng.normal(size=(7, 128))
    train, held = (frame_table(rng, common, directions, n, spread=0.02) for n in (12, 6))
    model = fit_visual_branch(train, norm=True)
    assert val_metrics(model, train)["val_accuracy"] >= 0.95
    assert val_metrics(model, held)["val_accuracy"] >= 0.9
    # the old branch (no FrameNorm, the visual branch at the schedule's own rate) stays at chance, 1/7;
    # either change alone lets it fit these clips
    assert val_metrics(fit_visual_branch(train, norm=False, visual_lr_scale=1.0), train)["val_accuracy"] <= 0.3
    assert val_metrics(fit_visual_branch(train, norm=True, visual_lr_scale=1.0), train)["val_accuracy"] >= 0.95


def test_frame_norm_standardises_real_frames_with_training_statistics_and_keeps_padding_zero():
    from raylib.models.fusion import FrameNorm

    norm = FrameNorm(2)
    f = torch.tensor([[[1.0, 10.0], [3.0, 30.0], [0.0, 0.0]]])  # the third frame is padding
    mask = torch.tensor([[True, True, False]])
    out = norm.train()(f, mask)
    torch.testing.assert_close(out, torch.tensor([[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]]), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.norm.running_mean, torch.tensor([2.0, 20.0]))  # padding not counted
    torch.testing.assert_close(norm.norm.running_var, torch.tensor([2.0, 200.0]))  # unbiased: 2 frames
    evaluated = norm.eval()(torch.tensor([[[2.0, 20.0 + 200 ** 0.5]]]), torch.tensor([[True]]))
    torch.testing.assert_close(evaluated, torch.tensor([[[0.0, 1.0]]]), atol=1e-3, rtol=0)


def test_the_visual_branch_learns_at_its_own_rate_and_the_rest_at_the_schedules():
    """FusionModel.param_groups + set_lr: every parameter of a visual-only model at visual_lr_scale
    times the epoch's rate; those of AV and audio models at the rate itself."""
    import math

    from raylib.train.config import TrainConfig
    from raylib.train.loop import make_optimizer, set_lr

    cfg = TrainConfig(lr=1e-3, epochs=4, visual_lr_scale=10.0)
    for modalities, visual_names in (("av", ()), ("visual", ("visual_norm.", "visual_attention.", "classifier.")),
                                     ("audio", ())):
        model = build_model(ModelConfig(visual_dim=16, modalities=modalities))
        opt = make_optimizer("adam", model.param_groups(cfg.visual_lr_scale), cfg.lr, cfg.weight_decay)
        set_lr(opt, cfg, 1)  # cosine: 1e-3 * (1 + cos(pi / 4)) / 2
        rate = 1e-3 * (1 + math.cos(math.pi / 4)) / 2
        lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        names = dict(model.named_parameters())
        assert len(lr_of) == len(names) and len(opt.param_groups) == 1  # every parameter in exactly one group
        for name, p in names.items():
            expected = 10 * rate if name.startswith(visual_names) else rate
            assert lr_of[id(p)] == pytest.approx(expected), (modalities, name)
