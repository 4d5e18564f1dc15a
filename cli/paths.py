"""Where CoInfer's files are: the shipped ones it reads, and the folder of the user's own.

    ROOT           the folder holding the packages: a checkout (an editable install too), or site-packages
    SOURCE_TREE    ROOT is a source tree (it has pyproject.toml): there CoInfer writes where it reads
    DATA_ROOT      the user's folder: $COINFER_HOME; else ROOT in a source tree; else $XDG_DATA_HOME/coinfer
                   (by default ~/.local/share/coinfer), never site-packages
    shipped(rel)   a file shipped with CoInfer, ROOT/rel (app YAMLs, devices.yml, the database, base checkpoints)
    data_file(rel) DATA_ROOT/rel: what CoInfer writes (the default database, fine-tuned weights, the native codec's
                   build, the benchmarks' figures) and relative paths the user gives in an app (dataset roots, weights)
    own(path)      where the user's version of a path under ROOT goes (DATA_ROOT/the same relative path)
    overlay(rel)   data_file(rel) when it exists (a file the user made or replaced), else shipped(rel)
    seeded(rel)    data_file(rel), first copied from shipped(rel) when it does not exist yet (the default database)

DATA_ROOT mirrors the checkout's layout (database/coinfer.sqlite, checkpoints/schemes/, ...), so in a checkout
every path is what it always was; an installed copy reads its shipped files in site-packages and writes in
DATA_ROOT. Only the standard library: the codec (compress/) imports this.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV_HOME = "COINFER_HOME"
ROOT = Path(__file__).resolve().parents[1]
SOURCE_TREE = (ROOT / "pyproject.toml").is_file()


def data_root() -> Path:
    """$COINFER_HOME, else ROOT in a source tree, else $XDG_DATA_HOME/coinfer (~/.local/share/coinfer)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    if SOURCE_TREE:
        return ROOT
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "coinfer"


DATA_ROOT = data_root()


def shipped(rel: str | Path) -> Path:
    return ROOT / rel


def data_file(rel: str | Path) -> Path:
    return DATA_ROOT / rel


def own(path: Path) -> Path:
    """DATA_ROOT/the same relative path for a path under ROOT (a shipped checkpoint that models.train replaces);
    any other path unchanged."""
    return data_file(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path


def overlay(rel: str | Path) -> Path:
    mine = data_file(rel)
    return mine if mine.exists() else shipped(rel)


def seeded(rel: str | Path) -> Path:
    """data_file(rel); when it does not exist and shipped(rel) does, a copy of the latter is put there first: written
    whole beside it, then linked in place only if nothing is there yet (of two processes seeding at once, the second
    keeps the first one's copy, which the first may already be writing to)."""
    mine, source = data_file(rel), shipped(rel)
    if mine.exists() or not source.is_file():
        return mine
    mine.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=mine.name + ".", suffix=".tmp", dir=mine.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        try:
            os.link(tmp, mine)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not mine.exists():
                os.replace(tmp, mine)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return mine
