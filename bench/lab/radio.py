"""The virtual lab's radios: one emulated dongle on a pty per gateway that has one, an RF
attenuator in line with the Spinel dongles, and a control socket that powers meters off and
on and raises interference.

Which gateways get a dongle: those whose ``radio.port`` lies in ``<state_dir>/radio/``
(write ``port: "{state_dir}/radio/gw1"``), of the rig's driver:

- ``spinel``: a Spinel border-router NCP fronting its own simulated mesh. The attenuator is
  the rig's attenuator on 127.0.0.1 (a virtual Mini-Circuits RCDAT); setting channel n
  changes the link budget of the mesh whose dongle ``radio.attenuator`` wires to channel n.
  Mesh i uses seed ``mesh.seed + i`` so the gateways' meshes differ but every run is the same.
- ``skstack``: a SKSTACK-IP Route-B dongle in the rig's ``dialect`` with one smart meter
  answering ECHONET Lite (:class:`bench.radio.skstack_emulator.SkstackEmulator`). The meter
  takes the Route-B ID and password held by the environment variables the rig's ``route_b``
  names, as the lab's environment has them when it starts (any credentials when they are
  unset there). A Route-B link is one hop: answers are lost with probability
  ``ROUTE_B_LOSS`` (seeded with ``mesh.seed + i``) and come ``ROUTE_B_ANSWER_DELAY_S``
  late, their data as raw bytes (ROPT 00, the factory default). It has no RF model:
  attenuation does not reach it, and the control socket has no mesh of it to act on.

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
from bench.lab.radio_plan import (
    CONTROL_SOCKET,
    VirtualRadio,
    VirtualRouteB,
    attenuator_of,
    radio_dir,
    virtual_radios,
)
from bench.lab.service import Started, run_service
from bench.radio.skstack_emulator import MeterPan, SkstackEmulator
from bench.rig import Rig
from bench.transport.ptyport import PtyDevice

_CONTROL_TIMEOUT_S = 5.0
ROUTE_B_LOSS = 0.06
"""Share of Route-B requests whose answer is lost: one link after MAC retries delivers
about 94 % (the measured Wi-SUN figure in DESIGN.md)."""
ROUTE_B_ANSWER_DELAY_S = 0.1
"""How long the emulated meter takes to answer an ECHONET Lite Get."""


class RadioLab:
    """Every virtual dongle of a rig, its attenuator and the control socket."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.radios = virtual_radios(rig)
        if not self.radios:
            raise LabError(f"rig '{rig.name}' has no radio under {radio_dir(rig)} to emulate")
        self.ncps: dict[str, MeshNcp] = {}
        self.route_b: dict[str, SkstackEmulator] = {}
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
            if isinstance(radio, VirtualRouteB):
                self.route_b[radio.gateway] = route_b_dongle(device, radio, i)
                self.route_b[radio.gateway].start()
                continue
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
        wiring = {
            r.attenuator_channel: r.gateway
            for r in self.radios
            if isinstance(r, VirtualRadio) and r.attenuator_channel
        }
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
            if gateway in self.route_b:
                raise ValueError(
                    f"gateway {gateway!r} has an emulated Route-B dongle with one meter, not a "
                    "mesh: there is nothing here to power off or jam"
                )
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
        for dongle in self.route_b.values():
            dongle.stop()
            with contextlib.suppress(OSError):
                dongle.device.unplug()


def route_b_dongle(device: PtyDevice, radio: VirtualRouteB, index: int) -> SkstackEmulator:
    """The emulated Route-B dongle of gateway ``index`` and its meter (not started)."""
    rbid = os.environ.get(radio.id_env) or None
    password = os.environ.get(radio.password_env) or None
    return SkstackEmulator(
        device,
        dialect=radio.dialect,
        mac=f"001D1290{index + 1:08X}",
        meter=MeterPan(mac=f"001D1291{index + 1:08X}"),
        rbid=rbid,
        password=password,
        seed=radio.seed,
        answer_drop_probability=ROUTE_B_LOSS,
        answer_delay_s=ROUTE_B_ANSWER_DELAY_S,
        data_format="binary",  # ERXUDP data as raw bytes (ROPT 00), as a factory-fresh dongle
    )


def _start(rig: Rig) -> Started:
    lab = RadioLab(rig)
    lab.start()
    meshes = [f"{g} ({n.sim.meters} meters)" for g, n in lab.ncps.items()]
    route_b = [f"{g} (Route-B {d.dialect}, 1 meter)" for g, d in lab.route_b.items()]
    return ", ".join(meshes + route_b), lab.stop


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "python -m bench.lab.radio", "fieldrig virtual radios", __doc__, argv, _start
    )


if __name__ == "__main__":
    raise SystemExit(main())
