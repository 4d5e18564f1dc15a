"""The readiness line: a server says it is listening, and where, as ONE JSON line on stdout.

    {"ready": true, "host": "10.231.7.2", "port": 5000, "app": "vgg16_digits"}

`runtime.cloud` and the `runtime.linkprobe` sinks print it once their socket listens (logs go to
stderr); whoever started them reads it with `wait_ready` instead of guessing from log text or
sleeping. Extra keys (like `app`) are allowed; `ready`, `host` and `port` are always there.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from typing import Any

from cli.errors import CoInferError


def ready_line(host: str, port: int, **extra: Any) -> str:
    """The readiness line (without the newline) for a server listening on host:port."""
    return json.dumps({"ready": True, "host": host, "port": port, **extra})


def announce(host: str, port: int, **extra: Any) -> None:
    """Print the readiness line on stdout, flushed at once."""
    print(ready_line(host, port, **extra), flush=True)


def parse_ready(line: str) -> dict[str, Any] | None:
    """The announcement in `line`, or None when the line is not one."""
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    if not isinstance(msg, dict) or msg.get("ready") is not True or not isinstance(msg.get("port"), int):
        return None
    return msg


def wait_ready(proc: subprocess.Popen, timeout: float = 60.0, what: str = "the server") -> dict[str, Any]:
    """Read `proc`'s stdout pipe up to its readiness line and return it.

    Lines before it are skipped. CoInferError when the process exits first or says nothing for
    `timeout` seconds (the caller stops it). The pipe is read byte by byte, so whatever follows the
    line stays in the pipe for the caller (`communicate()` included).
    """
    if proc.stdout is None:
        raise ValueError("wait_ready needs the process started with stdout=subprocess.PIPE")
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise CoInferError(f"{what} did not say it was ready within {timeout:g} s")
            byte = os.read(fd, 1)
            if not byte:
                try:
                    status = proc.wait(5)
                except subprocess.TimeoutExpired:
                    status = "none yet"
                raise CoInferError(f"{what} closed its output before it was ready (exit status {status})")
            if byte != b"\n":
                line += byte
                continue
            msg = parse_ready(line.decode(errors="replace"))
            if msg is not None:
                return msg
            line.clear()
