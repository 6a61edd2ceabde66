"""The virtual lab's radios: one Spinel border-router dongle on a pty per gateway, each
fronting its own simulated mesh, an RF attenuator in line with every dongle, and a control
socket that powers meters off and on and raises interference.

Which gateways get a dongle: those whose ``radio.port`` lies in ``<state_dir>/radio/`` with
driver ``spinel`` (write ``port: "{state_dir}/radio/gw1"``). The attenuator is the rig's
attenuator on 127.0.0.1 (a virtual Mini-Circuits RCDAT); setting channel n changes the link
budget of the mesh whose dongle ``radio.attenuator`` wires to channel n. Mesh i uses seed
``mesh.seed + i`` so the gateways' meshes differ but every run is the same.

The control socket (``<state_dir>/radio/control.sock``) takes one JSON object per line,
``{"gateway": "gw1", "op": "power_off", "address": "fd00:..."}`` (ops: power_off, power_on,
interference with duration_s and extra_loss_db, stats) and answers one JSON line
(``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``); see
:class:`bench.mesh.control.MeshControl`. It stands for what a lab does by hand (pulling a
meter's fuse, switching on a jammer): no real radio has such a port.

Run by the lab as ``python -m bench.lab.radio --rig PATH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError, LabError
from bench.lab.attenuator_server import AttenuatorServer
from bench.lab.mesh_ncp import MeshNcp
from bench.lab.radio_plan import CONTROL_SOCKET, attenuator_of, radio_dir, virtual_radios
from bench.lab.service import Started, run_service
from bench.rig import Rig
from bench.transport.ptyport import PtyDevice

_CONTROL_TIMEOUT_S = 5.0


class RadioLab:
    """Every virtual dongle of a rig, its attenuator and the control socket."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.radios = virtual_radios(rig)
        if not self.radios:
            raise LabError(f"rig '{rig.name}' has no radio under {radio_dir(rig)} to emulate")
        self.ncps: dict[str, MeshNcp] = {}
        self.attenuator: AttenuatorServer | None = None
        self._control: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        directory = radio_dir(self.rig)
        directory.mkdir(parents=True, exist_ok=True)
        assert self.rig.virtual is not None
        scale = float(self.rig.virtual.mesh.time_scale)
        for i, radio in enumerate(self.radios):
            device = PtyDevice(directory, radio.gateway)
            hwaddr = bytes.fromhex("18b43000000000") + bytes([i + 1])
            ncp = MeshNcp(device, radio.config, time_scale=scale, hwaddr=hwaddr)
            ncp.start()
            self.ncps[radio.gateway] = ncp
        self._start_attenuator()
        self._start_control(directory / CONTROL_SOCKET)

    def _start_attenuator(self) -> None:
        found = attenuator_of(self.rig)
        if found is None:
            return
        name, port = found
        wiring = {r.attenuator_channel: r.gateway for r in self.radios if r.attenuator_channel}
        spec = self.rig.attenuators[name]

        def on_set(channel: int, db: float) -> None:
            gateway = wiring.get(channel)
            if gateway is not None:
                self.ncps[gateway].set_attenuation_db(db)

        self.attenuator = AttenuatorServer(
            port=port,
            channels=max(spec.channels),
            on_set=on_set,
        ).start()

    def _start_control(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        os.chmod(path, 0o600)
        server.listen(8)
        server.settimeout(0.2)
        self._control = server
        threading.Thread(target=self._accept, name="mesh-control", daemon=True).start()

    def _accept(self) -> None:
        assert self._control is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._control.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(_CONTROL_TIMEOUT_S)
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                answer = self.handle(line)
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()

    def handle(self, line: bytes) -> dict[str, Any]:
        """One control request -> its answer (never raises)."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            gateway = str(request.pop("gateway", ""))
            ncp = self.ncps.get(gateway)
            if ncp is None:
                raise ValueError(f"no virtual radio for gateway {gateway!r}")
            op = str(request.pop("op", ""))
            address = request.pop("address", None)
            if address is not None:
                request["node"] = ncp.sim.node_of(str(address))
            return {"ok": True, **ncp.control(op, **request)}
        except (ValueError, KeyError, TypeError, BenchError) as exc:
            return {"ok": False, "error": str(exc)}

    def stop(self) -> None:
        self._stop.set()
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.attenuator is not None:
            self.attenuator.stop()
        for ncp in self.ncps.values():
            ncp.stop()
            with contextlib.suppress(OSError):
                ncp.emulator.device.unplug()


def _start(rig: Rig) -> Started:
    lab = RadioLab(rig)
    lab.start()
    names = ", ".join(f"{g} ({n.sim.meters} meters)" for g, n in lab.ncps.items())
    return names, lab.stop


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "python -m bench.lab.radio", "fieldrig virtual radios", __doc__, argv, _start
    )


if __name__ == "__main__":
    raise SystemExit(main())
