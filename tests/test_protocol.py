"""Wire protocol: round trips, every header violation, and a fuzz of both decoders."""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import EDGE_VALUES, corpus
from bench.fuzz import LIMITS as FUZZ_LIMITS
from codec import BITPACK, ZSTD
from compress.quant import quantize
from runtime.protocol import (
    DEFAULT_LIMITS,
    HEADER_SIZE,
    Error,
    ErrorCode,
    Hello,
    Limits,
    ProtocolError,
    Reply,
    Request,
    decode,
    decode_activation,
    decode_request,
    encode,
    encode_activation,
    read_frame,
)
from tests.wire import with_header


def request(bits: int = 3, shape: tuple[int, int, int, int] = (2, 3, 5, 7), p: int = 4, seed: int = 0) -> Request:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    codes, lo, scale = quantize(x, bits)
    return Request(17, "vgg16_digits", p, shape[1], bits, 5, shape, encode_activation(codes, lo, scale, bits))


def reply() -> Reply:
    return Reply(9, "vgg16_digits", 4, 3, 2, ((3, 1, 4), (1, 5, 9)), ((0.5, 0.25, 0.125), (0.75, 0.125, 0.0625)),
                 1.5e-4, 2.5e-3)


def stream_decode(data: bytes, limits: Limits = DEFAULT_LIMITS, runner: asyncio.Runner | None = None):
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader, limits, timeout=1.0, idle_timeout=1.0)
    return runner.run(go()) if runner is not None else asyncio.run(go())


DECODERS = {"buffer": decode, "stream": stream_decode}


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("how", DECODERS)
def test_request_round_trip(bits: int, how: str) -> None:
    req = request(bits)
    assert DECODERS[how](encode(req)) == req
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    codes, lo, scale = quantize(x, bits)
    codes2, lo2, scale2 = decode_activation(req.body, req.shape, bits)
    assert codes2.dtype == np.uint8 and codes2.shape == (2, 3, 5, 7)
    np.testing.assert_array_equal(codes2, codes.numpy())
    np.testing.assert_array_equal(lo2, lo.numpy())
    np.testing.assert_array_equal(scale2, scale.numpy())
    assert len(encode(req)) == HEADER_SIZE + 2 * 6 * 4 + (2 * 3 * 5 * 7 * bits + 7) // 8


def test_all_cloud_request_round_trip() -> None:
    req = request(8, (1, 1, 32, 32), p=-1)
    assert decode(encode(req)) == req
    assert len(req.body) == 8 + 1024


@pytest.mark.parametrize("how", DECODERS)
@pytest.mark.parametrize("msg", [reply(), Error(3, ErrorCode.UNKNOWN_SCHEME, "channels 99 outside 1..32 — ü"),
                                 Error(0, ErrorCode.BAD_MAGIC, ""), Hello("vgg16_digits", b"s3cret", 1),
                                 Hello("x")], ids=["reply", "error", "error-empty", "hello", "hello-empty"])
def test_round_trip(msg, how: str) -> None:
    got = DECODERS[how](encode(msg))
    if isinstance(msg, Reply):  # scores travel as float32
        assert got.classes == msg.classes and got.compute_s == msg.compute_s and got.unpack_s == msg.unpack_s
        np.testing.assert_allclose(got.scores, msg.scores, rtol=1e-7)
    else:
        assert got == msg


def test_error_message_is_bounded() -> None:
    frame = encode(Error(1, ErrorCode.INTERNAL, "é" * 5000))
    assert len(frame) <= HEADER_SIZE + 2 + DEFAULT_LIMITS.max_message
    assert decode(frame).message == "é" * (DEFAULT_LIMITS.max_message // 2)


def test_stream_reads_consecutive_frames_and_clean_eof() -> None:
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(encode(request(2)) + encode(reply()) + encode(Hello("a", b"t")))
        reader.feed_eof()
        return [await read_frame(reader) for _ in range(4)]
    got = asyncio.run(go())
    assert got[0] == request(2) and isinstance(got[1], Reply) and got[2] == Hello("a", b"t") and got[3] is None


# ------------------------------------------------------------------------------------ codecs
def zstd_request(bits: int, shape=(2, 3, 5, 7)) -> Request:
    x = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(bits)))
    return Request(18, "vgg16_digits", 4, shape[1], bits, 5, shape, encode_activation(*quantize(x, bits), bits, ZSTD),
                   ZSTD.wire_id)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("how", DECODERS)
def test_zstd_request_round_trip(bits: int, how: str) -> None:
    req = zstd_request(bits)
    frame = encode(req)
    assert frame[6] == 1  # the flags byte carries the codec id
    got = DECODERS[how](frame)
    assert got == req and got.codec is ZSTD
    x = torch.relu(torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(bits)))
    codes = decode_activation(got.body, got.shape, bits, got.codec_id)[0]
    np.testing.assert_array_equal(codes, quantize(x, bits)[0].numpy())
    assert torch.equal(decode_request(got), decode_request(request_from(got, BITPACK, x)))


def request_from(req: Request, codec, x: torch.Tensor) -> Request:
    return Request(req.request_id, req.app, req.p, req.c, req.bits, req.k, req.shape,
                   encode_activation(*quantize(x, req.bits), req.bits, codec), codec.wire_id)


def test_old_frames_are_bitpack() -> None:
    """A frame with flags 0 (every frame from before codecs) is bitpack, body length exact."""
    req = decode(REQ)
    assert req.codec_id == 0 and req.codec is BITPACK


@pytest.mark.parametrize("how", DECODERS)
def test_zstd_body_bounded_by_bitpack_size(how: str) -> None:
    frame = encode(zstd_request(3))
    bitpacked = 2 * 6 * 4 + (2 * 3 * 5 * 7 * 3 + 7) // 8
    for body_len in (bitpacked + 1, 2 * 6 * 4, 0):  # above the bound; no payload
        with pytest.raises(ProtocolError) as info:
            DECODERS[how](with_header(frame, body_len=body_len))
        assert info.value.code == ErrorCode.BAD_LENGTH, info.value.message


@pytest.mark.parametrize("how", DECODERS)
def test_unknown_codec_is_read_whole_then_refused(how: str) -> None:
    """An unknown codec id passes the header (body at most one byte per code), so the frame is read
    whole; its Request then names UNKNOWN_CODEC, which the server answers and survives."""
    got = DECODERS[how](with_header(REQ, flags=200))
    assert got.codec_id == 200
    with pytest.raises(ProtocolError, match="unknown codec id 200") as info:
        got.codec  # noqa: B018
    assert info.value.code == ErrorCode.UNKNOWN_CODEC
    with pytest.raises(ProtocolError) as info:
        decode_activation(got.body, got.shape, got.bits, got.codec_id)
    assert info.value.code == ErrorCode.UNKNOWN_CODEC


@pytest.mark.parametrize("how", DECODERS)
def test_flags_on_other_frames_are_refused(how: str) -> None:
    with pytest.raises(ProtocolError) as info:
        DECODERS[how](with_header(encode(reply()), flags=1))
    assert info.value.code == ErrorCode.BAD_FLAGS


# ------------------------------------------------------------------------------- violations
REQ = encode(request(3))
BAD_HEADERS = [
    ("magic", dict(magic=b"NIOC"), ErrorCode.BAD_MAGIC),
    ("version0", dict(version=0), ErrorCode.BAD_VERSION),
    ("version2", dict(version=2), ErrorCode.BAD_VERSION),
    ("type0", dict(type=0), ErrorCode.BAD_TYPE),
    ("type9", dict(type=9), ErrorCode.BAD_TYPE),
    ("codec-len", dict(flags=200, body_len=2 * 6 * 4 + 2 * 3 * 5 * 7 + 1), ErrorCode.BAD_LENGTH),  # > raw size
    ("bits0", dict(bits=0), ErrorCode.BAD_FIELD),
    ("bits9", dict(bits=9), ErrorCode.BAD_FIELD),
    ("k0", dict(k=0), ErrorCode.BAD_FIELD),
    ("k11", dict(k=11), ErrorCode.BAD_FIELD),
    ("p-2", dict(p=-2), ErrorCode.BAD_FIELD),
    ("c0", dict(c=0, ch=0), ErrorCode.BAD_FIELD),
    ("c4097", dict(c=4097, ch=4097), ErrorCode.BAD_FIELD),
    ("c!=C", dict(c=4), ErrorCode.BAD_FIELD),
    ("h0", dict(h=0), ErrorCode.BAD_FIELD),
    ("batch", dict(n=257), ErrorCode.BAD_FIELD),
    ("elements", dict(n=256, c=4096, ch=4096, h=64, w=64), ErrorCode.BAD_FIELD),
    ("app", dict(app=b"vgg\xff"), ErrorCode.BAD_FIELD),
    ("app-gap", dict(app=b"ab\0cd"), ErrorCode.BAD_FIELD),
    ("len+1", dict(body_len=len(REQ) - HEADER_SIZE + 1), ErrorCode.BAD_LENGTH),
    ("len-1", dict(body_len=len(REQ) - HEADER_SIZE - 1), ErrorCode.BAD_LENGTH),
    ("len0", dict(body_len=0), ErrorCode.BAD_LENGTH),
    ("len-huge", dict(body_len=0xFFFFFFFF), ErrorCode.BAD_LENGTH),
    ("len-max+1", dict(body_len=DEFAULT_LIMITS.max_body + 1), ErrorCode.BAD_LENGTH),
    ("crc", dict(crc=zlib.crc32(REQ[HEADER_SIZE:]) ^ 1), ErrorCode.BAD_CRC),
]


@pytest.mark.parametrize("how", DECODERS)
@pytest.mark.parametrize(("name", "changes", "code"), BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_bad_request_header(name: str, changes: dict, code: ErrorCode, how: str) -> None:
    with pytest.raises(ProtocolError) as info:
        DECODERS[how](with_header(REQ, **changes))
    assert info.value.code == code, info.value.message


@pytest.mark.parametrize("how", DECODERS)
@pytest.mark.parametrize(("frame", "changes"), [
    (encode(reply()), dict(k=0)), (encode(reply()), dict(k=11)), (encode(reply()), dict(n=0)),
    (encode(reply()), dict(n=257, body_len=16 + 257 * 3 * 6)), (encode(reply()), dict(body_len=15)),
    (encode(Error(1, 2, "x")), dict(body_len=1)), (encode(Error(1, 2, "x")), dict(body_len=2 + 1025)),
    (encode(Hello("a", b"t")), dict(body_len=257)),
], ids=["reply-k0", "reply-k11", "reply-n0", "reply-batch", "reply-len", "error-short", "error-long", "hello-long"])
def test_bad_other_headers(frame: bytes, changes: dict, how: str) -> None:
    with pytest.raises(ProtocolError) as info:
        DECODERS[how](with_header(frame, **changes))
    assert info.value.code in (ErrorCode.BAD_FIELD, ErrorCode.BAD_LENGTH)


@pytest.mark.parametrize("how", DECODERS)
def test_corrupt_body_fails_crc(how: str) -> None:
    frame = bytearray(REQ)
    frame[HEADER_SIZE + 30] ^= 0x10
    with pytest.raises(ProtocolError) as info:
        DECODERS[how](bytes(frame))
    assert info.value.code == ErrorCode.BAD_CRC


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, len(REQ) - 1])
@pytest.mark.parametrize("how", DECODERS)
def test_truncated(cut: int, how: str) -> None:
    with pytest.raises(ProtocolError) as info:
        DECODERS[how](REQ[:cut])
    assert info.value.code == ErrorCode.TRUNCATED


def test_trailing_bytes_rejected_by_buffer_decoder() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(REQ + b"\0")
    assert info.value.code == ErrorCode.BAD_LENGTH


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0])
def test_bad_quantisation_params(bad: float) -> None:
    req = request(4)
    body = bytearray(req.body)
    struct.pack_into("<f", body, 4 * (2 * 3) + 4, bad)  # second scale
    with pytest.raises(ProtocolError) as info:
        decode_activation(bytes(body), req.shape, req.bits)
    assert info.value.code == ErrorCode.BAD_FIELD
    with pytest.raises(ProtocolError):
        decode_activation(req.body[:-1], req.shape, req.bits)


def test_encoder_refuses_what_the_decoder_would() -> None:
    req = request(3)
    with pytest.raises(ProtocolError):
        encode(Request(1, "vgg16_digits", 0, 3, 3, 5, req.shape, req.body + b"\0"))
    with pytest.raises(ProtocolError):
        encode(Hello("name-longer-than-16-bytes"))
    with pytest.raises(ProtocolError):
        encode(Hello("a", b"x" * 257))


def test_timeouts() -> None:
    async def go(data: bytes, **timeouts: float) -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)  # no EOF: the peer is still there but sends nothing more
        await read_frame(reader, **timeouts)
    for data, kw in [(REQ[:10], dict(timeout=0.05)), (REQ[:-1], dict(timeout=0.05)), (b"", dict(idle_timeout=0.05))]:
        with pytest.raises(ProtocolError) as info:
            asyncio.run(go(data, **kw))
        assert info.value.code == ErrorCode.TIMEOUT


def test_huge_claimed_body_allocates_nothing() -> None:
    """A header claiming 16 MiB that is valid as far as the header goes, then EOF: no 16 MiB buffer."""
    n, c, h, w = 64, 256, 32, 32  # 16 Mi elements: at 1 bit the body is 2.2 MB (at 8 bits it would exceed max_body)
    frame = with_header(REQ, c=c, n=n, ch=c, h=h, w=w, bits=1, body_len=8 * n * c + n * c * h * w // 8)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            stream_decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == ErrorCode.TRUNCATED
    assert peak < 512 << 10


# ------------------------------------------------------------------------------------- fuzz
VALID = corpus()  # bench.fuzz's valid frames of every message type, mutated here by hypothesis


@pytest.fixture(scope="module")
def runner():
    with asyncio.Runner() as r:
        yield r


def check_decoders(data: bytes, runner: asyncio.Runner) -> None:
    """Both decoders: a message or ProtocolError, nothing else, and no allocation beyond the input's size."""
    results = []
    tracemalloc.start()
    try:
        for fn in (lambda d: decode(d, FUZZ_LIMITS), lambda d: stream_decode(d, FUZZ_LIMITS, runner)):
            try:
                msg = fn(data)
                if isinstance(msg, Request):
                    decode_activation(msg.body, msg.shape, msg.bits)
                results.append(msg)
            except ProtocolError as exc:
                assert isinstance(exc.code, ErrorCode)
                results.append(None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(data) + (256 << 10)
    if results[0] is not None:  # a frame the buffer decoder accepts, the stream decoder reads the same way
        assert results[1] == results[0]


FUZZ = settings(max_examples=1500, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes, runner: asyncio.Runner) -> None:
    check_decoders(data, runner)
    check_decoders(b"COIN\x01" + data, runner)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "header", "truncate", "insert", "delete"]))
        lo = min(4, len(frame))  # the magic has its own tests
        pos = draw(st.integers(lo, max(lo, len(frame) - 1)))
        if op == "flip" and pos < len(frame):
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(frame):
            frame[pos] = draw(st.integers(0, 255))
        elif op == "header" and len(frame) >= HEADER_SIZE:
            at = draw(st.integers(4, HEADER_SIZE - 4))
            frame[at:at + 4] = struct.pack("<I", draw(st.sampled_from(EDGE_VALUES)
                                                     | st.integers(0, 0xFFFFFFFF)))
        elif op == "truncate":
            del frame[pos:]
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del frame[pos:pos + draw(st.integers(1, 8))]
    if len(frame) >= HEADER_SIZE and draw(st.booleans()):  # get past the CRC to reach the body decoders
        struct.pack_into("<I", frame, HEADER_SIZE - 4, zlib.crc32(bytes(frame[HEADER_SIZE:])))
    return bytes(frame)


@FUZZ
@given(data=mutated())
def test_fuzz_mutated_frames(data: bytes, runner: asyncio.Runner) -> None:
    check_decoders(data, runner)


def test_fuzz_benchmark_runs_clean_on_a_small_budget() -> None:
    from bench.fuzz import run
    result = run(500, seed=1, hang_s=5.0)
    assert not result["crashes"] and not result["hangs"] and not result["over_allocations"], result
    assert sum(result["counts"].values()) == 2 * 500
    assert any(k.startswith("buffer: accepted") for k in result["counts"])  # the mutator keeps some frames valid
