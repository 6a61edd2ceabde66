"""Shared fixtures for fieldrig's own tests: the real virtual lab, brought up once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.gateway import ConnectedGateway
from bench.lab.scpi_server import ResistiveLoad, ScpiPsuServer
from bench.lab.virtual import VirtualLab
from bench.rig import Rig, load_rig
from bench.transport.ptyport import PtyDevice

pytest_plugins = ["pytester"]


@pytest.fixture
def device(tmp_path: Path) -> Iterator[PtyDevice]:
    """A real pseudo-terminal published like a USB dongle under ``by-id/``."""
    with PtyDevice(tmp_path / "by-id") as dev:
        yield dev


@pytest.fixture
def start_server(load: ResistiveLoad) -> Iterator[Callable[..., ScpiPsuServer]]:
    """Start virtual SCPI supplies on 127.0.0.1 (the requesting module defines `load`)."""
    servers: list[ScpiPsuServer] = []

    def start(dialect: str = "keysight-e36300", **options: Any) -> ScpiPsuServer:
        options.setdefault("backend", load)
        server = ScpiPsuServer(dialect=dialect, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ScpiPsuServer]) -> ScpiPsuServer:
    return start_server()


@pytest.fixture(scope="session")
def virtual_rig() -> Rig:
    return load_rig("virtual")


@pytest.fixture(scope="session")
def lab(virtual_rig: Rig) -> Iterator[VirtualLab]:
    """The shipped virtual lab, up for the whole test session (real namespaces and sshd)."""
    lab = VirtualLab(virtual_rig)
    owns = lab.acquire()
    yield lab
    if owns:
        lab.down()


@pytest.fixture
def gw1(lab: VirtualLab, virtual_rig: Rig) -> Iterator[ConnectedGateway]:
    gateway = ConnectedGateway(virtual_rig.gateway("gw1"))
    yield gateway
    gateway.close()
