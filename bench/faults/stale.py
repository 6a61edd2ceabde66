"""Faults a dead process left behind: find them by their owner marks, remove them.

Sources: every ``fieldrig_*`` nft table in the host and in every named network namespace
(its comment is the owner mark), the state files of tc qdiscs under
:data:`~bench.faults.owner.STATE_DIR`, and root qdiscs with a fieldrig handle that no
state file claims. A fault is stale when its owner is dead, was made in another boot, or
(qdisc without a state file) has no owner at all. A live owner's faults are never
touched; a table whose comment is not a fieldrig mark is not ours to judge and is skipped.

Routers (:class:`~bench.faults.router.Router`) are swept the same way over SSH, in their
own namespace: only those passed in (the rig's), and only their state files are judged.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.faults.kinds import TABLE_PREFIX, TC_HANDLES, delete_root_qdisc, delete_table
from bench.faults.owner import STATE_DIR, Owner, decode_comment
from bench.faults.router import Router
from bench.faults.target import LinkTarget, run_at
from bench.lab import system

__all__ = ["StaleFault", "clear_stale", "find_stale"]

_COMMENT = re.compile(r'^\s*comment "(.*)"\s*$', re.MULTILINE)


@dataclass(frozen=True)
class StaleFault:
    """One leftover piece of a fault: an nft table, a tc qdisc or a state file."""

    namespace: str | None
    kind: str
    resource: str  # what it is, e.g. "nft table netdev fieldrig_loss_12_ab12cd"
    reason: str
    owner: Owner | None
    interface: str | None = None
    table: str | None = None
    tc_handle: str | None = None
    state_file: Path | None = None
    family: str = "netdev"
    router: Router | None = None

    @property
    def where(self) -> str:
        """The namespace (or ``host``), prefixed with the router for a router's fault."""
        local = self.namespace or "host"
        return local if self.router is None else f"{self.router.label} {local}"

    def __str__(self) -> str:
        return f"{self.resource} in {self.where} ({self.kind}): {self.reason}"


#: nft families fieldrig makes tables in: netdev (loss, partition, ...), ip (the delay
#: relay's redirect)
TABLE_FAMILIES = ("netdev", "ip")


def _namespaces() -> list[str | None]:
    return [None, *system.netns_list()]


def _stale_tables(
    namespace: str | None, family: str, router: Router | None = None
) -> list[StaleFault]:
    what = f"listing nft tables in {namespace or 'host'}{f' on {router}' if router else ''}"
    proc = run_at(router, namespace, ["nft", "list", "tables", family], what=what, check=False)
    found = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(TABLE_PREFIX):
            continue
        table = parts[2]
        argv = ["nft", "-t", "list", "table", family, table]
        listing = run_at(router, namespace, argv, what=what, check=False).stdout
        comments = _COMMENT.findall(listing)  # the table's first, then its chains'
        if not comments:
            continue
        mark = decode_comment(comments[0], comments[1] if len(comments) > 1 else None)
        if mark is None:
            continue  # gone meanwhile, or not a fieldrig mark
        owner, kind = mark
        reason = owner.dead_reason()
        if reason is not None:
            device = re.search(r'device "([^"]+)"', listing)
            found.append(
                StaleFault(
                    namespace,
                    kind,
                    f"nft table {family} {table}",
                    reason,
                    owner,
                    interface=device.group(1) if device else None,
                    table=table,
                    family=family,
                    router=router,
                )
            )
    return found


def _state_records() -> list[tuple[Path, dict[str, object]]]:
    records = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            records.append((path, data))
    return records


def _router_of(data: dict[str, object], routers: list[Router]) -> tuple[bool, Router | None]:
    """(known, router): a state file of the bench host, or of one of ``routers``."""
    entry = data.get("router")
    if entry is None:
        return True, None
    return next(((True, r) for r in routers if r.matches(entry)), (False, None))


def _stale_qdiscs(
    namespaces: list[str | None], every_state: bool, routers: list[Router]
) -> list[StaleFault]:
    found = []
    claimed = set()
    for path, data in _state_records():
        ns = data.get("namespace")
        namespace = ns if isinstance(ns, str) else None
        known, router = _router_of(data, routers)
        if not known or (router is None and not every_state and namespace not in namespaces):
            continue  # a router's not given here, or a namespace not asked about
        interface, handle = str(data.get("interface")), str(data.get("tc_handle"))
        claimed.add((router, namespace, interface, handle))
        owner_data = data.get("owner")
        owner = Owner.from_json(owner_data)
        kind = str(owner_data.get("kind", "unknown")) if isinstance(owner_data, dict) else "?"
        reason = "unreadable state file" if owner is None else owner.dead_reason()
        if reason is not None:
            found.append(
                StaleFault(
                    namespace,
                    kind,
                    f"tc qdisc {handle} on {interface}",
                    reason,
                    owner,
                    interface=interface,
                    tc_handle=handle,
                    state_file=path,
                    router=router,
                )
            )
    places: list[tuple[Router | None, str | None]] = [(None, ns) for ns in namespaces]
    for router, namespace in places + [(r, None) for r in routers]:
        if router is None and namespace is not None and namespace not in system.netns_list():
            continue
        argv = ["tc", "-j", "qdisc", "show"]
        proc = run_at(router, namespace, argv, what="listing qdiscs", check=False)
        try:
            entries = json.loads(proc.stdout or "[]")
        except ValueError:
            continue
        for entry in entries:
            handle, dev = entry.get("handle"), entry.get("dev")
            ours = entry.get("root") and handle in TC_HANDLES and dev is not None
            if ours and (router, namespace, dev, handle) not in claimed:
                found.append(
                    StaleFault(
                        namespace,
                        "unknown",
                        f"tc qdisc {handle} on {dev}",
                        "fieldrig handle without a state file (no owner)",
                        None,
                        interface=dev,
                        tc_handle=handle,
                        router=router,
                    )
                )
    return found


def _router_tables(router: Router) -> list[StaleFault]:
    tools = run_at(router, None, ["sh", "-c", "command -v nft"], what="", check=False)
    if tools.returncode != 0:
        return []  # no nft there: no tables of ours either
    return [s for family in TABLE_FAMILIES for s in _stale_tables(None, family, router)]


def find_stale(
    namespaces: list[str | None] | None = None, routers: Sequence[Router] = ()
) -> list[StaleFault]:
    """Every fault piece whose owner is dead or from another boot (read-only).

    ``namespaces``: where to look on the bench host (None: the host, every named namespace
    and every state file, also those of namespaces that no longer exist); when given,
    state files of qdiscs in other namespaces are left alone. ``routers``: routers to
    sweep over SSH as well (a router's state files are judged only when it is given).
    """
    where = _namespaces() if namespaces is None else namespaces
    found: list[StaleFault] = []
    if shutil.which("nft") is not None:
        for namespace in where:
            if namespace is None or namespace in system.netns_list():
                for family in TABLE_FAMILIES:
                    found.extend(_stale_tables(namespace, family))
    for router in routers:
        found.extend(_router_tables(router))
    found.extend(_stale_qdiscs(where, every_state=namespaces is None, routers=list(routers)))
    return found


def clear_stale(
    namespaces: list[str | None] | None = None, routers: Sequence[Router] = ()
) -> list[StaleFault]:
    """Remove what :func:`find_stale` finds (owner re-checked first); returns what went."""
    removed = []
    for stale in find_stale(namespaces, routers):
        if stale.owner is not None and stale.owner.dead_reason() is None:
            continue
        if stale.table is not None:
            delete_table(stale.namespace, stale.table, stale.family, router=stale.router)
        if stale.tc_handle is not None and stale.interface is not None:
            target = LinkTarget(stale.namespace, stale.interface, stale.router)
            delete_root_qdisc(target, stale.tc_handle)
        if stale.state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale.state_file)
        removed.append(stale)
    return removed
