"""The project's exception types and the exit status each one means (README, "Exit status").

| status | meaning | raised as |
|---|---|---|
| 0 | an answer | (return 0) |
| 1 | a well-formed question that nothing meets (no scheme within the bound) | (return 1) |
| 2 | bad input: an unknown app, bad YAML, a scheme outside the space, a corrupt file; a full disk | `CoInferError` |
| 3 | a server or database that cannot be reached, a connection lost, a wait past its deadline | `Unreachable` |
| 130, 143 | interrupted: Ctrl-C, SIGTERM (`cli.run` raises `KeyboardInterrupt` for both) | (a signal) |

Every stage raises one of these with a one-line message naming the problem; `cli.run.run_cli`
prints that line to stderr and exits with the status. `mask_url` hides the password of a database
URL in such a line; `mask_secrets`, applied to every line `run_cli` and the parser print, hides any other.
A full disk anywhere (`disk_full`: ENOSPC or EDQUOT along the exception chain, or a database's "disk is
full") is one line and exit 2 too (`cli.run` says so for any that reaches it).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator


class CoInferError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""

    exit_status = 2


class Unreachable(CoInferError):
    """A server, database or peer that cannot be reached, a connection lost, or a wait for one (a connection,
    a lock another process holds) past its deadline: exit status 3.

    A subclass of `CoInferError`, so code that reports bad input reports this too, one line."""

    exit_status = 3


def mask_url(url: str) -> str:
    """The URL with its password hidden: `postgresql://u:***@host/db`, and `password=***` in a query."""
    scheme, sep, rest = str(url).partition("://")
    if sep and "@" in rest:
        cred, _, host = rest.rpartition("@")
        if ":" in cred:
            rest = f"{cred.split(':', 1)[0]}:***@{host}"
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", f"{scheme}{sep}{rest}")


_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@'\"]*@")


def mask_secrets(text: str) -> str:
    """Any text with the password of every URL in it hidden (`mask_url`'s forms, wherever they appear): what a
    one-line error quotes of a value the user gave to another flag (a --device, a --sampler) stays safe."""
    return re.sub(r"(?i)(password=)[^&\s'\"]*", r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def chain(exc: BaseException | None, depth: int = 10) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or during (`__cause__`, else `__context__`), at most
    `depth` of them: where a driver's or Optuna's error sits under the one a caller sees."""
    while exc is not None and depth > 0:
        yield exc
        exc, depth = exc.__cause__ or exc.__context__, depth - 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): the reason a
    one-line error quotes from a library's multi-line one."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# a database's words for a full disk (SQLite: "database or disk is full"; PostgreSQL: "could not extend file ...:
# No space left on device", SQLSTATE 53100)
DISK_FULL_WORDS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from or during, says the disk is full (ENOSPC, EDQUOT, or a
    database's words for it): not bad input, and nothing a retry mends."""
    for e in chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(w in str(getattr(e, "orig", None) or e).lower() for w in DISK_FULL_WORDS):
            return True
    return False


def disk_full_error(exc: BaseException, what: str = "") -> CoInferError:
    """The one line for a full disk: what was being written (an OSError's file when `what` is empty)."""
    where = what or next((f"{e.filename}" for e in chain(exc) if isinstance(e, OSError) and e.filename), "")
    return CoInferError(f"no space left on the device{f' writing {where}' if where else ''}: free some space "
                        "and run the command again")
