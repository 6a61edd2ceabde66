"""The gateway side of :mod:`bench.mesh.remote_probe`: runs ON the gateway, with the board's
own python, and drives the dongle attached to the gateway with fieldrig's own radio driver and
:class:`~bench.mesh.probing.Prober`.

It is shipped to the board inside a zip archive with just the modules it needs (no pydantic,
no paramiko: the standard library, numpy and pyserial, as a board image with a dongle
carries them). It takes one JSON job as its only argument and writes JSON lines to stdout:

- ``{"kind": "ready", "firmware": ..., "hwaddr": ..., "protocol": ..., "port": ...}`` once
  the dongle answered its identity;
- ``{"kind": "probe", <ProbeRecord.to_row()>}`` the moment each probe's fate is known (a
  late echo is a second line for the same seq, which supersedes the first);
- ``{"kind": "done", "sent": n, "strays": k}`` at the end, exit status 0;
- ``{"kind": "error", "message": "..."}`` and exit status 2 when the run cannot be done.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from bench.errors import BenchError
from bench.mesh.loss import ProbeRecord
from bench.mesh.probing import Prober
from bench.radio.capability import Radio
from bench.transport.serial import SerialPort

EXIT_FAILED = 2


def _emit(out: IO[str], kind: str, **fields: Any) -> None:
    out.write(json.dumps({"kind": kind, **fields}) + "\n")
    out.flush()


def open_dongle(job: dict[str, Any]) -> Radio:
    """The job's driver class (``module:Class``, the host's registry entry) on its port."""
    module_name, _, class_name = str(job["radio"]).partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    port = SerialPort(str(job["port"]), baudrate=int(job["baudrate"]), name="gateway-radio")
    port.open()
    try:
        radio: Radio = cls(port, **dict(job.get("options", {})))
    except BaseException:
        port.close()
        raise
    return radio


def run_job(job: dict[str, Any], out: IO[str]) -> None:
    """Open the dongle, probe as the job says, stream every record; raises BenchError."""
    radio = open_dongle(job)
    try:
        identity = radio.identify()
        _emit(out, "ready", firmware=identity.firmware, hwaddr=identity.hwaddr,
              protocol=identity.protocol, port=job["port"])  # fmt: skip

        def keep(record: ProbeRecord) -> None:
            _emit(out, "probe", **record.to_row())

        prober = Prober(
            radio,
            tmax_s=float(job["tmax_s"]),
            time_scale=float(job["time_scale"]),
            on_record=keep,
            payload_len=int(job["payload_len"]),
            first_seq=int(job["first_seq"]),
        )
        targets = [
            (str(dest), None if hops is None else int(hops)) for dest, hops in job["targets"]
        ]
        schedule = [float(t) for t in job["schedule"]]
        records = prober.run(targets, schedule)
        _emit(out, "done", sent=len(records), strays=len(prober.strays))
    finally:
        radio.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        _emit(sys.stdout, "error", message="usage: probe.pyz '<json job>'")
        return EXIT_FAILED
    try:
        job = json.loads(args[0])
        run_job(job, sys.stdout)
    except (BenchError, OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        _emit(sys.stdout, "error", message=f"{type(exc).__name__}: {message}")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
