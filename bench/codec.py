"""Codec throughput against a plain memory copy, and the bytes each codec sends, on real activations.

    python -m bench.codec [--repeat 15] [--apps vgg16_digits,resnet18_digits] [--images 100] [--json]

For each activation shape (1x64x56x56 and 1x512x14x14, VGG-16 at 224 px: conv1 after its pool
and conv5) and each b = 1..8: random codes < 2^b (seeded; packing speed does not depend on the
values), checked to round-trip, then the median over `--repeat` timings of `codec.pack`,
`codec.unpack` and `np.copyto` of the packed bytes into a preallocated buffer (half a page away
from the source modulo 4 KiB, see `page_offset_buffer`). Each timing runs the call enough times to
last at least 5 ms. Prints the codec backend (compress.codec.BACKEND: the C kernels or the numpy
fallback), a table, whether each b meets the target (pack and unpack each at least 25 % of the
copy's throughput, copy_s / t >= 0.25, on every shape), and writes bench/out/codec.png.

Then every registered codec (`codec.names()`) at every b on each app's real activations
(`database.codecprof.cut_activations`: the base model on its first `--images` test images, every
partition point, quantised at b; one frame per image, as the runtime sends them): the bytes of all
bodies against bitpack's, and the median over `--repeat` passes of encoding (`encode_codes`) and
decoding (`decode_codes`) every frame, as MB/s of codes (one byte a code) and as a share of the
time `np.copyto` takes to copy the frames' bit-packed bytes (copy_s / t; these frames hold 4 to
8192 codes, so per-call costs weigh more than on the shapes above).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import codec as codecs
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from compress.codec import BACKEND, pack, unpack
from compress.scheme import BITS
from reports.figure import OUT, check_plot_path, save_figure

SHAPES = [(1, 64, 56, 56), (1, 512, 14, 14)]
TARGET = 0.25  # codec throughput / copy throughput = copy_s / codec_s, for pack and unpack


def median_time(fn: Callable[[], object], repeat: int, min_time: float = 0.005) -> float:
    """Median seconds per call over `repeat` timings, each running fn enough times to last min_time."""
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - t0 >= min_time:
            break
        number *= 2
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def page_offset_buffer(src: np.ndarray, offset: int) -> np.ndarray:
    """An empty buffer like src whose address is `offset` bytes from src's modulo 4 KiB.

    A copy whose destination lies a few bytes past the source modulo 4 KiB suffers 4K-aliasing
    stalls (measured here: 200 KB in 69 us instead of 6 us); half a page apart it never does.
    """
    raw = np.empty(src.size + 4096, dtype=np.uint8)
    start = (src.ctypes.data + offset - raw.ctypes.data) % 4096
    return raw[start:start + src.size]


def measure(shape: tuple[int, ...], bits: int, repeat: int) -> dict:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=shape, dtype=np.uint8)
    n = codes.size
    packed = pack(codes, bits)
    if not np.array_equal(unpack(packed, bits, n), codes.reshape(-1)):
        raise CoInferError(f"codec does not round-trip at {bits} bits")
    src = np.frombuffer(packed, dtype=np.uint8)
    dst = page_offset_buffer(src, 2048)
    row = {"shape": "x".join(map(str, shape)), "bits": bits, "codes": n, "packed_bytes": len(packed),
           "pack_s": median_time(lambda: pack(codes, bits), repeat),
           "unpack_s": median_time(lambda: unpack(packed, bits, n), repeat),
           "copy_s": median_time(lambda: np.copyto(dst, src), repeat)}
    row["pack_vs_copy"] = row["pack_s"] / row["copy_s"]
    row["unpack_vs_copy"] = row["unpack_s"] / row["copy_s"]
    row["pack_meets_target"] = row["copy_s"] / row["pack_s"] >= TARGET
    row["unpack_meets_target"] = row["copy_s"] / row["unpack_s"] >= TARGET
    return row


def yes_no(flag: bool) -> str:
    return "yes" if flag else "NO"


def target_summary(rows: list[dict]) -> list[str]:
    """One line per b: does pack / unpack reach TARGET of the copy throughput on every shape?"""
    lines = [f"target: pack and unpack each >= {TARGET:.0%} of np.copyto throughput (copy_s / t >= {TARGET}) "
             f"on every shape"]
    for bits in sorted({r["bits"] for r in rows}):
        sel = [r for r in rows if r["bits"] == bits]
        p, u = all(r["pack_meets_target"] for r in sel), all(r["unpack_meets_target"] for r in sel)
        worst_p = min(r["copy_s"] / r["pack_s"] for r in sel)
        worst_u = min(r["copy_s"] / r["unpack_s"] for r in sel)
        lines.append(f"  b={bits}: pack {yes_no(p):<3} (worst {worst_p:.0%} of copy)  unpack {yes_no(u):<3} "
                     f"(worst {worst_u:.0%} of copy)  -> {'meets' if p and u else 'MISSES'} the target")
    return lines


def format_table(rows: list[dict]) -> str:
    head = (f"{'shape':<13}{'b':>2}{'bytes':>9}{'pack us':>10}{'unpack us':>11}{'copy us':>9}"
            f"{'pack/copy':>11}{'unpack/copy':>13}{'pack Mcode/s':>14}{'unpack Mcode/s':>16}"
            f"{'pack>=25%':>11}{'unpack>=25%':>13}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['shape']:<13}{r['bits']:>2}{r['packed_bytes']:>9}{r['pack_s'] * 1e6:>10.1f}"
                     f"{r['unpack_s'] * 1e6:>11.1f}{r['copy_s'] * 1e6:>9.2f}{r['pack_vs_copy']:>11.2f}"
                     f"{r['unpack_vs_copy']:>13.2f}{r['codes'] / r['pack_s'] / 1e6:>14.1f}"
                     f"{r['codes'] / r['unpack_s'] / 1e6:>16.1f}{yes_no(r['pack_meets_target']):>11}"
                     f"{yes_no(r['unpack_meets_target']):>13}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SHAPES), figsize=(5 * len(SHAPES), 4), sharey=True)
    for ax, shape in zip(np.atleast_1d(axes), SHAPES):
        name = "x".join(map(str, shape))
        sel = [r for r in rows if r["shape"] == name]
        bits = [r["bits"] for r in sel]
        for key, label in (("pack_s", "pack"), ("unpack_s", "unpack"), ("copy_s", "np.copyto of packed bytes")):
            ax.plot(bits, [r["codes"] / r[key] / 1e6 for r in sel], marker="o", label=label)
        ax.set(title=f"codes {name}", xlabel="bits per code b", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("throughput (million codes / s, median)")
    np.atleast_1d(axes)[0].legend()
    save_figure(fig, path)


def frames_of(app_name: str, images: int) -> dict[int, list[np.ndarray]]:
    """Per b, the quantised codes (1, C, H, W) of every image at every partition point of the app."""
    from apps import load_app
    from compress.quant import quantize
    from database.codecprof import cut_activations
    acts = cut_activations(load_app(app_name), images)
    return {bits: [np.ascontiguousarray(codes[i:i + 1]) for a in acts
                   for codes in [quantize(a, bits)[0].numpy()] for i in range(len(codes))] for bits in BITS}


def pass_time(fn: Callable[..., object], repeat: int, *args: object) -> float:
    """Median seconds of `repeat` calls of fn(*args) (one pass over every frame)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_all(dsts: list[np.ndarray], srcs: list[np.ndarray]) -> None:
    for dst, src in zip(dsts, srcs):
        np.copyto(dst, src)


def encode_all(codec: codecs.Codec, codes: list[np.ndarray], bits: int) -> list[bytes]:
    return [codec.encode_codes(c, bits) for c in codes]


def decode_all(codec: codecs.Codec, payloads: list[bytes], bits: int, n: list[int]) -> list[np.ndarray]:
    return [codec.decode_codes(p, bits, k) for p, k in zip(payloads, n)]


def measure_real(app_name: str, frames: dict[int, list[np.ndarray]], repeat: int) -> list[dict]:
    """One row per (codec, b): bytes of every body against bitpack's, encode / decode time of every frame."""
    rows = []
    for bits, codes in frames.items():
        n = [c.size for c in codes]
        params = sum(8 * c.shape[1] for c in codes)
        packed = [np.frombuffer(pack(c, bits), dtype=np.uint8) for c in codes]
        dsts = [page_offset_buffer(src, 2048) for src in packed]
        copy_s = pass_time(copy_all, repeat, dsts, packed)
        bitpack_bytes = params + sum(len(p) for p in packed)
        for codec in codecs.registry.codecs():
            payloads = encode_all(codec, codes, bits)
            for c, decoded in zip(codes, decode_all(codec, payloads, bits, n)):
                if not np.array_equal(decoded, c.reshape(-1)):
                    raise CoInferError(f"codec {codec.name} does not round-trip at {bits} bits")
            encode_s = pass_time(encode_all, repeat, codec, codes, bits)
            decode_s = pass_time(decode_all, repeat, codec, payloads, bits, n)
            body = params + sum(len(p) for p in payloads)
            sizes = np.array([8 * c.shape[1] + len(p) for c, p in zip(codes, payloads)])
            rows.append({"app": app_name, "codec": codec.name, "bits": bits, "frames": len(codes), "codes": sum(n),
                         "bytes": body, "bitpack_bytes": bitpack_bytes, "bytes_vs_bitpack": body / bitpack_bytes,
                         "p95_frame_bytes": float(np.percentile(sizes, 95)),
                         "encode_s": encode_s, "decode_s": decode_s, "copy_s": copy_s,
                         "encode_MBps": sum(n) / encode_s / 1e6, "decode_MBps": sum(n) / decode_s / 1e6,
                         "encode_vs_copy": copy_s / encode_s, "decode_vs_copy": copy_s / decode_s})
    return rows


def format_real(rows: list[dict]) -> str:
    head = (f"{'app':<16}{'codec':<9}{'b':>2}{'frames':>7}{'bytes':>10}{'vs bitpack':>11}{'enc MB/s':>10}"
            f"{'dec MB/s':>10}{'enc/copy':>10}{'dec/copy':>10}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['app']:<16}{r['codec']:<9}{r['bits']:>2}{r['frames']:>7}{r['bytes']:>10}"
                     f"{r['bytes_vs_bitpack']:>11.3f}{r['encode_MBps']:>10.1f}{r['decode_MBps']:>10.1f}"
                     f"{r['encode_vs_copy']:>10.1%}{r['decode_vs_copy']:>10.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m bench.codec", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15, help="timings per measurement (median reported)")
    ap.add_argument("--out", type=Path, default=OUT / "codec.png", help="the PNG (default: %(default)s)")
    ap.add_argument("--apps", default="vgg16_digits,resnet18_digits",
                    help="apps whose real activations every codec encodes, comma-separated ('' for none)")
    ap.add_argument("--images", type=int, default=100, help="test images per app (default %(default)s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.images < 1:
        raise CoInferError("--repeat and --images must be at least 1")
    check_plot_path(args.out)
    rows = [measure(shape, bits, args.repeat) for shape in SHAPES for bits in BITS]
    plot(rows, args.out)
    real = [r for name in filter(None, args.apps.split(","))
            for r in measure_real(name, frames_of(name, args.images), args.repeat)]
    if args.json:
        print(json.dumps({"backend": BACKEND, "repeat": args.repeat, "target": TARGET, "rows": rows,
                          "plot": str(args.out), "images": args.images, "real": real}))
    else:
        print(f"codec backend {BACKEND}: codec.pack / codec.unpack vs np.copyto of the packed bytes; median of "
              f"{args.repeat} timings, each >= 5 ms of back-to-back calls; numpy {np.__version__}, one thread")
        print(format_table(rows))
        print("\n".join(target_summary(rows)))
        print(f"plot: {args.out}")
        if real:
            print(f"\nevery codec on real activations ({args.images} test images per app, every partition point, one "
                  f"frame per image; bytes: bodies with their 8 bytes a channel; MB/s of codes; x/copy: np.copyto of "
                  f"the bit-packed bytes over the codec's time)")
            print(format_real(real))
    return 0


if __name__ == "__main__":
    run_cli(main)
