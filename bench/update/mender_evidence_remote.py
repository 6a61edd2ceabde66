"""On-device evidence reader of the Mender backend: what the device's own files say.

Runs on the gateway with the board's python3 (3.8+, standard library only) under the
device's flock, so no mender command writes meanwhile. Must not import anything from
``bench``. Usage: ``python3 -c SOURCE HELPER_SOURCE STORE DATA_DIR ARTIFACT_INFO PAYLOAD
SINCE``; ``HELPER_SOURCE`` is :mod:`bench.update.mender_remote` (its LMDB store reader).
Prints one JSON object:

``last_seq``
    The number of the last update command logged on the device (the mark for a later read).
``entries``
    The update commands logged after command ``SINCE`` (``DATA_DIR/fieldrig-update.log``
    and its predecessor ``.1``): seq, action, start and end (device clock), exit (None:
    it never finished, e.g. a power cut), download resumptions (mender 3.4 logs
    "Attempting to resume artifact download" each time it resumes with a Range request)
    and the text, its tail when long.
``payload``, ``listing``
    The payload file (size, mode, mtime, sha256) and every file of its directory.
``markers``
    Mender's committed artifact (store key ``artifact-name``), the pending install (key
    ``standalone-state``), the factory name (``ARTIFACT_INFO``) and the update module's
    work tree (artifact name, payload copies, the backup it restores on roll back).

The log's lines ``=== fieldrig SEQ NONCE begin|end ACTION EPOCH DETAIL`` are written by
the backend's device script around each install, commit and rollback.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
import types
from typing import Any, Dict, List, Optional

LOG_NAME = "fieldrig-update.log"
SEQ_NAME = "fieldrig-update.seq"
RESUME_MARK = "Attempting to resume artifact download"
TEXT_LIMIT = 16384  # characters of text kept per command (its tail)
LISTING_LIMIT = 64
HASH_LIMIT = 256 * 1024 * 1024  # files larger than this are listed without sha256
NOTE = re.compile(
    r"^=== fieldrig (\d+) (@@fieldrig-[0-9a-f]+@@) (begin|end) (\S+) (\d+(?:\.\d+)?) ?(.*)$"
)


def sha256_of(path: str) -> Optional[str]:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def describe(path: str, always_hash: bool = False) -> Dict[str, Any]:
    """A file's size, mode, mtime and sha256 (None past HASH_LIMIT unless ``always_hash``)."""
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path, "exists": False}
    small = always_hash or st.st_size <= HASH_LIMIT
    return {"path": path, "exists": True, "size": st.st_size, "mode": oct(st.st_mode & 0o7777),
            "mtime": st.st_mtime, "sha256": sha256_of(path) if small else None}  # fmt: skip


def listing(directory: str) -> List[Dict[str, Any]]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names[:LISTING_LIMIT]:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            found.append(describe(path))
        else:
            found.append({"path": path, "exists": True, "directory": os.path.isdir(path)})
    return found


def read_text(path: str, limit: int = 4096) -> Optional[str]:
    try:
        with open(path, errors="replace") as fh:
            return fh.read(limit)
    except OSError:
        return None


def parse_log(text: str) -> List[Dict[str, Any]]:
    """The commands in the log, in order; a begin without end never finished."""
    entries: List[Dict[str, Any]] = []
    current: Optional[Dict[str, Any]] = None
    lines: List[str] = []

    def close() -> None:
        if current is not None:
            body = "\n".join(lines).strip("\n")
            current["resumes"] = body.count(RESUME_MARK)
            current["text"] = body if len(body) <= TEXT_LIMIT else "[...]" + body[-TEXT_LIMIT:]
            entries.append(current)

    for line in text.split("\n"):
        match = NOTE.match(line)
        if match is None:
            if current is not None:
                lines.append(line)
            continue
        seq, nonce, what, action, epoch, detail = match.groups()
        if what == "begin":
            close()
            current = {"seq": int(seq), "nonce": nonce, "action": action,
                       "started": float(epoch), "ended": None, "exit": None,
                       "detail": detail}  # fmt: skip
            lines = []
        elif current is not None and current["nonce"] == nonce:
            current["ended"] = float(epoch)
            current["exit"] = detail
            close()
            current = None
    close()
    return entries


def markers(helper: Any, store: str, data: str, artifact_info: str) -> Dict[str, Any]:
    found: Dict[str, Any] = {"artifact_info": read_text(artifact_info)}
    try:
        with open(store, "rb") as fh:
            keys = helper.read_store(fh.read())
        found["committed"] = keys.get("artifact-name", b"").decode("utf-8", "replace") or None
        pending = keys.get(helper.STANDALONE_KEY)
        found["pending"] = None if pending is None else pending.decode("utf-8", "replace")
    except FileNotFoundError:
        found.update(committed=None, pending=None)
    except Exception as exc:  # a broken store is evidence too
        found["store_error"] = "%s: %s" % (type(exc).__name__, exc)
    modules = []
    for tree in sorted(glob.glob(os.path.join(data, "modules", "v3", "payloads", "*", "tree"))):
        modules.append({
            "tree": tree,
            "artifact_name": read_text(os.path.join(tree, "header", "artifact_name")),
            "files": listing(os.path.join(tree, "files")),
            "backup": listing(os.path.join(tree, "tmp", "backup")),
        })  # fmt: skip
    found["module_trees"] = modules
    return found


def main(argv: List[str]) -> int:
    if len(argv) != 7:
        print(json.dumps({"error": "usage: HELPER STORE DATA ARTIFACT_INFO PAYLOAD SINCE"}))
        return 2
    source, store, data, artifact_info, payload, since_text = argv[1:]
    helper = types.ModuleType("fieldrig_mender_helper")
    exec(compile(source, "fieldrig_mender_helper", "exec"), helper.__dict__)
    since = int(since_text)
    text = ""
    for path in (os.path.join(data, LOG_NAME + ".1"), os.path.join(data, LOG_NAME)):
        text += (read_text(path, 1 << 24) or "") + "\n"
    seq_text = (read_text(os.path.join(data, SEQ_NAME)) or "0").strip()
    result = {
        "last_seq": int(seq_text) if seq_text.isdigit() else 0,
        "entries": [e for e in parse_log(text) if e["seq"] > since],
        "payload": describe(payload, always_hash=True),
        "listing": listing(os.path.dirname(payload) or "/"),
        "markers": markers(helper, store, data, artifact_info),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
