"""Each attention against values computed by hand (n = 3, d = 2), and masking invariances."""

import math

import pytest
import torch

from raylib.models import ATTENTIONS
from raylib.models.attention import RelationAttention, SelfAttention, TransformerAttention, build_attention

F = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # [1, 3, 2]
MASK = torch.ones(1, 3, dtype=torch.bool)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_self_attention_by_hand():
    att = SelfAttention(2)
    with torch.no_grad():
        att.w0.weight.copy_(torch.tensor([[1.0, -1.0]]))
    out, w = att(F, MASK)
    # f.w0 = 1, -2, 0 -> alpha = s(1), s(-2), s(0)
    a = [sig(1), sig(-2), sig(0)]
    s = sum(a)
    expected = [(a[0] * 1 + a[2] * 1) / s, (a[1] * 2 + a[2] * 1) / s]
    torch.testing.assert_close(out, torch.tensor([expected]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w, torch.tensor([[x / s for x in a]]), atol=1e-6, rtol=0)


def test_relation_attention_by_hand():
    att = RelationAttention(2)
    with torch.no_grad():
        att.self_attention.w0.weight.copy_(torch.tensor([[1.0, -1.0]]))
        att.w1.weight.copy_(torch.tensor([[0.5, 0.0, 0.0, 1.0]]))
    out, w = att(F, MASK)
    a = [sig(1), sig(-2), sig(0)]
    fs = [(a[0] + a[2]) / sum(a), (2 * a[1] + a[2]) / sum(a)]
    items = [[1, 0], [0, 2], [1, 1]]
    pairs = [f + fs for f in items]  # [f_i : f_s]
    b = [sig(0.5 * p[0] + 1.0 * p[3]) for p in pairs]
    ab = [x * y for x, y in zip(a, b)]
    expected = [sum(ab[i] * pairs[i][j] for i in range(3)) / sum(ab) for j in range(4)]
    assert out.shape == (1, 4)
    torch.testing.assert_close(out, torch.tensor([expected]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w, torch.tensor([[x / sum(ab) for x in ab]]), atol=1e-6, rtol=0)


def test_transformer_attention_by_hand():
    att = TransformerAttention(2, hidden=2)
    with torch.no_grad():
        att.W2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        att.W2.bias.copy_(torch.tensor([0.0, -1.0]))
        att.u.weight.copy_(torch.tensor([[2.0, 1.0]]))
    out, w = att(F, MASK)
    g = [math.exp(2 * math.tanh(f[0]) + 1 * math.tanh(f[1] - 1)) for f in [[1, 0], [0, 2], [1, 1]]]
    expected = [(g[0] + g[2]) / sum(g), (2 * g[1] + g[2]) / sum(g)]
    torch.testing.assert_close(out, torch.tensor([expected]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w, torch.tensor([[x / sum(g) for x in g]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ATTENTIONS)
def test_padding_gets_zero_weight_and_changes_nothing(name):
    torch.manual_seed(0)
    att = build_attention(name, 8, hidden=16).eval()
    clip = torch.randn(1, 5, 8)
    alone, w_alone = att(clip, torch.ones(1, 5, dtype=torch.bool))
    # the same clip padded to 9 inside a batch with a longer clip; padding filled with garbage
    batch = torch.randn(2, 9, 8) * 100
    batch[0, :5] = clip[0]
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :] = True
    out, w = att(batch, mask)
    torch.testing.assert_close(out[0], alone[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(w[0, :5], w_alone[0], atol=1e-6, rtol=0)
    assert (w[0, 5:] == 0).all()
    assert torch.allclose(w.sum(1), torch.ones(2))


@pytest.mark.parametrize("name", ATTENTIONS)
def test_permuting_items_permutes_the_weights(name):
    torch.manual_seed(1)
    att = build_attention(name, 6, hidden=8).eval()
    f = torch.randn(1, 7, 6)
    m = torch.ones(1, 7, dtype=torch.bool)
    perm = torch.randperm(7)
    out, w = att(f, m)
    out_p, w_p = att(f[:, perm], m)
    torch.testing.assert_close(out_p, out, atol=1e-6, rtol=0)
    torch.testing.assert_close(w_p, w[:, perm], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ATTENTIONS)
def test_a_clip_with_no_items_gives_zeros_not_nan(name):
    att = build_attention(name, 4, hidden=4)
    out, w = att(torch.randn(2, 3, 4), torch.tensor([[False] * 3, [True] * 3]))
    assert torch.isfinite(out).all() and (out[0] == 0).all() and (w[0] == 0).all()


def test_unknown_attention_name():
    with pytest.raises(ValueError, match="unknown attention 'cross'"):
        build_attention("cross", 4, hidden=4)
