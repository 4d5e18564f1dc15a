"""Run a CLI entry point under the project's exit-status convention (`cli.errors`)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from cli.errors import CoInferError


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main(argv)`; a `CoInferError` becomes `error: <message>` on stderr and its exit status
    (2 bad input, 3 unreachable), Ctrl-C exit 130; otherwise exit with what `main` returned."""
    try:
        code = main(argv)
    except CoInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
