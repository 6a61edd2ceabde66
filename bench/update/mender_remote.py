"""On-device helper of the Mender backend: read mender's store, reap orphaned children.

Runs on the gateway with the board's python3 (3.8+, standard library only) while the bench
holds the device's lock, so no mender process writes the store meanwhile. Must not import
anything from ``bench``. Usage (``python3 -c SOURCE ...``):

``store [--expect idle|pending] STORE``
    Mender 3.4 keeps the committed artifact name under ``artifact-name`` and an install
    waiting for commit or roll back under ``standalone-state`` (JSON: ArtifactName,
    PayloadTypes, ...); ``mender commit`` answers "nothing to commit" exactly when that key
    is absent. (Files in the module work directory outlive a killed install, so they
    cannot say whether one is pending; the store can.) Prints ``{"keys": {...}}`` or
    ``{"error": ...}`` with exit 2; with ``--expect`` prints nothing and exits 0 when no
    install waits (idle) / one does (pending), else 3.

``reap DATA_DIR``
    Mender starts update modules and state scripts in process groups of their own, so
    killing mender on a timeout leaves them running. This kills (TERM, then KILL) the
    process groups of processes whose argv names a file under ``DATA_DIR/scripts/`` or
    ``DATA_DIR/modules/``, in this network namespace only (virtual gateways share the
    host's process table and the same path text), never this process's ancestors' groups.

Store format (LMDB's mdb.c, 64-bit build): two meta pages, the one with the larger txnid is
current; its main database root leads through branch pages to leaf pages whose nodes hold
key and value inline, or in overflow pages (F_BIGDATA).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import sys
import time
from typing import Dict, List, Optional, Set, Tuple

MAGIC = 0xBEEFC0DE
PAGEHDRSZ = 16
P_BRANCH, P_LEAF, P_LEAF2 = 0x01, 0x02, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
P_INVALID = 0xFFFFFFFFFFFFFFFF
MAX_PAGES_VISITED = 100000
STANDALONE_KEY = "standalone-state"


class StoreError(Exception):
    pass


def read_meta(buf: bytes, offset: int) -> Optional[Tuple[int, int, int]]:
    """(page size, main db root, txnid) of the meta page at ``offset``, or None."""
    meta = offset + PAGEHDRSZ
    if len(buf) < meta + 136:
        return None
    magic, _version = struct.unpack_from("<II", buf, meta)
    if magic != MAGIC:
        return None
    psize = struct.unpack_from("<I", buf, meta + 24)[0]  # mm_dbs[FREE_DBI].md_pad
    root = struct.unpack_from("<Q", buf, meta + 24 + 48 + 40)[0]  # mm_dbs[MAIN_DBI].md_root
    txnid = struct.unpack_from("<Q", buf, meta + 128)[0]
    return psize, root, txnid


def read_store(buf: bytes) -> Dict[str, bytes]:
    """Every key and value of the main database, as {str: bytes}."""
    first = read_meta(buf, 0)
    if first is None:
        raise StoreError("not an LMDB file (bad magic in page 0)")
    psize = first[0]
    if psize < 512 or psize & (psize - 1):
        raise StoreError("implausible page size %d" % psize)
    metas = [m for m in (first, read_meta(buf, psize)) if m is not None]
    _, root, _ = max(metas, key=lambda m: m[2])
    items: Dict[str, bytes] = {}
    if root == P_INVALID:
        return items
    stack = [root]
    visited = 0
    while stack:
        pgno = stack.pop()
        visited += 1
        if visited > MAX_PAGES_VISITED or (pgno + 1) * psize > len(buf):
            raise StoreError("page %d is outside the file or the tree loops" % pgno)
        base = pgno * psize
        flags, lower = struct.unpack_from("<HH", buf, base + 10)
        if flags & P_LEAF2 or not flags & (P_BRANCH | P_LEAF):
            raise StoreError("page %d is neither a branch nor a plain leaf" % pgno)
        for i in range((lower - PAGEHDRSZ) >> 1):
            node = base + struct.unpack_from("<H", buf, base + PAGEHDRSZ + 2 * i)[0]
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", buf, node)
            key = bytes(buf[node + 8 : node + 8 + ksize])
            if flags & P_BRANCH:
                stack.append(lo | (hi << 16) | (nflags << 32))
                continue
            if nflags & (F_SUBDATA | F_DUPDATA):
                continue  # named sub-databases and duplicates: mender uses neither
            size = lo | (hi << 16)
            start = node + 8 + ksize
            if nflags & F_BIGDATA:
                start = struct.unpack_from("<Q", buf, start)[0] * psize + PAGEHDRSZ
            items[key.decode("utf-8", "replace")] = bytes(buf[start : start + size])
    return items


def store_main(args: List[str]) -> int:
    expect: Optional[str] = None
    if len(args) == 3 and args[0] == "--expect" and args[1] in ("idle", "pending"):
        expect, args = args[1], args[2:]
    if len(args) != 1:
        print(json.dumps({"error": "usage: store [--expect idle|pending] STORE"}))
        return 2
    try:
        with open(args[0], "rb") as f:
            items = read_store(f.read())
    except FileNotFoundError:
        items = {}  # mender creates the store on its first command
    except OSError as exc:
        print(json.dumps({"error": "cannot read %s: %s" % (args[0], exc)}))
        return 2
    except (StoreError, struct.error) as exc:
        print(json.dumps({"error": "%s: %s" % (args[0], exc)}))
        return 2
    if expect is not None:
        pending = STANDALONE_KEY in items
        return 0 if pending == (expect == "pending") else 3
    print(json.dumps({"keys": {k: v.decode("utf-8", "replace") for k, v in items.items()}}))
    return 0


def ancestors_groups() -> Set[int]:
    """Process groups of this process and its ancestors (never to be killed)."""
    groups: Set[int] = set()
    pid = os.getpid()
    while pid > 1:
        try:
            groups.add(os.getpgid(pid))
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return groups


def children_groups(data_dir: str) -> Set[int]:
    """Process groups of mender's modules and scripts under ``data_dir``, here."""
    prefixes = (data_dir.rstrip("/") + "/scripts/", data_dir.rstrip("/") + "/modules/")
    own_net = os.readlink("/proc/self/ns/net")
    groups: Set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")
            if os.readlink("/proc/%s/ns/net" % name) != own_net:
                continue
            if any(a.startswith(prefixes) for a in argv[:4]):
                groups.add(os.getpgid(int(name)))
        except (OSError, ValueError):
            continue
    return groups - ancestors_groups()


def reap_main(args: List[str]) -> int:
    if len(args) != 1 or not args[0].startswith("/"):
        print(json.dumps({"error": "usage: reap DATA_DIR"}))
        return 2
    groups = children_groups(args[0])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        if groups and sig == signal.SIGTERM:
            time.sleep(1.0)
    print(json.dumps({"reaped_groups": sorted(groups)}))
    return 0


def main(argv: List[str]) -> int:
    if len(argv) >= 2 and argv[1] == "store":
        return store_main(argv[2:])
    if len(argv) >= 2 and argv[1] == "reap":
        return reap_main(argv[2:])
    print(json.dumps({"error": "usage: store ... | reap DATA_DIR"}))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
