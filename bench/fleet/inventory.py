"""What a device really is: board, OS, kernel, libc, Python, inference runtime, fingerprint.

The probe runs on the board with its own python3 and reads the same files on a virtual
gateway as on a real one (device-tree model, os-release, uname).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bench.gateway import CommandRunner

# Standard library only; runs on the board. Prints one JSON object.
PROBE = r"""
import json, os, platform, sys
def read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read().rstrip(b"\0\n").decode("utf-8", "replace").strip()
    except OSError:
        return None
def os_release():
    fields = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = read(path)
        if text:
            for line in text.splitlines():
                if "=" in line:
                    k, v = line.split("=", 1)
                    fields[k] = v.strip().strip('"')
            break
    return fields
def runtime():
    import importlib
    for module, name in (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"),
                         ("tensorflow", "tensorflow")):
        try:
            mod = importlib.import_module(module)
        except Exception:
            continue
        version = getattr(mod, "__version__", None)
        if version is None:
            try:
                from importlib import metadata
                version = metadata.version(name)
            except Exception:
                version = "unknown"
        return {"name": name, "version": version}
    return None
rel = os_release()
model = (read("/sys/firmware/devicetree/base/model") or read("/proc/device-tree/model")
         or read("/sys/class/dmi/id/product_name"))
libc = platform.libc_ver()
print(json.dumps({
    "board_model": model,
    "hostname": platform.node(),
    "os": rel.get("PRETTY_NAME"),
    "os_id": rel.get("ID"),
    "os_version": rel.get("VERSION_ID"),
    "kernel": platform.release(),
    "arch": platform.machine(),
    "libc": (libc[0] + " " + libc[1]).strip() or None,
    "python": platform.python_version(),
    "cpus": os.cpu_count(),
    "inference_runtime": runtime(),
    "virtual_board": rel.get("FIELDRIG_VIRTUAL_BOARD"),
}, sort_keys=True))
"""

# Fields that say what the device is; hostname and the like stay out of the fingerprint.
FINGERPRINT_FIELDS = (
    "board_model", "os", "kernel", "arch", "libc", "python", "inference_runtime",
)  # fmt: skip


def fingerprint(inventory: dict[str, Any]) -> str:
    """A short stable hash of what the device is, to group results and spot fleet drift."""
    identity = {key: inventory.get(key) for key in FINGERPRINT_FIELDS}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def collect_inventory(gateway: CommandRunner) -> dict[str, Any]:
    """Run the probe on the gateway and return its inventory with a fingerprint."""
    result = gateway.run(["python3", "-c", PROBE], timeout=60)
    inventory: dict[str, Any] = json.loads(result.stdout)
    inventory["fingerprint"] = fingerprint(inventory)
    return inventory
