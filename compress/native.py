"""Build and load the C bit-packing kernels (compress/_bitpack.c) on first use.

`load()` returns the extension module, or None after one `warnings.warn` saying why (env
COINFER_NATIVE=0, no C compiler, the compile failed, or the module would not load); the caller then
uses its numpy code. The module is compiled with the system C compiler (env CC, else Python's
configured CC, else cc / gcc / clang), the CPython and numpy include dirs (unpack allocates its
array with numpy's C API) and `-O3 -march=native -shared -fPIC` into
compress/_native/_bitpack_<hash><EXT_SUFFIX> (git-ignored). The hash covers the C source, the flags,
the compiler, the numpy version and the CPU's feature flags (-march=native code must not run on
another CPU).
The file is written under a temporary name and renamed into place, so processes building at the
same time never load a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np

from cli.paths import data_file

SOURCE = Path(__file__).with_name("_bitpack.c")
BUILD_DIR = data_file("compress/_native")  # compress/_native in a checkout, never in site-packages
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
MODULE = "compress._bitpack"  # the last part must match PyInit__bitpack
COMPILE_TIMEOUT_S = 120


def compiler() -> list[str] | None:
    """The C compiler command (with any flags in CC), or None when none is installed."""
    candidates = [os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"]
    for cand in candidates:
        if not cand:
            continue
        words = shlex.split(cand)
        if words and shutil.which(words[0]):
            return words
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def library_path(cc: list[str]) -> Path:
    """Where the module built by `cc` from the current source lives."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), " ".join(cc).encode(), np.__version__.encode(),
                 platform.machine().encode(), _cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return BUILD_DIR / f"_bitpack_{h.hexdigest()[:16]}{sysconfig.get_config_var('EXT_SUFFIX')}"


def build(cc: list[str], path: Path, flags: tuple[str, ...] = FLAGS) -> None:
    """Compile the source to `path` atomically; raises RuntimeError with the compiler's message.

    Afterwards removes the other _bitpack_* builds in the folder (older sources; a build for
    another CPU or numpy is simply rebuilt when that one loads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        cmd = [*cc, *flags, "-I", sysconfig.get_paths()["include"], "-I", np.get_include(), str(SOURCE), "-o", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{cc[0]} did not run: {exc}") from exc
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {' | '.join(msg[:5])}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for stale in path.parent.glob(f"_bitpack_*{sysconfig.get_config_var('EXT_SUFFIX')}"):
        if stale != path:
            with contextlib.suppress(OSError):
                stale.unlink()


def import_module(path: Path) -> ModuleType:
    """Load the built extension at `path` (any file name) as compress._bitpack."""
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    spec = importlib.util.spec_from_file_location(MODULE, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def load() -> ModuleType | None:
    """The compiled module (built if needed), or None after one warning saying why not."""
    if os.environ.get("COINFER_NATIVE", "1").strip() == "0":
        reason = "COINFER_NATIVE=0"
    elif (cc := compiler()) is None:
        reason = "no C compiler found (set CC)"
    else:
        path = library_path(cc)
        try:
            if not path.exists():
                build(cc, path)
            return import_module(path)
        except (RuntimeError, OSError, ImportError) as exc:
            reason = f"building or loading {path.name} failed: {exc}"
    warnings.warn(f"compress.codec uses its numpy implementation: {reason}", RuntimeWarning, stacklevel=2)
    return None
