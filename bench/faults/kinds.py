"""Link faults made of nftables tables and tc qdiscs: Loss, Partition, RateLimit, Delay.

Loss and partition are an nftables ``netdev`` table with an ingress and an egress chain on
the interface, so they hit every frame in both directions (ARP included) whatever the
routing. A rate limit shapes egress with a tbf qdisc and polices ingress with an nft
``limit rate over`` rule (this kernel has no tc police action; policing drops what
exceeds the rate rather than queueing it). Shaping ingress through an ifb device was
tried and not chosen: frames redirected there skip the netdev ingress hook, so a loss or
partition on the same interface would silently stop applying to incoming traffic. Delay
is a netem qdisc on egress, only where the kernel has netem. Each fault's nft table is
made in one nft transaction together with its owner mark (see
:mod:`bench.faults.owner`); a tc qdisc gets a fieldrig handle (``f1e1:`` tbf, ``f1e2:``
netem) and a state file (on the bench host, naming the router for a router target) written
before the qdisc is added. On a router target every command runs there over SSH.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import threading
from typing import Any, ClassVar

from bench.faults import cleanup
from bench.faults.base import AppliedWhileInside, FaultError
from bench.faults.guard import Protection
from bench.faults.owner import STATE_DIR, Owner, encode_comment, encode_run_comment
from bench.faults.probe import require
from bench.faults.router import Router
from bench.faults.target import LinkTarget, namespace_gone, run_at

__all__ = [
    "NFT_PRIORITY",
    "TABLE_PREFIX",
    "TC_HANDLES",
    "Delay",
    "Loss",
    "Partition",
    "RateLimit",
    "delete_root_qdisc",
    "delete_table",
    "root_qdisc",
]

TABLE_PREFIX = "fieldrig_"
NFT_PRIORITY = -500  # ahead of any filter another tool hooks on the same device
TBF_HANDLE = "f1e1:"
NETEM_HANDLE = "f1e2:"
TC_HANDLES = (TBF_HANDLE, NETEM_HANDLE)
TBF_LATENCY_MS = 100  # how long a packet may wait in the shaper before tbf drops it
_MIN_BURST = 2 * 1514  # tbf needs at least one full frame; two keeps small rates smooth


class _KernelFault(AppliedWhileInside):
    """apply/remove/describe and context management over nft tables and tc qdiscs."""

    kind: ClassVar[str]

    def __init__(self, target: LinkTarget, protect: Protection | None) -> None:
        self._target = target
        self._protect = Protection.default() if protect is None else protect
        self._backend = require(self.kind, target.label, target.router)
        self._protect.check(target)
        self._lock = threading.RLock()
        self._active = False
        self._table: str | None = None
        self._state_file: str | None = None
        self._tc_handle: str | None = None
        self._id = ""  # names this application's table and state file

    @property
    def target(self) -> LinkTarget:
        return self._target

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def active(self) -> bool:
        """True from the start of :meth:`apply` until :meth:`remove` finished."""
        return self._active

    def params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self._target.label,
            "params": self.params(),
            "backend": self._backend,
        }

    def apply(self) -> None:
        self._apply(checks=True)

    def _apply(self, *, checks: bool) -> None:
        """Apply; ``checks=False`` skips the target and guard checks (a flapping link's
        later toggles: checked at its first, and each check costs a command or two)."""
        with self._lock:
            if self._active:
                raise FaultError(f"{self.kind} on {self._target}: already applied; remove it first")
            if checks:
                self._target.check_present()
                self._protect.check(self._target)
            self._active = True
            cleanup.register(self)
            owner = Owner.current()
            self._id = f"{TABLE_PREFIX}{self.kind}_{owner.pid}_{secrets.token_hex(3)}"
            try:
                self._make(owner)
            except BaseException:
                with contextlib.suppress(FaultError):
                    self.remove()  # what did get made; the first error is the one to see
                raise

    def remove(self) -> None:
        with self._lock:
            if not self._active:
                return
            failures: list[FaultError] = []
            if self._table is not None:
                try:
                    delete_table(self._target.namespace, self._table, router=self._target.router)
                    self._table = None
                except FaultError as exc:
                    failures.append(exc)
            if self._tc_handle is not None:
                try:
                    delete_root_qdisc(self._target, self._tc_handle)
                    self._tc_handle = None
                except FaultError as exc:
                    failures.append(exc)
            if self._tc_handle is None and self._state_file is not None:
                _remove_file(self._state_file)
                self._state_file = None
            if not failures:
                self._active = False
                cleanup.unregister(self)
            else:
                raise failures[0]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({self._target.label}{', ' if params else ''}{params})"

    # --- pieces -------------------------------------------------------------------------

    def _make(self, owner: Owner) -> None:
        raise NotImplementedError

    def _nft_table(self, owner: Owner, ingress: str | None, egress: str | None) -> None:
        """One transaction: the marked table, and a chain per direction with its rule."""
        name = self._id
        dev = self._target.interface
        lines = [f'create table netdev {name} {{ comment "{encode_comment(owner, self.kind)}" ; }}']
        run = encode_run_comment(owner)
        for hook, rule in (("ingress", ingress), ("egress", egress)):
            if rule is None:
                continue
            lines.append(
                f"add chain netdev {name} {hook} {{ type filter hook {hook} "
                f'device "{dev}" priority {NFT_PRIORITY} ; policy accept ; comment "{run}" ; }}'
            )
            lines.append(f"add rule netdev {name} {hook} {rule}")
        self._table = name  # before: a half-done transaction is still cleaned up
        self._target.run(
            ["nft", "-f", "-"],
            input_text="\n".join(lines) + "\n",
            what=f"{self.kind} on {self._target}",
        )

    def _tc_root(self, owner: Owner, handle: str, qdisc: list[str]) -> None:
        """A state file, then the root qdisc with fieldrig's handle (refused over another)."""
        current = root_qdisc(self._target)
        if current is not None:
            kind, found = current
            whose = "a fieldrig fault's" if found in TC_HANDLES else "its own"
            raise FaultError(
                f"{self.kind} on {self._target}: the interface already has {whose} root qdisc "
                f"{kind} {found}; remove that first (stale fieldrig faults: clear_stale())"
            )
        name = self._id
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = STATE_DIR / f"{name}.json"
        record = {
            "name": name,
            "owner": owner.to_json(self.kind),
            "namespace": self._target.namespace,
            "interface": self._target.interface,
            "router": None if self._target.router is None else self._target.router.key(),
            "tc_handle": handle,
            "params": self.params(),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, path)
        self._state_file = str(path)
        # `add` (not replace) fails if another root qdisc appeared meanwhile; only after it
        # succeeded is the qdisc ours to delete
        self._target.run(
            ["tc", "qdisc", "add", "dev", self._target.interface, "root", "handle", handle,
             *qdisc],
            what=f"{self.kind} on {self._target}",
        )  # fmt: skip
        self._tc_handle = handle


class Loss(_KernelFault):
    """Drop ``percent`` % of frames at random, independently, in each direction.

    ``numgen random mod 10000 < round(percent * 100)``: a resolution of 0.01 %.
    """

    kind = "loss"

    def __init__(
        self, target: LinkTarget, percent: float, *, protect: Protection | None = None
    ) -> None:
        if not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise FaultError(f"loss on {target}: percent {percent!r} must be a number 0-100")
        self.percent = float(percent)
        super().__init__(target, protect)

    def params(self) -> dict[str, Any]:
        return {"percent": self.percent}

    def _make(self, owner: Owner) -> None:
        rule = f"numgen random mod 10000 < {round(self.percent * 100)} counter drop"
        self._nft_table(owner, rule, rule)


class Partition(_KernelFault):
    """Drop every frame in both directions."""

    kind = "partition"

    def __init__(self, target: LinkTarget, *, protect: Protection | None = None) -> None:
        super().__init__(target, protect)

    def _make(self, owner: Owner) -> None:
        self._nft_table(owner, "counter drop", "counter drop")


class RateLimit(_KernelFault):
    """Cap the link at ``kbit`` (1000 bit/s) in each direction, bursts of ``burst_bytes``.

    Egress: tbf (shapes, queues up to ``TBF_LATENCY_MS``). Ingress: nft limit (polices).
    The default burst is 20 ms at the rate, at least two full Ethernet frames. Caveat of
    nft's byte limit (kernel ``nft_limit``): its bucket holds one second at the rate plus
    the burst, so for the first second after apply (or after a quiet second) ingress can
    pass up to twice the rate; the long-run rate is exact.
    """

    kind = "rate_limit"

    def __init__(
        self,
        target: LinkTarget,
        kbit: float,
        burst_bytes: int | None = None,
        *,
        protect: Protection | None = None,
    ) -> None:
        if not isinstance(kbit, int | float) or not math.isfinite(kbit) or kbit < 8:
            raise FaultError(f"rate limit on {target}: kbit {kbit!r} must be a number >= 8")
        rate = round(kbit * 1000 / 8)
        if burst_bytes is None:
            burst_bytes = max(_MIN_BURST, rate // 50)
        if not isinstance(burst_bytes, int) or burst_bytes < 1514:
            raise FaultError(
                f"rate limit on {target}: burst_bytes {burst_bytes!r} must be a whole number "
                ">= 1514 (one full Ethernet frame)"
            )
        self.kbit = float(kbit)
        self.burst_bytes = burst_bytes
        super().__init__(target, protect)

    @property
    def bytes_per_s(self) -> int:
        return round(self.kbit * 1000 / 8)

    def params(self) -> dict[str, Any]:
        return {"kbit": self.kbit, "burst_bytes": self.burst_bytes}

    def _make(self, owner: Owner) -> None:
        police = (
            f"limit rate over {self.bytes_per_s} bytes/second burst {self.burst_bytes} bytes "
            "counter drop"
        )
        self._nft_table(owner, police, None)
        shaper = ["tbf", "rate", f"{self.bytes_per_s * 8}bit", "burst", str(self.burst_bytes),
                  "latency", f"{TBF_LATENCY_MS}ms"]  # fmt: skip
        self._tc_root(owner, TBF_HANDLE, shaper)


class Delay(_KernelFault):
    """Delay egress frames by ``delay_ms`` +- ``jitter_ms`` (netem; only where it exists).

    On a host without netem the constructor raises :class:`FaultUnsupported`.
    """

    kind = "delay"

    def __init__(
        self,
        target: LinkTarget,
        delay_ms: float,
        jitter_ms: float = 0.0,
        *,
        protect: Protection | None = None,
    ) -> None:
        self.delay_ms = float(delay_ms)
        self.jitter_ms = float(jitter_ms)
        super().__init__(target, protect)
        if not (math.isfinite(self.delay_ms) and 0 <= self.jitter_ms <= self.delay_ms):
            raise FaultError(
                f"delay on {target}: need 0 <= jitter_ms <= delay_ms, got {delay_ms}/{jitter_ms}"
            )

    def params(self) -> dict[str, Any]:
        return {"delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms}

    def _make(self, owner: Owner) -> None:
        netem = ["netem", "delay", f"{self.delay_ms:g}ms"]
        if self.jitter_ms:
            netem.append(f"{self.jitter_ms:g}ms")
        self._tc_root(owner, NETEM_HANDLE, netem)


# --- removal helpers, shared with bench.faults.stale -------------------------------------


def delete_table(
    namespace: str | None, table: str, family: str = "netdev", *, router: Router | None = None
) -> None:
    """Delete nft table ``family table`` (on ``router`` if given); one that (or whose
    namespace) is gone is fine."""
    what = f"deleting nft table {table}"
    argv = ["nft", "delete", "table", family, table]
    proc = run_at(router, namespace, argv, what=what, check=False)
    if proc.returncode != 0 and "No such file" not in proc.stderr:
        if namespace_gone(namespace, router):
            return
        detail = proc.stderr.strip().splitlines()[:1] or [f"exit status {proc.returncode}"]
        where = (namespace or "host") if router is None else f"{namespace or ''} {router}".strip()
        raise FaultError(f"cannot delete nft table {table} in {where}: {detail[0]}")


def root_qdisc(target: LinkTarget) -> tuple[str, str] | None:
    """(kind, handle) of the interface's configured root qdisc; None for the default."""
    out = target.run(
        ["tc", "-j", "qdisc", "show", "dev", target.interface], what=f"tc on {target}"
    ).stdout
    for entry in json.loads(out or "[]"):
        if entry.get("root") and entry.get("handle") not in (None, "0:"):
            return str(entry.get("kind")), str(entry["handle"])
    return None


def delete_root_qdisc(target: LinkTarget, handle: str) -> None:
    """Delete the root qdisc if it is ``handle`` (fieldrig's); anything else is left alone."""
    if target.namespace_gone():
        return
    if target.interface not in target.link_names():
        return
    current = root_qdisc(target)
    if current is None or current[1] != handle:
        return
    target.run(
        ["tc", "qdisc", "del", "dev", target.interface, "root", "handle", handle],
        what=f"removing qdisc {handle} on {target}",
    )


def _remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
