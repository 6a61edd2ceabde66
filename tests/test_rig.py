"""Rig files: the shipped rigs load, and every malformed rig gets its exact one-line message.

Each file in tests/rig_corpus/ is a malformed rig whose first line is
``# expect: <line>: <key.path>: <message>``, the error without the file prefix.
"""

import hashlib
import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bench.errors import RigError
from bench.rig import Rig, load_rig, parse_rig, resolve_rig_path

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "rig_corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))

GOOD = """\
name: small
ssh_defaults:
  user: bench
  port: 2222
  auth: {agent: true}
  host_key: {tofu: /tmp/tofu_hosts}
gateways:
  - name: gw1
    board: custom-board
    ssh: {host: 192.168.10.5}
"""


@pytest.fixture(autouse=True)
def _default_rigs_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rig names resolve in this checkout's rigs/ unless a test says otherwise."""
    monkeypatch.delenv("FIELDRIG_RIGS_DIR", raising=False)


def _expected(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return f"{path.name}:{first.removeprefix('# expect: ')}"


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS_FILES) >= 30


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_malformed_rig_message(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    with pytest.raises(RigError) as caught:
        load_rig(path.name)
    message = str(caught.value)
    assert message == _expected(path)
    assert "\n" not in message
    assert "pydantic" not in message
    assert caught.value.__cause__ is None


def test_virtual_rig_loads() -> None:
    rig = load_rig("virtual")
    assert rig.name == "virtual"
    assert rig.is_virtual
    assert rig.state_dir == Path("/var/lib/fieldrig/virtual")
    assert rig.source_path == REPO / "rigs" / "virtual.yaml"
    raw = (REPO / "rigs" / "virtual.yaml").read_bytes()
    assert rig.file_sha256 == hashlib.sha256(raw).hexdigest()
    assert rig.gateway_names() == ["gw1", "gw2", "gw3"]
    assert [g.board for g in rig.gateways] == ["rpi4", "jetson-orin-nano", "coral-devboard"]
    assert rig.gateway("gw2").tags == ["jetson", "arm64", "cuda"]
    assert [g.ssh.host for g in rig.gateways] == ["10.213.0.11", "10.213.0.12", "10.213.0.13"]
    gw1 = rig.gateway("gw1")
    assert gw1.ssh.user == "root"
    assert gw1.ssh.port == 22
    assert gw1.ssh.auth.identity_file == Path("/var/lib/fieldrig/virtual/id_ed25519")
    assert gw1.ssh.host_key.known_hosts == Path("/var/lib/fieldrig/virtual/known_hosts")
    assert gw1.backhaul is not None and gw1.backhaul.netns is not None
    assert gw1.backhaul.netns.namespace == "fr-virtual-gw1"
    assert gw1.backhaul.netns.interface == "wan0"
    assert gw1.capabilities == {"ssh", "psu", "backhaul", "radio"}
    assert gw1.radio is not None and gw1.radio.port == "/var/lib/fieldrig/virtual/radio/gw1"
    assert gw1.power is not None and (gw1.power.instrument, gw1.power.channel) == ("psu1", 1)
    psu = rig.instruments["psu1"]
    assert psu.resource == "TCPIP::127.0.0.1::5025::SOCKET" and psu.is_psu
    assert psu.channels[2].voltage == 19.0  # the Jetson's 19 V input
    assert rig.virtual is not None
    assert rig.virtual.lab_id == "virtual"
    assert rig.virtual.board_python == Path("/opt/fieldrig/board-python/bin/python3")
    assert rig.virtual.bridge_address == IPv4Address("10.213.0.1")
    assert rig.virtual.cloud_address == IPv4Address("10.214.0.1")
    assert rig.virtual.backhaul_address(2) == IPv4Address("10.214.0.13")
    assert rig.virtual.max_gateways == 244


def test_lab1_rig_loads() -> None:
    rig = load_rig("lab1")
    assert not rig.is_virtual
    assert rig.gateway_names() == ["pi1", "pi2", "jetson1", "coral1"]
    pi1, pi2, jetson, coral = rig.gateways
    # merged from ssh_defaults
    assert pi1.ssh.user == "fieldrig"
    assert pi1.ssh.auth.identity_file == Path("/etc/fieldrig/lab1/id_ed25519")
    assert pi1.ssh.host_key.known_hosts == Path("/etc/fieldrig/lab1/known_hosts")
    assert pi1.ssh.reconnect_deadline_s == 90.0
    # a gateway's own keys win, key by key
    assert coral.ssh.user == "mendel"
    assert coral.ssh.auth.password_env == "FIELDRIG_CORAL1_PASSWORD"
    assert coral.ssh.auth.method == "password_env"
    assert coral.ssh.host_key.known_hosts == Path("/etc/fieldrig/lab1/known_hosts")
    assert jetson.ssh.host_key.pinned is not None
    assert jetson.ssh.host_key.pinned[0].startswith("ssh-ed25519 AAAA")
    assert jetson.ssh.auth.method == "identity_file"
    # capabilities
    assert pi1.capabilities == {"ssh", "psu", "radio", "backhaul"}
    assert pi2.capabilities == {"ssh", "radio", "backhaul"}
    assert jetson.capabilities == {"ssh", "psu", "backhaul"}
    # power and radio
    psu = rig.instruments["psu1"]
    assert psu.is_psu
    assert psu.resource == "TCPIP::192.168.10.20::5025::SOCKET"
    assert sorted(psu.channels) == [1, 2, 3]
    assert psu.channels[1].voltage == 5.1
    assert psu.channels[1].safe_state == "off"  # a bare `off` in YAML is false: taken back
    assert jetson.power is not None and psu.channels[jetson.power.channel].voltage == 19.0
    assert pi1.radio is not None and pi1.radio.driver == "spinel"
    assert pi2.radio is not None and pi2.radio.port == "rfc2217://192.168.10.30:4001"
    assert pi1.backhaul is not None and pi1.backhaul.local is not None
    assert pi1.backhaul.local.interface == "eth1.101"
    with pytest.raises(RigError, match="not a virtual lab"):
        _ = rig.state_dir


def test_gateway_lookup_lists_valid_names() -> None:
    rig = load_rig("lab1")
    with pytest.raises(RigError) as caught:
        rig.gateway("pi9")
    assert str(caught.value) == (
        "rig 'lab1' has no gateway 'pi9'; gateways are: pi1, pi2, jetson1, coral1"
    )


def test_parse_rig_defaults_and_source() -> None:
    rig = parse_rig(GOOD, "inline")
    gw1 = rig.gateway("gw1")
    assert (gw1.ssh.user, gw1.ssh.port, gw1.ssh.auth.agent) == ("bench", 2222, True)
    assert gw1.ssh.host_key.tofu == Path("/tmp/tofu_hosts")
    assert gw1.ssh.connect_timeout_s == 10.0
    assert gw1.capabilities == {"ssh"}
    assert rig.source_path is None
    assert rig.file_sha256 == hashlib.sha256(GOOD.encode()).hexdigest()
    with pytest.raises(RigError) as caught:
        parse_rig(GOOD.replace("port: 2222", "port: x"), "inline")
    assert str(caught.value) == "inline:4: ssh_defaults.port: must be an integer 1-65535, got 'x'"


def test_virtual_defaults_from_rig_name() -> None:
    text = """\
name: mini
virtual:
gateways:
  - {name: a, board: rpi4}
  - name: b
    board: rpi4
    ssh:
      host: 10.213.0.12
      auth: {password_env: LAB_PASSWORD}
ssh_defaults:
  auth: {identity_file: "{state_dir}/key"}
  host_key:
    pinned:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF71Ug4ZvmjzlSXckytxw9PitJiFC1zC1LsXl2bw+4Wb
"""
    rig = parse_rig(text, "mini.yaml")
    assert rig.is_virtual
    assert rig.state_dir == Path("/var/lib/fieldrig/mini")
    assert rig.virtual is not None and rig.virtual.lab_id == "mini"
    assert rig.gateway("a").ssh.host == "10.213.0.11"
    assert rig.gateway("a").ssh.auth.identity_file == Path("/var/lib/fieldrig/mini/key")
    assert rig.gateway("b").ssh.auth.password_env == "LAB_PASSWORD"
    assert rig.ssh_defaults.auth is not None
    assert rig.ssh_defaults.auth.identity_file == Path("/var/lib/fieldrig/mini/key")


def test_yaml_merge_keys_and_aliases() -> None:
    text = """\
name: merged
ssh_defaults:
  auth: &auth {identity_file: /k}
  host_key: {known_hosts: /kh}
gateways:
  - &pi
    name: pi1
    board: rpi4
    tags: [pi]
    ssh: {host: 192.168.1.11}
  - <<: *pi
    name: pi2
    ssh: {host: 192.168.1.12, auth: *auth, port: 0}
"""
    with pytest.raises(RigError) as caught:
        parse_rig(text, "m.yaml")
    assert str(caught.value) == "m.yaml:13: gateways[1].ssh.port: must be an integer 1-65535, got 0"
    rig = parse_rig(text.replace(", port: 0", ""), "m.yaml")
    assert rig.gateway("pi2").board == "rpi4"
    assert rig.gateway("pi2").tags == ["pi"]
    assert rig.gateway("pi2").ssh.host == "192.168.1.12"


def test_recursive_alias_is_an_error() -> None:
    with pytest.raises(RigError) as caught:
        parse_rig("name: loop\ngateways: &g [*g]\n", "loop.yaml")
    assert str(caught.value) == (
        "loop.yaml:2: gateways[0]: a YAML alias contains itself; remove the recursion"
    )


def test_virtual_rig_without_ssh_defaults() -> None:
    text = """\
name: nodef
virtual:
gateways:
  - name: a
    board: coral-devboard
    ssh: {auth: {agent: true}, host_key: {tofu: "{state_dir}/seen_hosts"}}
"""
    gateway = parse_rig(text, "nodef.yaml").gateway("a")
    assert gateway.ssh.host == "10.213.0.11"
    assert gateway.ssh.host_key.tofu == Path("/var/lib/fieldrig/nodef/seen_hosts")


@pytest.mark.parametrize("name", ["virtual", "lab1"])
def test_rig_model_validates_from_python(name: str) -> None:
    rig = load_rig(name)
    again = Rig.model_validate(rig.model_dump())
    assert again.gateways == rig.gateways
    assert again.instruments == rig.instruments
    assert again.is_virtual == rig.is_virtual
    assert again.source_path is None  # loader-only fields are not dumped


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_bytes(b"")
    with pytest.raises(RigError) as caught:
        load_rig(path)
    assert str(caught.value) == (
        f"{path}:1: the file is empty (or only comments); a rig needs at least name: and gateways:"
    )


def test_file_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RigError) as caught:
        load_rig("nowhere/lab.yaml")
    assert str(caught.value) == (
        "nowhere/lab.yaml: no such file; give an existing rig file or a rig name (lab1, virtual)"
    )


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RigError) as caught:
        load_rig(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a directory, not a rig file; give a .yaml file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(GOOD)
    path.chmod(0)
    with pytest.raises(RigError) as caught:
        load_rig(path)
    assert str(caught.value) == (
        f"{path}: cannot read the rig file: permission denied; check its permissions"
    )


def test_unreadable_file_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as above where tests run as root: reading fails with EACCES."""
    path = tmp_path / "secret.yaml"
    path.write_text(GOOD)

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(RigError) as caught:
        load_rig(path)
    assert str(caught.value) == (
        f"{path}: cannot read the rig file: permission denied; check its permissions"
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(RigError) as caught:
        load_rig(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 9); save it as UTF-8"


def test_resolve_by_name() -> None:
    assert resolve_rig_path("virtual") == REPO / "rigs" / "virtual.yaml"
    assert resolve_rig_path("lab1") == REPO / "rigs" / "lab1.yaml"


def test_resolve_path_is_returned_as_given() -> None:
    assert resolve_rig_path("rigs/lab1.yaml") == Path("rigs/lab1.yaml")
    assert resolve_rig_path("other.yml") == Path("other.yml")


def test_resolve_search_dir_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bench2.yml").write_text(GOOD)
    assert resolve_rig_path("bench2", search_dir=tmp_path) == tmp_path / "bench2.yml"
    monkeypatch.setenv("FIELDRIG_RIGS_DIR", str(tmp_path))
    assert resolve_rig_path("bench2") == tmp_path / "bench2.yml"
    assert load_rig("bench2").name == "small"


def test_resolve_not_found_lists_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(RigError) as caught:
        resolve_rig_path("lab9")
    assert str(caught.value) == "rig 'lab9' not found: no rigs/lab9.yaml; available: lab1, virtual"
    with pytest.raises(RigError, match="available: lab1, virtual"):
        load_rig("lab9")


def test_resolve_not_found_in_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(RigError) as caught:
        resolve_rig_path("lab1", search_dir=tmp_path / "none")
    assert str(caught.value) == (
        f"rig 'lab1' not found: no {tmp_path}/none/lab1.yaml; available: none"
    )
