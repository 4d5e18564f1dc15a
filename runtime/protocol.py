"""CoInfer wire protocol, version 1: one fixed little-endian header, then a typed body. No pickle.

Every frame is a 48-byte header (`struct` format `<4sBBBBI16sbBH4HII`) followed by `body_len` bytes:

    offset size field
    0      4    magic       b"COIN"
    4      1    version     1
    5      1    type        1 REQUEST, 2 REPLY, 3 ERROR, 4 HELLO
    6      1    flags       REQUEST: the codec's wire id (`codec.registry`; 0 = bitpack); else 0
    7      1    bits        b, 1..8 (REQUEST; echoed in REPLY; else 0)
    8      4    request_id  u32, chosen by the client, echoed in the REPLY / ERROR
    12     16   app         app name, ASCII, NUL-padded (e.g. b"vgg16_digits\\0\\0\\0\\0")
    28     1    p           i8 partition point; -1 = all-cloud (the input itself is sent)
    29     1    k           u8 top-k: requested (REQUEST, 1..10) / returned (REPLY, 1..10)
    30     2    c           u16 channels kept at the cut (all-cloud: the input channels)
    32     8    N, C, H, W  u16 each: the tensor shape (REQUEST, C == c); REPLY: (N, 0, 0, 0)
    40     4    body_len    u32, bytes after the header
    44     4    crc32       u32, zlib.crc32 of the body (the header is checked field by field)

Bodies (all little-endian):

- REQUEST: lo float32[N*C], scale float32[N*C] (per sample and channel, `compress.quant`), then the
  N*C*H*W codes as the frame's codec writes them (`codec`): bitpack packs them at b bits, exactly
  ceil(N*C*H*W*b/8) bytes (every frame from before codecs is bitpack: flags 0); a data-dependent
  codec (zstd) sends at most that. The codec builds and reads this body (`encode_activation` /
  `decode_activation` / `decode_request` here).
- REPLY: unpack_s float64, compute_s float64 (cloud seconds: decode + dequantise, tail forward),
  class ids u16[N*k], scores float32[N*k] (softmax probabilities, best first per sample).
- ERROR: code u16 (`ErrorCode`), message UTF-8 (at most `Limits.max_message` bytes).
- HELLO: the auth token (at most `Limits.max_token` bytes). Client -> server: the first frame of a
  connection when the server has a token. Server -> client: an empty HELLO acknowledges it.

A reader validates magic, version, type, flags and every field of the header against `Limits`, and
requires `body_len` to be what those fields imply, BEFORE it allocates or reads the body: the
codec's exact length (bitpack), at most its bound (a data-dependent codec), or, for a codec id this
side does not know, at most the body with one byte per code (`codec.base.raw_body_len`; the frame is
read whole, so the connection stays in step, and `Request.codec` answers ERROR UNKNOWN_CODEC, after
which the connection stays open). Then it checks the CRC. Anything malformed raises
`ProtocolError(code, message)`.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

import codec as codecs
from cli.errors import CoInferError
from codec import Codec
from codec.base import raw_body_len
from compress.scheme import ALL_CLOUD_P, BITS, MAX_BITS, MIN_BITS, Scheme

MAGIC = b"COIN"
VERSION = 1
HEADER = struct.Struct("<4sBBBBI16sbBH4HII")
HEADER_SIZE = HEADER.size
APP_NAME_BYTES = 16
MAX_TOPK = 10
_REPLY_FIXED = struct.Struct("<dd")
_ERROR_FIXED = struct.Struct("<H")


class MsgType(IntEnum):
    REQUEST = 1
    REPLY = 2
    ERROR = 3
    HELLO = 4


_TYPES = frozenset(t.value for t in MsgType)


class ErrorCode(IntEnum):
    # framing: the connection is closed after the ERROR reply
    BAD_MAGIC = 1
    BAD_VERSION = 2
    BAD_TYPE = 3
    BAD_FLAGS = 4
    BAD_FIELD = 5
    BAD_LENGTH = 6
    BAD_CRC = 7
    TRUNCATED = 8
    TIMEOUT = 9
    UNEXPECTED = 10
    # content: the frame was well formed, the connection stays open
    UNKNOWN_APP = 20
    UNKNOWN_SCHEME = 21
    BAD_SHAPE = 22
    UNKNOWN_CODEC = 23
    # access
    AUTH_REQUIRED = 30
    AUTH_FAILED = 31
    BUSY = 40
    INTERNAL = 50


class ProtocolError(CoInferError):
    """A malformed or unacceptable frame; `code` is what goes back in the ERROR reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Hard maxima checked against the header before any body byte is read."""

    max_body: int = 16 << 20
    max_elements: int = 16 << 20  # N*C*H*W of one request
    max_batch: int = 256
    max_channels: int = 4096
    max_message: int = 1024
    max_token: int = 256


DEFAULT_LIMITS = Limits()
Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class Request:
    request_id: int
    app: str
    p: int
    c: int
    bits: int
    k: int
    shape: Shape
    body: bytes  # see encode_activation
    codec_id: int = 0  # the flags byte: the codec's wire id (0 = bitpack)

    @property
    def scheme(self) -> Scheme:
        """The scheme this request runs (UNKNOWN_SCHEME when its fields name none)."""
        try:
            return Scheme.from_wire(self.p, self.c, self.bits)
        except CoInferError as exc:
            raise ProtocolError(ErrorCode.UNKNOWN_SCHEME, str(exc)) from None

    @property
    def codec(self) -> Codec:
        """The codec of its body (UNKNOWN_CODEC when this side knows no codec of that id)."""
        found = codecs.by_wire_id(self.codec_id)
        if found is None:
            raise ProtocolError(ErrorCode.UNKNOWN_CODEC, f"unknown codec id {self.codec_id} (this side knows "
                                + ", ".join(f"{c.wire_id} {c.name}" for c in codecs.registry.codecs()) + ")")
        return found


@dataclass(frozen=True)
class Reply:
    request_id: int
    app: str
    p: int
    c: int
    bits: int
    classes: tuple[tuple[int, ...], ...]  # N x k class ids, best first
    scores: tuple[tuple[float, ...], ...]  # N x k probabilities
    unpack_s: float
    compute_s: float


@dataclass(frozen=True)
class Error:
    request_id: int
    code: int
    message: str
    app: str = ""


@dataclass(frozen=True)
class Hello:
    app: str
    token: bytes = b""
    request_id: int = 0


Message = Request | Reply | Error | Hello


@dataclass(frozen=True)
class Header:
    type: MsgType
    codec_id: int  # the flags byte
    bits: int
    request_id: int
    app: str
    p: int
    k: int
    c: int
    shape: Shape
    body_len: int
    crc: int


# ---------------------------------------------------------------------------------------- body
def encode_activation(codes, lo, scale, bits: int, codec: Codec = codecs.BITPACK) -> bytes:
    """codes (N, C, H, W) uint8 < 2^bits, lo / scale (N, C) -> a REQUEST body in `codec`."""
    return codec.encode((codes, lo, scale), bits)


def _codec_of(codec_id: int) -> Codec:
    found = codecs.by_wire_id(codec_id)
    if found is None:
        raise ProtocolError(ErrorCode.UNKNOWN_CODEC, f"unknown codec id {codec_id}")
    return found


def decode_activation(body: bytes | memoryview, shape: Shape, bits: int,
                      codec_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """REQUEST body -> codes (N, C, H, W) uint8, lo (N, C) float32, scale (N, C) float32."""
    codec = _codec_of(codec_id)
    try:
        codec.check_body_len(len(body), shape, bits)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"activation {exc}") from None
    try:
        return codec.decode_parts(body, shape, bits)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_FIELD, str(exc)) from None


def decode_request(req: Request):
    """The cloud's decode + dequantise of a REQUEST: the float activation (N, C, H, W) its tail takes;
    ProtocolError (UNKNOWN_CODEC, BAD_LENGTH, BAD_FIELD) when its body cannot be read."""
    import torch

    from compress.quant import dequantize
    codes, lo, scale = decode_activation(req.body, req.shape, req.bits, req.codec_id)
    return dequantize(torch.from_numpy(codes), torch.from_numpy(lo), torch.from_numpy(scale))


# -------------------------------------------------------------------------------------- header
def _app_field(app: str) -> bytes:
    if not (app.isascii() and app.isprintable()) or len(app) > APP_NAME_BYTES:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"app name must be printable ASCII, at most {APP_NAME_BYTES} "
                            f"bytes: {app!r}")
    return app.encode("ascii").ljust(APP_NAME_BYTES, b"\0")


def _app_name(field: bytes) -> str:
    name = field.rstrip(b"\0")
    if not (name.isascii() and name.decode("ascii").isprintable()):
        raise ProtocolError(ErrorCode.BAD_FIELD, "app name must be NUL-padded printable ASCII")
    return name.decode("ascii")


def _expected_body_len(h: Header, limits: Limits) -> int:
    """What `body_len` must be for this header; raises on any out-of-range field."""
    n, c_, hh, w = h.shape
    if h.type is MsgType.REQUEST:
        if h.bits not in BITS:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"bits {h.bits} outside {MIN_BITS}..{MAX_BITS}")
        if not 1 <= h.k <= MAX_TOPK:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"top-k {h.k} outside 1..{MAX_TOPK}")
        if h.p < ALL_CLOUD_P:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"partition point {h.p} < {ALL_CLOUD_P}")
        if not 1 <= h.c <= limits.max_channels:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"channels {h.c} outside 1..{limits.max_channels}")
        if min(h.shape) < 1 or c_ != h.c:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"shape {h.shape} must be positive with C == c == {h.c}")
        if n > limits.max_batch:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"batch {n} > {limits.max_batch}")
        if n * c_ * hh * w > limits.max_elements:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"shape {h.shape} has more than {limits.max_elements} elements")
        codec = codecs.by_wire_id(h.codec_id)
        if codec is None:  # read whole (bounded) and refused by `Request.codec`: the connection stays in step
            if not 0 < h.body_len <= raw_body_len(h.shape):
                raise ProtocolError(ErrorCode.BAD_LENGTH, f"body_len {h.body_len} of codec id {h.codec_id} outside "
                                    f"1..{raw_body_len(h.shape)}")
            return h.body_len
        try:
            codec.check_body_len(h.body_len, h.shape, h.bits)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"REQUEST {exc}") from None
        return h.body_len
    if h.type is MsgType.REPLY:
        if not 1 <= h.k <= MAX_TOPK or not 1 <= n <= limits.max_batch:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"reply with k={h.k}, N={n} outside 1..{MAX_TOPK}, "
                                f"1..{limits.max_batch}")
        return _REPLY_FIXED.size + n * h.k * 6
    if h.type is MsgType.ERROR:
        if not _ERROR_FIXED.size <= h.body_len <= _ERROR_FIXED.size + limits.max_message:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"error body of {h.body_len} bytes")
        return h.body_len
    if h.body_len > limits.max_token:  # HELLO
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"hello token of {h.body_len} bytes > {limits.max_token}")
    return h.body_len


def parse_header(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Validate a 48-byte header completely; the returned `body_len` is safe to read."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(ErrorCode.TRUNCATED, f"header has {len(data)} bytes, needs {HEADER_SIZE}")
    magic, version, mtype, flags, bits, rid, app, p, k, c, n, ch, hh, w, body_len, crc = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_MAGIC, f"bad magic {magic!r}")
    if version != VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol version {version}, this side speaks {VERSION}")
    if mtype not in _TYPES:
        raise ProtocolError(ErrorCode.BAD_TYPE, f"unknown message type {mtype}")
    if flags and mtype != MsgType.REQUEST:
        raise ProtocolError(ErrorCode.BAD_FLAGS, f"unknown flags {flags:#04x}")
    if body_len > limits.max_body:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"body of {body_len} bytes > {limits.max_body}")
    header = Header(MsgType(mtype), flags, bits, rid, _app_name(app), p, k, c, (n, ch, hh, w), body_len, crc)
    expected = _expected_body_len(header, limits)
    if body_len != expected:
        raise ProtocolError(ErrorCode.BAD_LENGTH, f"{header.type.name} body_len {body_len}, fields imply {expected}")
    return header


def decode_body(h: Header, body: bytes) -> Message:
    """Check the CRC and build the message; `body` must be exactly `h.body_len` bytes."""
    if len(body) != h.body_len:
        raise ProtocolError(ErrorCode.TRUNCATED, f"body has {len(body)} bytes, header says {h.body_len}")
    if zlib.crc32(body) != h.crc:
        raise ProtocolError(ErrorCode.BAD_CRC, "CRC32 mismatch")
    if h.type is MsgType.REQUEST:
        return Request(h.request_id, h.app, h.p, h.c, h.bits, h.k, h.shape, body, h.codec_id)
    if h.type is MsgType.REPLY:
        n, k = h.shape[0], h.k
        unpack_s, compute_s = _REPLY_FIXED.unpack_from(body)
        ids = np.frombuffer(body, "<u2", n * k, _REPLY_FIXED.size).reshape(n, k)
        scores = np.frombuffer(body, "<f4", n * k, _REPLY_FIXED.size + 2 * n * k).reshape(n, k)
        return Reply(h.request_id, h.app, h.p, h.c, h.bits, tuple(tuple(int(i) for i in row) for row in ids),
                     tuple(tuple(float(s) for s in row) for row in scores), unpack_s, compute_s)
    if h.type is MsgType.ERROR:
        (code,) = _ERROR_FIXED.unpack_from(body)
        return Error(h.request_id, code, body[_ERROR_FIXED.size:].decode("utf-8", errors="replace"), h.app)
    return Hello(h.app, bytes(body), h.request_id)


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode one complete frame held in memory (exactly one, no trailing bytes)."""
    header = parse_header(bytes(data[:HEADER_SIZE]), limits)
    if len(data) != HEADER_SIZE + header.body_len:
        raise ProtocolError(ErrorCode.BAD_LENGTH if len(data) > HEADER_SIZE + header.body_len else ErrorCode.TRUNCATED,
                            f"frame has {len(data)} bytes, header says {HEADER_SIZE + header.body_len}")
    return decode_body(header, bytes(data[HEADER_SIZE:]))


async def _read_exactly(reader: asyncio.StreamReader, n: int, part: str) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError(ErrorCode.TRUNCATED, f"connection closed mid-frame: {part} missing "
                            f"{exc.expected - len(exc.partial)} of {exc.expected} bytes") from None


# a refused frame's body is read (and dropped) up to this size, so the peer reads the refusal, not a reset
DRAIN_MAX = 64 << 10


async def read_frame(reader: asyncio.StreamReader, limits: Limits = DEFAULT_LIMITS, *,
                     timeout: float | None = None, idle_timeout: float | None = None,
                     expect: MsgType | None = None, refuse: ErrorCode = ErrorCode.UNEXPECTED) -> Message | None:
    """Read and validate one frame. None on a clean EOF before its first byte.

    `idle_timeout` bounds the wait for the first byte, `timeout` the rest of the frame once it has
    started (a client dripping bytes is cut off); both raise ProtocolError(TIMEOUT). With `expect`,
    a frame of another type raises ProtocolError(`refuse`) once its header is read: a body larger
    than DRAIN_MAX is then never read (the server's pre-auth reads only accept a HELLO).
    """
    try:
        async with asyncio.timeout(idle_timeout):
            first = await reader.read(1)
    except TimeoutError:
        raise ProtocolError(ErrorCode.TIMEOUT, f"idle for {idle_timeout} s") from None
    if not first:
        return None
    try:
        async with asyncio.timeout(timeout):
            header = parse_header(first + await _read_exactly(reader, HEADER_SIZE - 1, "header"), limits)
            if expect is not None and header.type is not expect:
                if header.body_len <= DRAIN_MAX:
                    await _read_exactly(reader, header.body_len, "body")
                raise ProtocolError(refuse, f"expected {expect.name}, got {header.type.name}")
            body = await _read_exactly(reader, header.body_len, "body")
    except TimeoutError:
        raise ProtocolError(ErrorCode.TIMEOUT, f"frame not complete within {timeout} s") from None
    return decode_body(header, body)


# ------------------------------------------------------------------------------------- encoding
def _frame(mtype: MsgType, request_id: int, app: str, body: bytes, *, bits: int = 0, p: int = 0, k: int = 0,
           c: int = 0, shape: Shape = (0, 0, 0, 0), flags: int = 0) -> bytes:
    header = HEADER.pack(MAGIC, VERSION, mtype, flags, bits, request_id, _app_field(app), p, k, c, *shape,
                         len(body), zlib.crc32(body))
    parse_header(header)  # the encoder never emits a frame the decoder would reject
    return header + body


def encode(msg: Message) -> bytes:
    """One frame for a message."""
    if isinstance(msg, Request):
        return _frame(MsgType.REQUEST, msg.request_id, msg.app, msg.body, bits=msg.bits, p=msg.p, k=msg.k,
                      c=msg.c, shape=msg.shape, flags=msg.codec_id)
    if isinstance(msg, Reply):
        n, k = len(msg.classes), len(msg.classes[0]) if msg.classes else 0
        ids = np.asarray(msg.classes, dtype="<u2").reshape(n, k)
        scores = np.asarray(msg.scores, dtype="<f4").reshape(n, k)
        body = _REPLY_FIXED.pack(msg.unpack_s, msg.compute_s) + ids.tobytes() + scores.tobytes()
        return _frame(MsgType.REPLY, msg.request_id, msg.app, body, bits=msg.bits, p=msg.p, k=k, c=msg.c,
                      shape=(n, 0, 0, 0))
    if isinstance(msg, Error):
        text = msg.message.encode("utf-8")[: DEFAULT_LIMITS.max_message].decode("utf-8", errors="ignore")
        return _frame(MsgType.ERROR, msg.request_id, msg.app, _ERROR_FIXED.pack(msg.code) + text.encode("utf-8"))
    return _frame(MsgType.HELLO, msg.request_id, msg.app, msg.token)
