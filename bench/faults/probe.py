"""What this host can do for link faults, probed once per process in a throwaway namespace.

The probe runs ``unshare --net`` (an anonymous namespace that vanishes with the probe, so
a killed probe leaves nothing behind), makes a veth pair and tries each mechanism: the
netem and tbf qdiscs, the tc police action, and nftables netdev ingress and egress hooks
(egress needs Linux 5.16 and nft 1.0.1). :func:`backend_report` says which mechanism each
fault kind uses here; record it with the results.

A router target (:class:`~bench.faults.router.Router`) is probed on the router, over SSH,
with the same tests: in an ``unshare --net`` namespace where the router has unshare, else
on a dummy interface ``frprobe0`` (and an nft table ``frprobe``) in its own namespace,
removed at the end of the probe and before it starts (so a cut probe cleans up next time).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass
from typing import Any

from bench.faults.base import FaultError, FaultUnsupported
from bench.faults.router import Router

__all__ = ["HostSupport", "backend_report", "probe", "probe_router", "require", "support_for"]

_PACKAGES = {"nft": "nftables", "tc": "iproute2", "ip": "iproute2", "unshare": "util-linux"}

# Each line prints its feature's name when the kernel accepts it; $D is the device, $T the
# nft table.
_TESTS = """
tc qdisc add dev $D root netem delay 1ms 2>/dev/null && echo netem
tc qdisc del dev $D root 2>/dev/null
tc qdisc add dev $D root tbf rate 1mbit burst 10kb latency 50ms 2>/dev/null && echo tbf
tc qdisc add dev $D ingress 2>/dev/null && tc filter add dev $D parent ffff: protocol all \
  u32 match u32 0 0 police rate 1mbit burst 10k drop 2>/dev/null && echo tc_police
nft add table netdev $T 2>/dev/null && echo nft
nft "add chain netdev $T i { type filter hook ingress device \\"$D\\" priority 0; }" \
  2>/dev/null && echo nft_ingress
nft "add chain netdev $T e { type filter hook egress device \\"$D\\" priority 0; }" \
  2>/dev/null && echo nft_egress
nft "add rule netdev $T i numgen random mod 100 < 50 drop" 2>/dev/null && echo nft_numgen
nft "add rule netdev $T i limit rate over 1000 bytes/second burst 1500 bytes drop" \
  2>/dev/null && echo nft_limit
"""
_SCRIPT = (
    "D=fp0 T=fp\nip link add fp0 type veth peer name fp1 || exit 3\n"
    "ip link set fp0 up; ip link set fp1 up\n" + _TESTS + "exit 0\n"
)
_ROUTER_CLEAN = "ip link del frprobe0 2>/dev/null; nft delete table netdev frprobe 2>/dev/null\n"
_ROUTER_SCRIPT = (
    "D=frprobe0 T=frprobe\n" + _ROUTER_CLEAN + "ip link add frprobe0 type dummy || exit 3\n"
    "ip link set frprobe0 up\n" + _TESTS + _ROUTER_CLEAN + "exit 0\n"
)


@dataclass(frozen=True)
class HostSupport:
    """Which fault mechanisms this host's kernel and tools accept."""

    netem: bool
    tbf: bool
    tc_police: bool
    nft: bool
    nft_ingress: bool
    nft_egress: bool
    nft_numgen: bool
    nft_limit: bool
    kernel: str
    nft_version: str | None
    tc_version: str | None


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else None


@functools.cache
def probe() -> HostSupport:
    """Probe the host once per process (cached); needs root."""
    if os.geteuid() != 0:
        raise FaultError(
            "link faults need root (CAP_NET_ADMIN) for nft and tc; run the bench as root"
        )
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            raise FaultUnsupported(
                f"link faults need '{tool}'; install it: apt-get install {_PACKAGES[tool]}"
            )
    try:
        proc = subprocess.run(
            ["unshare", "--net", "sh", "-c", _SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FaultError("the link-fault probe (unshare --net) hung for 30 s") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise FaultError(f"the link-fault probe could not make a veth pair: {detail}")
    return _support(
        set(proc.stdout.split()),
        has_nft=shutil.which("nft") is not None,
        kernel=platform.release(),
        nft_version=_version(["nft", "--version"]),
        tc_version=_version(["tc", "-V"]),
    )


def _support(
    found: set[str], *, has_nft: bool, kernel: str, nft_version: str | None,
    tc_version: str | None,
) -> HostSupport:  # fmt: skip
    return HostSupport(
        netem="netem" in found,
        tbf="tbf" in found,
        tc_police="tc_police" in found,
        nft=has_nft and "nft" in found,
        nft_ingress=has_nft and "nft_ingress" in found,
        nft_egress=has_nft and "nft_egress" in found,
        nft_numgen=has_nft and "nft_numgen" in found,
        nft_limit=has_nft and "nft_limit" in found,
        kernel=kernel,
        nft_version=nft_version,
        tc_version=tc_version,
    )


_router_probes: dict[Router, HostSupport] = {}
_router_lock = threading.Lock()


def probe_router(router: Router) -> HostSupport:
    """Probe a router over SSH once per process (cached per ``user@host:port``)."""
    with _router_lock:
        if router in _router_probes:
            return _router_probes[router]
    what = f"link-fault probe on {router.label}"
    tools = router.run(
        ["sh", "-c", "for t in ip tc nft unshare; do command -v $t >/dev/null && echo $t; done; "
         "unshare --net true 2>/dev/null && echo netns"],
        what=what, check=False,
    ).stdout.split()  # fmt: skip
    for tool in ("ip", "tc"):
        if tool not in tools:
            raise FaultUnsupported(
                f"link faults on {router.label} need '{tool}' there; install it (OpenWrt: "
                f"opkg install {'ip-full' if tool == 'ip' else 'tc-full'}; Debian: iproute2)"
            )
    if "netns" in tools:
        argv = ["unshare", "--net", "sh", "-c", _SCRIPT]
    else:
        argv = ["sh", "-c", _ROUTER_SCRIPT]
    proc = router.run(argv, what=what, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise FaultError(f"{what} could not make a probe interface: {detail}")

    def version(argv: list[str]) -> str | None:
        out = router.run(argv, what=what, check=False)
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if lines else None

    support = _support(
        set(proc.stdout.split()),
        has_nft="nft" in tools,
        kernel=version(["uname", "-r"]) or "unknown",
        nft_version=version(["nft", "--version"]) if "nft" in tools else None,
        tc_version=version(["tc", "-V"]),
    )
    with _router_lock:
        _router_probes[router] = support
    return support


def support_for(router: Router | None) -> HostSupport:
    """What the bench host (``router=None``) or a router supports."""
    return probe() if router is None else probe_router(router)


def _backends(s: HostSupport) -> dict[str, str | None]:
    both = s.nft_ingress and s.nft_egress
    return {
        "loss": "nftables netdev ingress+egress numgen" if both and s.nft_numgen else None,
        "partition": "nftables netdev ingress+egress drop" if both else None,
        "rate_limit": (
            "tc tbf (egress) + nftables limit policing (ingress)"
            if s.tbf and s.nft_ingress and s.nft_limit
            else None
        ),
        "flapping": "nftables netdev ingress+egress drop, toggled" if both else None,
        "delay": "tc netem (egress)" if s.netem else None,
        "delay_relay": "userspace TCP relay (nft nat redirect)" if s.nft else None,
    }


def backend_report(router: Router | None = None) -> dict[str, Any]:
    """What the host (or ``router``) supports and the backend each fault kind uses there
    (None: unavailable); ``where`` names the machine probed."""
    support = support_for(router)
    backends = _backends(support)
    if router is not None:
        backends["delay_relay"] = None  # the relay runs on the bench host only
    where = "bench host" if router is None else router.label
    return {**asdict(support), "backends": backends, "where": where}


def require(kind: str, where: str, router: Router | None = None) -> str:
    """The backend for ``kind`` on this host (or ``router``), or a one-line
    FaultUnsupported saying what lacks."""
    support = support_for(router)
    backend = _backends(support)[kind]
    if backend is not None:
        return backend
    if kind == "delay":
        raise FaultUnsupported(
            f"delay on {where}: this kernel has no netem (sch_netem) for frame delay; use "
            "bench.faults.delay() (or RelayDelay), which falls back to the userspace relay"
        )
    if not support.nft:
        raise FaultUnsupported(
            f"{kind} on {where} needs nftables; install it: apt-get install nftables"
        )
    missing = [
        name
        for name, ok in (
            ("nftables netdev egress hook (Linux >= 5.16, nft >= 1.0.1)", support.nft_egress),
            ("nftables netdev ingress hook", support.nft_ingress),
            ("nft numgen", support.nft_numgen or kind != "loss"),
            ("the tbf qdisc", support.tbf or kind != "rate_limit"),
            ("nft limit", support.nft_limit or kind != "rate_limit"),
        )
        if not ok
    ]
    lacks = ", ".join(missing) or "a working nft/tc (see backend_report())"
    raise FaultUnsupported(f"{kind} on {where}: this host lacks {lacks}")
