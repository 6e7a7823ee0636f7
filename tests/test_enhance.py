import pytest
import torch

from raylib.models.backbones import build_backbone
from raylib.models.enhance import (VIEWS_PAPER, VIEWS_WIDE, ViewSet, enhance, enhanced_dim, make_views,
                                   norm_fft, view_features)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_backbone("resnet18", "random")


def chips(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g)


def test_view_counts_and_order():
    assert len(VIEWS_PAPER) == 18 and len(VIEWS_PAPER.views()) == 18
    assert VIEWS_WIDE.rotations == (-15.0, 0.0, 15.0) and VIEWS_WIDE.scales == (0.75, 1.0, 1.25)
    views = make_views(chips(3))
    assert views.shape == (3, 18, 3, 64, 64) and views.dtype == torch.uint8
    i = VIEWS_PAPER.views().index((0.0, 1.0, False))
    assert torch.equal(views[:, i], chips(3))


def test_rotation_is_counter_clockwise_and_exact_at_90_degrees():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    v = make_views(x, ViewSet((90.0,), (1.0,), (False,)))[0, 0]
    assert torch.equal(v, torch.rot90(x[0], 1, dims=[1, 2]))


def test_zoom_enlarges_the_centre():
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    x[:, :, 24:40, 24:40] = 255
    small, big = make_views(x, ViewSet((0.0,), (0.75, 1.25), (False,)))[0]
    assert (small > 127).sum() < (x > 127).sum() < (big > 127).sum()


def test_flipped_view_equals_the_model_on_the_flipped_input(encoder):
    x = chips(2)
    feats = view_features(encoder, x, VIEWS_PAPER)
    assert feats.shape == (2, 18, 512)
    i = VIEWS_PAPER.views().index((0.0, 1.0, True))
    torch.testing.assert_close(feats[:, i], encoder.embed(torch.flip(x, dims=[-1])), atol=1e-5, rtol=1e-5)


def test_meanstd_is_2d_with_zero_std_when_views_agree(encoder):
    flat = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)  # every view of a flat image is the same
    out = enhance(encoder, flat, "meanstd")
    assert out.shape == (2, 1024)
    torch.testing.assert_close(out[:, 512:], torch.zeros(2, 512), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :512], encoder.embed(flat), atol=1e-5, rtol=1e-5)


def test_mean_and_meanstd_agree_and_differ_from_basic(encoder):
    x = chips(2)
    feats = view_features(encoder, x, VIEWS_PAPER)
    mean = enhance(encoder, x, "mean")
    torch.testing.assert_close(mean, feats.mean(1))
    ms = enhance(encoder, x, "meanstd")
    torch.testing.assert_close(ms[:, :512], mean)
    torch.testing.assert_close(ms[:, 512:], feats.std(1, unbiased=False))
    assert (ms[:, 512:] > 0).any()
    assert enhance(encoder, x, "meanstd2").shape == (2, 1024)


def test_norm_fft_by_hand():
    f = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # FFT of [1, 2, 3, 4] = [10, -2+2j, -2, -2-2j]
    raw = torch.tensor([[10.0, -2.0, -2.0, -2.0, 0.0, 2.0, 0.0, -2.0]])
    torch.testing.assert_close(norm_fft(f), raw / raw.norm())


def test_normfft_and_ar_mean_dimensions(encoder):
    x = chips(2)
    assert enhance(encoder, x, "normfft").shape == (2, 1024)
    other = build_backbone("ir50", "random")
    ar = enhance(encoder, x, "ar-mean", second_encoder=other)
    assert ar.shape == (2, 1024) == (2, enhanced_dim("ar-mean", 512, 512))
    torch.testing.assert_close(ar[:, 512:], view_features(other, x, VIEWS_PAPER).mean(1))
    with pytest.raises(ValueError, match="needs a second backbone"):
        enhance(encoder, x, "ar-mean")
    with pytest.raises(ValueError, match="unknown enhancement"):
        enhance(encoder, x, "median")
