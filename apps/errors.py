"""The one exception type for bad input, and the CLI wrapper that turns it into exit code 2.

Every stage raises `CoInferError` with a one-line message naming the problem (unknown app,
malformed YAML, scheme outside the space, missing dataset folder, corrupt database...).
CLIs run their `main` through `run_cli`, which prints that line to stderr and exits 2, and parse
their options with `ArgParser` (a bad option is that one line too, never a usage dump; a float
option refuses nan and inf). `mask_url` hides the password of a database URL in such a line.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import NoReturn


class CoInferError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI entry point; a CoInferError becomes `error: <message>` on stderr and exit 2."""
    try:
        code = main(argv)
    except CoInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def mask_url(url: str) -> str:
    """The URL with its password hidden: `postgresql://u:***@host/db`, and `password=***` in a query."""
    scheme, sep, rest = str(url).partition("://")
    if sep and "@" in rest:
        cred, _, host = rest.rpartition("@")
        if ":" in cred:
            rest = f"{cred.split(':', 1)[0]}:***@{host}"
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", f"{scheme}{sep}{rest}")


def finite_float(text: str) -> float:
    """argparse type: a float that is neither nan nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


class ArgParser(argparse.ArgumentParser):
    """argparse with the project's bad-input convention: one line on stderr, exit 2; `type=float`
    options refuse nan and inf (`finite_float`)."""

    def add_argument(self, *args, **kwargs):  # type: ignore[override]
        if kwargs.get("type") is float:
            kwargs["type"] = finite_float
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        sys.exit(2)
