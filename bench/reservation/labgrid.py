"""Reservations through a labgrid coordinator, driven with its stable CLI, ``labgrid-client``.

One reservation per place (``reserve --prio N name=<place>``; labgrid 26 serves one filter
group per reservation), a ``wait`` per reservation (it polls the coordinator every second,
which also keeps a waiting reservation from expiring), then ``-p +TOKEN acquire`` once it
is allocated. Release is ``release-from <our identity>`` (a no-op if someone else holds the
place now) and ``cancel-reservation``. Every call runs under our own timeout.
"""

from __future__ import annotations

import ast
import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.errors import ReservationError
from bench.lab.system import stop_process

DEFAULT_PORT = 20408
COMMAND_TIMEOUT_S = 30.0
FIRST_ANSWER_S = 3.0  # a `wait` needs about a second to start and ask once
_POLL_S = 0.2
_TOKEN = re.compile(r"^export LG_TOKEN=(\S+)$", re.MULTILINE)
_PLACE = re.compile(r"^Place '(.*)':$")
_FIELD = re.compile(r"^  (acquired|reservation): (.*)$")
_RESOURCE = re.compile(r"^Acquired resource '(.*)' \((.*)\):$")
_STATE = re.compile(r"^state: (\w+)$", re.MULTILINE)


@dataclass(frozen=True)
class PlaceState:
    """A place as the coordinator sees it."""

    acquired: str | None  # "host/user" holding it
    reservation: str | None  # the token of the reservation it is allocated to


def find_client() -> str:
    """``labgrid-client`` of this Python environment (or on PATH)."""
    beside = Path(sys.executable).with_name("labgrid-client")
    found = str(beside) if beside.exists() else shutil.which("labgrid-client")
    if found is None:
        raise ReservationError(
            "labgrid-client not found; install fieldrig's dependencies (pip install 'labgrid>=25')"
        )
    return found


class LabgridReservations:
    """The :class:`~bench.reservation.capability.Reservations` of one labgrid coordinator.

    ``env`` may set ``LG_USERNAME`` / ``LG_HOSTNAME`` (labgrid's own variables) to name this
    bench differently from ``<hostname>/<login>``; ``LG_PROXY`` reaches the coordinator
    through an SSH host.
    """

    def __init__(
        self,
        address: str,
        *,
        env: Mapping[str, str] | None = None,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        client: str | None = None,
    ) -> None:
        self.address = address if ":" in address else f"{address}:{DEFAULT_PORT}"
        self._env = {**os.environ, **(env or {})}
        self._env.pop("LG_ENV", None)  # an env file would make the client pick places itself
        self._env.pop("LG_PLACE", None)
        self._timeout_s = command_timeout_s
        self._client = client or find_client()
        host = self._env.get("LG_HOSTNAME") or socket.gethostname()
        user = self._env.get("LG_USERNAME") or getpass.getuser()
        self.identity = f"{host}/{user}"
        self._tokens: dict[str, str] = {}

    # --- the capability -----------------------------------------------------------------

    def acquire(
        self, places: Sequence[str], *, timeout_s: float, priority: int = 0
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        known = self.places()
        failed = {
            p: f"labgrid place {p} does not exist on coordinator {self.address}; create it "
            f"with `labgrid-client -x {self.address} -p {p} create` or fix the rig's place"
            for p in places
            if p not in known
        }
        tokens: dict[str, str] = {}
        waits: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
        try:
            for place in places:
                if place not in failed:
                    tokens[place] = self._reserve(place, priority)
            for place, token in tokens.items():
                waits[place] = self._start_wait(token)
            deadline = max(deadline, time.monotonic() + FIRST_ANSWER_S)
            while waits and time.monotonic() < deadline:
                for place in [p for p, (proc, _) in waits.items() if proc.poll() is not None]:
                    proc, out = waits.pop(place)
                    reason = self._take(place, tokens[place], proc, out)
                    if reason is None:
                        self._tokens[place] = tokens.pop(place)
                    else:
                        failed[place] = reason
                time.sleep(_POLL_S)
            if waits:
                now = self.places()
                for place in waits:
                    failed[place] = self._busy(place, now.get(place), timeout_s)
        finally:
            for proc, out in waits.values():
                stop_process(proc, grace_s=1.0)
                out.close()
            for place, token in tokens.items():
                if place not in self._tokens:
                    self._cancel(token)
        return failed

    def held(self, place: str) -> bool:
        state = self.places().get(place)
        return state is not None and state.acquired == self.identity

    def holders(self) -> dict[str, str | None]:
        return {name: state.acquired for name, state in self.places().items()}

    def release(self, place: str) -> None:
        token = self._tokens.pop(place, None)
        if token is None:
            return
        try:
            self._client_run("-p", place, "release-from", self.identity)
        except ReservationError as exc:
            if "is not acquired" not in str(exc) and "matches nothing" not in str(exc):
                self._cancel(token)
                raise
        self._cancel(token)

    def release_stale(self, place: str) -> None:
        """Release ``place`` held under this bench's identity by a session that is gone
        (SIGKILLed: it never released); its reservation expires by itself."""
        self._client_run("-p", place, "release-from", self.identity)

    # --- more of labgrid -------------------------------------------------------------------

    def places(self) -> dict[str, PlaceState]:
        """Every place of the coordinator with who holds it and its reservation."""
        places: dict[str, dict[str, str | None]] = {}
        current: dict[str, str | None] | None = None
        for line in self._client_run("-v", "places").splitlines():
            if match := _PLACE.match(line):
                current = places.setdefault(match.group(1), {})
            elif current is not None and (match := _FIELD.match(line)):
                value = match.group(2)
                current[match.group(1)] = None if value == "None" else value
        return {
            name: PlaceState(fields.get("acquired"), fields.get("reservation"))
            for name, fields in places.items()
        }

    def serial_ports(self, place: str) -> dict[str, str]:
        """pyserial URLs of the NetworkSerialPorts (ser2net behind an exporter) of a place
        this bench holds, by resource name: ``rfc2217://host:port?ign_set_control`` (a pty
        or USB adapter without modem lines refuses SET_CONTROL) or ``socket://host:port``."""
        ports: dict[str, str] = {}
        lines = self._client_run("-p", place, "show").splitlines()
        for i, line in enumerate(lines):
            match = _RESOURCE.match(line)
            if match is None or "/NetworkSerialPort/" not in match.group(2):
                continue
            block = []
            for more in lines[i + 1 :]:
                if not more.startswith("  "):
                    break
                block.append(more)
            resource: dict[str, Any] = ast.literal_eval("\n".join(b.strip() for b in block))
            params = resource.get("params", {})
            host, port = params.get("host"), params.get("port")
            if not (resource.get("avail") and host and port):
                continue
            if params.get("protocol", "rfc2217") == "rfc2217":
                ports[match.group(1)] = f"rfc2217://{host}:{port}?ign_set_control"
            else:
                ports[match.group(1)] = f"socket://{host}:{port}"
        return ports

    # --- steps -------------------------------------------------------------------------------

    def _reserve(self, place: str, priority: int) -> str:
        out = self._client_run("reserve", "--shell", "--prio", str(priority), f"name={place}")
        match = _TOKEN.search(out)
        if match is None:
            raise ReservationError(
                f"labgrid coordinator {self.address}: `labgrid-client reserve` printed no "
                f"token for place {place}: {out.strip()[:200]!r}"
            )
        return match.group(1)

    def _start_wait(self, token: str) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        # `wait` prints the reservation every second: a file, not a pipe that could fill up
        out = tempfile.TemporaryFile()  # noqa: SIM115 (closed by acquire())
        proc = subprocess.Popen(
            [self._client, "-x", self.address, "wait", token],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env,
            start_new_session=True,
        )
        return proc, out

    def _take(
        self, place: str, token: str, proc: subprocess.Popen[bytes], out: IO[bytes]
    ) -> str | None:
        """Acquire a place whose ``wait`` ended; why not, if it cannot be had."""
        out.seek(0)
        text = out.read().decode(errors="replace")
        out.close()
        states = _STATE.findall(text)
        if proc.returncode != 0 or not states:
            return self._failure(f"wait for place {place}", text)
        if states[-1] != "allocated":
            return f"labgrid reservation for place {place} ended {states[-1]} before it was ours"
        try:
            self._client_run("-p", f"+{token}", "acquire")
        except ReservationError as exc:
            return f"labgrid place {place} allocated but not acquired: {exc}"
        return None

    def _busy(self, place: str, state: PlaceState | None, timeout_s: float) -> str:
        if state is not None and state.acquired:
            who = f"acquired by {state.acquired}"
        else:
            who = "reserved for another user first"
        return (
            f"labgrid place {place} not free within {timeout_s:g} s ({who}); raise "
            "coordinator.wait_timeout_s in the rig or free the place"
        )

    def _cancel(self, token: str) -> None:
        try:
            self._client_run("cancel-reservation", token)
        except ReservationError as exc:
            if "does not exist" not in str(exc):
                raise

    def _client_run(self, *args: str) -> str:
        argv = [self._client, "-x", self.address, *args]
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=self._env,
                stdin=subprocess.DEVNULL,
                timeout=self._timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ReservationError(
                f"labgrid coordinator {self.address}: `labgrid-client {args[-1]}` did not "
                f"answer within {self._timeout_s:g} s; check the coordinator"
            ) from None
        if proc.returncode != 0:
            raise ReservationError(self._failure(f"`labgrid-client {' '.join(args)}`", proc.stderr))
        return proc.stdout

    def _failure(self, what: str, output: str) -> str:
        """One line from labgrid-client's error output."""
        if "Could not connect to coordinator" in output:
            return (
                f"labgrid coordinator {self.address} unreachable; start labgrid-coordinator "
                "there or fix coordinator.address in the rig"
            )
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        for prefix in ("Server error: Error: ", "labgrid-client: Error: ", "labgrid-client: "):
            for line in reversed(lines):
                if line.startswith(prefix):
                    return (
                        f"labgrid coordinator {self.address}: {what} failed: "
                        + line.removeprefix(prefix)
                    )
        last = lines[-1] if lines else "no output"
        return f"labgrid coordinator {self.address}: {what} failed: {last}"
