"""Reading an input file the user named: one line on failure (`CoInferError`), never a traceback, and
never more than a stated size (a FIFO, a device or a huge file is refused before it is read)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from cli.errors import CoInferError

MAX_JSON_BYTES = 64 * 2**20  # a latency profile of every point of a large model is well under 1 MB


def read_text(path: Path | str, what: str, max_bytes: int) -> str:
    """The text of the regular file `path` (`what` names it in errors), at most `max_bytes` bytes."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise CoInferError(f"{what} {path} is not a regular file")
        if info.st_size > max_bytes:
            raise CoInferError(f"{what} {path} is {info.st_size} bytes, over the limit of {max_bytes}")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise CoInferError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise CoInferError(f"{what} {path} is over the limit of {max_bytes} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CoInferError(f"{what} {path} is not UTF-8 text") from None


def read_json(path: Path | str, what: str, max_bytes: int = MAX_JSON_BYTES) -> object:
    """The JSON value in the regular file `path`, read as `read_text` does."""
    text = read_text(path, what, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CoInferError(f"{what} {path} is not valid JSON (line {exc.lineno})") from None
    except RecursionError:
        raise CoInferError(f"{what} {path} nests too deeply") from None
