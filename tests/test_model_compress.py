"""Partition points, head/tail split, pruning and quantisation at the cut, the codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apps import load_app
from cli.errors import CoInferError
from compress.codec import pack, packed_size, unpack
from compress.model import SchemeModel
from compress.prune import keep_filters, prune_at
from compress.quant import dequantize, quantize
from compress.scheme import Scheme, all_schemes
from models.build import app_points, build_model, load_base_model
from models.vgg import vgg16_bn


@pytest.mark.parametrize("width,size", [(1 / 8, 32), (1 / 32, 64)])
def test_partition_shapes_match_forward(width, size):
    model = vgg16_bn(width, 10, 1, size, 16).eval()
    x = torch.randn(2, 1, size, size)
    points = model.partition_points()
    assert len(points) == 13
    for pt in points:
        a = model.forward_head(x, pt.index)
        assert tuple(a.shape) == (2, pt.channels, pt.height, pt.width), pt


def test_reference_app_points_are_the_papers():
    points = app_points(load_app("vgg16_cars"))
    assert [p.channels for p in points] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert sum(p.channels for p in points) * 8 == 33792
    assert [(p.height, p.name) for p in points][:2] == [(224, "conv1_1"), (112, "conv1_2+pool")]
    assert points[-1].height == 7


def test_default_app_space():
    app = load_app("vgg16_digits")
    widths = [p.channels for p in app_points(app)]
    assert len(all_schemes(widths)) == sum(widths) * 8 == 4224


def test_head_tail_equals_full_model_at_full_width_8_bits(tiny_app):
    base = load_base_model(tiny_app)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        full = base(x)
        for p, cp in enumerate(base.widths):
            split = SchemeModel(base, Scheme(p, cp, 8)).eval()
            a = split.head(x)
            codes, lo, scale = quantize(a, 8)
            out = split.tail(dequantize(codes, lo, scale))
            assert torch.allclose(out.argmax(1), full.argmax(1)) or torch.allclose(out, full, atol=0.05)
            # within quantisation error: the unquantised split is exact
            assert torch.allclose(split.tail(a), full, atol=1e-5)
            err = (dequantize(codes, lo, scale) - a).abs().amax()
            assert err <= scale.max() / 2 + 1e-6


def test_pruning_keeps_highest_l1_filters():
    torch.manual_seed(0)
    model = vgg16_bn(1 / 16, 10, 1, 32, 16).eval()
    w = model.blocks[2].conv.weight
    norms = w.abs().flatten(1).sum(1)
    c = 3
    keep = keep_filters(w, c)
    assert set(keep.tolist()) == set(norms.topk(c).indices.tolist())
    pruned = prune_at(model, 2, c).eval()
    assert pruned.widths[2] == c and pruned.blocks[3].conv.in_channels == c
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        full_act = model.forward_head(x, 2)[:, keep]
        assert torch.allclose(pruned.forward_head(x, 2), full_act, atol=1e-6)
        # the consumer sees exactly the kept channels
        a = pruned.forward_head(x, 2)
        ref = torch.nn.functional.conv2d(a, model.blocks[3].conv.weight[:, keep], model.blocks[3].conv.bias, padding=1)
        assert torch.allclose(pruned.blocks[3].conv(a), ref, atol=1e-5)


def test_pruning_at_last_point_shrinks_classifier():
    model = vgg16_bn(1 / 16, 10, 1, 64, 16).eval()  # final map 2x2
    pruned = prune_at(model, 12, 5).eval()
    assert pruned.classifier[1].in_features == 5 * 4
    x = torch.randn(1, 1, 64, 64)
    keep = keep_filters(model.blocks[12].conv.weight, 5)
    with torch.no_grad():
        a = model.forward_head(x, 12)
        masked = torch.zeros_like(a)
        masked[:, keep] = a[:, keep]
        assert torch.allclose(pruned(x), model.forward_tail(masked, 12), atol=1e-5)


@pytest.mark.parametrize("p,c,b,says", [
    (13, 1, 1, r"partition point 13 outside 0\.\.12"), (0, 0, 1, "channels 0 < 1"), (0, 3, 9, r"bits 9 outside 1\.\.8"),
    (0, 999, 8, r"channels 999 outside 1\.\.2 at point 0"), (-1, 1, 1, "a single-end scheme has no channels or bits"),
])
def test_scheme_outside_space_is_an_error(p, c, b, says):
    with pytest.raises(CoInferError, match=says):
        SchemeModel(vgg16_bn(1 / 32, 10, 1, 32, 16), Scheme(p, c, b))


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_codec_round_trip_and_exact_size(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, size=n, dtype=np.uint8)
    payload = pack(codes, bits)
    assert len(payload) == packed_size(n, bits) == -(-n * bits // 8)
    assert np.array_equal(unpack(payload, bits, n), codes)


def test_codec_bit_order_and_errors():
    assert pack(np.array([1, 0, 1, 1, 0, 0, 0, 1], np.uint8), 1) == bytes([0b10110001])
    assert pack(np.array([0xA, 0x5, 0x3], np.uint8), 4) == bytes([0xA5, 0x30])
    assert pack(np.array([5, 2, 7], np.uint8), 3) == bytes([0b10101011, 0b10000000])
    with pytest.raises(ValueError, match="a code does not fit in 2 bits"):
        pack(np.array([4], np.uint8), 2)
    with pytest.raises(ValueError, match="payload has 3 bytes, 3 codes of 3 bits need 2"):
        unpack(b"\x00\x00\x00", 3, 3)  # 3 codes of 3 bits are 9 bits: 2 bytes, not 3
    with pytest.raises(ValueError, match="payload has 1 bytes, 2 codes of 8 bits need 2"):
        unpack(b"\x00", 8, 2)
    with pytest.raises(ValueError, match=r"bits must be an integer in 1\.\.8, got 9"):
        pack(np.zeros(3, np.uint8), 9)


def test_quantize_levels_and_constant_channels():
    x = torch.rand(2, 3, 4, 4)
    x[0, 1] = 0.5  # constant channel: scale 1, all codes 0, exact reconstruction
    for bits in range(1, 9):
        codes, lo, scale = quantize(x, bits)
        assert codes.dtype == torch.uint8 and int(codes.max()) <= (1 << bits) - 1
        err = (dequantize(codes, lo, scale) - x).abs()
        assert float(err.max()) <= float(scale.max()) / 2 + 1e-6
        assert float(err[0, 1].max()) == 0.0


def test_checkpoint_of_wrong_shape_is_an_error(tiny_app, tmp_path):
    model = vgg16_bn(1 / 16, 10, 1, 32, 16)
    bad = tmp_path / "bad.pt"
    torch.save(model.state_dict(), bad)
    with pytest.raises(CoInferError, match="does not fit"):
        load_base_model(tiny_app, bad)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CoInferError, match="cannot read"):
        load_base_model(tiny_app, garbage)
    assert build_model(tiny_app).widths[0] == 2
