"""Backhaul probes: runs on the board (the client) and in the cloud namespace (the server).

Standard library only, Python 3.8+. Every client mode prints one JSON line.

  serve --bind A --port P [--parent-pid N]   TCP and UDP on one port; prints "listening P"
      TCP: first byte b"E" echoes the stream back; b"S" swallows it until EOF, then
      answers the byte count as one line. UDP: datagrams starting with b"P" are echoed,
      others (telemetry) are dropped.
  rtt --host H --port P --count N --size S    N round trips of S bytes over one TCP stream
  bulk --host H --port P --bytes B            a timed bulk transfer, until the sink's answer
  udp --host H --port P --count N --interval I --tmax T   sequence-numbered probes
  telemetry --host H --port P --messages N --payload B --seconds T   N datagrams paced
"""

import argparse
import contextlib
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from typing import Any, Dict, List, Optional

CHUNK = 1 << 16


def _parent_alive(pid: Optional[int]) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _handle(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = conn.recv(1)
        if mode == b"E":
            while True:
                data = conn.recv(CHUNK)
                if not data:
                    return
                conn.sendall(data)
        elif mode == b"S":
            total = 0
            while True:
                data = conn.recv(CHUNK)
                if not data:
                    break
                total += len(data)
            conn.sendall(("%d\n" % total).encode())


def serve(bind: str, port: int, parent_pid: Optional[int]) -> int:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((bind, port))
    tcp.listen(16)
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((bind, port))
    print("listening %d" % port, flush=True)
    while _parent_alive(parent_pid):
        ready, _, _ = select.select([tcp, udp], [], [], 0.5)
        if tcp in ready:
            conn, _ = tcp.accept()
            threading.Thread(target=_handle, args=(conn,), daemon=True).start()
        if udp in ready:
            data, peer = udp.recvfrom(CHUNK)
            if data[:1] == b"P":
                udp.sendto(data, peer)
    return 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError("the echo service closed the connection")
        buf += data
    return bytes(buf)


def rtt(host: str, port: int, count: int, size: int) -> Dict[str, Any]:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"E")
        message = bytes(size)
        times: List[int] = []
        for _ in range(count):
            start = time.perf_counter_ns()
            sock.sendall(message)
            _recv_exact(sock, size)
            times.append(time.perf_counter_ns() - start)
    return {"rtt_ns": times, "size": size}


def bulk(host: str, port: int, total: int) -> Dict[str, Any]:
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(b"S")
        block = bytes(CHUNK)
        start = time.perf_counter_ns()
        sent = 0
        while sent < total:
            n = min(CHUNK, total - sent)
            sock.sendall(block[:n])
            sent += n
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while not answer.endswith(b"\n"):
            data = sock.recv(64)
            if not data:
                break
            answer += data
        elapsed = time.perf_counter_ns() - start
    return {"bytes": sent, "received": int(answer or b"0"), "ns": elapsed}


def udp(host: str, port: int, count: int, interval: float, tmax: float) -> Dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sent: Dict[int, int] = {}
    got: Dict[int, int] = {}

    def receive(until: float) -> None:
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                return
            try:
                data = sock.recv(64)
            except ConnectionRefusedError:
                continue
            now = time.monotonic_ns()
            if len(data) >= 9 and data[:1] == b"P":
                seq = struct.unpack("!Q", data[1:9])[0]
                if seq in sent and seq not in got:
                    got[seq] = now - sent[seq]

    for seq in range(count):
        sent[seq] = time.monotonic_ns()
        with contextlib.suppress(ConnectionRefusedError):
            sock.send(b"P" + struct.pack("!Q", seq) + bytes(23))
        receive(time.monotonic() + interval)
    receive(time.monotonic() + tmax)
    sock.close()
    limit = int(tmax * 1e9)
    probes: List[List[Any]] = []
    for seq in range(count):
        took = got.get(seq)
        probes.append([seq, sent[seq], took, took is None or took > limit])
    return {"probes": probes, "tmax_s": tmax}


def telemetry(host: str, port: int, messages: int, payload: int, seconds: float) -> Dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    body = b"T" + bytes(max(0, payload - 1))
    start = time.monotonic()
    for i in range(messages):
        due = start + seconds * i / max(1, messages)
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sock.sendto(body, (host, port))
    sock.close()
    return {"messages": messages, "payload": len(body)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="backhaul_remote.py")
    parser.add_argument("mode", choices=["serve", "rtt", "bulk", "udp", "telemetry"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bytes", type=int, default=1 << 24)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--tmax", type=float, default=1.0)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        return serve(args.bind, args.port, args.parent_pid)
    if args.mode == "rtt":
        result = rtt(args.host, args.port, args.count, args.size)
    elif args.mode == "bulk":
        result = bulk(args.host, args.port, args.bytes)
    elif args.mode == "udp":
        result = udp(args.host, args.port, args.count, args.interval, args.tmax)
    else:
        result = telemetry(args.host, args.port, args.messages, args.payload, args.seconds)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
