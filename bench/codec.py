"""Bit-packing codec throughput against a plain memory copy of the same packed bytes.

    python -m bench.codec [--repeat 15] [--json]

For each activation shape (1x64x56x56 and 1x512x14x14, VGG-16 at 224 px: conv1 after its pool
and conv5) and each b = 1..8: random codes < 2^b (seeded; packing speed does not depend on the
values), checked to round-trip, then the median over `--repeat` timings of `codec.pack`,
`codec.unpack` and `np.copyto` of the packed bytes into a preallocated buffer (half a page away
from the source modulo 4 KiB, see `page_offset_buffer`). Each timing runs the call enough times to
last at least 5 ms. Prints the codec backend (compress.codec.BACKEND: the C kernels or the numpy
fallback), a table, whether each b meets the target (pack and unpack each at least 25 % of the
copy's throughput, copy_s / t >= 0.25, on every shape), and writes bench/out/codec.png.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

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


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m bench.codec", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15, help="timings per measurement (median reported)")
    ap.add_argument("--out", type=Path, default=OUT / "codec.png", help="the PNG (default: %(default)s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        raise CoInferError("--repeat must be at least 1")
    check_plot_path(args.out)
    rows = [measure(shape, bits, args.repeat) for shape in SHAPES for bits in BITS]
    plot(rows, args.out)
    if args.json:
        print(json.dumps({"backend": BACKEND, "repeat": args.repeat, "target": TARGET, "rows": rows,
                          "plot": str(args.out)}))
    else:
        print(f"codec backend {BACKEND}: codec.pack / codec.unpack vs np.copyto of the packed bytes; median of "
              f"{args.repeat} timings, each >= 5 ms of back-to-back calls; numpy {np.__version__}, one thread")
        print(format_table(rows))
        print("\n".join(target_summary(rows)))
        print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
