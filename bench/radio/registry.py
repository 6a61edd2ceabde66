"""Radio drivers by the name a rig file gives them (``radio: {driver: spinel}``).

Adding a dongle family is one module with a class implementing
:class:`~bench.radio.capability.Radio` and one line here.

A Route-B dongle (``driver: skstack``) is of no use until it has joined its smart meter, so
:func:`open_radio` joins it with the rig's ``route_b`` settings: the Route-B ID and password
are read from the environment variables the rig names (never from the rig file), handed to
the dongle with the serial transcript masking them, then the meter is scanned for and
authenticated with PANA. Whatever goes wrong there is a :class:`RadioSetupError`: the rig
or the lab is not ready, which says nothing about the gateway under test.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, InfrastructureError, RigError
from bench.radio.capability import Radio
from bench.rig import RadioLink, RouteB
from bench.transport.serial import SerialPort

if TYPE_CHECKING:
    from bench.radio.skstack_radio import MeterLink, SkstackRadio

#: driver name -> "module:Class" (imported on first use)
RADIO_DRIVERS = {
    "spinel": "bench.radio.spinel_radio:SpinelRadio",
    "skstack": "bench.radio.skstack_radio:SkstackRadio",
}

#: drivers whose dongle roots a multi-hop mesh. A Route-B dongle holds one PANA session
#: with one meter: its topology is that meter at hop 1, with no parents to kill.
MESH_DRIVERS = frozenset({"spinel"})


class RadioSetupError(InfrastructureError):
    """A gateway's dongle could not be made ready (credentials missing, no meter joined)."""


def forms_mesh(driver: str) -> bool:
    """Whether a dongle of this driver sees a multi-hop mesh (routes, parents, hops > 1)."""
    return driver in MESH_DRIVERS


def open_radio(
    link: RadioLink,
    port: SerialPort,
    *,
    where: str = "",
    meters: dict[str, MeterLink] | None = None,
) -> Radio:
    """The driver the rig names for this dongle, on its open serial port, ready to probe.

    ``where`` names the rig file and gateway in errors. ``meters`` is a cache the caller
    keeps across opens (serial port -> the meter joined last): a Route-B dongle rejoins a
    known meter without scanning the air again.
    """
    target = RADIO_DRIVERS.get(link.driver)
    if target is None:
        valid = ", ".join(RADIO_DRIVERS)
        raise RigError(f"unknown radio driver {link.driver!r}; valid drivers: {valid}")
    credentials = route_b_credentials(link.route_b, where) if link.route_b else None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    options: dict[str, Any] = {"dialect": link.dialect} if link.dialect else {}
    radio: Radio = cls(port, **options)
    if credentials is not None:
        from bench.radio.skstack_radio import SkstackRadio  # the one driver with route_b

        if not isinstance(radio, SkstackRadio):
            raise RigError(f"{where}: radio.route_b: only a skstack dongle takes route_b")
        join_meter(radio, link, credentials, where=where, meters=meters)
    return radio


def route_b_credentials(route_b: RouteB, where: str = "") -> tuple[str, str]:
    """The Route-B ID and password from the environment variables ``route_b`` names; a
    one-line RadioSetupError naming the variable (never its value) when one is unusable."""
    prefix = f"{where}: " if where else ""
    rbid = _env(route_b.id_env, "id_env", "the 32-character Route-B ID", prefix)
    password = _env(route_b.password_env, "password_env", "the Route-B password", prefix)
    if len(rbid) != 32 or not rbid.isascii() or not rbid.isalnum():
        raise RadioSetupError(
            f"{prefix}radio.route_b.id_env: environment variable {route_b.id_env} holds "
            f"{len(rbid)} characters; a Route-B ID is 32 letters or digits"
        )
    if not 1 <= len(password) <= 32 or not password.isascii() or not password.isprintable():
        raise RadioSetupError(
            f"{prefix}radio.route_b.password_env: environment variable {route_b.password_env} "
            f"holds {len(password)} characters; a Route-B password is 1-32 printable ASCII "
            "characters"
        )
    if " " in password:
        raise RadioSetupError(
            f"{prefix}radio.route_b.password_env: environment variable {route_b.password_env} "
            "holds a space, which SKSETPWD cannot carry"
        )
    return rbid, password


def _env(name: str, key: str, what: str, prefix: str) -> str:
    value = os.environ.get(name)
    if not value:
        state = "is empty" if value == "" else "is not set"
        raise RadioSetupError(
            f"{prefix}radio.route_b.{key}: environment variable {name} {state}; export "
            f"{what} in it before the run"
        )
    return value


def join_meter(
    radio: SkstackRadio,
    link: RadioLink,
    credentials: tuple[str, str],
    *,
    where: str = "",
    meters: dict[str, MeterLink] | None = None,
) -> MeterLink:
    """Join the dongle to its meter with the rig's ``route_b`` settings (RadioSetupError
    naming the gateway and port when it cannot)."""
    route_b = link.route_b
    assert route_b is not None
    known = meters.get(link.port) if meters is not None else None
    try:
        meter = radio.join(
            *credentials,
            scan_duration=route_b.scan_duration,
            scan_timeout_s=route_b.scan_timeout_s,
            join_timeout_s=route_b.join_timeout_s,
            attempts=route_b.scan_attempts,
            channel=route_b.channel,
            known=known,
        )
    except BenchError as exc:
        prefix = f"{where}: " if where else ""
        raise RadioSetupError(f"{prefix}Route-B join failed: {exc}") from None
    if meters is not None:
        meters[link.port] = meter
    return meter
