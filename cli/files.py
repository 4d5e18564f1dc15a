"""The files the user names. Reading: one line on failure (`CoInferError`), never a traceback, and never
more than a stated size (a FIFO, a device or a huge file is refused before it is read). Writing: the output
path is checked first (`check_output`: its folder, and never one of the command's inputs or its database), and
the file is written whole or not at all (`write_atomic`)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from cli.errors import CoInferError, first_line

MAX_YAML_DEPTH = 32  # an app nests 3 deep, devices.yml 2
MAX_JSON_BYTES = 64 * 2**20  # a latency profile of every point of a large model is well under 1 MB


def _open_regular(path: Path, what: str, max_bytes: int) -> BinaryIO:
    """`path` opened for binary reading once it is known to be a regular file (no FIFO that would block, no
    device) of at most `max_bytes` bytes as stated; every problem is one CoInferError line."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise CoInferError(f"{what} {path} is not a regular file")
        if info.st_size > max_bytes:
            raise CoInferError(f"{what} {path} is {info.st_size} bytes, over the limit of {max_bytes}")
        return open(path, "rb")  # noqa: SIM115  # the caller closes it
    except OSError as exc:
        raise CoInferError(f"cannot read {what} {path}: {exc.strerror}") from None


def read_text(path: Path | str, what: str, max_bytes: int) -> str:
    """The text of the regular file `path` (`what` names it in errors), at most `max_bytes` bytes."""
    path = Path(path)
    with _open_regular(path, what, max_bytes) as f:
        try:
            raw = f.read(max_bytes + 1)
        except OSError as exc:
            raise CoInferError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise CoInferError(f"{what} {path} is over the limit of {max_bytes} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CoInferError(f"{what} {path} is not UTF-8 text") from None


def read_lines(path: Path | str, what: str, max_bytes: int, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number from 1, text without its newline) of the regular file `path`, streamed: never more than
    `max_line_bytes` bytes of one line in memory, and refused once `max_bytes` bytes have been read (a file
    stated larger is refused before reading). A line over the limit, or not UTF-8, is one line naming it."""
    path = Path(path)
    with _open_regular(path, what, max_bytes) as f:  # closed also when the caller stops early
        total, number = 0, 0
        while True:
            try:
                raw = f.readline(max_line_bytes + 1)
            except OSError as exc:
                raise CoInferError(f"cannot read {what} {path}: {exc.strerror}") from None
            if not raw:
                return
            number += 1
            total += len(raw)
            if total > max_bytes:
                raise CoInferError(f"{what} {path} is over the limit of {max_bytes} bytes (at line {number})")
            if len(raw) - raw.endswith(b"\n") > max_line_bytes:
                raise CoInferError(f"{what} {path} line {number} is longer than {max_line_bytes} bytes")
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise CoInferError(f"{what} {path} line {number} is not UTF-8 text") from None


def read_json(path: Path | str, what: str, max_bytes: int = MAX_JSON_BYTES) -> object:
    """The JSON value in the regular file `path`, read as `read_text` does."""
    text = read_text(path, what, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CoInferError(f"{what} {path} is not valid JSON (line {exc.lineno})") from None
    except RecursionError:
        raise CoInferError(f"{what} {path} nests too deeply") from None
    except ValueError as exc:  # an integer of more digits than int() converts (sys.get_int_max_str_digits)
        raise CoInferError(f"{what} {path}: {first_line(exc).split(':')[0].lower()}") from None


def read_yaml(path: Path | str, what: str, max_bytes: int, max_depth: int = MAX_YAML_DEPTH) -> object:
    """The YAML value in the regular file `path`, read through `cli.files.read_text` (at most `max_bytes`) and
    nested at most `max_depth` mappings or lists deep (counted on PyYAML's event stream, which does not
    recurse, before the composer that does); every problem is one CoInferError line."""
    import yaml  # here: reading JSON needs no YAML
    text = read_text(path, what, max_bytes)
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise CoInferError(f"{what} {path} nests deeper than {max_depth} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise CoInferError(f"malformed YAML in {path}{at}") from None
    except RecursionError:
        raise CoInferError(f"{what} {path} nests too deeply") from None
    except ValueError as exc:  # an integer of more digits than int() converts (sys.get_int_max_str_digits)
        raise CoInferError(f"{what} {path}: {first_line(exc).split(':')[0].lower()}") from None


def check_output(path: Path | str, what: str = "output", inputs: Iterable[Path | str | None] = ()) -> Path:
    """The output path resolved (symlinks and `..` followed: the file a write would replace), once its folder
    exists and is writable, it is not a folder (nor a FIFO or a device), and it is none of `inputs` (the command's
    input files and the database files behind its `--storage`: `database.storage.Storage.files`); else one
    CoInferError line.
    Creates nothing. Call it before the work that produces the file: a bad path fails in a second."""
    if not str(path):
        raise CoInferError(f"{what} path '' is empty")
    out = Path(path).expanduser()
    try:
        real = out.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise CoInferError(f"cannot write {what} {out}: {getattr(exc, 'strerror', None) or 'symlink loop'}") from None
    if real.is_dir():
        raise CoInferError(f"{what} path {str(path)!r} is a folder, not a file")
    if real.exists() and not real.is_file():  # a FIFO, a device: the atomic rename would replace the node
        raise CoInferError(f"{what} {out} exists and is not a regular file")
    if not real.parent.is_dir():
        raise CoInferError(f"cannot write {what} {out}: folder {real.parent} does not exist")
    for given in inputs:
        if given is not None and str(given) and _same_file(real, Path(given)):
            raise CoInferError(f"{what} {out} would overwrite {given}, an input of this command")
    if not os.access(real.parent, os.W_OK | os.X_OK) or (real.exists() and not os.access(real, os.W_OK)):
        raise CoInferError(f"cannot write {what} {out}: permission denied")
    return real


def _same_file(real: Path, given: Path) -> bool:
    """Whether the resolved output `real` is the file `given` names (through symlinks, `..` or a hard link)."""
    try:
        if real == given.expanduser().resolve():
            return True
        return real.exists() and given.exists() and os.path.samefile(real, given)
    except (OSError, RuntimeError):
        return False


def write_atomic(path: Path | str, data: str | bytes | Callable[[BinaryIO], object], what: str = "output") -> Path:
    """Write `data` (text as UTF-8, bytes, or a function that writes into the open binary file) to `path` whole
    or not at all: into a temporary file in the same folder, flushed and fsynced, then `os.replace`d over the
    target (a symlink's target: the link stays). Any failure, Ctrl-C included, removes the temporary file and
    leaves the old file as it was; an OSError becomes one CoInferError line. Returns the path written."""
    target = Path(path).expanduser().resolve()
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise CoInferError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CoInferError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return Path(path)


def _umask() -> int:
    """This process's umask, read without changing it (Linux); 0o022 where it cannot be read."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022
