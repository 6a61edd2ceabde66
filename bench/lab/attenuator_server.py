"""A virtual Mini-Circuits programmable attenuator on TCP, reached like the real one's Telnet.

It answers the command set :mod:`bench.instruments.attenuator` documents (with its sources):
``MN?`` / ``SN?`` (``MN=<model>`` / ``SN=<serial>``), ``SETATT=<dB>`` (also ``SETATT:<dB>``),
``ATT?`` (every channel, space separated), ``CHAN:<n>[:<m>...]:SETATT:<dB>`` and
``CHAN:<n>:ATT?``; case-insensitive, the leading ``:`` optional, answers end CR LF. A set
answers the device's return codes: ``1`` done; ``2`` above the range, the channel is set to
its maximum; ``0`` an invalid value (negative, not a number) or an unknown channel. Values
are rounded to the step (0.25 dB).

Not confirmed from the manual, chosen here and flagged as such: an unknown command answers
``0`` (the "command failed" code); on a multi-channel model ``SETATT=<dB>`` sets every
channel.

``on_set(channel, db)`` is called (outside the instrument's lock) each time a channel's
attenuation changes, which is how the emulated mesh follows the attenuator.

Run one: ``python -m bench.lab.attenuator_server --port 5026 --channels 4``. It binds loopback
addresses only.
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Self

from bench.lab.line_server import LineServer

__all__ = ["AttenuatorServer", "VirtualAttenuator", "main"]

OnSet = Callable[[int, float], None]
TRANSCRIPT_SIZE = 10_000
FAILED, DONE, CLAMPED = "0", "1", "2"
_SET = re.compile(r"SETATT[=:](.+)")
_CHAN_SET = re.compile(r"CHAN((?::\d+)+):SETATT[=:](.+)")
_CHAN_GET = re.compile(r"CHAN:(\d+):ATT\?")


def default_model(channels: int, max_db: float) -> str:
    """A plausible model number for a channel count and range (``RC4DAT-6G-95`` ...)."""
    family = "RCDAT-6000" if channels == 1 else f"RC{channels}DAT-6G"
    return f"{family}-{max_db:g}"


class VirtualAttenuator:
    """The instrument model behind the socket; thread-safe, :meth:`execute` runs one line."""

    def __init__(
        self,
        channels: int = 4,
        max_db: float = 95.0,
        *,
        model: str | None = None,
        serial: str = "12301230001",
        step_db: float = 0.25,
        on_set: OnSet | None = None,
    ) -> None:
        if channels < 1:
            raise ValueError("an attenuator has at least one channel")
        if not math.isfinite(max_db) or max_db <= 0:
            raise ValueError(f"max_db must be a finite dB value > 0, got {max_db}")
        self.channels = channels
        self.max_db = max_db
        self.model = model or default_model(channels, max_db)
        self.serial = serial
        self.step_db = step_db
        self.on_set = on_set
        self._lock = threading.Lock()
        self._db = dict.fromkeys(range(1, channels + 1), 0.0)
        self._transcript: list[str] = []

    def attenuation(self, channel: int) -> float:
        with self._lock:
            return self._db[channel]

    def transcript(self) -> list[str]:
        """The command lines received (newest ``TRANSCRIPT_SIZE``)."""
        with self._lock:
            return list(self._transcript)

    def clear_transcript(self) -> None:
        with self._lock:
            self._transcript.clear()

    def execute(self, line: str) -> str | None:
        """Run one command line; returns the answer line."""
        command = line.strip().rstrip(";").lstrip(":").upper()
        if not command:
            return None
        changes: list[tuple[int, float]] = []
        with self._lock:
            self._transcript.append(line.strip())
            del self._transcript[:-TRANSCRIPT_SIZE]
            reply = self._run(command, changes)
        if self.on_set is not None:
            for channel, db in changes:
                self.on_set(channel, db)
        return reply

    def _run(self, command: str, changes: list[tuple[int, float]]) -> str:
        if command == "MN?":
            return f"MN={self.model}"
        if command == "SN?":
            return f"SN={self.serial}"
        if command == "ATT?":
            return " ".join(_text(self._db[ch]) for ch in sorted(self._db))
        if match := _CHAN_GET.fullmatch(command):
            channel = int(match.group(1))
            return _text(self._db[channel]) if channel in self._db else FAILED
        if match := _CHAN_SET.fullmatch(command):
            channels = [int(c) for c in match.group(1).split(":")[1:]]
            return self._set(channels, match.group(2), changes)
        if match := _SET.fullmatch(command):
            return self._set(sorted(self._db), match.group(1), changes)
        return FAILED

    def _set(self, channels: Sequence[int], text: str, changes: list[tuple[int, float]]) -> str:
        if any(ch not in self._db for ch in channels):
            return FAILED
        try:
            asked = float(text)
        except ValueError:
            return FAILED
        if not math.isfinite(asked) or asked < 0:
            return FAILED
        code = DONE
        value = round(asked / self.step_db) * self.step_db
        if value > self.max_db:
            code, value = CLAMPED, self.max_db
        for channel in channels:
            if self._db[channel] != value:
                self._db[channel] = value
                changes.append((channel, value))
        return code


def _text(db: float) -> str:
    return f"{db:.2f}"


class AttenuatorServer:
    """A :class:`VirtualAttenuator` on a loopback TCP port (``start()``, ``stop()``, ``port``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        channels: int = 4,
        max_db: float = 95.0,
        model: str | None = None,
        serial: str = "12301230001",
        step_db: float = 0.25,
        on_set: OnSet | None = None,
    ) -> None:
        self.device = VirtualAttenuator(
            channels, max_db, model=model, serial=serial, step_db=step_db, on_set=on_set
        )
        self._server = LineServer(
            self.device.execute, host=host, port=port, eol=b"\r\n", name="virtual-attenuator"
        )

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def resource(self) -> str:
        """The VISA resource string that reaches this server."""
        return self._server.resource

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # shortcuts to the instrument model
    def attenuation(self, channel: int) -> float:
        return self.device.attenuation(channel)

    def transcript(self) -> list[str]:
        return self.device.transcript()

    def clear_transcript(self) -> None:
        self.device.clear_transcript()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lab.attenuator_server",
        description="A virtual Mini-Circuits programmable attenuator on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=5026, help="TCP port (0: any free port)")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--max-db", type=float, default=95.0)
    parser.add_argument("--model", default=None, help="model number (default from the above)")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    server = AttenuatorServer(
        port=args.port, channels=args.channels, max_db=args.max_db, model=args.model
    ).start()
    print(f"virtual {server.device.model} attenuator on {server.resource}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
