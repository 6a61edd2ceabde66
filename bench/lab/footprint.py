"""How much memory a set of processes uses, from /proc/PID/smaps_rollup (proc(5)).

``pss`` (proportional set size: each shared page divided among the processes that map it)
adds up to what the processes together cost the machine; ``rss`` counts every shared page
once per process, so its sum overstates what 50 sshds sharing one binary use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Footprint:
    """Memory of a group of processes, in bytes."""

    processes: int
    pss_bytes: int
    rss_bytes: int

    @property
    def pss_mb(self) -> float:
        return self.pss_bytes / 2**20

    @property
    def rss_mb(self) -> float:
        return self.rss_bytes / 2**20


def footprint(pids: Iterable[int]) -> Footprint:
    """Sum of PSS and RSS of ``pids``; processes that are gone by now are left out."""
    count = pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
                text = fh.read()
        except OSError:
            continue
        fields = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
        if "Rss" not in fields:
            continue  # a kernel thread or a zombie: no memory of its own
        count += 1
        pss += fields.get("Pss", 0)
        rss += fields["Rss"]
    return Footprint(count, pss, rss)
