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

An install the client refuses while reading the artifact's headers, before any payload is
installed (another device type, a missing or wrong signature where ``verify_key`` is set,
a payload type without an update module, an unmet dependency; :data:`REJECTION_MARKS`)
ends REJECTED, not FAILED. Install, commit and rollback are logged on the device (see
DEVICE_SCRIPT); :meth:`MenderClient.evidence` reads that log back with the payload files
and mender's pending/committed markers (:mod:`bench.update.mender_evidence_remote`). The
log's command numbers start again after :meth:`MenderClient.reset`.

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
    DeviceEvidence,
    InstallOutcome,
    NothingPending,
    UpdateConnectionLost,
    UpdateError,
    UpdateInProgress,
    UpdateLogEntry,
    UpdateOutcome,
    UpdateState,
    UpdateStatus,
    UpdateTimeout,
)

__all__ = ["INCONSISTENT_SUFFIX", "REJECTION_MARKS", "MenderCall", "MenderClient", "parse_report"]

HELPER = (Path(__file__).parent / "mender_remote.py").read_text()
EVIDENCE = (Path(__file__).parent / "mender_evidence_remote.py").read_text()
LOG_MAX_BYTES = 1 << 20  # the device's update log moves to .1 past this size
# mender 3.4's words for an artifact it refuses before installing anything (its errors
# while reading the artifact's headers, checked against the real client)
REJECTION_MARKS = (
    "not compatible with device",  # built for another device type
    "expecting signed artifact",  # unsigned, the device has ArtifactVerifyKey
    "invalid signature",  # signed with another key
    "is not supported by this Mender Client",  # no update module for the payload type
    "not satisfied by currently installed artifact",  # artifact_depends not met
)
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
# Install, commit and rollback append mender's output to the device's update log
# (<data>/fieldrig-update.log, numbered by <data>/fieldrig-update.seq, the previous log
# kept as .1 past LOG_MAX bytes) between "=== fieldrig SEQ NONCE begin|end ACTION EPOCH
# DETAIL" lines, so it outlives a power cut or a lost connection; the new part is also
# printed as the action's output.
DEVICE_SCRIPT = r"""
nonce=$1 store=$2 data=$3 action=$4 url=$5 limit=$6 quick=$7 helper=$8
shift 8
log=$data/fieldrig-update.log
mark() { printf '\n%s %s %s\n' "$nonce" "$1" "$2"; }
note() { printf '\n=== fieldrig %s %s %s %s %s %s\n' "$seq" "$nonce" "$1" "$action" \
  "$(date +%s.%N)" "$2" >>"$log"; }
helper() { timeout -k 2 "$quick" python3 -c "$helper" "$@"; }
act() {
  timeout -k 5 "$limit" "$@" </dev/null >>"$log" 2>&1
  rc=$?
  case $rc in 124|137) helper reap "$data" >>"$log" 2>&1 ;; esac
}
rc=none
case $action in install|commit|rollback)
  mkdir -p "$data"
  size=$(wc -c 2>/dev/null <"$log") || size=0
  if [ "$size" -gt LOG_MAX ]; then mv -f "$log" "$log.1"; size=0; fi
  seq=$(cat "$data/fieldrig-update.seq" 2>/dev/null)
  case $seq in ''|*[!0-9]*) seq=0 ;; esac
  seq=$((seq + 1))
  echo "$seq" >"$data/fieldrig-update.seq"
  note begin "$url" ;;
esac
case $action in
  install)
    helper store --expect idle "$store"
    case $? in 0) act "$@" install "$url" ;; 3) rc=refused ;; *) rc=store-error ;; esac ;;
  commit|rollback)
    helper store --expect pending "$store"
    case $? in 0) act "$@" "$action" ;; 3) rc=nothing ;; *) rc=store-error ;; esac ;;
esac
case $action in install|commit|rollback)
  note end "$rc"
  tail -c +"$((size + 1))" "$log" ;;
esac
mark action "$rc"
timeout -k 2 "$quick" "$@" show-artifact </dev/null
mark show $?
helper store "$store"
mark store $?
""".replace("LOG_MAX", str(LOG_MAX_BYTES))
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
    lock (this process's and the device's flock) before DeviceBusy. ``verify_key``: a PEM
    public key; provision() installs it as mender's ArtifactVerifyKey, so the device
    accepts only artifacts signed with the matching private key.
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
        verify_key: str | None = None,
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
        if verify_key is not None and "-----BEGIN PUBLIC KEY-----" not in verify_key:
            raise UpdateError(
                f"gateway {gateway.name}: verify_key is not a PEM public key; give the text of "
                "one (openssl pkey -pubout), not a path or a private key"
            )
        self.gateway = gateway
        self.device_type = device_type
        self.verify_key = verify_key
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
        files = {self._path("data", "device_type"): f"device_type={self.device_type}\n"}
        if self.verify_key is not None:
            conf["ArtifactVerifyKey"] = self._path("verify-key.pem")
            files[self._path("verify-key.pem")] = self.verify_key
        files[self.conf] = json.dumps(conf, indent=2) + "\n"
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
        elif status.pending is None and any(m in report.action_out for m in REJECTION_MARKS):
            state = UpdateState.REJECTED
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

    def evidence(self, payload: str, *, since: int = 0) -> DeviceEvidence:
        """The device's update log after command ``since``, ``payload`` and its directory
        with sha256, and mender's markers (see :mod:`bench.update.mender_evidence_remote`)."""
        if not payload.startswith("/"):
            raise UpdateError(
                f"gateway {self.gateway.name}: evidence: payload {payload!r} must be an "
                "absolute path on the device"
            )
        argv = [*self._flock(), "python3", "-c", EVIDENCE, HELPER, self.store, self.data_dir,
                self.artifact_info, payload, str(int(since))]  # fmt: skip
        self._acquire("evidence")
        try:
            result, _ = self._run(argv, self.command_timeout_s + self.lock_wait_s, "evidence")
        finally:
            self._lock.release()
        self._check_plain(result, "evidence")
        try:
            found = json.loads(result.stdout)
            entries = tuple(_log_entry(e) for e in found["entries"])
            payload_info = found["payload"]
            files = {
                "update_log": _render_log(entries),
                "payload_files": _render_files([payload_info, *found["listing"]]),
                "markers": json.dumps(found["markers"], indent=1, sort_keys=True),
            }
            return DeviceEvidence(
                last_seq=int(found["last_seq"]),
                entries=entries,
                payload_sha256=payload_info.get("sha256"),
                files=files,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UpdateError(
                f"gateway {self.gateway.name}: evidence: unreadable report ({exc}): "
                f"{result.text[:200]!r}"
            ) from None

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


def _log_entry(e: dict[str, Any]) -> UpdateLogEntry:
    return UpdateLogEntry(
        seq=int(e["seq"]),
        action=str(e["action"]),
        started=float(e["started"]),
        ended=None if e["ended"] is None else float(e["ended"]),
        exit=None if e["exit"] is None else str(e["exit"]),
        resumes=int(e["resumes"]),
        text=str(e["text"]),
    )


def _render_log(entries: tuple[UpdateLogEntry, ...], limit: int = 65536) -> str:
    """The log entries as text (its tail past ``limit``): a header line per command, then
    its output."""
    parts = []
    for e in entries:
        end = "never finished" if e.exit is None else f"exit {e.exit} at {e.ended:.3f}"
        parts.append(f"--- #{e.seq} {e.action} at {e.started:.3f}, {end}, resumes {e.resumes}")
        parts.append(e.text)
    text = "\n".join(parts)
    return text if len(text) <= limit else "[...]" + text[-limit:]


def _render_files(described: list[dict[str, Any]]) -> str:
    """One line per file: sha256 (or -), size, mode, path."""
    lines = []
    for f in described:
        if not f.get("exists"):
            lines.append(f"absent {f['path']}")
        elif "size" not in f:
            lines.append(f"{'directory' if f.get('directory') else 'other'} {f['path']}")
        else:
            lines.append(f"{f.get('sha256') or '-'} {f['size']} {f['mode']} {f['path']}")
    return "\n".join(lines)


def _evidence(report: Report, result: CommandResult, limit: int = 20000) -> str:
    stderr = result.stderr.decode("utf-8", "replace")
    text = f"--- stdout\n{report.action_out}\n--- stderr\n{stderr}"
    return text if len(text) <= limit else text[:2000] + "\n[...]\n" + text[-(limit - 2000) :]
