"""Where benchmark plots go and how they are written (PNG, git-ignored bench/out/), and the few helpers
that keep every figure readable: plain numbers on log axes, titles that fit, a note in an empty panel."""

from __future__ import annotations

import textwrap
from pathlib import Path

from cli.files import check_output, write_atomic
from cli.paths import data_file

OUT = data_file("bench/out")  # the benchmarks' PNGs (git-ignored in a checkout; cli.paths)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write as PNG (creating the folder; whole or not at all: `cli.files.write_atomic`) and close a
    matplotlib figure. The caller checked `path` with `cli.files.check_output` before its work."""
    import matplotlib.pyplot as plt
    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"), "figure")
    finally:
        plt.close(fig)
    return path


def check_plot_path(path: str | Path, inputs=()) -> Path:
    """A benchmark's --out, checked before its work (`cli.files.check_output`: never one of `inputs`, the
    database files behind its --storage); the default folder OUT is made first, other folders must exist."""
    if Path(path).parent == OUT:
        OUT.mkdir(parents=True, exist_ok=True)
    return check_output(path, "plot", inputs)


def plain_log_axis(axis, ticks=None) -> None:
    """Label a log axis (`ax.xaxis` / `ax.yaxis`) with plain numbers (5, 10, 20, 50, 100) instead of 10^1 and
    2x10^0 minor labels that overlap when the data spans less than a decade; `ticks`: exactly these (e.g. the
    client counts 1, 2, 4, 8)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter
    axis.set_major_locator(FixedLocator(list(ticks)) if ticks is not None
                           else LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def fitted_title(fig, text: str, fontsize: float = 10) -> None:
    """`fig.suptitle(text)` wrapped to the figure's width, so a long title is never clipped at the edges."""
    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))  # an average glyph is ~0.55 em wide
    fig.suptitle("\n".join(textwrap.wrap(text, chars)), fontsize=fontsize)


def no_data(ax, text: str) -> None:
    """Say in an empty panel why it is empty (an empty bar chart reads as zero), with no ticks to misread."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])
