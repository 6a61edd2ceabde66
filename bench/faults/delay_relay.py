"""The userspace delay relay: ``python -m bench.faults.delay_relay --port P --delay-ms D``.

Run inside a namespace where an nft ``redirect`` sends the TCP connections it should delay
to 127.0.0.1:P. For each one it reads the original destination (``SO_ORIGINAL_DST``),
connects there with its own sockets marked ``--mark`` (the redirect rule skips marked
traffic, so the relay's own connection is not caught again) and copies both directions,
holding every chunk ``delay`` +- ``jitter`` ms (order kept: TCP cannot reorder). It exits
when the process that started it (``--parent-pid``) is gone, so a killed bench leaves only
its nft table behind, which the next session's stale-fault sweep removes.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Sequence

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
SO_MARK = 36
CHUNK = 65536
READY = "fieldrig delay relay listening"


def original_destination(conn: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before the redirect (IPv4)."""
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    address = socket.inet_ntoa(raw[4:8])
    return address, port


class _Pipe:
    """One direction: a reader queues chunks with their due time, a writer sends them."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay_s: float, jitter_s: float,
                 rng: random.Random) -> None:  # fmt: skip
        self.src, self.dst = src, dst
        self.delay_s, self.jitter_s, self.rng = delay_s, jitter_s, rng
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.ready = threading.Condition()
        self.closed = False

    def read(self) -> None:
        last = 0.0
        try:
            while data := self.src.recv(CHUNK):
                due = time.monotonic() + self.delay_s + self.rng.uniform(-1, 1) * self.jitter_s
                last = max(last, due)  # keep the byte order
                with self.ready:
                    self.queue.append((last, data))
                    self.ready.notify()
        except OSError:
            pass
        with self.ready:
            self.closed = True
            self.ready.notify()

    def write(self) -> None:
        try:
            while True:
                with self.ready:
                    while not self.queue and not self.closed:
                        self.ready.wait()
                    if not self.queue:
                        break
                    due, data = self.queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.dst.sendall(data)
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(conn: socket.socket, delay_s: float, jitter_s: float, mark: int, seed: int) -> None:
    try:
        destination = original_destination(conn)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        upstream.settimeout(10)
        upstream.connect(destination)
        upstream.settimeout(None)
    except OSError:
        conn.close()
        return
    rng = random.Random(seed)
    pipes = [
        _Pipe(conn, upstream, delay_s, jitter_s, rng),
        _Pipe(upstream, conn, delay_s, jitter_s, rng),
    ]
    threads = [threading.Thread(target=f, daemon=True) for p in pipes for f in (p.read, p.write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    conn.close()
    upstream.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults.delay_relay", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--mark", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bind", default="127.0.0.1",
                        help="where the redirect delivers: 127.0.0.1 for an output-hook "
                        "redirect, the interface's address for a prerouting one")  # fmt: skip
    args = parser.parse_args(argv)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((args.bind, args.port))
    server.listen(64)
    server.settimeout(0.5)
    print(READY, flush=True)
    count = 0
    while True:
        try:
            os.kill(args.parent_pid, 0)
        except ProcessLookupError:
            return 0  # the bench is gone: so are we
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        count += 1
        threading.Thread(
            target=_serve,
            args=(conn, args.delay_ms / 1e3, args.jitter_ms / 1e3, args.mark, args.seed + count),
            daemon=True,
        ).start()


if __name__ == "__main__":
    raise SystemExit(main())
