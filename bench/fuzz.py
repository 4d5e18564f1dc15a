"""Fuzz the frame decoders: ≥ 100,000 hostile inputs, never a crash, a hang or an unbounded allocation.

    python -m bench.fuzz [--inputs 100000] [--seed 0] [--json]

Inputs (seeded, reproducible): valid frames of every message type (requests at b = 1..8 in every
registered codec, a request of an unknown codec id, a reply, an error, a hello) mutated 1-4 times
(bit flips, byte sets, a 32-bit header field set to an edge value or a random one, the flags byte
(the codec id) set to a known, unknown or random id, truncation, insertion, deletion; half of them
with the CRC fixed up so the body decoders are reached), plus pure random bytes with and without
a valid magic. Each input goes to `runtime.protocol.decode` (the buffer decoder, then
`decode_activation` for a request, by its codec) and to
`read_frame` over an asyncio StreamReader fed the bytes then EOF (the server's decoder).
Outcomes: a message, or a `ProtocolError` with its code; anything else is a crash. A call longer
than `--hang-ms` counts as a hang. Every 50th input runs under tracemalloc, and its peak
allocation is held against 64 x its size + 256 KiB. Prints the counts per outcome and the
slowest call; exit status 1 on any crash, hang or over-allocation.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import struct
import time
import tracemalloc
import zlib

import numpy as np

import codec
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from compress.scheme import BITS
from runtime.protocol import (
    HEADER_SIZE,
    MAGIC,
    Error,
    ErrorCode,
    Hello,
    Limits,
    ProtocolError,
    Reply,
    Request,
    decode,
    decode_activation,
    encode,
    encode_activation,
    read_frame,
)

LIMITS = Limits(max_body=1 << 20, max_elements=1 << 20)
EDGE_VALUES = [0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
UNKNOWN_CODEC_ID = 0xC7  # no codec has it: the frame is valid, its request refused with UNKNOWN_CODEC
FLAGS_OFFSET = 6  # the flags byte: a REQUEST's codec id


def corpus() -> list[bytes]:
    import torch

    from compress.quant import quantize  # torch: only when fuzzing, not for --help
    frames = []
    for b in BITS:
        shape = (1 + b % 2, 1 + b, 3, 2 + b)
        a = torch.from_numpy(np.random.default_rng(b).standard_normal(shape).astype(np.float32))
        codes, lo, scale = quantize(a, b)
        frames.append(encode(Request(b, "vgg16_digits", 2, shape[1], b, 3, shape, encode_activation(codes, lo, scale,
                                                                                                     b))))
        sparse = torch.relu(a - 1.0)  # mostly zeros: the data-dependent codecs compress it
        for c in codec.registry.codecs():
            if c.wire_id:
                body = encode_activation(*quantize(sparse, b), b, c)
                frames.append(encode(Request(b, "vgg16_digits", 2, shape[1], b, 3, shape, body, c.wire_id)))
    frames.append(encode(Request(9, "vgg16_digits", 2, 2, 4, 3, (1, 2, 3, 3), bytes(16 + 9), UNKNOWN_CODEC_ID)))
    frames.append(encode(Reply(7, "vgg16_digits", 2, 3, 4, ((1, 2, 3),), ((0.5, 0.3, 0.2),), 0.001, 0.002)))
    frames.append(encode(Error(5, ErrorCode.BAD_CRC, "crc", "vgg16_digits")))
    frames.append(encode(Hello("vgg16_digits", b"token", 2)))
    return frames


def mutate(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("flip", "set", "header", "codec", "truncate", "insert", "delete"))
        pos = rng.randrange(4, max(5, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
        elif op == "set" and pos < len(data):
            data[pos] = rng.randrange(256)
        elif op == "header" and len(data) >= HEADER_SIZE:
            at = rng.randrange(4, HEADER_SIZE - 3)
            value = rng.choice(EDGE_VALUES) if rng.random() < 0.5 else rng.getrandbits(32)
            data[at:at + 4] = struct.pack("<I", value)
        elif op == "codec" and len(data) > FLAGS_OFFSET:
            data[FLAGS_OFFSET] = rng.choice([0, 1, 2, UNKNOWN_CODEC_ID, 0xFF, rng.randrange(256)])
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == "delete":
            del data[pos:pos + rng.randint(1, 8)]
    if len(data) >= HEADER_SIZE and rng.random() < 0.5:  # past the CRC, into the body decoders
        struct.pack_into("<I", data, HEADER_SIZE - 4, zlib.crc32(bytes(data[HEADER_SIZE:])))
    return bytes(data)


def inputs(n: int, seed: int):
    rng = random.Random(seed)
    frames = corpus()
    for i in range(n):
        kind = i % 10
        if kind < 8:
            yield mutate(rng.choice(frames), rng)
        elif kind == 8:
            yield rng.randbytes(rng.randint(0, 300))
        else:
            yield MAGIC + rng.randbytes(rng.randint(0, 300))


def buffer_decode(data: bytes) -> str:
    msg = decode(data, LIMITS)
    if isinstance(msg, Request):
        decode_activation(msg.body, msg.shape, msg.bits, msg.codec_id)
    return type(msg).__name__


async def stream_decode(data: bytes) -> str:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    msg = await read_frame(reader, LIMITS, timeout=1.0, idle_timeout=1.0)
    return "eof" if msg is None else type(msg).__name__


def outcome(fn, data: bytes) -> str:
    try:
        return "accepted " + fn(data)
    except ProtocolError as exc:
        return f"rejected {ErrorCode(exc.code).name}"


def run(n: int, seed: int, hang_s: float) -> dict:
    counts: collections.Counter = collections.Counter()
    crashes, hangs, overalloc = [], [], []
    slowest = (0.0, "")
    with asyncio.Runner() as runner:
        for i, data in enumerate(inputs(n, seed)):
            traced = i % 50 == 0
            if traced:
                tracemalloc.start()
            for name, fn in (("buffer", buffer_decode), ("stream", lambda d: runner.run(stream_decode(d)))):
                t0 = time.perf_counter()
                try:
                    counts[f"{name}: {outcome(fn, data)}"] += 1
                except Exception as exc:  # a crash: anything but a message or a ProtocolError
                    crashes.append({"input": i, "decoder": name, "error": repr(exc), "hex": data[:64].hex()})
                seconds = time.perf_counter() - t0
                if seconds > hang_s:
                    hangs.append({"input": i, "decoder": name, "seconds": seconds})
                slowest = max(slowest, (seconds, f"input {i} ({name}, {len(data)} bytes)"))
            if traced:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                if peak > 64 * len(data) + (256 << 10):
                    overalloc.append({"input": i, "bytes": len(data), "peak": peak})
    return {"inputs": n, "seed": seed, "counts": dict(sorted(counts.items())), "crashes": crashes, "hangs": hangs,
            "over_allocations": overalloc, "slowest_s": slowest[0], "slowest": slowest[1]}


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-ms", type=float, default=1000.0, help="a call longer than this is a hang")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.inputs < 1 or args.hang_ms <= 0:
        raise CoInferError("--inputs must be >= 1 and --hang-ms > 0")
    t0 = time.perf_counter()
    result = run(args.inputs, args.seed, args.hang_ms / 1e3)
    result["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(result))
    else:
        print(f"How: {args.inputs:,} inputs (seed {args.seed}): 80 % mutated valid frames, 20 % random bytes; "
              "the buffer decoder and the stream decoder (read_frame) on each, tracemalloc on every 50th; "
              f"{result['seconds']:.0f} s")
        for key, n in result["counts"].items():
            print(f"  {n:>8,}  {key}")
        print(f"crashes {len(result['crashes'])}, hangs (> {args.hang_ms:g} ms) {len(result['hangs'])}, "
              f"over-allocations {len(result['over_allocations'])}; slowest call "
              f"{result['slowest_s'] * 1e3:.2f} ms ({result['slowest']})")
        for c in result["crashes"][:5]:
            print(f"  crash: {c}")
    return 1 if result["crashes"] or result["hangs"] or result["over_allocations"] else 0


if __name__ == "__main__":
    run_cli(main)
