"""The Mender backend of the update capability: mender-client 3.4 in standalone mode.

Each device gets its own client state under ``root`` on its own disk: ``mender.conf``,
the data directory (LMDB store, ``device_type``, module work directory
``data/modules/v3``, artifact state scripts ``data/scripts``; mender 3.4 derives these
from ``-d``), and a fallback config path that never exists, so the shared
``/var/lib/mender/mender.conf`` is never read. Mender reads the factory artifact name
from the fixed path ``/etc/mender/artifact_info`` until the first commit; a virtual
gateway shares the host's ``/etc``, so there (``private_etc``) every mender command runs
in a private mount namespace with ``<root>/etc`` bound over ``/etc/mender``.

Every command is one device command: ``flock`` on ``<root>/lock`` (two bench processes
never run two mender commands on one device; mender itself does not lock), the action
under ``timeout`` (the bench's own limit; mender has paths with none), then ``mender
show-artifact`` and a read of mender's LMDB store (:mod:`bench.update.mender_remote`:
the pending install lives there, not in files). Mender runs modules and state scripts in
process groups of their own, so after a timeout those are reaped too. The agent's own
timeout is only a backstop for a stuck board. In this process a lock per device
serializes callers as well. An install is refused while another waits for commit, and
commit/rollback with nothing pending raise NothingPending: mender 3.4 itself would
silently replace a pending install, and "roll back" on a never-updated device.

The board needs mender, python3, flock (util-linux), timeout (coreutils), and unshare
where ``private_etc`` applies.

Device output is data: it is parsed, never put into a shell command (argv lists; the one
shell script is a constant that takes its values as positional arguments).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from bench.errors import TransportError
from bench.gateway import ConnectedGateway
from bench.transport.agent import CommandResult
from bench.update.capability import (
    DeviceBusy,
    InstallOutcome,
    NothingPending,
    UpdateConnectionLost,
    UpdateError,
    UpdateInProgress,
    UpdateOutcome,
    UpdateState,
    UpdateStatus,
    UpdateTimeout,
)

__all__ = ["INCONSISTENT_SUFFIX", "MenderCall", "MenderClient", "parse_report"]

HELPER = (Path(__file__).parent / "mender_remote.py").read_text()
INCONSISTENT_SUFFIX = "_INCONSISTENT"  # mender marks a broken installed artifact so
FLOCK_BUSY = 75  # flock -E: the lock wait ran out
TIMED_OUT = (124, 137)  # timeout(1): the limit passed (137: it needed SIGKILL)
BACKSTOP_MARGIN_S = 15.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/-]{1,200}$")

# $1 nonce, $2 store, $3 data dir, $4 action, $5 url, $6 action time limit, $7 limit for
# the reads, $8 helper source; then the mender argv prefix. Prints "<nonce> <section> <rc>"
# after the action, show-artifact and the store read. `timeout` leads its own process
# group and kills it when the limit passes (exit 124, or 137 when it needed SIGKILL);
# mender's modules and state scripts have groups of their own, so they are reaped then.
DEVICE_SCRIPT = r"""
nonce=$1 store=$2 data=$3 action=$4 url=$5 limit=$6 quick=$7 helper=$8
shift 8
mark() { printf '\n%s %s %s\n' "$nonce" "$1" "$2"; }
helper() { timeout -k 2 "$quick" python3 -c "$helper" "$@"; }
act() {
  timeout -k 5 "$limit" "$@" </dev/null
  rc=$?
  case $rc in 124|137) helper reap "$data" >&2 ;; esac
}
rc=none
case $action in
  install)
    helper store --expect idle "$store"
    case $? in 0) act "$@" install "$url" ;; 3) rc=refused ;; *) rc=store-error ;; esac ;;
  commit|rollback)
    helper store --expect pending "$store"
    case $? in 0) act "$@" "$action" ;; 3) rc=nothing ;; *) rc=store-error ;; esac ;;
esac
mark action "$rc"
timeout -k 2 "$quick" "$@" show-artifact </dev/null
mark show $?
helper store "$store"
mark store $?
"""
# Writes {"files": {path: text}, "keep": [paths left alone when present]} atomically.
WRITER = r"""
import json, os, sys
spec = json.load(sys.stdin)
for path, text in spec["files"].items():
    if path in spec["keep"] and os.path.exists(path):
        continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
"""

_LOCKS: dict[tuple[str, int, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _device_lock(gateway: ConnectedGateway, root: str) -> threading.Lock:
    key = (gateway.params.host, gateway.params.port, root)
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


@dataclass(frozen=True)
class MenderCall:
    """One device command this client ran: for evidence and for overlap checks."""

    action: str
    started: float  # time.time() when the command was sent
    ended: float
    exit_status: int | None
    timed_out: bool
    state: str | None = None


@dataclass(frozen=True)
class Report:
    """What one device command printed, split into its sections."""

    action_rc: str | None
    action_out: str
    show_rc: int | None
    show_out: str
    store_rc: int | None
    store: dict[str, Any] = field(default_factory=dict)


def parse_report(stdout: str, nonce: str) -> Report:
    """Split DEVICE_SCRIPT's stdout at its ``<nonce> <section> <rc>`` marks."""
    sections: dict[str, tuple[str, str]] = {}
    chunk: list[str] = []
    for line in stdout.split("\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == nonce:
            sections[parts[1]] = (parts[2], "\n".join(chunk).strip())
            chunk = []
        else:
            chunk.append(line)

    def number(value: str | None) -> int | None:
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    action = sections.get("action")
    show = sections.get("show")
    store = sections.get("store")
    parsed: dict[str, Any] = {}
    if store is not None:
        try:
            loaded = json.loads(store[1])
            parsed = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            parsed = {"error": f"unparseable store report: {store[1][:200]!r}"}
    return Report(
        action_rc=action[0] if action else None,
        action_out=action[1] if action else "",
        show_rc=number(show[0]) if show else None,
        show_out=show[1] if show else "",
        store_rc=number(store[0]) if store else None,
        store=parsed,
    )


class MenderClient:
    """Mender 3.4 standalone on one gateway (see the module docstring).

    ``private_etc=None`` decides by the device: a virtual board (its os-release has
    ``FIELDRIG_VIRTUAL_BOARD``) shares the host's /etc and gets a private /etc/mender.
    Timeouts are the bench's, per command; ``lock_wait_s`` bounds the wait for the device
    lock (this process's and the device's flock) before DeviceBusy.
    """

    backend = "mender"

    def __init__(
        self,
        gateway: ConnectedGateway,
        *,
        device_type: str,
        root: str = "/root/mender",
        private_etc: bool | None = None,
        install_timeout_s: float = 600.0,
        commit_timeout_s: float = 180.0,
        command_timeout_s: float = 60.0,
        lock_wait_s: float = 30.0,
        state_script_timeout_s: int = 120,
        module_timeout_s: int = 600,
        mender: str = "mender",
    ) -> None:
        if not _SAFE_NAME.match(device_type):
            raise UpdateError(
                f"gateway {gateway.name}: device_type {device_type!r} is not allowed; use "
                "letters, digits, '.', '_', '+', '-' (e.g. the board id, rpi4)"
            )
        if not _SAFE_PATH.match(root) or ".." in root.split("/"):
            raise UpdateError(
                f"gateway {gateway.name}: mender root {root!r} must be an absolute path of "
                "letters, digits, '.', '_', '+', '-' and '/' (e.g. /root/mender)"
            )
        for what, value in (
            ("install_timeout_s", install_timeout_s),
            ("commit_timeout_s", commit_timeout_s),
            ("command_timeout_s", command_timeout_s),
            ("lock_wait_s", lock_wait_s),
        ):
            if value <= 0:
                raise UpdateError(f"gateway {gateway.name}: {what}={value} must be > 0 s")
        self.gateway = gateway
        self.device_type = device_type
        self.root = root.rstrip("/")
        self.install_timeout_s = install_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self.command_timeout_s = command_timeout_s
        self.lock_wait_s = lock_wait_s
        self.state_script_timeout_s = state_script_timeout_s
        self.module_timeout_s = module_timeout_s
        self.mender = mender
        self._private_etc = private_etc
        self._lock = _device_lock(gateway, self.root)
        self.calls: list[MenderCall] = []  # every device command, oldest first
        self._calls_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MenderClient {self.gateway.name} {self.root}>"

    # ------------------------------------------------------------------ paths
    def _path(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    @property
    def conf(self) -> str:
        return self._path("mender.conf")

    @property
    def data_dir(self) -> str:
        return self._path("data")

    @property
    def store(self) -> str:
        return self._path("data", "mender-store")

    @property
    def lock_file(self) -> str:
        return self._path("lock")

    @property
    def private_etc(self) -> bool:
        """Whether /etc/mender is bound to ``<root>/etc`` for each command."""
        if self._private_etc is None:
            probe, _ = self._run(["cat", "/etc/os-release"], self.command_timeout_s, "probe")
            self._private_etc = "FIELDRIG_VIRTUAL_BOARD=" in probe.text
        return self._private_etc

    @property
    def artifact_info(self) -> str:
        """Where mender looks for the factory artifact name (as this client runs it)."""
        return (
            self._path("etc", "artifact_info") if self.private_etc else "/etc/mender/artifact_info"
        )

    def _mender_argv(self) -> list[str]:
        argv = [self.mender, "-c", self.conf, "-b", self._path("no-fallback.conf"),
                "-d", self.data_dir, "--no-syslog", "-l", "info"]  # fmt: skip
        if self.private_etc:
            bind = 'mount --bind "$0" /etc/mender && exec "$@"'
            argv = ["unshare", "--mount", "sh", "-c", bind, self._path("etc"), *argv]
        return argv

    def _flock(self) -> list[str]:
        wait = f"{self.lock_wait_s:g}"
        return ["flock", "-w", wait, "-E", str(FLOCK_BUSY), self.lock_file]

    # ------------------------------------------------------------------ running
    def _run(
        self, argv: list[str], timeout: float, action: str, stdin: bytes | None = None
    ) -> tuple[CommandResult, int]:
        """One device command with the bench's timeout, recorded in :attr:`calls` (its
        index is returned); transport trouble and timeouts raise UpdateErrors."""
        started = time.time()
        try:
            result = self.gateway.run(argv, timeout=timeout, check=False, stdin=stdin)
        except TransportError as exc:
            self._record(MenderCall(action, started, time.time(), None, False, "lost"))
            raise UpdateConnectionLost(
                f"gateway {self.gateway.name}: `mender {action}`: the gateway could not be "
                f"reached or was lost while the command ran ({exc}); its outcome is unknown: "
                "read status() once the gateway is back"
            ) from None
        index = self._record(
            MenderCall(action, started, time.time(), result.exit_status, result.timed_out)
        )
        if result.timed_out:
            raise UpdateTimeout(
                f"gateway {self.gateway.name}: `mender {action}` ran past the bench's "
                f"{timeout:g} s timeout and was killed; check the backhaul and the artifact "
                "server, or raise the timeout (then read status(): an install may be left "
                "half-done)"
            )
        return result, index

    def _record(self, call: MenderCall) -> int:
        with self._calls_lock:
            self.calls.append(call)
            return len(self.calls) - 1

    def _acquire(self, action: str) -> None:
        if not self._lock.acquire(timeout=self.lock_wait_s):
            raise DeviceBusy(
                f"gateway {self.gateway.name}: `mender {action}` waited {self.lock_wait_s:g} s "
                "for another command of this process on the device; retry later or raise "
                "lock_wait_s"
            )

    def _device(self, action: str, url: str, timeout: float) -> tuple[Report, CommandResult, int]:
        """Run DEVICE_SCRIPT for ``action`` (install/commit/rollback/status) under the locks."""
        nonce = f"@@fieldrig-{secrets.token_hex(8)}@@"
        quick = self.command_timeout_s
        argv = [*self._flock(), "sh", "-c", DEVICE_SCRIPT, "sh", nonce, self.store,
                self.data_dir, action, url, f"{timeout:g}", f"{quick:g}", HELPER,
                *self._mender_argv()]  # fmt: skip
        # the device enforces `timeout` on the action; this bound only catches a stuck board
        backstop = self.lock_wait_s + timeout + 3 * quick + BACKSTOP_MARGIN_S
        self._acquire(action)
        try:
            result, index = self._run(argv, backstop, action)
        finally:
            self._lock.release()
        report = parse_report(result.text, nonce)
        if report.action_rc is None:
            err = result.stderr.decode("utf-8", "replace").strip().splitlines()
            if result.exit_status == FLOCK_BUSY:
                raise DeviceBusy(
                    f"gateway {self.gateway.name}: `mender {action}`: another bench process "
                    f"held {self.lock_file} for {self.lock_wait_s:g} s; retry later"
                )
            raise UpdateError(
                f"gateway {self.gateway.name}: `mender {action}` did not run "
                f"(exit {result.exit_status}: {err[-1] if err else 'no output'}); is the "
                "device provisioned (provision()) and are flock and python3 installed?"
            )
        return report, result, index

    def _status_from(self, report: Report, action: str) -> UpdateStatus:
        if report.store_rc != 0 or "error" in report.store:
            raise UpdateError(
                f"gateway {self.gateway.name}: `mender {action}`: cannot read mender's store "
                f"{self.store}: {report.store.get('error', 'no report')}; provision() or "
                "reset() the device"
            )
        keys = report.store.get("keys", {})
        installed = report.show_out.strip().splitlines()[-1] if report.show_rc == 0 else None
        if installed == "":
            installed = None
        pending: str | None = None
        if "standalone-state" in keys:
            try:
                pending = str(json.loads(keys["standalone-state"])["ArtifactName"])
            except (ValueError, KeyError, TypeError):
                pending = "?"  # an install is in progress, its name unreadable
        if pending is not None:
            state = UpdateState.PENDING
        elif installed is None:
            state = UpdateState.UNPROVISIONED
        elif installed.endswith(INCONSISTENT_SUFFIX):
            state = UpdateState.INCONSISTENT
        else:
            state = UpdateState.INSTALLED
        raw = f"show-artifact (exit {report.show_rc}): {report.show_out}\nstore: {keys}"
        return UpdateStatus(installed=installed, pending=pending, state=state, raw=raw)

    # ------------------------------------------------------------------ the capability
    def provision(self, initial_artifact: str | None = None) -> UpdateStatus:
        """Write mender.conf, device_type and (if absent) the factory artifact name.

        ``initial_artifact`` defaults to ``"factory"`` where /etc/mender is private; on a
        real board the board's own artifact_info is left alone unless a name is given.
        """
        name = initial_artifact
        if name is None and self.private_etc:
            name = "factory"
        if name is not None and not _SAFE_NAME.match(name):
            raise UpdateError(
                f"gateway {self.gateway.name}: initial artifact name {name!r} is not allowed; "
                "use letters, digits, '.', '_', '+', '-'"
            )
        conf = {
            "DeviceTypeFile": self._path("data", "device_type"),
            "StateScriptTimeoutSeconds": self.state_script_timeout_s,
            "StateScriptRetryTimeoutSeconds": self.state_script_timeout_s,
            "ModuleTimeoutSeconds": self.module_timeout_s,
            "DBus": {"Enabled": False},
        }
        files = {
            self.conf: json.dumps(conf, indent=2) + "\n",
            self._path("data", "device_type"): f"device_type={self.device_type}\n",
        }
        if name is not None:
            files[self.artifact_info] = f"artifact_name={name}\n"
        spec = {"files": files, "keep": [self.artifact_info]}
        self._acquire("provision")
        try:
            self._run(["mkdir", "-p", "--", self.root], self.command_timeout_s, "provision")
            result, _ = self._run(
                [*self._flock(), "python3", "-c", WRITER],
                self.command_timeout_s + self.lock_wait_s,
                "provision",
                stdin=json.dumps(spec).encode(),
            )
        finally:
            self._lock.release()
        self._check_plain(result, "provision")
        return self.status()

    def reset(self) -> UpdateStatus:
        """Wipe this client's state (store, config, factory name) and provision again."""
        doomed = [self.data_dir, self.conf, self._path("etc")] if self.private_etc else [
            self.data_dir, self.conf]  # fmt: skip
        self._acquire("reset")
        try:
            self._run(["mkdir", "-p", "--", self.root], self.command_timeout_s, "reset")
            result, _ = self._run(
                [*self._flock(), "rm", "-rf", "--", *doomed],
                self.command_timeout_s + self.lock_wait_s,
                "reset",
            )
        finally:
            self._lock.release()
        self._check_plain(result, "reset")
        return self.provision()

    def _check_plain(self, result: CommandResult, action: str) -> None:
        if result.ok:
            return
        if result.exit_status == FLOCK_BUSY:
            raise DeviceBusy(
                f"gateway {self.gateway.name}: {action}: another bench process held "
                f"{self.lock_file} for {self.lock_wait_s:g} s; retry later"
            )
        err = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UpdateError(
            f"gateway {self.gateway.name}: {action} of {self.root} failed "
            f"(exit {result.exit_status}: {err[-1] if err else 'no output'}); check the disk"
        )

    def status(self) -> UpdateStatus:
        report, _, _ = self._device("status", "", self.command_timeout_s)
        return self._status_from(report, "status")

    def install(self, url: str, *, timeout_s: float | None = None) -> InstallOutcome:
        if not url.startswith(("http://", "https://", "/")) or any(c.isspace() for c in url):
            raise UpdateError(
                f"gateway {self.gateway.name}: install: {url!r} is neither an http(s) URL nor "
                "an absolute path on the device"
            )
        timeout = self.install_timeout_s if timeout_s is None else timeout_s
        report, result, index = self._device("install", url, timeout)
        status = self._status_from(report, "install")
        if report.action_rc == "refused":
            raise UpdateInProgress(
                f"gateway {self.gateway.name}: install {url}: update {status.pending!r} waits "
                "for commit or roll back; finish it first"
            )
        rc = self._action_rc(report, "install", timeout, status, index)
        if rc == 0 and status.state == UpdateState.PENDING:
            state = UpdateState.PENDING
        elif rc == 0 and status.state == UpdateState.INSTALLED:
            state = UpdateState.INSTALLED  # a module that needs no commit
        else:
            state = UpdateState.FAILED
        self._note(index, state)
        return InstallOutcome(
            gateway=self.gateway.name,
            action="install",
            state=state,
            exit_status=rc,
            duration_s=result.duration_s,
            status=status,
            output=_evidence(report, result),
            url=url,
            artifact=status.pending,
        )

    def commit(self, *, timeout_s: float | None = None) -> UpdateOutcome:
        return self._finish("commit", self.commit_timeout_s if timeout_s is None else timeout_s)

    def rollback(self, *, timeout_s: float | None = None) -> UpdateOutcome:
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        return self._finish("rollback", timeout)

    def _finish(self, action: str, timeout: float) -> UpdateOutcome:
        report, result, index = self._device(action, "", timeout)
        status = self._status_from(report, action)
        if report.action_rc == "nothing":
            raise NothingPending(
                f"gateway {self.gateway.name}: `mender {action}`: no update is pending "
                f"(installed: {status.installed!r}); install one first"
            )
        rc = self._action_rc(report, action, timeout, status, index)
        rolled_back = "Rolling back Artifact" in report.action_out
        if status.state == UpdateState.PENDING:
            state = UpdateState.FAILED  # still pending: neither committed nor undone
        elif action == "commit" and rc == 0:
            state = UpdateState.INSTALLED
        elif rolled_back:
            state = UpdateState.ROLLED_BACK
        else:
            state = UpdateState.FAILED
        self._note(index, state)
        return UpdateOutcome(
            gateway=self.gateway.name,
            action=action,
            state=state,
            exit_status=rc,
            duration_s=result.duration_s,
            status=status,
            output=_evidence(report, result),
        )

    def _action_rc(
        self, report: Report, action: str, limit: float, status: UpdateStatus, index: int
    ) -> int:
        if report.action_rc == "store-error" or report.action_rc is None:
            raise UpdateError(
                f"gateway {self.gateway.name}: `mender {action}` was not run: cannot read "
                f"mender's store {self.store}; provision() or reset() the device"
            )
        try:
            rc = int(report.action_rc)
        except ValueError:
            raise UpdateError(
                f"gateway {self.gateway.name}: `mender {action}`: unexpected report "
                f"{report.action_rc!r}"
            ) from None
        if rc in TIMED_OUT:
            self._note(index, UpdateState.FAILED, timed_out=True)
            raise UpdateTimeout(
                f"gateway {self.gateway.name}: `mender {action}` ran past the bench's "
                f"{limit:g} s timeout and was killed (device now: installed "
                f"{status.installed!r}, pending {status.pending!r}); check the backhaul and "
                "the artifact server, or raise the timeout"
            )
        return rc

    def _note(self, index: int, state: UpdateState, timed_out: bool = False) -> None:
        """Attach an action's outcome to its recorded call."""
        with self._calls_lock:
            call = self.calls[index]
            self.calls[index] = MenderCall(
                call.action,
                call.started,
                call.ended,
                call.exit_status,
                call.timed_out or timed_out,
                str(state),
            )


def _evidence(report: Report, result: CommandResult, limit: int = 20000) -> str:
    stderr = result.stderr.decode("utf-8", "replace")
    text = f"--- stdout\n{report.action_out}\n--- stderr\n{stderr}"
    return text if len(text) <= limit else text[:2000] + "\n[...]\n" + text[-(limit - 2000) :]
