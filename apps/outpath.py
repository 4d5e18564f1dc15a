"""Output files are checked before the work that produces them: a bad path fails in a second, not after training."""

from __future__ import annotations

import os
from pathlib import Path

from cli.errors import CoInferError


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """The path, once its folder exists and is writable and it is not a folder itself; else one CoInferError line.
    Creates nothing."""
    out = Path(path)
    if not str(path) or out.is_dir():
        raise CoInferError(f"{what} path {str(path)!r} is a folder, not a file")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise CoInferError(f"cannot write {what} {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CoInferError(f"cannot write {what} {out}: permission denied")
    return out
