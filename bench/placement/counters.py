"""Byte counters on a gateway's backhaul link: an nftables ``netdev`` table counting what
leaves (egress) and arrives (ingress) on the interface.

The table carries a fieldrig owner mark (:mod:`bench.faults.owner`) and the ``fieldrig_``
prefix, so a crashed run's counter table is found and removed by
:func:`bench.faults.stale.clear_stale` like a fault's. Counts are of whole frames as the
netdev hook sees them (Ethernet header included), i.e. the bytes the link carries.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from types import TracebackType
from typing import Any, Self

from bench.faults import cleanup
from bench.faults.base import FaultError
from bench.faults.kinds import NFT_PRIORITY, TABLE_PREFIX, delete_table
from bench.faults.owner import Owner, encode_comment, encode_run_comment
from bench.faults.target import LinkTarget, run_in

__all__ = ["ByteCounter", "CounterError", "Counts"]

KIND = "counter"


class CounterError(FaultError):
    """The counter table could not be made, read or removed."""


class Counts(dict[str, int]):
    """``{"egress_bytes", "egress_packets", "ingress_bytes", "ingress_packets"}``."""


class ByteCounter:
    """``with ByteCounter(target) as c: ...; c.read()``: counts frames on one interface.

    Registered with :mod:`bench.faults.cleanup` while it exists, so it is removed on exit
    and on SIGTERM like a fault.
    """

    def __init__(self, target: LinkTarget) -> None:
        self.target = target
        self.table: str | None = None
        self._base = Counts()

    # the cleanup registry treats us as a fault: describe/apply/remove
    def describe(self) -> dict[str, Any]:
        return {"kind": KIND, "target": self.target.label, "params": {}, "backend": "nft"}

    def apply(self) -> None:
        """Create the table (a chain and a counter per direction) in one nft transaction."""
        if self.table is not None:
            raise CounterError(f"byte counter on {self.target}: already counting")
        self.target.check_present()
        owner = Owner.current()
        name = f"{TABLE_PREFIX}{KIND}_{owner.pid}_{secrets.token_hex(3)}"
        run = encode_run_comment(owner)
        lines = [f'create table netdev {name} {{ comment "{encode_comment(owner, KIND)}" ; }}']
        for hook in ("ingress", "egress"):
            lines.append(
                f"add chain netdev {name} {hook} {{ type filter hook {hook} device "
                f'"{self.target.interface}" priority {NFT_PRIORITY} ; policy accept ; '
                f'comment "{run}" ; }}'
            )
            lines.append(f"add rule netdev {name} {hook} counter")
        cleanup.register(self)
        self.table = name
        try:
            run_in(self.target.namespace, ["nft", "-f", "-"], input_text="\n".join(lines) + "\n",
                   what=f"byte counter on {self.target}")  # fmt: skip
        except BaseException:
            with contextlib.suppress(FaultError):
                self.remove()
            raise

    def read(self) -> Counts:
        """The counts since :meth:`apply` (or the last :meth:`reset`)."""
        raw = self._raw()
        return Counts({k: v - self._base.get(k, 0) for k, v in raw.items()})

    def _raw(self) -> Counts:
        if self.table is None:
            raise CounterError(f"byte counter on {self.target}: not applied; call apply() first")
        out = run_in(self.target.namespace, ["nft", "-j", "list", "table", "netdev", self.table],
                     what=f"reading byte counter on {self.target}").stdout  # fmt: skip
        counts = Counts(egress_bytes=0, egress_packets=0, ingress_bytes=0, ingress_packets=0)
        for item in json.loads(out).get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    counts[f"{rule['chain']}_bytes"] += int(expr["counter"]["bytes"])
                    counts[f"{rule['chain']}_packets"] += int(expr["counter"]["packets"])
        return counts

    def reset(self) -> Counts:
        """Start counting from zero again; returns the counts until now."""
        counts = self.read()
        self._base = self._raw()
        return counts

    def remove(self) -> None:
        """Delete the table (idempotent)."""
        if self.table is not None:
            try:
                delete_table(self.target.namespace, self.table)
            except FaultError as exc:
                raise CounterError(str(exc)) from None
            self.table = None
            self._base = Counts()
        cleanup.unregister(self)

    def __enter__(self) -> Self:
        self.apply()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
