"""The codecs of the cut (codec/): every registered codec round-trips every b exactly as bitpack
does, sizes and bounds hold, malformed payloads are refused before allocation, the registry refuses
clashes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import codec
from cli.errors import CoInferError
from codec import BITPACK, ZSTD, registry
from codec.base import Codec, raw_body_len
from compress.quant import dequantize, quantize
from compress.scheme import BITS, Scheme
from models.points import PartitionPoint

SHAPE = (2, 6, 9, 11)


def activation(seed: int = 0, shape=SHAPE) -> torch.Tensor:
    """ReLU'd Gaussian: half zeros, as activations after a ReLU are."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g))


@pytest.mark.parametrize("name", codec.names())
@pytest.mark.parametrize("bits", list(BITS))
def test_round_trip_equals_quantise_dequantise(name: str, bits: int) -> None:
    c = codec.get(name)
    a = activation(bits)
    body = c.encode(a, bits)
    expected = dequantize(*quantize(a, bits))  # the codec adds no loss to quantisation's
    assert torch.equal(c.decode(body, SHAPE, bits), expected)
    c.check_body_len(len(body), SHAPE, bits)
    assert len(body) <= c.body_bound(SHAPE, bits) <= raw_body_len(SHAPE)


def test_bitpack_size_is_the_formula() -> None:
    pt = PartitionPoint(0, "x", 16, 9, 11)
    for bits in BITS:
        body = BITPACK.encode(activation(bits, (1, 5, 9, 11)), bits)
        size = BITPACK.size(pt, 5, bits)
        assert size.mean == size.p95 == len(body) == 5 * 8 + -(-5 * 99 * bits // 8)


def test_zstd_shrinks_sparse_codes_and_never_exceeds_bitpack() -> None:
    sparse = torch.zeros(1, 8, 16, 16)
    sparse[0, :, 3, 4] = 1.0
    for bits in BITS:
        assert len(ZSTD.encode(sparse, bits)) < len(BITPACK.encode(sparse, bits))
    noise = torch.rand(1, 8, 16, 16, generator=torch.Generator().manual_seed(1))  # incompressible: stored
    for bits in BITS:
        assert len(ZSTD.encode(noise, bits)) == len(BITPACK.encode(noise, bits))


def test_zstd_refuses_malformed_payloads() -> None:
    import zstandard
    n, bits = 8 * 16 * 16, 6
    codes, lo, scale = quantize(torch.zeros(1, 8, 16, 16), bits)
    body = ZSTD.encode((codes, lo, scale), bits)
    params = body[: 8 * 8]
    with pytest.raises(ValueError, match="bytes, shape"):  # longer than bitpack's size
        ZSTD.decode_parts(params + bytes(n), (1, 8, 16, 16), bits)
    lying = zstandard.ZstdCompressor().compress(bytes(10 * n))  # declares 10x the codes: refused unread
    with pytest.raises(ValueError, match="declares"):
        ZSTD.decode_parts(params + lying, (1, 8, 16, 16), bits)
    too_big = zstandard.ZstdCompressor().compress(bytes([1 << bits]) * n)  # codes of b+1 bits
    with pytest.raises(ValueError, match="does not fit"):
        ZSTD.decode_parts(params + too_big, (1, 8, 16, 16), bits)
    with pytest.raises(ValueError, match="bad zstd frame"):
        ZSTD.decode_parts(params + b"\x00" * 20, (1, 8, 16, 16), bits)
    frame = zstandard.ZstdCompressor().compress(bytes(n))
    with pytest.raises(ValueError, match="bad zstd frame"):  # trailing bytes
        ZSTD.decode_parts(params + frame + b"\x00", (1, 8, 16, 16), bits)


def test_data_dependent_size_needs_a_profile() -> None:
    with pytest.raises(CoInferError, match="depends on the activations"):
        ZSTD.size(PartitionPoint(0, "x", 16, 9, 11), 4, 3)


def test_registry_refuses_clashes_and_names_the_known() -> None:
    class Clash(Codec):
        name, wire_id, exact = "bitpack2", 0, True

        def encode_codes(self, codes, bits):  # pragma: no cover - never called
            raise AssertionError

        decode_codes = payload_bound = encode_codes

    with pytest.raises(ValueError, match="clashes with <codec bitpack"):
        registry.register(Clash())
    Clash.wire_id = 256
    with pytest.raises(ValueError, match="outside 0..255"):
        registry.register(Clash())
    with pytest.raises(CoInferError, match="unknown codec 'nope' \\(known: bitpack, zstd"):
        codec.get("nope")
    assert codec.by_wire_id(0) is BITPACK and codec.by_wire_id(1) is ZSTD and codec.by_wire_id(200) is None


def test_codecs_agree_with_the_reference_unpacking() -> None:
    """bitpack's payload is compress.codec's numpy reference format, byte for byte."""
    from compress.codec import pack_numpy
    codes, lo, scale = quantize(activation(3), 3)
    body = BITPACK.encode((codes, lo, scale), 3)
    assert body[8 * 2 * 6:] == pack_numpy(codes.numpy(), 3)
    assert np.array_equal(BITPACK.decode_parts(body, SHAPE, 3)[0], codes.numpy())


def test_bench_reports_every_codec_at_every_b() -> None:
    from bench.codec import measure_real
    rng = np.random.default_rng(0)
    frames = {b: [np.minimum(rng.geometric(0.5, (1, 4, 8, 8)) - 1, (1 << b) - 1).astype(np.uint8)
                  for _ in range(3)] for b in BITS}
    rows = measure_real("synthetic", frames, repeat=1)
    assert {(r["codec"], r["bits"]) for r in rows} == {(n, b) for n in codec.names() for b in BITS}
    for r in rows:
        assert r["bitpack_bytes"] == 3 * (4 * 8 + -(-4 * 64 * r["bits"] // 8))
        if r["codec"] == "bitpack":
            assert r["bytes"] == r["bitpack_bytes"]
        assert r["bytes"] <= r["bitpack_bytes"] or r["codec"] not in ("bitpack", "zstd")
    zstd8 = next(r for r in rows if r["codec"] == "zstd" and r["bits"] == 8)
    assert zstd8["bytes"] < zstd8["bitpack_bytes"]  # geometric codes: mostly 0 and 1 in a byte each


@pytest.mark.slow
def test_profiled_sizes_on_the_app() -> None:
    from apps import load_app
    from database.codecprof import channel_grid, profile_sizes
    app = load_app("vgg16_digits")
    if not app.checkpoint.is_file():
        pytest.skip("vgg16_digits checkpoint not trained")
    rows = profile_sizes(app, ZSTD, images=4)
    widths = [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    assert len(rows) == sum(len(channel_grid(w)) for w in widths) * len(BITS)
    sides = [32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1]
    for r in rows:
        assert r.bitpacked == 8 * r.channels + -(-r.channels * sides[r.point] ** 2 * r.bits // 8)
        assert 8 * r.channels < r.mean <= r.bitpacked and r.p95 <= r.bitpacked and r.images == 4
    assert sum(r.mean for r in rows) < sum(r.bitpacked for r in rows)


def test_latency_model_sends_the_codecs_bytes(tmp_path) -> None:
    """bitpack: the formula; zstd: the profiled ratio to bitpack, interpolated in c, times bitpack's size."""
    from codec.sizes import SizeRow, SizeTable
    from database.store import LatencyRow, Store
    from search.latency import LatencyModel
    from search.synthetic_problems import synthetic_points
    points = synthetic_points([4, 8], [8, 4])
    edge = [LatencyRow("syn", "e", pt.index, c, "edge", 1e-3) for pt in points for c in (1, pt.channels)]
    edge.append(LatencyRow("syn", "e", 2, 0, "edge", 5e-3))
    cloud = [LatencyRow("syn", "c", pt.index, c, "cloud", 1e-4) for pt in points for c in (1, pt.channels)]
    cloud.append(LatencyRow("syn", "c", -1, 0, "cloud", 5e-4))
    rows = [SizeRow(p, c, b, 0.5 * bp + 0.25 * bp * (c == pt.channels), 0.8 * bp, bp, 10)
            for p, pt in enumerate(points) for c in (1, pt.channels) for b in BITS
            for bp in [8 * c + -(-c * pt.height * pt.width * b // 8)]]
    store = Store(str(tmp_path / "db.sqlite"))
    assert store.codec_sizes("syn", "zstd") == []  # the table is made by its first write
    store.put_codec_sizes("syn", "zstd", rows)
    table = SizeTable("zstd", store.codec_sizes("syn", "zstd"))
    assert set(table.rows) == set(rows)
    base = LatencyModel(points, edge, cloud, 3072, devices=("e", "c"))
    zstd = LatencyModel(points, edge, cloud, 3072, devices=("e", "c"), codec=ZSTD, sizes=table)
    for scheme in (Scheme(0, 1, 3), Scheme(0, 4, 3), Scheme(1, 8, 8), Scheme(1, 4, 2)):
        i = base.space.index(scheme)
        pt = points[scheme.p]
        bitpacked = 8 * scheme.c + -(-scheme.c * pt.height * pt.width * scheme.b // 8)
        assert base.bytes[i] == bitpacked
        share = 0.5 + 0.25 * (scheme.c - 1) / (pt.channels - 1)  # linear in c between 1 and C_p
        assert zstd.bytes[i] == pytest.approx(share * bitpacked)
        assert zstd.bytes_p95[i] == pytest.approx(0.8 * bitpacked)
        assert zstd.edge_s[i] == base.edge_s[i] and zstd.cloud_s[i] == base.cloud_s[i]
    assert (zstd.totals(1.0) < base.totals(1.0)).all()
    with pytest.raises(CoInferError, match="depends on the activations"):
        LatencyModel(points, edge, cloud, 3072, codec=ZSTD)
