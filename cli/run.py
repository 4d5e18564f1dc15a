"""Run a CLI entry point under the project's exit-status convention (`cli.errors`)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from cli.errors import CoInferError, disk_full, disk_full_error, mask_secrets


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds as Ctrl-C does (a search fails its
    running trial instead of leaving it RUNNING)."""


def _terminate(signum: int, frame) -> None:
    raise Terminated


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main(argv)`; a `CoInferError` becomes `error: <message>` on stderr, one line (any URL's password
    masked, a line break in it shown as \\n), and its exit status (2 bad input, 3 unreachable), Ctrl-C exit 130,
    SIGTERM (handled as Ctrl-C) exit 143; a full disk wherever it struck (`cli.errors.disk_full`) one line,
    exit 2; otherwise exit with what `main` returned."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = main(argv)
    except CoInferError as exc:
        line = mask_secrets(str(exc)).replace("\r", "\\r").replace("\n", "\\n")  # a quoted value's line breaks
        print(f"error: {line}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except Exception as exc:
        if not disk_full(exc):
            raise
        print(f"error: {mask_secrets(str(disk_full_error(exc)))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        print("terminated" if isinstance(exc, Terminated) else "interrupted", file=sys.stderr)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    sys.exit(code or 0)
