"""Rig files: load and validate the YAML that describes one lab.

A rig names the gateways of a lab, how to reach each over SSH, which supply channel powers
it, which radio dongle it owns and how its backhaul is impaired. Every problem in a rig file
is reported as a :class:`~bench.errors.RigError` whose message is ONE line::

    <file>:<line>: <key.path[2].like.this>: <what is wrong>; <what would be valid>

Checks run in two phases: first the shape of every value (types, unknown keys, ranges),
then references between parts (power channels, radio ports, the virtual lab's addresses).
Of the problems a phase finds, the one earliest in the file is reported.
"""

import base64
import binascii
import hashlib
import os
import re
import types
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

import bench
from bench.boards import BOARDS, board_ids
from bench.errors import RigError

__all__ = [
    "ATTENUATOR_DRIVERS",
    "PSU_DRIVERS",
    "Attenuator",
    "AttenuatorChannel",
    "AttenuatorLink",
    "BackhaulLink",
    "Channel",
    "Coordinator",
    "Gateway",
    "HostKeyPolicy",
    "Instrument",
    "LocalBackhaul",
    "MeshOverride",
    "NetnsBackhaul",
    "PowerLink",
    "RadioLink",
    "Rig",
    "RouteB",
    "RouterBackhaul",
    "SshAuth",
    "SshDefaults",
    "SshEndpoint",
    "VirtualLabSpec",
    "VirtualMesh",
    "load_rig",
    "parse_rig",
    "resolve_rig_path",
]

Loc = tuple[str | int, ...]

PSU_DRIVERS = ("keysight-e36300", "rigol-dp800", "siglent-spd3303x", "scpi-generic")
ATTENUATOR_DRIVERS = ("minicircuits-rcdat",)
SERIAL_SCHEMES = ("rfc2217", "socket", "loop", "spy", "alt", "hwgrep", "cp2110")
BAUDRATES = (
    *(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000),
    *(921600, 1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000, 4000000),
)
HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
PRIVATE_NETWORKS = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
FIRST_GATEWAY_HOST = 11  # gateway i of the virtual lab is host number 11 + i of each subnet
DEFAULT_MANAGEMENT_SUBNET = IPv4Network("10.213.0.0/24")
DEFAULT_BACKHAUL_SUBNET = IPv4Network("10.214.0.0/24")
STATE_DIR_ROOT = Path("/var/lib/fieldrig")
RIGS_DIR_ENV = "FIELDRIG_RIGS_DIR"

_LOADER_KEYS = ("source_path", "file_sha256")  # fields the loader sets; never YAML keys
_SECRET_KEYS = frozenset({"password", "passphrase", "private_key"})
_NO_ECHO = frozenset({"password_env", "id_env"})  # a mistyped value here may be the secret itself
_VISA_RESOURCE = re.compile(
    r"^(TCPIP\d*::[^:\s]+::\d{1,5}::SOCKET"
    r"|TCPIP\d*::[^:\s]+(::[^:\s]+)?::INSTR"
    r"|USB\d*::\S+::(INSTR|RAW)"
    r"|ASRL[^:\s]+::INSTR"
    r"|GPIB\d*::\d+(::\d+)?::INSTR)$",
    re.IGNORECASE,
)
_VIRTUAL_GATEWAY_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


class _Problems(ValueError):
    """Problems found by a validator, each at a key path relative to the model checked."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def _show(value: Any) -> str:
    """A short one-line rendering of a YAML value for messages."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return repr(str(value))


# --- value checks (each raises ValueError with a finished message) -------------------------


def _check_pinned_key(line: str) -> str:
    parts = line.split()
    if len(parts) not in (2, 3) or parts[0] not in HOST_KEY_TYPES:
        raise ValueError(
            f"must be '<type> <base64>' with type one of {', '.join(HOST_KEY_TYPES)}, "
            f"got {_show(line)}"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "the key data is not valid base64; copy the line from `ssh-keyscan <host>` or the "
            "board's /etc/ssh/ssh_host_*_key.pub"
        ) from None
    size = int.from_bytes(blob[:4], "big")
    inner = blob[4 : 4 + size].decode("ascii", "replace") if 4 + size <= len(blob) else ""
    if inner != parts[0]:
        held = f"a {inner!r} key" if inner in HOST_KEY_TYPES else "no SSH public key"
        raise ValueError(
            f"the key data holds {held} but the line says {parts[0]!r}; copy the whole line "
            "from `ssh-keyscan <host>`"
        )
    return f"{parts[0]} {parts[1]}"


def _check_serial_port(port: str) -> str:
    valid = (
        "a device path such as /dev/ttyUSB0 or a pyserial URL "
        f"({', '.join(s + '://' for s in SERIAL_SCHEMES)})"
    )
    if port.startswith("/") and not any(c.isspace() for c in port):
        return port
    scheme, sep, rest = port.partition("://")
    if not sep:
        raise ValueError(f"must be {valid}, got {_show(port)}")
    if scheme.lower() not in SERIAL_SCHEMES:
        raise ValueError(f"unknown serial URL scheme '{scheme}://'; use {valid}")
    if scheme.lower() in ("rfc2217", "socket"):
        parts = urlsplit(port)
        try:
            has_address = bool(parts.hostname and parts.port)
        except ValueError:
            has_address = False
        if not has_address:
            raise ValueError(
                f"{scheme}:// needs host:port, got {_show(port)}; write e.g. "
                f"{scheme}://192.168.10.30:4001"
            )
    elif scheme.lower() != "loop" and not rest:
        raise ValueError(f"{scheme}:// needs a port after it, e.g. {scheme}:///dev/ttyUSB0")
    return port


def _check_baudrate(rate: int) -> int:
    if rate not in BAUDRATES:
        raise ValueError(
            f"{rate} is not a standard baud rate; use one of {', '.join(map(str, BAUDRATES))}"
        )
    return rate


def _check_driver(driver: str) -> str:
    if driver in ATTENUATOR_DRIVERS:
        raise ValueError(
            f"{driver} is an RF attenuator; declare it under attenuators:, not instruments:"
        )
    if driver not in PSU_DRIVERS:
        raise ValueError(f"unknown instrument driver {_show(driver)}; valid drivers: {_DRIVERS}")
    return driver


def _check_visa(resource: str) -> str:
    if not _VISA_RESOURCE.match(resource):
        raise ValueError(f"must be {_VISA}, got {_show(resource)}")
    return resource


def _check_absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {_show(str(path))}")
    return path


def _check_lab_subnet(net: IPv4Network) -> IPv4Network:
    if not any(net.subnet_of(p) for p in PRIVATE_NETWORKS):
        raise ValueError(
            f"{net} is not a private network; use one inside 10.0.0.0/8, 172.16.0.0/12 or "
            "192.168.0.0/16 (the lab must not shadow real addresses)"
        )
    if net.prefixlen > 24:
        raise ValueError(f"{net} is smaller than a /24; use a /24 or larger")
    return net


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare on/off as true/false: take those back."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _lab_address(subnet: IPv4Network, index: int) -> IPv4Address | None:
    """The address the virtual lab gives gateway ``index`` in ``subnet``, if there is room."""
    host = FIRST_GATEWAY_HOST + index
    return subnet.network_address + host if index >= 0 and host < subnet.num_addresses - 1 else None


_DRIVERS = f"{', '.join(PSU_DRIVERS)} (power supplies)"
_VISA = (
    "a VISA resource string such as TCPIP::192.168.10.20::5025::SOCKET, TCPIP::host::INSTR, "
    "USB0::0x2A8D::0x1102::SERIAL::INSTR or ASRL/dev/ttyUSB0::INSTR"
)
_SLUG = "a slug (a lowercase letter, then up to 31 lowercase letters, digits or '-')"


_SLUG_RE = r"^[a-z][a-z0-9-]{0,31}$"
Slug = Annotated[str, StringConstraints(pattern=_SLUG_RE), Field(description=_SLUG)]
BoardId = Annotated[
    str, StringConstraints(pattern=_SLUG_RE), Field(description=f"a board id: {_SLUG}, e.g. rpi4")
]
Tag = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$"),
    Field(description="a tag (lowercase letters, digits, '-', '_', '.')"),
]
Host = Annotated[
    str,
    StringConstraints(pattern=r"^[^\s@/]+$"),
    Field(description="a host name or IP address (no user@, no spaces)"),
]
User = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$"),
    Field(description="a login name such as root"),
]
EnvName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$"),
    Field(
        description="the NAME of an environment variable that holds the password (A-Z, 0-9, _; "
        "such as FIELDRIG_PI1_PASSWORD), never the password itself"
    ),
]
LabId = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9]{0,7}$"),
    Field(
        description="1 to 8 lowercase letters or digits, starting with a letter (it goes into "
        "Linux interface names)"
    ),
]
InterfaceName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,15}$"),
    Field(description="a network interface name (1-15 letters, digits, '_', '.', '-')"),
]
NetnsName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"),
    Field(description="a network namespace name such as fr-virtual-gw1"),
]
Port = Annotated[StrictInt, Field(ge=1, le=65535, description="an integer 1-65535")]
Seconds = Annotated[
    StrictFloat, Field(gt=0, allow_inf_nan=False, description="a finite number of seconds > 0")
]
Volts = Annotated[
    StrictFloat, Field(gt=0, allow_inf_nan=False, description="a finite number of volts > 0")
]
Amps = Annotated[
    StrictFloat, Field(gt=0, allow_inf_nan=False, description="a finite number of amperes > 0")
]
ChannelNumber = Annotated[
    StrictInt, Field(ge=1, description="a channel number (an integer from 1)")
]
PinnedKey = Annotated[
    str,
    AfterValidator(_check_pinned_key),
    Field(description="a host key line '<type> <base64>' as ssh-keyscan prints it"),
]
LabSubnet = Annotated[
    IPv4Network,
    AfterValidator(_check_lab_subnet),
    Field(
        description="a private IPv4 network of /24 or larger with the host bits zero, such as "
        "10.213.0.0/24"
    ),
]
_AUTH = "one of identity_file: <private key file>, agent: true or password_env: <ENV_VAR_NAME>"
_HOST_KEY = "one of known_hosts: <file>, pinned: [<type> <base64>, ...] or tofu: <file>"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one(options: Mapping[str, object]) -> None:
    chosen = [name for name, value in options.items() if value is not None and value is not False]
    if len(chosen) != 1:
        got = " and ".join(chosen) if chosen else "none"
        raise _Problems([((), f"set exactly one of {', '.join(options)}; got {got}")])


class SshAuth(_Model):
    """How to authenticate: exactly one of a key file, the ssh-agent, a password variable."""

    identity_file: Path | None = Field(default=None, description="a private key file path")
    agent: StrictBool | None = Field(default=None, description="true (use the ssh-agent)")
    password_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_method(self) -> Self:
        _exactly_one(self._options())
        return self

    def _options(self) -> dict[str, object]:
        return {
            "identity_file": self.identity_file,
            "agent": self.agent,
            "password_env": self.password_env,
        }

    @property
    def method(self) -> Literal["identity_file", "agent", "password_env"]:
        """The name of the chosen method."""
        if self.identity_file is not None:
            return "identity_file"
        return "agent" if self.agent else "password_env"


class HostKeyPolicy(_Model):
    """How to check the gateway's host key: exactly one of known_hosts, pinned, tofu."""

    known_hosts: Path | None = Field(default=None, description="a known_hosts file path")
    pinned: list[PinnedKey] | None = Field(
        default=None, min_length=1, description="a list of host key lines '<type> <base64>'"
    )
    tofu: Path | None = Field(default=None, description="a known_hosts file to record the key into")

    @model_validator(mode="after")
    def _one_policy(self) -> Self:
        options = {"known_hosts": self.known_hosts, "pinned": self.pinned, "tofu": self.tofu}
        _exactly_one(options)
        return self


class SshDefaults(_Model):
    """SSH settings every gateway inherits unless it sets them itself."""

    user: User | None = None
    port: Port | None = None
    auth: SshAuth | None = Field(default=None, description=_AUTH)
    host_key: HostKeyPolicy | None = Field(default=None, description=_HOST_KEY)
    connect_timeout_s: Seconds = 10.0
    keepalive_s: Seconds = 5.0
    reconnect_deadline_s: Seconds = 60.0


class SshEndpoint(_Model):
    """A gateway's SSH settings after merging in ``ssh_defaults``."""

    host: Host
    port: Port = 22
    user: User = "root"
    auth: SshAuth = Field(description=f"{_AUTH}, here or in ssh_defaults")
    host_key: HostKeyPolicy = Field(description=f"{_HOST_KEY}, here or in ssh_defaults")
    connect_timeout_s: Seconds = 10.0
    keepalive_s: Seconds = 5.0
    reconnect_deadline_s: Seconds = 60.0


class PowerLink(_Model):
    """Which supply channel powers the gateway."""

    instrument: Annotated[Slug, Field(description="the name of a power supply under instruments")]
    channel: ChannelNumber


class AttenuatorLink(_Model):
    """Which attenuator channel sits between the dongle and its antenna."""

    instrument: Annotated[Slug, Field(description="the name of an attenuator under attenuators")]
    channel: ChannelNumber


RouteBEnv = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$"),
    Field(
        description="the NAME of an environment variable (A-Z, 0-9, _; such as "
        "FIELDRIG_PI2_ROUTE_B_ID), never the secret itself"
    ),
]


class RouteB(_Model):
    """How a Route-B (skstack) dongle joins its smart meter. The Route-B ID and password
    come from environment variables at run time, never from the rig file."""

    id_env: RouteBEnv
    password_env: RouteBEnv
    scan_duration: StrictInt = Field(
        default=6, ge=0, le=14, description="an SKSCAN duration exponent 0-14"
    )
    channel: StrictInt | None = Field(
        default=None,
        ge=0x21,
        le=0x3C,
        description="a Route-B channel 33-60 (EPANDESC prints it in hex, 21-3C)",
    )
    scan_attempts: StrictInt = Field(default=3, ge=1, le=10, description="an integer 1-10")
    scan_timeout_s: Seconds = 60.0
    join_timeout_s: Seconds = 40.0


_NEEDS_DIALECT = (
    "a skstack dongle needs dialect: bp35a1 or bp35c0 (SKVER does not tell them apart; a "
    "BP35C0, BP35C2 or RL7023-11 dual-stack dongle is bp35c0)"
)
_NEEDS_ROUTE_B = (
    "a skstack dongle needs route_b: {id_env: <ENV_VAR_NAME>, password_env: <ENV_VAR_NAME>} "
    "to join its meter"
)


class RadioLink(_Model):
    """The radio dongle (mesh border router / Route-B) the gateway owns."""

    port: Annotated[
        str,
        AfterValidator(_check_serial_port),
        Field(description="a device path such as /dev/ttyUSB0 or a pyserial URL"),
    ]
    gateway_port: Annotated[str, AfterValidator(_check_serial_port)] | None = Field(
        default=None,
        description="where the gateway itself sees the dongle: a device path on the board "
        "such as /dev/ttyACM0 or a pyserial URL (the virtual lab fills it in)",
    )
    driver: Literal["spinel", "skstack"]
    dialect: Literal["bp35a1", "bp35c0"] | None = Field(
        default=None,
        description="bp35a1 or bp35c0 (the SKSTACK-IP command set of a skstack dongle)",
    )
    baudrate: Annotated[
        StrictInt,
        AfterValidator(_check_baudrate),
        Field(description=f"a standard baud rate ({', '.join(map(str, BAUDRATES))})"),
    ] = 115200
    attenuator: AttenuatorLink | None = Field(
        default=None,
        description="a mapping with keys instrument, channel (the attenuator channel in line "
        "with this dongle's antenna)",
    )
    route_b: RouteB | None = Field(
        default=None,
        description="a mapping with keys id_env, password_env (how a skstack dongle joins "
        "its meter)",
    )

    @model_validator(mode="after")
    def _skstack_keys(self) -> Self:
        if self.driver != "skstack":
            extra = next((k for k in ("dialect", "route_b") if getattr(self, k) is not None), None)
            if extra is not None:
                message = f"only a skstack dongle takes {extra}; remove it or set driver: skstack"
                raise _Problems([((extra,), message)])
        elif self.dialect is None:
            raise _Problems([(("dialect",), _NEEDS_DIALECT)])
        elif self.route_b is None:
            raise _Problems([(("route_b",), _NEEDS_ROUTE_B)])
        return self


class NetnsBackhaul(_Model):
    """The backhaul runs through a local network namespace where tc/nft impair it."""

    namespace: NetnsName
    interface: InterfaceName


class LocalBackhaul(_Model):
    """The backhaul runs through an interface of the bench host (a real lab router)."""

    interface: InterfaceName


class RouterBackhaul(_Model):
    """The backhaul runs through a Linux or OpenWrt router the bench reaches over SSH; the
    faults' nft and tc commands run there (its ssh block does not inherit ssh_defaults)."""

    ssh: SshEndpoint = Field(
        description="a mapping with keys host, port, user, auth, host_key (as a gateway's ssh)"
    )
    interface: InterfaceName


class BackhaulLink(_Model):
    """Where the gateway's WAN link can be impaired: exactly one of netns, local, router."""

    netns: NetnsBackhaul | None = None
    local: LocalBackhaul | None = None
    router: RouterBackhaul | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        _exactly_one({"netns": self.netns, "local": self.local, "router": self.router})
        return self


PlaceName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"),
    Field(description="a labgrid place name (letters, digits, '_', '.', '-'; up to 64)"),
]
CoordinatorAddress = Annotated[
    str,
    StringConstraints(pattern=r"^[^\s@/:]+:\d{1,5}$"),
    Field(description="host:port of a labgrid coordinator, such as labhost:20408"),
]


class Coordinator(_Model):
    """The labgrid coordinator that locks this lab's places (gateways) for one user at a time."""

    address: CoordinatorAddress
    priority: StrictInt = Field(
        default=0, description="an integer (labgrid reservation priority; higher goes first)"
    )
    wait_timeout_s: Seconds = 600.0
    poll_s: Seconds = 10.0


class Gateway(_Model):
    """One board under test."""

    name: Slug
    board: BoardId
    tags: list[Tag] = Field(default_factory=list, description="a list of tags such as [pi, arm64]")
    ssh: SshEndpoint
    power: PowerLink | None = None
    radio: RadioLink | None = None
    backhaul: BackhaulLink | None = None
    place: PlaceName | None = None

    @property
    def capabilities(self) -> frozenset[str]:
        """What the rig can do with this gateway: ssh, psu, radio, backhaul."""
        optional = {"psu": self.power, "radio": self.radio, "backhaul": self.backhaul}
        return frozenset({"ssh"} | {name for name, link in optional.items() if link is not None})


class Channel(_Model):
    """One output of a supply: its safety limits, set-points and safe state."""

    max_voltage: Volts
    max_current: Amps
    voltage: Annotated[
        StrictFloat, Field(ge=0, allow_inf_nan=False, description="a finite number of volts >= 0")
    ]
    current_limit: Amps
    safe_state: Annotated[Literal["off", "on"], BeforeValidator(_on_off)] = "off"

    @model_validator(mode="after")
    def _within_limits(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if self.voltage > self.max_voltage:
            problems.append(
                (
                    ("voltage",),
                    f"{self.voltage} V is above max_voltage {self.max_voltage} V of this "
                    "channel; lower voltage or raise max_voltage",
                )
            )
        if self.current_limit > self.max_current:
            problems.append(
                (
                    ("current_limit",),
                    f"{self.current_limit} A is above max_current {self.max_current} A of this "
                    "channel; lower current_limit or raise max_current",
                )
            )
        if problems:
            raise _Problems(problems)
        return self


class Instrument(_Model):
    """A bench instrument reached through pyvisa."""

    driver: Annotated[str, AfterValidator(_check_driver), Field(description=f"one of {_DRIVERS}")]
    resource: Annotated[str, AfterValidator(_check_visa), Field(description=_VISA)]
    channels: dict[ChannelNumber, Channel] = Field(
        min_length=1, description="a mapping of channel number to channel (at least one)"
    )

    @property
    def is_psu(self) -> bool:
        """True for a power supply driver."""
        return self.driver in PSU_DRIVERS


Decibels = Annotated[
    StrictFloat | StrictInt,
    Field(ge=0, le=200, allow_inf_nan=False, description="a number of dB from 0 to 200"),
]


class AttenuatorChannel(_Model):
    """One attenuator channel: the most it may be set to and where it rests."""

    max_db: Decibels
    safe_db: Decibels = 0.0

    @model_validator(mode="after")
    def _within_limits(self) -> Self:
        if self.safe_db > self.max_db:
            message = (
                f"{self.safe_db} dB is above max_db {self.max_db} dB of this channel; lower "
                "safe_db or raise max_db"
            )
            raise _Problems([(("safe_db",), message)])
        return self


class Attenuator(_Model):
    """A programmable RF attenuator (Mini-Circuits RCDAT family) reached through pyvisa."""

    driver: Literal["minicircuits-rcdat"]
    resource: Annotated[str, AfterValidator(_check_visa), Field(description=_VISA)]
    channels: dict[ChannelNumber, AttenuatorChannel] = Field(
        min_length=1, description="a mapping of channel number to channel (at least one)"
    )


MeterCount = Annotated[
    StrictInt, Field(ge=1, le=5000, description="a number of meters from 1 to 5000")
]


class MeshOverride(_Model):
    """One gateway's own mesh size, instead of ``virtual.mesh.meters``."""

    meters: MeterCount


class VirtualMesh(_Model):
    """The simulated mesh the virtual lab puts behind every gateway's Spinel dongle."""

    meters: MeterCount = 200
    seed: Annotated[StrictInt, Field(ge=0, description="an integer seed >= 0")] = 1
    time_scale: Annotated[
        StrictFloat | StrictInt,
        Field(
            gt=0,
            le=100,
            allow_inf_nan=False,
            description="simulated seconds per wall second, above 0 and at most 100",
        ),
    ] = 1.0
    contention: StrictBool = Field(
        default=False,
        description="true or false: model CCA, collisions and half-duplex radios on top of "
        "the calibrated links (see bench/mesh/sim.py MeshConfig.contention)",
    )
    per_gateway: dict[Slug, MeshOverride] = Field(
        default_factory=dict,
        description="a mapping of gateway name to {meters: N} (that gateway's own mesh size)",
    )

    def meters_for(self, gateway: str) -> int:
        """The number of meters behind ``gateway``'s dongle."""
        override = self.per_gateway.get(gateway)
        return override.meters if override is not None else self.meters


TierName = Literal["edge", "cloud"]
TIER_HOSTS: dict[str, int] = {"edge": 2, "cloud": 3}  # host numbers on the backhaul subnet
RESERVED_GATEWAY_NAMES = frozenset({"cloud", "tier-edge", "tier-cloud"})  # lab namespaces


class VirtualTier(_Model):
    """A compute tier on the backhaul: its own namespace, ``distance_km`` of fibre away."""

    distance_km: Annotated[
        StrictFloat | StrictInt,
        Field(
            ge=0,
            le=20_000,
            allow_inf_nan=False,
            description="the fibre distance in km from the gateways, 0 to 20000",
        ),
    ]


class VirtualLabSpec(_Model):
    """The virtual lab: one Linux machine plays every gateway (see bench.lab).

    In a rig file ``state_dir`` and ``lab_id`` default from the rig name.
    """

    state_dir: Annotated[
        Path, AfterValidator(_check_absolute), Field(description="an absolute directory path")
    ]
    management_subnet: LabSubnet = DEFAULT_MANAGEMENT_SUBNET
    backhaul_subnet: LabSubnet = DEFAULT_BACKHAUL_SUBNET
    lab_id: LabId
    board_python: Annotated[
        Path | None,
        AfterValidator(lambda p: None if p is None else _check_absolute(p)),
        Field(description="an absolute path to the python3 the gateways run"),
    ] = None
    mesh: VirtualMesh = Field(
        default_factory=VirtualMesh,
        description="a mapping with keys meters, seed, time_scale, per_gateway (all optional)",
    )
    tiers: dict[TierName, VirtualTier] = Field(
        default_factory=dict,
        description="a mapping of tier (edge, cloud) to {distance_km: N}",
    )

    @model_validator(mode="after")
    def _separate_subnets(self) -> Self:
        if self.management_subnet.overlaps(self.backhaul_subnet):
            message = (
                f"{self.backhaul_subnet} overlaps management_subnet {self.management_subnet}; "
                "use two separate networks"
            )
            raise _Problems([(("backhaul_subnet",), message)])
        return self

    @property
    def max_gateways(self) -> int:
        """How many gateways both subnets have addresses for."""
        size = min(self.management_subnet.num_addresses, self.backhaul_subnet.num_addresses)
        return max(0, size - 1 - FIRST_GATEWAY_HOST)

    @property
    def bridge_address(self) -> IPv4Address:
        """The management bridge in the root namespace (.1)."""
        return self.management_subnet.network_address + 1

    @property
    def cloud_address(self) -> IPv4Address:
        """The cloud side of the backhaul (.1)."""
        return self.backhaul_subnet.network_address + 1

    def tier_address(self, tier: str) -> IPv4Address:
        """A compute tier's address on the backhaul: edge .2, cloud .3."""
        return self.backhaul_subnet.network_address + TIER_HOSTS[tier]

    def gateway_address(self, index: int) -> IPv4Address:
        """Management address of gateway ``index`` (0-based): .(11 + index)."""
        return self._address(self.management_subnet, index)

    def backhaul_address(self, index: int) -> IPv4Address:
        """Backhaul address of gateway ``index`` (0-based): .(11 + index)."""
        return self._address(self.backhaul_subnet, index)

    def _address(self, subnet: IPv4Network, index: int) -> IPv4Address:
        address = _lab_address(subnet, index)
        if address is None:
            raise RigError(f"{subnet} has no address for gateway {index}")
        return address


class Rig(_Model):
    """A lab: its gateways, instruments and (for the virtual lab) how it is built."""

    name: Slug
    description: str = ""
    virtual: VirtualLabSpec | None = Field(
        default=None,
        description="a mapping with keys state_dir, management_subnet, backhaul_subnet, "
        "lab_id (all optional)",
    )
    ssh_defaults: SshDefaults = SshDefaults()
    coordinator: Coordinator | None = Field(
        default=None,
        description="a mapping with keys address (host:port), priority, wait_timeout_s, poll_s",
    )
    gateways: list[Gateway] = Field(
        min_length=1,
        description="a list of at least one gateway (each a mapping with name, board, ssh, ...)",
    )
    instruments: dict[Slug, Instrument] = Field(
        default_factory=dict, description="a mapping of instrument name to instrument"
    )
    attenuators: dict[Slug, Attenuator] = Field(
        default_factory=dict, description="a mapping of attenuator name to attenuator"
    )
    source_path: Path | None = Field(default=None, exclude=True)
    file_sha256: str = Field(default="", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        return _prepare(data)

    @model_validator(mode="after")
    def _cross_check(self) -> Self:
        problems = [*_name_problems(self), *_power_problems(self), *_radio_problems(self)]
        problems += _place_problems(self)
        problems += _virtual_problems(self) if self.virtual else _state_dir_problems(self)
        if problems:
            raise _Problems(problems)
        return self

    @property
    def is_virtual(self) -> bool:
        """True when this rig is the virtual lab (its results are labelled virtual)."""
        return self.virtual is not None

    @property
    def state_dir(self) -> Path:
        """The virtual lab's state directory."""
        if self.virtual is None:
            raise RigError(f"rig '{self.name}' is not a virtual lab, so it has no state_dir")
        return self.virtual.state_dir

    def gateway_names(self) -> list[str]:
        """The gateway names in file order."""
        return [g.name for g in self.gateways]

    def gateway(self, name: str) -> Gateway:
        """The gateway called ``name``."""
        for gateway in self.gateways:
            if gateway.name == name:
                return gateway
        names = ", ".join(self.gateway_names())
        raise RigError(f"rig '{self.name}' has no gateway {name!r}; gateways are: {names}")


# --- preparing raw data: ssh_defaults merge, virtual lab defaults -----------------------


def _merge_ssh(data: dict[str, Any]) -> tuple[dict[str, Any], dict[Loc, Loc]]:
    """Fill each gateway's ssh from ssh_defaults; also say which keys came from there."""
    gateways, defaults = data.get("gateways"), data.get("ssh_defaults")
    if not isinstance(gateways, list):
        return data, {}
    inherited: dict[Loc, Loc] = {}
    common = (
        {k: v for k, v in defaults.items() if v is not None} if isinstance(defaults, dict) else {}
    )
    merged: list[Any] = []
    for i, gateway in enumerate(gateways):
        ssh = gateway.get("ssh") if isinstance(gateway, dict) else None
        if isinstance(gateway, dict) and isinstance(ssh, dict | None):
            own = ssh or {}
            extra = {k: v for k, v in common.items() if k not in own}
            inherited |= {("gateways", i, "ssh", k): ("ssh_defaults", k) for k in extra}
            gateway = {**gateway, "ssh": {**extra, **own}}
        merged.append(gateway)
    return {**data, "gateways": merged}, inherited


def _prepare(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    data = {k: {} if v is None and k == "ssh_defaults" else v for k, v in data.items()}
    data, _ = _merge_ssh(data)
    virtual = data.get("virtual")
    if isinstance(virtual, dict):
        name = data.get("name")
        if isinstance(name, str):
            virtual = {"state_dir": str(STATE_DIR_ROOT / name), "lab_id": name, **virtual}
            data["virtual"] = virtual
        data = _place_in_lab(data, virtual)
    return data


def _interpolate(value: Any, state_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace("{state_dir}", state_dir)
    if isinstance(value, dict):
        return {k: _interpolate(v, state_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, state_dir) for v in value]
    return value


def _as_subnet(value: Any) -> IPv4Network | None:
    try:
        return IPv4Network(value)
    except (TypeError, ValueError):
        return None


def _place_in_lab(data: dict[str, Any], virtual: dict[str, Any]) -> dict[str, Any]:
    """Replace {state_dir} in ssh settings and give each gateway its lab address."""
    state_dir = virtual.get("state_dir")
    if isinstance(state_dir, str | Path) and "ssh_defaults" in data:
        data["ssh_defaults"] = _interpolate(data["ssh_defaults"], str(state_dir))
    if isinstance(state_dir, str | Path) and isinstance(data.get("gateways"), list):
        data["gateways"] = [
            {**g, "radio": _interpolate(g["radio"], str(state_dir))}
            if isinstance(g, dict) and isinstance(g.get("radio"), dict)
            else g
            for g in data["gateways"]
        ]
    subnets = [
        _as_subnet(virtual.get("management_subnet", DEFAULT_MANAGEMENT_SUBNET)),
        _as_subnet(virtual.get("backhaul_subnet", DEFAULT_BACKHAUL_SUBNET)),
    ]
    gateways = data.get("gateways")
    if not isinstance(gateways, list):
        return data
    placed: list[Any] = []
    for i, gateway in enumerate(gateways):
        for subnet in subnets:
            if subnet is not None and subnet.prefixlen <= 24 and _lab_address(subnet, i) is None:
                room = subnet.num_addresses - 1 - FIRST_GATEWAY_HOST
                message = (
                    f"no address left for this gateway in {subnet} (gateways get "
                    f".{FIRST_GATEWAY_HOST} upwards: room for {room}); use a larger subnet or "
                    "fewer gateways"
                )
                raise _Problems([(("gateways", i), message)])
        ssh = gateway.get("ssh") if isinstance(gateway, dict) else None
        if isinstance(gateway, dict) and isinstance(ssh, dict):
            if isinstance(state_dir, str | Path):
                ssh = _interpolate(ssh, str(state_dir))
            address = _lab_address(subnets[0], i) if subnets[0] is not None else None
            if "host" not in ssh and address is not None:
                ssh = {"host": str(address), **ssh}
            gateway = {**gateway, "ssh": ssh}
        placed.append(gateway)
    return {**data, "gateways": placed}


# --- cross-reference checks ---------------------------------------------------------------


def _place_problems(rig: Rig) -> Iterator[tuple[Loc, str]]:
    """A place needs a coordinator, and each place is one gateway's."""
    first: dict[str, str] = {}
    for i, gateway in enumerate(rig.gateways):
        if gateway.place is None:
            continue
        if rig.coordinator is None:
            yield (
                ("gateways", i, "place"),
                "a place is locked through a labgrid coordinator; add a top-level "
                "coordinator: {address: HOST:20408} or remove this place",
            )
        elif gateway.place in first:
            yield (
                ("gateways", i, "place"),
                f"place {gateway.place!r} is already gateway {first[gateway.place]}'s; "
                "give each gateway its own labgrid place",
            )
        first.setdefault(gateway.place, gateway.name)


def _name_problems(rig: Rig) -> Iterator[tuple[Loc, str]]:
    first: dict[str, int] = {}
    for i, gateway in enumerate(rig.gateways):
        if gateway.name in first:
            yield (
                ("gateways", i, "name"),
                f"duplicate gateway name {gateway.name!r} (also gateways[{first[gateway.name]}]); "
                "give each gateway its own name",
            )
        first.setdefault(gateway.name, i)


def _power_problems(rig: Rig) -> Iterator[tuple[Loc, str]]:
    users: dict[tuple[str, int], str] = {}
    psus = [name for name, inst in rig.instruments.items() if inst.is_psu]
    for i, gateway in enumerate(rig.gateways):
        if gateway.power is None:
            continue
        name, number = gateway.power.instrument, gateway.power.channel
        instrument = rig.instruments.get(name)
        if instrument is None or not instrument.is_psu:
            what = f"no instrument {name!r} in this rig"
            if name in rig.attenuators:
                what = f"{name!r} is an attenuator, not a supply"
            valid = f"power supplies here: {', '.join(psus)}"
            if not psus:
                valid = "declare a power supply under instruments:"
            yield (("gateways", i, "power", "instrument"), f"{what}; {valid}")
        elif number not in instrument.channels:
            channels = ", ".join(map(str, sorted(instrument.channels)))
            yield (
                ("gateways", i, "power", "channel"),
                f"instrument {name!r} has no channel {number}; channels are {channels}",
            )
        elif (name, number) in users:
            yield (
                ("gateways", i, "power", "channel"),
                f"{name} channel {number} already powers gateway {users[name, number]!r}; "
                "give each gateway its own channel",
            )
        else:
            users[name, number] = gateway.name


def _radio_problems(rig: Rig) -> Iterator[tuple[Loc, str]]:
    owners: dict[str, str] = {}
    users: dict[tuple[str, int], str] = {}
    for i, gateway in enumerate(rig.gateways):
        if gateway.radio is None:
            continue
        port = gateway.radio.port
        if port in owners:
            yield (
                ("gateways", i, "radio", "port"),
                f"{port!r} is already the radio of gateway {owners[port]!r}; each dongle "
                "belongs to one gateway",
            )
        owners.setdefault(port, gateway.name)
        yield from _attenuator_problems(rig, i, gateway.radio.attenuator, users)


def _attenuator_problems(
    rig: Rig, i: int, link: AttenuatorLink | None, users: dict[tuple[str, int], str]
) -> Iterator[tuple[Loc, str]]:
    if link is None:
        return
    loc: Loc = ("gateways", i, "radio", "attenuator")
    attenuator = rig.attenuators.get(link.instrument)
    if attenuator is None:
        names = ", ".join(rig.attenuators) or "none; declare one under attenuators:"
        yield (
            (*loc, "instrument"),
            f"no attenuator {link.instrument!r} in this rig; attenuators here: {names}",
        )
    elif link.channel not in attenuator.channels:
        channels = ", ".join(map(str, sorted(attenuator.channels)))
        yield (
            (*loc, "channel"),
            f"attenuator {link.instrument!r} has no channel {link.channel}; channels are "
            f"{channels}",
        )
    elif (link.instrument, link.channel) in users:
        yield (
            (*loc, "channel"),
            f"{link.instrument} channel {link.channel} is already in line with the radio of "
            f"gateway {users[link.instrument, link.channel]!r}; give each radio its own channel",
        )
    else:
        users[link.instrument, link.channel] = rig.gateways[i].name


def _mesh_override_problems(rig: Rig) -> Iterator[tuple[Loc, str]]:
    """Each virtual.mesh.per_gateway entry names a gateway whose dongle the lab emulates."""
    assert rig.virtual is not None
    radio_dir = rig.virtual.state_dir / "radio"
    for name in rig.virtual.mesh.per_gateway:
        loc: Loc = ("virtual", "mesh", "per_gateway", name)
        gateway = next((g for g in rig.gateways if g.name == name), None)
        if gateway is None:
            names = ", ".join(rig.gateway_names())
            yield loc, f"no gateway {name!r} in this rig; gateways are: {names}"
        elif (
            gateway.radio is None
            or gateway.radio.driver != "spinel"
            or Path(gateway.radio.port).parent != radio_dir
        ):
            radio = f'radio: {{port: "{{state_dir}}/radio/{name}", driver: spinel}}'
            message = f"gateway {name!r} has no emulated Spinel dongle, so no mesh to size"
            yield loc, f"{message}; give it {radio} or remove this entry"


def _virtual_problems(rig: Rig) -> Iterator[tuple[Loc, str]]:
    assert rig.virtual is not None
    yield from _mesh_override_problems(rig)
    for i, gateway in enumerate(rig.gateways):
        if gateway.name in RESERVED_GATEWAY_NAMES:
            yield (
                ("gateways", i, "name"),
                f"{gateway.name!r} names one of the virtual lab's own namespaces; choose "
                "another gateway name",
            )
        if not _VIRTUAL_GATEWAY_NAME.match(gateway.name):
            yield (
                ("gateways", i, "name"),
                f"{gateway.name!r} is too long for the virtual lab (it names network "
                "namespaces); use a lowercase letter then up to 15 lowercase letters, digits "
                "or '-'",
            )
        if gateway.board not in BOARDS:
            yield (
                ("gateways", i, "board"),
                f"unknown board {gateway.board!r} for the virtual lab; known boards: "
                f"{', '.join(board_ids())}",
            )
        address = str(rig.virtual.gateway_address(i))
        if gateway.ssh.host != address:
            yield (
                ("gateways", i, "ssh", "host"),
                f"the virtual lab gives this gateway {address}, got {gateway.ssh.host!r}; "
                f"write {address} or leave host out",
            )


def _state_dir_uses(loc: Loc, value: Any) -> Iterator[Loc]:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _state_dir_uses((*loc, name), getattr(value, name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _state_dir_uses((*loc, i), item)
    elif isinstance(value, str | Path) and "{state_dir}" in str(value):
        yield loc


def _state_dir_problems(rig: Rig) -> Iterator[tuple[Loc, str]]:
    uses = list(_state_dir_uses(("ssh_defaults",), rig.ssh_defaults))
    for i, gateway in enumerate(rig.gateways):
        uses += _state_dir_uses(("gateways", i, "ssh"), gateway.ssh)
    for loc in uses:
        yield (
            loc,
            "'{state_dir}' only works in a virtual rig (one with a virtual: section); "
            "write the real path",
        )


# --- YAML with line numbers ---------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _message(source: str, line: int | None, loc: Loc, text: str) -> str:
    where = f"{source}:{line}" if line is not None else source
    path = f" {_format_loc(loc)}:" if loc else ""
    return " ".join(f"{where}:{path} {text}".splitlines())


class _Composer:
    """Builds plain data from a YAML node tree, recording the line of each key path."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[Loc, int] = {}
        self.active: set[int] = set()
        self.count = 0

    def error(self, node: yaml.Node, loc: Loc, text: str) -> RigError:
        return RigError(_message(self.source, _line(node), loc, text))

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise self.error(node, loc, "the YAML expands to too many values; write it plainly")
        if id(node) in self.active:
            raise self.error(node, loc, "a YAML alias contains itself; remove the recursion")
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, loc)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = []
                for i, item in enumerate(node.value):
                    self.lines[(*loc, i)] = _line(item)
                    items.append(self.build(item, (*loc, i)))
                return items
            return self.mapping(node, loc)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (ArithmeticError, LookupError, TypeError, ValueError):  # e.g. date 2024-13-45
            kind = node.tag.rsplit(":", 1)[-1]
            message = f"cannot read {node.value!r} as a YAML {kind}; fix it or quote it"
            raise self.error(node, loc, message) from None

    def key(self, node: yaml.Node, loc: Loc) -> str | int:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, loc, "a key must be a plain name or number; write key: value")
        value = self.scalar(node, loc)
        return value if isinstance(value, int) and not isinstance(value, bool) else str(node.value)

    def mapping(self, node: yaml.Node, loc: Loc) -> dict[str | int, Any]:
        first: dict[str | int, int] = {}
        sources: list[yaml.Node] = []
        entries: list[tuple[str | int, yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else None
                sources += merged if merged is not None else [value_node]
                continue
            key = self.key(key_node, loc)
            if key in first:
                message = f"duplicate key {key!r} (first at line {first[key]}); keep only one"
                raise self.error(key_node, (*loc, key), message)
            first[key] = _line(key_node)
            entries.append((key, key_node, value_node))
        result = {k: v for k, v in self.merge(sources, loc).items() if k not in first}
        for key, key_node, value_node in entries:
            self.lines[(*loc, key)] = _line(key_node)
            result[key] = self.build(value_node, (*loc, key))
        return result

    def merge(self, sources: list[yaml.Node], loc: Loc) -> dict[str | int, Any]:
        """YAML merge keys (<<): earlier sources win; the mapping's own keys win over all."""
        values: dict[str | int, Any] = {}
        lines: dict[str | int, dict[Loc, int]] = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                raise self.error(source, loc, "'<<' must merge a mapping, e.g. <<: *defaults")
            saved, self.lines = self.lines, {}
            try:
                built = self.build(source, loc)
            finally:
                found, self.lines = self.lines, saved
            for key, value in built.items():
                values[key] = value
                lines[key] = {k: n for k, n in found.items() if k[len(loc)] == key}
        for key_lines in lines.values():
            self.lines |= key_lines
        return values


def _yaml_message(exc: yaml.MarkedYAMLError, source: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    what = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context and exc.problem.startswith("but "):
        what = f"{exc.context}, {exc.problem}"
    elif exc.problem and exc.context:
        at = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        what = f"{exc.problem} ({exc.context}{at})"
    if isinstance(exc, yaml.constructor.ConstructorError):
        text = f"unsupported YAML: {what}; rig files hold plain values only: remove the tag"
    elif exc.problem == "but found another document":
        text = f"YAML syntax error: {what}; a rig file is one document: remove the second one"
    else:
        text = (
            f"YAML syntax error: {what}; check the indentation (spaces only), the space after "
            "each ':', and quote values containing ': ' or ' #'"
        )
    return _message(source, line, (), text)


def _compose(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise RigError(
                f"{source}:1: the file is empty (or only comments); a rig needs at least "
                "name: and gateways:"
            )
        composer = _Composer(loader, source)
        composer.lines[()] = _line(node)
        return composer.build(node, ()), composer.lines
    except yaml.MarkedYAMLError as exc:
        raise RigError(_yaml_message(exc, source)) from None
    except yaml.YAMLError as exc:
        raise RigError(_message(source, None, (), f"invalid YAML: {exc}; fix it")) from None
    except RecursionError:
        raise RigError(
            f"{source}: the YAML is nested too deeply; a rig is a few levels deep"
        ) from None
    finally:
        loader.dispose()


# --- pydantic errors to one line ----------------------------------------------------------


def _unwrap(ann: Any) -> Any:
    """Strip Annotated[...] and ``| None`` from a type."""
    while True:
        if get_origin(ann) is Annotated:
            ann = get_args(ann)[0]
        elif get_origin(ann) in (Union, types.UnionType):
            args = [a for a in get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return ann
            ann = args[0]
        else:
            return ann


def _step(ann: Any, part: str | int) -> tuple[Any, FieldInfo | None]:
    base = _unwrap(ann)
    if isinstance(base, type) and issubclass(base, BaseModel):
        field = base.model_fields.get(part) if isinstance(part, str) else None
        return (field.annotation, field) if field is not None else (None, None)
    if get_origin(base) is list:
        return get_args(base)[0], None
    if get_origin(base) is dict:
        return get_args(base)[1], None
    return None, None


def _at(loc: Loc) -> tuple[Any, FieldInfo | None]:
    ann: Any = Rig
    info: FieldInfo | None = None
    for part in loc:
        ann, info = _step(ann, part)
    return ann, info


def _format_loc(loc: Loc) -> str:
    text, ann = "", Rig
    for part in loc:  # list items as [i]; int keys of a mapping (channels) as .i
        if isinstance(part, int) and (ann is None or get_origin(_unwrap(ann)) is list):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
        ann, _ = _step(ann, part)
    return text


def _yaml_keys(model: type[BaseModel]) -> list[str]:
    return [name for name in model.model_fields if name not in _LOADER_KEYS]


def _expected(ann: Any, info: FieldInfo | None) -> str:
    """What a valid value looks like, for messages."""
    if info is not None and info.description:
        return info.description
    while True:
        if get_origin(ann) is Annotated:
            for meta in ann.__metadata__:
                if isinstance(meta, FieldInfo) and meta.description:
                    return meta.description
            ann = get_args(ann)[0]
        elif get_origin(ann) in (Union, types.UnionType):
            args = [a for a in get_args(ann) if a is not type(None)]
            if len(args) != 1:
                break
            ann = args[0]
        else:
            break
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(map(str, get_args(ann)))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"a mapping with keys {', '.join(_yaml_keys(ann))}"
    plain = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return plain.get(ann, "a valid value")


def _describe(loc: Loc, kind: str, value: Any) -> tuple[Loc, str]:
    """Turn one built-in pydantic error into (key path, message)."""
    if loc and loc[-1] == "[key]":
        dict_type = _unwrap(_at(loc[:-2])[0])
        key_type = get_args(dict_type)[0] if get_origin(dict_type) is dict else None
        message = f"invalid key {_show(value)}; keys here must be {_expected(key_type, None)}"
        return loc[:-1], message
    key = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        if key in _SECRET_KEYS:
            return loc, (
                "secrets never go in rig files; use password_env (the name of an environment "
                "variable holding the password) or identity_file (a private key file path)"
            )
        parent = _unwrap(_at(loc[:-1])[0])
        keys = ", ".join(_yaml_keys(parent)) if isinstance(parent, type) else "none"
        return loc, f"unknown key; valid keys here: {keys}"
    expected = _expected(*_at(loc))
    if kind == "missing":
        return loc, f"required key is missing; expected {expected}"
    if key in _NO_ECHO:
        return loc, f"must be {expected}"
    return loc, f"must be {expected}, got {_show(value)}"


def _issues(exc: ValidationError) -> Iterator[tuple[Loc, str]]:
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Problems):
            for sub, message in cause.problems:
                yield (*loc, *sub), message
        elif isinstance(cause, ValueError):
            yield loc, str(cause)
        else:
            yield _describe(loc, error["type"], error.get("input"))


def _validate(data: Any, lines: dict[Loc, int], source: str) -> Rig:
    if not isinstance(data, dict):
        keys = ", ".join(_yaml_keys(Rig))
        message = f"the top level must be a mapping with keys {keys}; got {_show(data)}"
        raise RigError(_message(source, lines[()], (), message))
    found: list[tuple[Loc, str]] = []
    for key in _LOADER_KEYS:
        if key in data:
            found.append(((key,), f"unknown key; valid keys here: {', '.join(_yaml_keys(Rig))}"))
    data = {k: v for k, v in data.items() if k not in _LOADER_KEYS}
    if "virtual" in data and data["virtual"] is None:
        data["virtual"] = {}  # an empty `virtual:` section still makes the virtual lab
    _, inherited = _merge_ssh(data)
    rig: Rig | None = None
    try:
        rig = Rig.model_validate(data)
    except ValidationError as exc:
        for loc, message in _issues(exc):
            found.append((inherited.get(loc[:4], loc[:4]) + loc[4:], message))
    if rig is None or found:
        loc, message = min(found, key=lambda item: _line_of(item[0], lines))
        virtual = data.get("virtual")
        if loc == ("virtual", "lab_id") and not (isinstance(virtual, dict) and "lab_id" in virtual):
            message += " (lab_id defaults to the rig name; set virtual.lab_id)"
        raise RigError(_message(source, _line_of(loc, lines), loc, message))
    return rig


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int:
    """The line of the key path, or of the nearest parent the file has."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


# --- public entry points ----------------------------------------------------------------------


def _display(path: Path) -> str:
    """A path as people want to read it: relative to the working directory when under it."""
    try:
        return str(path.relative_to(Path.cwd())) if path.is_absolute() else str(path)
    except (ValueError, OSError):
        return str(path)


def _rigs_dir(search_dir: Path | None) -> Path:
    if search_dir is not None:
        return search_dir
    env = os.environ.get(RIGS_DIR_ENV)
    return Path(env) if env else Path(bench.__file__).resolve().parent.parent / "rigs"


def _available(rigs_dir: Path) -> str:
    try:
        names = {p.stem for p in rigs_dir.iterdir() if p.suffix in (".yaml", ".yml")}
    except OSError:
        names = set()
    return ", ".join(sorted(names)) or "none"


def _is_path(name_or_path: str) -> bool:
    return "/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))


def resolve_rig_path(name_or_path: str, search_dir: Path | None = None) -> Path:
    """The file of a rig given by name ("virtual") or path ("rigs/lab1.yaml").

    Names are looked up as ``<name>.yaml`` (then ``.yml``) in ``search_dir``, else in
    ``$FIELDRIG_RIGS_DIR``, else in the ``rigs/`` folder of this checkout. Paths are
    returned as given, unchecked (:func:`load_rig` reports a missing file).
    """
    if _is_path(name_or_path):
        return Path(name_or_path)
    rigs_dir = _rigs_dir(search_dir)
    for suffix in (".yaml", ".yml"):
        candidate = rigs_dir / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    missing = _display(rigs_dir / f"{name_or_path}.yaml")
    raise RigError(
        f"rig {name_or_path!r} not found: no {missing}; available: {_available(rigs_dir)}"
    )


def _build(text: str, source: str, sha256: str) -> Rig:
    data, lines = _compose(text, source)
    return _validate(data, lines, source).model_copy(update={"file_sha256": sha256})


def parse_rig(text: str, source: str) -> Rig:
    """Validate rig YAML given as text; ``source`` names it in messages."""
    return _build(text, source, hashlib.sha256(text.encode()).hexdigest())


def load_rig(name_or_path: str | Path) -> Rig:
    """Load and validate a rig by name or path; any problem is ONE-line :class:`RigError`."""
    if isinstance(name_or_path, Path):
        path, shown = name_or_path, str(name_or_path)
    else:
        path = resolve_rig_path(name_or_path)
        shown = name_or_path if _is_path(name_or_path) else _display(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        names = _available(_rigs_dir(None))
        raise RigError(
            f"{shown}: no such file; give an existing rig file or a rig name ({names})"
        ) from None
    except IsADirectoryError:
        raise RigError(f"{shown}: is a directory, not a rig file; give a .yaml file") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise RigError(
            f"{shown}: cannot read the rig file: {reason}; check its permissions"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RigError(f"{shown}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    rig = _build(text, shown, hashlib.sha256(raw).hexdigest())
    return rig.model_copy(update={"source_path": path.resolve()})
