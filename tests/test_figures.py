"""reports.figure: where the benchmarks' PNGs go, and the helpers that keep a figure readable."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import pytest

from apps import REPO_ROOT
from reports.figure import OUT, fitted_title, no_data, plain_log_axis

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def test_pngs_go_to_bench_out() -> None:
    assert OUT == REPO_ROOT / "bench" / "out"


@pytest.mark.parametrize("module, png", [("bench.runtime", "runtime.png"), ("bench.adaptivity", "adaptivity.png"),
                                         ("bench.codec", "codec.png"), ("bench.zoo", "zoo.png"),
                                         ("bench.scale", "scale.png"), ("bench.studystorage", "studystorage.png")])
def test_each_benchmark_help_names_the_png_it_writes(module: str, png: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60)
    text = "".join(out.stdout.split())  # argparse wraps a long default path anywhere
    assert out.returncode == 0 and f"bench/out/{png}" in text


def test_a_log_axis_within_one_decade_reads_as_plain_numbers() -> None:
    fig, ax = plt.subplots()
    ax.plot([12, 85], [0, 1])
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels == ["10", "20", "50"]  # the view ends below 100
    assert all(not t.get_text() for t in ax.xaxis.get_minorticklabels())
    plt.close(fig)


def test_fixed_ticks_on_a_log_axis() -> None:
    fig, ax = plt.subplots()
    ax.plot([1, 8], [1, 2])
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis, [1, 2, 4, 8])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]
    plt.close(fig)


def test_a_long_title_wraps_to_the_figure_width() -> None:
    fig = plt.figure(figsize=(4, 3))
    fitted_title(fig, "word " * 40)
    lines = fig._suptitle.get_text().split("\n")
    assert len(lines) > 1 and max(map(len, lines)) <= 4 * 72 / (0.55 * 10)
    plt.close(fig)


def test_an_empty_panel_says_why() -> None:
    fig, ax = plt.subplots()
    no_data(ax, "no predictor data")
    assert [t.get_text() for t in ax.texts] == ["no predictor data"] and list(ax.get_xticks()) == []
    plt.close(fig)
