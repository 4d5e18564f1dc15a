"""The project's exception types and the exit status each one means (README, "Exit status").

| status | meaning | raised as |
|---|---|---|
| 0 | an answer | (return 0) |
| 1 | a well-formed question that nothing meets (no scheme within the bound) | (return 1) |
| 2 | bad input: an unknown app, malformed YAML, a scheme outside the space, a corrupt file | `CoInferError` |
| 3 | a server or database that cannot be reached, or a connection lost on the way | `Unreachable` |
| 130, 143 | interrupted: Ctrl-C, SIGTERM (`cli.run` raises `KeyboardInterrupt` for both) | (a signal) |

Every stage raises one of these with a one-line message naming the problem; `cli.run.run_cli`
prints that line to stderr and exits with the status. `mask_url` hides the password of a database
URL in such a line; `mask_secrets`, applied to every line `run_cli` and the parser print, hides any other.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


class CoInferError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""

    exit_status = 2


class Unreachable(CoInferError):
    """A server, database or peer that cannot be reached, or a connection lost: exit status 3.

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
