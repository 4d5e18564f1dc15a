"""Small processes the testbed runs at the two ends of its shaped link (`runtime.netns`).

    python -m runtime.linkprobe sink HOST PORT NBYTES         # cloud side: take NBYTES over TCP, ack
    python -m runtime.linkprobe source HOST PORT NBYTES       # edge side: send NBYTES, print seconds to the ack
    python -m runtime.linkprobe filler HOST PORT [--cpu N]    # edge side: keep the paced link's bucket empty
    python -m runtime.linkprobe filler-sink HOST PORT [--cpu N]   # cloud side: where the filler's frames go

`sink` and `filler-sink` print the readiness line (`runtime.ready`) once bound (PORT 0 picks a
free port, announced there), `filler` once it has sent FILL_CHECK frames, by when its send buffer
was full at least once on a shaped link: the bucket is empty. `source` prints one number: seconds
from its first byte to the sink's one-byte acknowledgement, i.e. until the sink has all NBYTES (the
testbed's `verify`).

The filler sends minimal UDP frames (1 byte of payload, 43 bytes on the wire) at socket priority 2
(pfifo_fast's lowest band) as fast as the link drains them: its send buffer holds a few dozen, so
sendto blocks until the tbf lets one go. It runs at idle priority, pinned to `--cpu` (not the
edge's): at 2 Mbps it moves 6,000 frames a second, and the kernel charges network processing to
whichever task it interrupts. The filler sink binds the port (so no ICMP comes back) with a small
receive buffer and never reads. Both run until killed.
"""

from __future__ import annotations

import os
import socket
import time

from cli.args import ArgParser
from cli.errors import CoInferError, Unreachable
from cli.run import run_cli
from runtime.ready import announce

# seconds the source waits between connecting and sending: this process's start-up may have kept the
# idle-priority filler off the CPU long enough for the paced link's bucket to fill; it empties again
SETTLE_S = 0.1
FILL_CHECK = 256  # frames the filler sends before it says it is ready (its 32 KiB send buffer holds ~40)


def sink(host: str, port: int, nbytes: int) -> int:
    """Accept one TCP connection, read `nbytes` (or to EOF), send one byte back; the bytes read."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    announce(host, srv.getsockname()[1])
    conn, _ = srv.accept()
    got = 0
    while got < nbytes:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        got += len(chunk)
    conn.sendall(b"k")
    conn.close()
    srv.close()
    return got


def source(host: str, port: int, nbytes: int, settle: float = SETTLE_S) -> float:
    """Send `nbytes` zero bytes `settle` seconds after connecting; seconds from the first byte until the
    sink's acknowledgement."""
    with socket.create_connection((host, port), timeout=600) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(settle)
        t = time.perf_counter()
        s.sendall(bytes(nbytes))
        s.recv(1)
        return time.perf_counter() - t


def _pin(cpu: int | None, idle: bool = False) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def filler(host: str, port: int, cpu: int | None = None) -> None:
    """Send 1-byte UDP frames at priority 2 as fast as the link takes them, forever; announce once
    FILL_CHECK of them are out."""
    _pin(cpu, idle=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    sent = 0
    while True:
        try:
            s.sendto(b"f", (host, port))
            sent += 1
            if sent == FILL_CHECK:
                announce(host, port)
        except OSError:
            time.sleep(0.001)


def filler_sink(host: str, port: int, cpu: int | None = None) -> None:
    """Bind the filler's UDP port with a small receive buffer and sleep, forever."""
    _pin(cpu)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    announce(host, s.getsockname()[1])
    while True:
        time.sleep(3600)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


def _nbytes(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m runtime.linkprobe", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    for name, what in (("sink", "accept NBYTES over TCP and acknowledge them (prints the readiness line)"),
                       ("source", "send NBYTES over TCP; print seconds until the sink's acknowledgement")):
        p = sub.add_parser(name, help=what, description=what)
        p.add_argument("host")
        p.add_argument("port", type=_port)
        p.add_argument("nbytes", type=_nbytes)
    for name, what in (("filler", "keep the paced link's token bucket empty with low-priority UDP frames"),
                       ("filler-sink", "bind the filler's UDP port and never read (prints the readiness line)")):
        p = sub.add_parser(name, help=what, description=what)
        p.add_argument("host")
        p.add_argument("port", type=_port)
        p.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = ap.parse_args(argv)
    try:
        if args.command == "sink":
            sink(args.host, args.port, args.nbytes)
        elif args.command == "source":
            print(source(args.host, args.port, args.nbytes), flush=True)
        elif args.command == "filler":
            filler(args.host, args.port, args.cpu)
        else:
            filler_sink(args.host, args.port, args.cpu)
    except (ConnectionError, TimeoutError) as exc:  # no sink there, or it went away: exit 3
        raise Unreachable(f"{args.command} {args.host}:{args.port}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise CoInferError(f"{args.command} {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


if __name__ == "__main__":
    run_cli(main)
