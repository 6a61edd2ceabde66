"""What this host can do for link faults, probed once per process in a throwaway namespace.

The probe runs ``unshare --net`` (an anonymous namespace that vanishes with the probe, so
a killed probe leaves nothing behind), makes a veth pair and tries each mechanism: the
netem and tbf qdiscs, the tc police action, and nftables netdev ingress and egress hooks
(egress needs Linux 5.16 and nft 1.0.1). :func:`backend_report` says which mechanism each
fault kind uses here; record it with the results.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from bench.faults.base import FaultError, FaultUnsupported

__all__ = ["HostSupport", "backend_report", "probe", "require"]

_PACKAGES = {"nft": "nftables", "tc": "iproute2", "ip": "iproute2", "unshare": "util-linux"}

# Each line prints its feature's name when the kernel accepts it.
_SCRIPT = """
ip link add fp0 type veth peer name fp1 || exit 3
ip link set fp0 up; ip link set fp1 up
tc qdisc add dev fp0 root netem delay 1ms 2>/dev/null && echo netem
tc qdisc del dev fp0 root 2>/dev/null
tc qdisc add dev fp0 root tbf rate 1mbit burst 10kb latency 50ms 2>/dev/null && echo tbf
tc qdisc add dev fp0 ingress 2>/dev/null && tc filter add dev fp0 parent ffff: protocol all \
  u32 match u32 0 0 police rate 1mbit burst 10k drop 2>/dev/null && echo tc_police
nft add table netdev fp 2>/dev/null && echo nft
nft 'add chain netdev fp i { type filter hook ingress device "fp0" priority 0; }' \
  2>/dev/null && echo nft_ingress
nft 'add chain netdev fp e { type filter hook egress device "fp0" priority 0; }' \
  2>/dev/null && echo nft_egress
nft 'add rule netdev fp i numgen random mod 100 < 50 drop' 2>/dev/null && echo nft_numgen
nft 'add rule netdev fp i limit rate over 1000 bytes/second burst 1500 bytes drop' \
  2>/dev/null && echo nft_limit
exit 0
"""


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
    found = set(proc.stdout.split())
    has_nft = shutil.which("nft") is not None
    return HostSupport(
        netem="netem" in found,
        tbf="tbf" in found,
        tc_police="tc_police" in found,
        nft=has_nft and "nft" in found,
        nft_ingress=has_nft and "nft_ingress" in found,
        nft_egress=has_nft and "nft_egress" in found,
        nft_numgen=has_nft and "nft_numgen" in found,
        nft_limit=has_nft and "nft_limit" in found,
        kernel=platform.release(),
        nft_version=_version(["nft", "--version"]),
        tc_version=_version(["tc", "-V"]),
    )


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


def backend_report() -> dict[str, Any]:
    """What the host supports and the backend each fault kind uses (None: unavailable)."""
    support = probe()
    return {**asdict(support), "backends": _backends(support)}


def require(kind: str, where: str) -> str:
    """The backend for ``kind`` on this host, or a one-line FaultUnsupported saying what lacks."""
    support = probe()
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
