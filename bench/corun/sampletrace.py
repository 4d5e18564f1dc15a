"""Write a small synthetic trace in the Azure Functions 2019 format (the shipped bench/corun/traces/sample.csv).

    python -m bench.corun.sampletrace [--seed 0] [--out bench/corun/traces/sample.csv]

Twelve functions over one day (1,440 minutes), drawn from `--seed` (numpy's PCG64): per minute a
Poisson count around each function's shape.
- 4 diurnal http functions: mean b * (1 + a sin(2 pi (t - phase) / 1440)), b 2..40 a minute, a 0.5..0.9;
- 3 bursty queue/event functions: a background of 0.2 a minute, and bursts (starting with chance
  1 in 60 a minute, lasting 1..8 minutes, geometric) at 30..200 a minute;
- 2 timer functions: a fixed count every 1 or 5 minutes (no noise);
- 2 rare http functions: a handful of invocations a day;
- 1 function never invoked (a row `bench.corun.trace` must skip).
Hashes are 64 random hex digits, like the public trace's. The real trace: README "Co-running".
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from bench.corun.trace import HEADER, MINUTES_PER_DAY
from cli.args import ArgParser
from cli.files import check_output, write_atomic
from cli.run import run_cli

SAMPLE = Path(__file__).resolve().parent / "traces" / "sample.csv"


def sample_rows(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(trigger, counts per minute) of each function (see the module doc)."""
    rng = np.random.default_rng(seed)
    t = np.arange(MINUTES_PER_DAY)
    rows: list[tuple[str, np.ndarray]] = []
    for _ in range(4):
        base, depth, phase = rng.uniform(2, 40), rng.uniform(0.5, 0.9), rng.uniform(0, MINUTES_PER_DAY)
        rows.append(("http", rng.poisson(base * (1 + depth * np.sin(2 * np.pi * (t - phase) / MINUTES_PER_DAY)))))
    for trigger in ("queue", "event", "queue"):
        mean = np.full(MINUTES_PER_DAY, 0.2)
        minute = 0
        while minute < MINUTES_PER_DAY:
            if rng.random() < 1 / 60:
                length = min(int(rng.geometric(1 / 3)), 8)
                mean[minute:minute + length] = rng.uniform(30, 200)
                minute += length
            else:
                minute += 1
        rows.append((trigger, rng.poisson(mean)))
    for every, count in ((1, int(rng.integers(1, 10))), (5, int(rng.integers(1, 4)))):
        rows.append(("timer", np.where(t % every == 0, count, 0)))
    for _ in range(2):
        rare = np.zeros(MINUTES_PER_DAY, dtype=np.int64)
        rare[rng.choice(MINUTES_PER_DAY, int(rng.integers(2, 8)), replace=False)] = 1
        rows.append(("http", rare))
    rows.append(("http", np.zeros(MINUTES_PER_DAY, dtype=np.int64)))
    return rows


def sample_csv(seed: int = 0) -> str:
    """The trace file's text."""
    rng = np.random.default_rng([seed, 1])  # the hashes: their own stream, so shapes do not move with them
    out = io.StringIO()
    out.write(",".join((*HEADER, *map(str, range(1, MINUTES_PER_DAY + 1)))) + "\n")
    for trigger, counts in sample_rows(seed):
        owner, app, function = (rng.bytes(32).hex() for _ in range(3))
        out.write(",".join((owner, app, function, trigger, *map(str, counts.astype(np.int64)))) + "\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m bench.corun.sampletrace", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=SAMPLE, help="the CSV to write (default: the shipped sample)")
    args = ap.parse_args(argv)
    check_output(args.out, "trace")
    write_atomic(args.out, sample_csv(args.seed), "trace")
    print(f"{args.out}: 12 functions x {MINUTES_PER_DAY} minutes (seed {args.seed})")
    return 0


if __name__ == "__main__":
    run_cli(main)
