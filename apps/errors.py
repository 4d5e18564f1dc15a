"""The one exception type for bad input, and the CLI wrapper that turns it into exit code 2.

Every stage raises `CoInferError` with a one-line message naming the problem (unknown app,
malformed YAML, scheme outside the space, missing dataset folder, corrupt database...).
CLIs run their `main` through `run_cli`, which prints that line to stderr and exits 2.
"""

from __future__ import annotations

import argparse
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


class ArgParser(argparse.ArgumentParser):
    """argparse with the project's bad-input convention: one line on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
