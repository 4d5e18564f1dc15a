"""Progress bars on a terminal only, with the ETA wherever the number of steps is known.

    for item in progress(items, desc="queries"):          # total from len(items): count, elapsed and ETA
        ...
    bar = progress(total=n, desc="profile", unit="row")   # or updated by hand
    bar.update()
    bar.close()

A bar is drawn (tqdm, on stderr) only when stderr is a terminal: a log, a pipe or a CI job gets
nothing, not thousands of carriage-return lines. Otherwise `progress` returns `Silent`, a
passthrough with the same methods (`update`, `set_postfix_str`, `refresh`, `close`, `n`), so the
caller never checks. `enabled=False` (a `--no-progress` flag, a worker process) hides it anyway;
`force=True` (an explicit `--progress`) draws it whatever the stream. With a known `total` (given,
or the iterable's length) tqdm shows `done/total [elapsed<ETA, rate]`; without one it shows the
count, elapsed time and rate.

Every bar of the project goes through here; tqdm is imported only when a bar is drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


class Silent:
    """What `progress` returns when no bar is drawn: iterates its iterable and counts, prints nothing."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None) -> None:
        self.iterable, self.total, self.n = iterable, total, 0

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.n += 1

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def on_terminal(file: TextIO | None = None) -> bool:
    """Whether `file` (default stderr) is a terminal; False for a closed or detached stream."""
    file = sys.stderr if file is None else file
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
             unit: str = "it", enabled: bool = True, force: bool = False, file: TextIO | None = None,
             **options: Any):
    """A tqdm bar over `iterable` (or updated by hand) when `enabled` and `file` (default stderr) is a
    terminal or `force`; else a `Silent` passthrough. `total` defaults to the iterable's length, so the
    bar has an ETA whenever the number of steps is known. `options` go to tqdm (`leave`, `initial`, ...)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    file = sys.stderr if file is None else file
    if not enabled or not (force or on_terminal(file)):
        silent = Silent(iterable, total)
        silent.n = options.get("initial", 0)
        return silent
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True, **options)
