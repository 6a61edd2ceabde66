"""Probing from the gateway itself: fieldrig's own prober and radio driver run ON the board,
against the dongle as the board sees it, and every probe's fate streams back over SSH.

Probing from the bench host (through the dongle's serial line) measures the mesh, but never
passes through the gateway: a backhaul partition cannot change that result. Run on the
gateway, the measurement sits where the gateway's local decisions run, so a local path that
secretly needs the cloud (DNS, NTP, a cloud broker) shows up as a failed run.

Nothing is implemented twice. :func:`build_bundle` zips the modules the board needs, found by
following ``bench.*`` imports from :mod:`bench.mesh.remote_probe_board` and the driver's
module (imports under ``if TYPE_CHECKING:`` are not followed; a package whose ``__init__``
nothing imports from is shipped as an empty package, so ``bench.mesh`` does not drag the mesh
simulator along). The archive is put on the board, run with its python
(``python3 probe.pyz '<job>'``) and removed when the run ends. The board needs the standard
library, numpy and pyserial. The dongle has one opener at a time: the bench must release its
own handle while the gateway drives the dongle (``BenchSession.released_radio``).
"""

from __future__ import annotations

import ast
import collections
import contextlib
import hashlib
import io
import json
import signal
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import bench
from bench.errors import BenchError, CommandTimeout, TransportError
from bench.gateway import ConnectedGateway
from bench.mesh.loss import ProbeRecord
from bench.radio.registry import RADIO_DRIVERS
from bench.transport.agent import RemoteProcess

__all__ = [
    "BOARD_MODULE",
    "GatewayProber",
    "RemoteProbeError",
    "build_bundle",
    "bundle_modules",
    "driver_class",
]

BOARD_MODULE = "bench.mesh.remote_probe_board"
#: drivers the gateway-side prober can drive: a skstack (Route-B) dongle would first have to
#: join its meter on the board, with credentials the bench would have to ship there
REMOTE_DRIVERS = frozenset({"spinel"})
START_S = 30.0  # upload, interpreter start, dongle identity
_STDERR_KEPT = 20
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same sources give the same archive
_BENCH_ROOT = Path(bench.__file__).resolve().parent
_MAIN = f"from {BOARD_MODULE} import main\nraise SystemExit(main())\n"
_EMPTY_PACKAGE = '"""Shipped by fieldrig for the gateway-side prober (selected modules only)."""\n'
_RECORD_FIELDS = ("seq", "destination", "hops", "sent_ns", "rtt_s", "lost", "late")


class RemoteProbeError(BenchError):
    """The gateway-side probe run failed (one line: gateway, dongle port, why)."""


# -- the archive -----------------------------------------------------------------------------


def _source(module: str) -> Path | None:
    """The file of a ``bench.*`` module (package -> its ``__init__.py``), None if none."""
    base = _BENCH_ROOT.joinpath(*module.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Import statements that run at runtime (not under ``if TYPE_CHECKING:``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for other in node.orelse:
                yield from _runtime_imports(other)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def _wanted(path: Path) -> set[tuple[str, bool]]:
    """(module, whole) pairs one file imports; ``whole``: its own code is needed (a package
    imported from, not just through)."""
    found: set[tuple[str, bool]] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(a.name, True) for a in node.names if a.name.split(".")[0] == "bench"}
        elif node.level == 0 and node.module and node.module.split(".")[0] == "bench":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add((sub, True) if _source(sub) is not None else (node.module, True))
    return found


def bundle_modules(entries: Iterable[str]) -> tuple[list[str], list[str]]:
    """(modules shipped with their code, packages shipped empty) for the ``entries``."""
    whole: set[str] = set()
    todo = [(entry, True) for entry in entries]
    while todo:
        module, needed = todo.pop()
        if not needed or module in whole:
            continue
        path = _source(module)
        if path is None:
            raise RemoteProbeError(f"cannot ship {module}: no such module under {_BENCH_ROOT}")
        whole.add(module)
        todo.extend(_wanted(path))
    parents = {".".join(m.split(".")[:i]) for m in whole for i in range(1, m.count(".") + 1)}
    return sorted(whole), sorted(parents - whole)


def build_bundle(entries: Iterable[str] = (BOARD_MODULE,)) -> bytes:
    """A zip archive runnable as ``python3 archive.pyz``: the modules ``entries`` need and a
    ``__main__`` that runs the board side."""
    modules, shells = bundle_modules(entries)
    files: dict[str, bytes] = {"__main__.py": _MAIN.encode()}
    for module in modules:
        path = _source(module)
        assert path is not None
        files[str(path.relative_to(_BENCH_ROOT.parent))] = path.read_bytes()
    for package in shells:
        files["/".join(package.split(".")) + "/__init__.py"] = _EMPTY_PACKAGE.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name])
    return buffer.getvalue()


def driver_class(driver: str) -> str:
    """The ``module:Class`` of a radio driver the gateway side can run."""
    if driver not in REMOTE_DRIVERS or driver not in RADIO_DRIVERS:
        raise RemoteProbeError(
            f"the gateway-side prober drives {', '.join(sorted(REMOTE_DRIVERS))} dongles, not "
            f"{driver!r}; a Route-B dongle must join its meter first, which only the bench does"
        )
    return RADIO_DRIVERS[driver]


# -- the run -------------------------------------------------------------------------------


class GatewayProber:
    """Runs :class:`~bench.mesh.probing.Prober` on ``gateway`` against the dongle at ``port``
    (a path as the gateway sees it), with the same parameters as the bench-side prober.

    ``on_record`` gets each :class:`ProbeRecord` as its line arrives; ``sent_ns`` is then the
    gateway's monotonic clock. ``launcher`` is an argv prefix the board command runs under
    (a wrapper such as ``nice``, or one that first does what an application would do).
    """

    def __init__(
        self,
        gateway: ConnectedGateway,
        *,
        port: str,
        driver: str,
        tmax_s: float,
        baudrate: int = 115200,
        time_scale: float = 1.0,
        on_record: Callable[[ProbeRecord], None] | None = None,
        payload_len: int = 32,
        first_seq: int = 0,
        python: str = "python3",
        launcher: Sequence[str] = (),
    ) -> None:
        self.gateway = gateway
        self.port = port
        self.radio = driver_class(driver)
        self.tmax_s = tmax_s
        self.baudrate = baudrate
        self.time_scale = time_scale
        self.on_record = on_record
        self.payload_len = payload_len
        self.next_seq = first_seq
        self.python = python
        self.launcher = list(launcher)
        self.identity: dict[str, Any] = {}
        """What the dongle told the gateway side (firmware, hwaddr, protocol, port)."""
        self.strays = 0

    @property
    def label(self) -> str:
        return f"gateway {self.gateway.name}: the gateway-side prober on {self.port}"

    def _job(self, targets: Sequence[tuple[str, int | None]], schedule: Sequence[float]) -> str:
        return json.dumps(
            {
                "radio": self.radio,
                "port": self.port,
                "baudrate": self.baudrate,
                "tmax_s": self.tmax_s,
                "time_scale": self.time_scale,
                "payload_len": self.payload_len,
                "first_seq": self.next_seq,
                "targets": [list(t) for t in targets],
                "schedule": list(schedule),
            }
        )

    def run(
        self, targets: Sequence[tuple[str, int | None]], schedule: Sequence[float]
    ) -> list[ProbeRecord]:
        """Probe ``targets`` on ``schedule`` (as :meth:`Prober.run`) from the gateway; one
        record per probe in send order. Raises RemoteProbeError when the run fails."""
        bundle = build_bundle([BOARD_MODULE, self.radio.partition(":")[0]])
        digest = hashlib.sha256(bundle).hexdigest()[:12]
        remote = f"/tmp/fieldrig-probe-{digest}-{uuid.uuid4().hex[:8]}.pyz"
        job = self._job(targets, schedule)
        last = schedule[-1] if schedule else 0.0
        timeout = START_S + (last + 2 * self.tmax_s) / self.time_scale
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "probe.pyz"
                local.write_bytes(bundle)
                self.gateway.put(local, remote)
            process = self.gateway.spawn([*self.launcher, self.python, remote, job])
        except (TransportError, OSError) as exc:
            with contextlib.suppress(BenchError):
                self.gateway.run(["rm", "-f", "--", remote], check=False, timeout=10)
            raise RemoteProbeError(f"{self.label} could not start: {exc}") from exc
        try:
            records = self._collect(process, timeout)
        finally:
            if not process.exited.is_set():
                with contextlib.suppress(BenchError):
                    process.send_signal(signal.SIGKILL)
                    process.wait(10)
            with contextlib.suppress(BenchError):
                self.gateway.run(["rm", "-f", "--", remote], check=False, timeout=10)
        self.next_seq += len(schedule)
        return records

    def _collect(self, process: RemoteProcess, timeout: float) -> list[ProbeRecord]:
        by_seq: dict[int, ProbeRecord] = {}
        error: str | None = None
        done = False
        stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_KEPT)
        try:
            for stream, line in process.iter_lines(timeout):
                message = _parse(line) if stream == "out" else None
                if message is None:
                    if line.strip():
                        stderr.append(" ".join(line.split()))
                    continue
                kind = message.get("kind")
                if kind == "probe":
                    record = ProbeRecord(**{k: message[k] for k in _RECORD_FIELDS})
                    by_seq[record.seq] = record
                    if self.on_record is not None:
                        self.on_record(record)
                elif kind == "ready":
                    self.identity = {k: v for k, v in message.items() if k != "kind"}
                elif kind == "done":
                    done, self.strays = True, int(message.get("strays", 0))
                elif kind == "error":
                    error = str(message.get("message"))
        except CommandTimeout as exc:
            raise RemoteProbeError(
                f"{self.label} did not finish within {timeout:.0f} s and was killed "
                f"({len(by_seq)} probe records arrived)"
            ) from exc
        status = process.wait(10)
        if error is None and status == 0 and done:
            return [by_seq[seq] for seq in sorted(by_seq)]
        how = f"exit status {status}" if status is not None else f"signal {process.signal_number}"
        why = error or (stderr[-1] if stderr else "no output")
        raise RemoteProbeError(f"{self.label} failed ({how}): {why}")


def _parse(line: str) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
