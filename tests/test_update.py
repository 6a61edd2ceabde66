"""The update capability against the real Mender client on a scratch virtual lab.

Builds its own lab "tupd" (octet 41, two gateways, the boards' Python with LiteRT), takes
it down and purges it afterwards; never touches the shipped lab. Artifacts are built with
the real mender-artifact and served from the lab's cloud namespace by
bench.update.server. Unit tests cover Range parsing, the server, the store reader (against
a store the real mender client wrote on this host), the artifact builder and the health
check (the inference runner's code, run with the boards' Python and LiteRT on this host).
The lab tests also read back the device's own evidence (its update log, payload files and
markers) and run one real rollout whose executions end REJECTED and SUCCEEDED.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import struct
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.faults import LinkTarget, Partition, Protection
from bench.gateway import ConnectedGateway
from bench.inference.runner import RUNNER_SOURCE
from bench.inference.runner_remote import PROBE_MODEL
from bench.lab import system
from bench.lab.virtual import VirtualLab
from bench.rig import load_rig
from bench.update import (
    DeviceBusy,
    NothingPending,
    UpdateError,
    UpdateState,
    UpdateTimeout,
    backends,
    create_client,
)
from bench.update.artifact import (
    ArtifactBuildError,
    ModelArtifact,
    build_model_artifact,
    default_artifact_name,
    health_check_script,
    manifest_output_shapes,
    truncated_model,
)
from bench.update.device import UpdateDevice
from bench.update.mender import EVIDENCE, HELPER, MenderClient, parse_report
from bench.update.mender_remote import read_store
from bench.update.rollout import (
    ExecutionStatus,
    FailureType,
    Job,
    RetryCriterion,
    Rollout,
    RolloutConfig,
)
from bench.update.server import (
    ArtifactServer,
    ByteRange,
    RangeNotSatisfiable,
    ServerError,
    ServerProcess,
    parse_range,
    read_log,
    summarize,
)
from tests.helpers import supply_rig

MODELS = Path(__file__).resolve().parents[1] / "models"
BOARD_PYTHON = Path("/opt/fieldrig/board-python/bin/python3")
STATE_DIR = Path("/var/lib/fieldrig/tests/tupd")
DEST_DIR = "/root/models"
DESTINATION = f"{DEST_DIR}/model.tflite"
PORT = 18080


# ---------------------------------------------------------------------- Range parsing
@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-99", 100, ByteRange(0, 99)),
        ("bytes=10-", 100, ByteRange(10, 99)),
        ("bytes=10-19", 100, ByteRange(10, 19)),
        ("bytes=90-500", 100, ByteRange(90, 99)),  # clamped to the file
        ("bytes=-30", 100, ByteRange(70, 99)),  # suffix
        ("bytes=-500", 100, ByteRange(0, 99)),
        (" Bytes = 5 - 6 ", 100, ByteRange(5, 6)),
        ("bytes=99-99", 100, ByteRange(99, 99)),
        ("bytes=20-10", 100, None),  # last < first: invalid, ignored
        ("bytes=0-1,5-6", 100, None),  # several ranges: served whole
        ("items=0-10", 100, None),
        ("bytes=abc", 100, None),
        ("bytes=-", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100),
                         ("bytes=0-", 0), ("bytes=-5", 0)],
)  # fmt: skip
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_byte_range_content_range() -> None:
    assert ByteRange(10, 19).content_range(100) == "bytes 10-19/100"
    assert ByteRange(10, 19).length == 10


# ---------------------------------------------------------------------- the server (loopback)
@pytest.fixture
def loopback_server(tmp_path: Path) -> Iterator[tuple[ArtifactServer, Path, bytes]]:
    served = tmp_path / "served"
    served.mkdir()
    data = bytes(range(256)) * 40  # 10240 bytes
    (served / "a.mender").write_bytes(data)
    (tmp_path / "secret").write_text("not served")
    log = tmp_path / "requests.jsonl"
    server = ArtifactServer(served, ("127.0.0.1", 0), log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, log, data
    server.stop()


def _get(server: ArtifactServer, path: str, headers: dict[str, str] | None = None,
         method: str = "GET") -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_server_whole_range_head_and_416(
    loopback_server: tuple[ArtifactServer, Path, bytes],
) -> None:
    server, log, data = loopback_server
    status, headers, body = _get(server, "/a.mender")
    assert (status, body) == (200, data)
    assert headers["accept-ranges"] == "bytes"
    status, headers, body = _get(server, "/a.mender", {"Range": "bytes=1000-"})
    assert status == 206 and body == data[1000:]
    assert headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert headers["content-length"] == str(len(data) - 1000)
    status, headers, body = _get(server, "/a.mender", {"Range": "bytes=10-19"})
    assert (status, body) == (206, data[10:20])
    status, headers, body = _get(server, "/a.mender", {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}" and body == b""
    status, headers, body = _get(server, "/a.mender", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(data))
    for bad in ("/../secret", "/%2e%2e/secret", "/", "/nope.mender", "/sub/a.mender"):
        assert _get(server, bad)[0] == 404, bad
    records = read_log(log)
    assert [r.status for r in records[:5]] == [200, 206, 206, 416, 200]
    assert [r.sent for r in records[:5]] == [len(data), len(data) - 1000, 10, 0, 0]
    assert records[1].range == "bytes=1000-" and records[1].start == 1000
    assert all(r.complete for r in records[:5])
    summary = summarize(records, "/a.mender", len(data))
    assert summary.requests == 4 and summary.range_requests == 3
    assert summary.bytes_sent == 2 * len(data) - 1000 + 10


def test_server_logs_a_transfer_cut_by_stop(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 200_000)
    log = tmp_path / "log.jsonl"
    server = ArtifactServer(tmp_path, ("127.0.0.1", 0), log, throttle_bps=50_000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/big.bin")
    resp = conn.getresponse()
    got = resp.read(20_000)
    server.stop()
    # stop() did not wait for the throttled transfer: its record is already written, cut
    (record,) = read_log(log)
    assert not record.complete and record.error
    assert len(got) <= record.sent < 200_000  # throttled: the stop cut it short
    with pytest.raises((http.client.IncompleteRead, OSError)):
        resp.read()
    conn.close()
    assert record.duration_s > 0.3  # the server's own figure: 20 kB at 50 kB/s took its time


def test_server_refuses_public_and_wildcard_addresses(tmp_path: Path) -> None:
    for address in ("0.0.0.0", "8.8.8.8", "example.org"):
        with pytest.raises(ServerError, match="bind"):
            ArtifactServer(tmp_path, (address, 0), tmp_path / "log")
    with pytest.raises(ServerError, match="not a directory"):
        ArtifactServer(tmp_path / "missing", ("127.0.0.1", 0), tmp_path / "log")


# ---------------------------------------------------------------------- device-script output
def test_parse_report_splits_sections_at_the_nonce() -> None:
    nonce = "@@fieldrig-0123@@"
    out = (
        "Installing Artifact of size 10...\nUse 'commit' to update\n"
        f"\n{nonce} action 0\nfactory\n\n{nonce} show 0\n"
        '{"keys": {"artifact-name": "a"}}\n'
        f"\n{nonce} store 0\n"
    )
    report = parse_report(out, nonce)
    assert report.action_rc == "0" and "Use 'commit'" in report.action_out
    assert (report.show_rc, report.show_out) == (0, "factory")
    assert (report.store_rc, report.store) == (0, {"keys": {"artifact-name": "a"}})
    # a device string imitating a marker with another nonce is just text
    fake = parse_report(f"@@fieldrig-ffff@@ action 0\n{nonce} action refused\n", nonce)
    assert fake.action_rc == "refused" and fake.show_rc is None


# ---------------------------------------------------------------------- store reader (host mender)
def _host_mender(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real mender on this host, state under `tmp`, /etc/mender private to it."""
    bind = 'mount --bind "$0" /etc/mender && exec "$@"'
    argv = ["unshare", "--mount", "sh", "-c", bind, str(tmp / "etc"), "mender",
            "-c", str(tmp / "mender.conf"), "-b", str(tmp / "none.conf"), "-d",
            str(tmp / "data"), "--no-syslog", *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_store_reader_follows_the_real_client(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "mender.conf").write_text("{}")
    (tmp_path / "data" / "device_type").write_text("device_type=testdev\n")
    (tmp_path / "etc" / "artifact_info").write_text("artifact_name=factory\n")
    out = tmp_path / "art"
    a = build_model_artifact(
        MODELS / "meter_anomaly_int8.tflite", out, device_type="testdev",
        dest_dir=str(tmp_path / "dest"), artifact_name="first", health_check=False,
    )  # fmt: skip
    store = tmp_path / "data" / "mender-store"

    def keys() -> dict[str, bytes]:
        return read_store(store.read_bytes())

    assert _host_mender(tmp_path, "install", str(a.path)).returncode == 0
    pending = json.loads(keys()["standalone-state"])
    assert pending["ArtifactName"] == "first"
    assert _host_mender(tmp_path, "commit").returncode == 0
    assert "standalone-state" not in keys() and keys()["artifact-name"] == b"first"
    show = _host_mender(tmp_path, "show-artifact")
    assert show.stdout.strip() == "first"
    # the same reader, as the device runs it (python3 -c SOURCE store [--expect ...])
    run = ["python3", "-c", HELPER, "store"]
    idle = subprocess.run([*run, "--expect", "idle", str(store)], check=False)
    busy = subprocess.run([*run, "--expect", "pending", str(store)], check=False)
    assert (idle.returncode, busy.returncode) == (0, 3)
    text = subprocess.run([*run, str(store)], capture_output=True, text=True, check=True)
    assert json.loads(text.stdout)["keys"]["artifact-name"] == "first"
    (tmp_path / "junk").write_bytes(b"\0" * 8192)
    bad = subprocess.run([*run, str(tmp_path / "junk")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not an LMDB file" in json.loads(bad.stdout)["error"]


def test_evidence_reader_on_a_device_log(tmp_path: Path) -> None:
    """The on-device evidence reader, run as the device runs it, on a log with a rotated
    part, a finished install that resumed, a forged note and a commit cut by a power cut."""
    data = tmp_path / "data"
    data.mkdir()
    n1, n2, n3 = (f"@@fieldrig-{i:016x}@@" for i in (1, 2, 3))
    (data / "fieldrig-update.log.1").write_text(
        f"\n=== fieldrig 1 {n1} begin install 100.5 http://x/a.mender\nold text\n"
        f"\n=== fieldrig 1 {n1} end install 101.0 0\n"
    )
    (data / "fieldrig-update.log").write_text(
        f"\n=== fieldrig 2 {n2} begin install 200.0 http://x/b.mender\n"
        "Attempting to resume artifact download from offset 10\n"
        f"=== fieldrig 2 {n1} end install 201.0 0\n"  # another command's nonce: just text
        "Attempting to resume artifact download from offset 20\n"
        f"\n=== fieldrig 2 {n2} end install 205.0 0\n"
        f"\n=== fieldrig 3 {n3} begin commit 300.0 \nCommitting Artifact...\n"
    )
    (data / "fieldrig-update.seq").write_text("3\n")
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "model.tflite").write_bytes(b"model")
    info = tmp_path / "artifact_info"
    info.write_text("artifact_name=factory\n")

    def read(since: int) -> dict[str, Any]:
        argv = ["python3", "-c", EVIDENCE, HELPER, str(data / "mender-store"), str(data),
                str(info), str(dest / "model.tflite"), str(since)]  # fmt: skip
        return json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)

    found = read(0)
    assert found["last_seq"] == 3
    assert [(e["seq"], e["action"], e["exit"], e["resumes"]) for e in found["entries"]] == [
        (1, "install", "0", 0), (2, "install", "0", 2), (3, "commit", None, 0)]  # fmt: skip
    assert found["entries"][2]["ended"] is None and "Committing" in found["entries"][2]["text"]
    assert found["payload"]["sha256"] == hashlib.sha256(b"model").hexdigest()
    assert found["markers"]["committed"] is None and found["markers"]["pending"] is None
    assert found["markers"]["artifact_info"] == "artifact_name=factory\n"
    assert [e["seq"] for e in read(2)["entries"]] == [3]


# ---------------------------------------------------------------------- artifacts
def test_build_model_artifact_contents(tmp_path: Path) -> None:
    model = MODELS / "meter_anomaly_float32.tflite"
    art = build_model_artifact(
        model, tmp_path, device_type="rpi4", dest_dir=DEST_DIR, filename="model.tflite"
    )
    assert art.name == default_artifact_name(model)
    assert art.name == default_artifact_name(model)  # deterministic
    assert art.path == tmp_path / f"{art.name}.mender" and art.size == art.path.stat().st_size
    assert art.destination == DESTINATION
    assert art.model_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    assert art.output_shapes == ((1, 64),) == tuple(map(tuple, manifest_output_shapes(model) or []))
    assert manifest_output_shapes(truncated_model(model, tmp_path)) is None  # not listed
    read = subprocess.run(["mender-artifact", "read", str(art.path)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert f"Name: {art.name}" in read and "rpi4" in read and "single-file" in read
    assert "ArtifactCommit_Enter_50_fieldrig_health" in read and "model.tflite" in read
    plain = build_model_artifact(model, tmp_path, device_type="rpi4", dest_dir=DEST_DIR,
                                 artifact_name="plain-1", health_check=False)  # fmt: skip
    assert (
        "ArtifactCommit_Enter"
        not in subprocess.run(
            ["mender-artifact", "read", str(plain.path)], capture_output=True, text=True
        ).stdout
    )
    slow = build_model_artifact(model, tmp_path, device_type="rpi4", dest_dir=DEST_DIR,
                                artifact_name="slow-1", write_time_s=1.5)  # fmt: skip
    listed = subprocess.run(["mender-artifact", "read", str(slow.path)], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert slow.write_time_s == 1.5 and "ArtifactInstall_Enter_50_fieldrig_write_time" in listed
    assert "ArtifactInstall_Enter" not in read  # no write time unless asked for
    with pytest.raises(ArtifactBuildError, match="write_time_s=-1"):
        build_model_artifact(model, tmp_path, device_type="rpi4", dest_dir=DEST_DIR,
                             write_time_s=-1)  # fmt: skip
    for bad in ({"artifact_name": "x y"}, {"dest_dir": "relative"}, {"device_type": "a;b"},
                {"dest_dir": "/root/../etc"}):  # fmt: skip
        options = {"device_type": "rpi4", "dest_dir": DEST_DIR, **bad}
        with pytest.raises(ArtifactBuildError, match="not allowed"):
            build_model_artifact(model, tmp_path, **options)  # type: ignore[arg-type]


def nan_model(out_dir: Path) -> Path:
    """The runner's probe model (y = x + 1) with its constant made NaN: it loads and runs,
    and every output is NaN."""
    one, nan = struct.pack("<f", 1.0), struct.pack("<f", float("nan"))
    assert PROBE_MODEL.count(one) == 1
    out = out_dir / "nan.tflite"
    out.write_bytes(PROBE_MODEL.replace(one, nan))
    return out


def test_health_check_script_passes_good_and_fails_broken_models(tmp_path: Path) -> None:
    """The state script itself, run with the boards' Python and LiteRT on this host: the
    inference runner's code (embedded) loads and runs the model once."""
    good = tmp_path / "good.tflite"
    shutil.copyfile(MODELS / "meter_anomaly_float32.tflite", good)
    broken = truncated_model(good, tmp_path)
    assert broken.name == "good-truncated.tflite"
    assert broken.stat().st_size < good.stat().st_size

    def run(model: Path, sha: str | None = None, **options: object) -> tuple[int, str]:
        digest = sha or hashlib.sha256(model.read_bytes()).hexdigest()
        script = tmp_path / "check.sh"
        script.write_text(
            health_check_script(str(model), digest, str(BOARD_PYTHON), **options)  # type: ignore[arg-type]
        )
        script.chmod(0o755)
        proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stderr

    script_text = health_check_script(str(good), "0" * 64)
    assert RUNNER_SOURCE.read_text() in script_text.replace("'\"'\"'", "'")  # shipped inside
    rc, err = run(good, output_shapes=[[1, 64]])
    assert rc == 0 and "fieldrig health check passed" in err
    record = json.loads(err.split("fieldrig health check passed for ")[1].split(" ", 1)[1])
    assert record["outputs"] == [[1, 64]] and record["runtime"] == "ai-edge-litert"
    failures = {
        "model": run(broken),  # the runner's load error
        "hash": run(good, sha="0" * 64),  # the runner's sha256 check
        "shape": run(good, output_shapes=[[1, 4]]),
        "output": run(nan_model(tmp_path)),  # NaN out
        "time": run(good, max_invoke_ms=1e-6),  # one invoke over the limit
    }
    for kind, (rc, err) in failures.items():
        assert rc == 1 and "health check failed for " in err and f": {kind}: " in err, (kind, err)
    assert "cannot load" in failures["model"][1] and "not finite" in failures["output"][1]


def test_registry_and_option_checks() -> None:
    gateway = ConnectedGateway(supply_rig(1).gateway("a"))  # never connects
    assert "mender" in backends()
    with pytest.raises(UpdateError, match="gateway a: no update backend 'rauc'"):
        create_client("rauc", gateway)
    client = create_client("mender", gateway, device_type="rpi4", private_etc=False)
    assert isinstance(client, MenderClient) and client.backend == "mender"
    assert client.artifact_info == "/etc/mender/artifact_info"
    for bad in ({"device_type": "rpi 4"}, {"device_type": "x", "root": "rel/dir"},
                {"device_type": "x", "root": "/root/../etc"},
                {"device_type": "x", "install_timeout_s": 0}):  # fmt: skip
        with pytest.raises(UpdateError, match="gateway a: "):
            MenderClient(gateway, **bad)


# ---------------------------------------------------------------------- the scratch lab
@dataclass
class Lab:
    lab: VirtualLab
    g0: ConnectedGateway
    g1: ConnectedGateway
    art: Path
    good_a: ModelArtifact
    good_b: ModelArtifact
    bad: ModelArtifact
    big_g1: ModelArtifact
    tmp: Path

    @property
    def cloud(self) -> tuple[str, str]:
        return self.lab.plan.cloud_address, self.lab.plan.cloud_namespace

    def server(self, log: str, throttle_bps: int | None = None) -> ServerProcess:
        address, namespace = self.cloud
        return ServerProcess(self.art, self.tmp / log, address, PORT, namespace=namespace,
                             throttle_bps=throttle_bps)  # fmt: skip


@pytest.fixture(scope="module")
def tlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("tupd")
    rig_path = tmp / "tupd.yaml"
    rig_path.write_text(
        textwrap.dedent(f"""\
        name: tupd
        virtual:
          lab_id: tupd
          state_dir: {STATE_DIR}
          management_subnet: 10.213.41.0/24
          backhaul_subnet: 10.214.41.0/24
          board_python: {BOARD_PYTHON}
        ssh_defaults:
          auth: {{identity_file: "{{state_dir}}/id_ed25519"}}
          host_key: {{known_hosts: "{{state_dir}}/known_hosts"}}
        gateways:
          - name: g0
            board: rpi4
          - name: g1
            board: jetson-orin-nano
        """)
    )
    lab = VirtualLab(load_rig(rig_path))
    lab.up()
    g0 = ConnectedGateway(lab.rig.gateway("g0"))
    g1 = ConnectedGateway(lab.rig.gateway("g1"))
    art = tmp / "artifacts"
    float32, int8 = MODELS / "meter_anomaly_float32.tflite", MODELS / "meter_anomaly_int8.tflite"

    def build(model: Path, name: str, device_type: str = "rpi4") -> ModelArtifact:
        return build_model_artifact(model, art, device_type=device_type, artifact_name=name,
                                    dest_dir=DEST_DIR, filename="model.tflite")  # fmt: skip

    try:
        yield Lab(
            lab=lab, g0=g0, g1=g1, art=art, tmp=tmp,
            good_a=build(float32, "good-a"),
            good_b=build(int8, "good-b"),
            bad=build(truncated_model(float32, tmp), "bad-1"),
            big_g1=build(MODELS / "substation_cam_float32.tflite", "cam-1", "jetson-orin-nano"),
        )  # fmt: skip
    finally:
        g0.close()
        g1.close()
        lab.down(purge=True)
        assert not [n for n in system.netns_list() if n.startswith(lab.plan.prefix)]


def _client(gw: ConnectedGateway, **options: float) -> MenderClient:
    device_type = "rpi4" if gw.name == "g0" else "jetson-orin-nano"
    client = create_client("mender", gw, device_type=device_type, **options)
    assert isinstance(client, MenderClient)
    return client


def _fresh(gw: ConnectedGateway, **options: float) -> MenderClient:
    client = _client(gw, **options)
    status = client.reset()
    assert (status.installed, status.pending, status.state) == ("factory", None, "installed")
    return client


def _install_and_commit(client: MenderClient, url: str, name: str) -> None:
    assert client.install(url).state == UpdateState.PENDING
    outcome = client.commit()
    assert outcome.state == UpdateState.INSTALLED and outcome.status.installed == name


def test_provision_and_status_on_a_fresh_device(tlab: Lab) -> None:
    host_info = Path("/etc/mender/artifact_info")
    existed = host_info.exists()
    client = _client(tlab.g0)
    tlab.g0.run(["rm", "-rf", "--", client.root])
    with pytest.raises(UpdateError, match=r"gateway g0: .*provision"):
        client.status()
    status = client.provision()
    assert (status.installed, status.pending, status.state) == ("factory", None, "installed")
    assert client.private_etc  # a virtual board: /etc/mender is the host's
    assert host_info.exists() == existed  # the factory name went to the gateway's own disk
    conf = json.loads(tlab.g0.run(["cat", client.conf]).text)
    assert conf["DeviceTypeFile"] == f"{client.data_dir}/device_type"
    assert conf["StateScriptTimeoutSeconds"] == client.state_script_timeout_s
    assert "device_type=rpi4" in tlab.g0.run(["cat", conf["DeviceTypeFile"]]).text
    assert client.provision(initial_artifact="other").installed == "factory"  # kept
    assert client.status() == status
    # g1 has its own client state on its own disk
    other = _client(tlab.g1).reset()
    assert other.installed == "factory"


def test_good_model_installs_then_commits(tlab: Lab) -> None:
    client = _fresh(tlab.g0)
    with tlab.server("good.jsonl") as server:
        outcome = client.install(server.url(tlab.good_a.file_name))
    assert outcome.state == UpdateState.PENDING and outcome.ok
    assert outcome.artifact == "good-a"
    assert (outcome.status.installed, outcome.status.pending) == ("factory", "good-a")
    assert client.status().state == UpdateState.PENDING
    committed = client.commit()
    assert committed.state == UpdateState.INSTALLED and committed.ok
    assert "fieldrig health check passed" in committed.output
    status = client.status()
    assert (status.installed, status.pending, status.state) == ("good-a", None, "installed")
    assert tlab.g0.remote_sha256(DESTINATION) == tlab.good_a.model_sha256
    assert "[[1, 64]]" in committed.output  # the runner ran it; its output shapes, as expected
    # the device's own evidence: its update log, the payload with sha256, the markers
    evidence = client.evidence(DESTINATION)
    assert evidence.payload_sha256 == tlab.good_a.model_sha256
    assert [(e.action, e.exit) for e in evidence.entries] == [("install", "0"), ("commit", "0")]
    assert evidence.last_seq == evidence.entries[-1].seq and evidence.resumes == 0
    assert "fieldrig health check passed" in evidence.entries[1].text
    assert f"{tlab.good_a.model_sha256} " in evidence.files["payload_files"]
    markers = json.loads(evidence.files["markers"])
    assert (markers["committed"], markers["pending"]) == ("good-a", None)
    assert client.evidence(DESTINATION, since=evidence.last_seq).entries == ()


def test_bad_model_fails_its_health_check_and_rolls_back(tlab: Lab) -> None:
    client = _fresh(tlab.g0)
    with tlab.server("bad.jsonl") as server:
        _install_and_commit(client, server.url(tlab.good_a.file_name), "good-a")
        installed = client.install(server.url(tlab.bad.file_name))
    assert installed.state == UpdateState.PENDING and installed.artifact == "bad-1"
    assert tlab.g0.remote_sha256(DESTINATION) == tlab.bad.model_sha256  # on disk, uncommitted
    outcome = client.commit()
    assert outcome.state == UpdateState.ROLLED_BACK and not outcome.ok
    assert outcome.exit_status == 1 and "health check failed" in outcome.output
    assert (outcome.status.installed, outcome.status.pending) == ("good-a", None)
    assert client.status().installed == "good-a"
    assert tlab.g0.remote_sha256(DESTINATION) == tlab.good_a.model_sha256
    evidence = client.evidence(DESTINATION)
    commit = evidence.entries[-1]
    assert (commit.action, commit.exit) == ("commit", "1")
    assert "health check failed" in commit.text and ": model: " in commit.text
    assert evidence.payload_sha256 == tlab.good_a.model_sha256


def test_explicit_rollback_before_commit(tlab: Lab) -> None:
    client = _fresh(tlab.g0)
    with tlab.server("rollback.jsonl") as server:
        _install_and_commit(client, server.url(tlab.good_a.file_name), "good-a")
        assert client.install(server.url(tlab.good_b.file_name)).artifact == "good-b"
    assert tlab.g0.remote_sha256(DESTINATION) == tlab.good_b.model_sha256
    markers = json.loads(client.evidence(DESTINATION).files["markers"])
    assert markers["committed"] == "good-a"
    assert json.loads(markers["pending"])["ArtifactName"] == "good-b"
    (tree,) = markers["module_trees"]  # the module's backup of the committed model
    assert [f["sha256"] for f in tree["backup"]] == [tlab.good_a.model_sha256]
    outcome = client.rollback()
    assert outcome.state == UpdateState.ROLLED_BACK and outcome.ok
    assert (outcome.status.installed, outcome.status.pending) == ("good-a", None)
    assert tlab.g0.remote_sha256(DESTINATION) == tlab.good_a.model_sha256
    with pytest.raises(NothingPending, match="gateway g0: `mender rollback`"):
        client.rollback()
    with pytest.raises(NothingPending, match="gateway g0: `mender commit`"):
        client.commit()


def test_interrupted_download_resumes_with_a_range_request(tlab: Lab) -> None:
    """The server dies mid-download and comes back; mender 3.4 resumes after its fixed
    one-minute back-off with ``Range: bytes=<offset>-``."""
    client = _fresh(tlab.g1)
    device = UpdateDevice(client, DESTINATION)
    device.prepare()  # marks the device's update log
    artifact = tlab.big_g1
    server = tlab.server("resume.jsonl", throttle_bps=20_000)  # ~5 s for the artifact
    server.start()
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(client.install(server.url(artifact.file_name)))
    )
    worker.start()
    try:
        time.sleep(2.0)
        server.stop()
        time.sleep(1.0)
        server.start()
        worker.join(timeout=150)
    finally:
        server.stop()
    assert not worker.is_alive()
    (outcome,) = result
    assert getattr(outcome, "state", None) == UpdateState.PENDING, outcome
    records = [r for r in read_log(server.log_path) if r.path == f"/{artifact.file_name}"]
    assert len(records) == 2 and records[0].range is None and not records[0].complete
    resumed = records[1]
    assert resumed.status == 206 and resumed.range == f"bytes={resumed.start}-"
    assert resumed.start is not None and 0 < resumed.start <= records[0].sent
    assert resumed.complete
    summary = summarize(records, f"/{artifact.file_name}", artifact.size)
    assert summary.range_requests == 1
    assert 1.0 <= summary.overhead < 1.1, summary
    assert client.commit().state == UpdateState.INSTALLED
    assert tlab.g1.remote_sha256(DESTINATION) == artifact.model_sha256
    truth = device.truth()
    assert truth.resumes == summary.range_requests == 1  # mender's log agrees with the server
    assert truth.payload_sha256 == artifact.model_sha256 and truth.installed == "cam-1"
    assert f"from offset {resumed.start}" in truth.files["update_log"]
    assert device.evidence is not None
    assert [(e.action, e.resumes) for e in device.evidence.entries] == [
        ("install", 1), ("commit", 0)]  # fmt: skip


def test_never_restored_link_ends_in_update_timeout(tlab: Lab) -> None:
    client = _fresh(tlab.g0)
    target = LinkTarget(tlab.lab.plan.gateways[0].namespace, "wan0")
    with (
        tlab.server("timeout.jsonl") as server,
        Partition(target, protect=Protection.for_rig(tlab.lab.rig)),
        pytest.raises(UpdateTimeout, match=r"gateway g0: `mender install` ran past .* 4 s"),
    ):
        client.install(server.url(tlab.good_a.file_name), timeout_s=4)
    # the device's `timeout` (the bench's limit) killed mender, not the transport's backstop
    (call,) = [c for c in client.calls if c.action == "install"]
    assert call.timed_out and call.exit_status == 0 and call.state == "failed"
    (entry,) = client.evidence(DESTINATION).entries
    assert (entry.action, entry.exit) in {("install", "124"), ("install", "137")}
    status = client.status()  # the killed install left the committed version alone
    assert (status.installed, status.pending, status.state) == ("factory", None, "installed")
    leftovers = [pid for pid in system.netns_pids("fr-tupd-g0")
                 if b"mender" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # fmt: skip
    assert leftovers == []


def test_concurrent_installs_on_one_device_are_serialized(tlab: Lab) -> None:
    _fresh(tlab.g0)
    # two clients, two connections, one device: this process's per-device lock
    other_gw = ConnectedGateway(tlab.lab.rig.gateway("g0"))
    clients = [_client(tlab.g0), _client(other_gw)]
    outcomes: list[object] = []
    try:
        with tlab.server("concurrent.jsonl", throttle_bps=15_000) as server:  # ~1.6 s each

            def install(client: MenderClient) -> None:
                try:
                    outcomes.append(client.install(server.url(tlab.good_a.file_name)))
                except UpdateError as exc:
                    outcomes.append(exc)

            threads = [threading.Thread(target=install, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
    finally:
        other_gw.close()
    assert sorted(type(o).__name__ for o in outcomes) == ["InstallOutcome", "UpdateInProgress"]
    calls = sorted((c for client in clients for c in client.calls if c.action == "install"),
                   key=lambda c: c.started)  # fmt: skip
    assert len(calls) == 2 and calls[0].ended <= calls[1].started  # never interleaved
    # the device's log, written under its lock, shows the same: one after the other
    first, second = sorted(clients[0].evidence(DESTINATION).entries, key=lambda e: e.seq)
    assert first.ended is not None and first.ended <= second.started
    assert [first.exit, second.exit] == ["0", "refused"]
    downloads = [r for r in read_log(server.log_path) if r.method == "GET"]
    assert len(downloads) == 1  # the second was refused before it downloaded anything
    assert clients[0].rollback().state == UpdateState.ROLLED_BACK


def test_device_lock_holds_off_other_bench_processes(tlab: Lab) -> None:
    client = _fresh(tlab.g0)
    # another "bench process" on the board holds the device's flock for 4 s, then prints
    # the moment it lets go (the virtual board shares this host's clock)
    holder = tlab.g0.spawn(["flock", client.lock_file, "sh", "-c", "sleep 4; date +%s.%N"])
    time.sleep(0.5)
    impatient = _client(tlab.g0, lock_wait_s=1)
    with pytest.raises(DeviceBusy, match=r"gateway g0: .*another bench process held"):
        impatient.status()
    patient = _client(tlab.g0, lock_wait_s=20)
    assert patient.status().installed == "factory"
    assert holder.wait(10) == 0
    (released,) = [float(line) for stream, line in holder.iter_lines(10) if stream == "out"]
    assert impatient.calls[-1].ended < released  # gave up while the holder held the lock
    assert patient.calls[-1].ended > released  # ran only once the holder let go


def test_install_refuses_bad_urls(tlab: Lab) -> None:
    client = _client(tlab.g0)
    for url in ("ftp://x/y", "relative.mender", "http://a b/c"):
        with pytest.raises(UpdateError, match="neither an http"):
            client.install(url)


def test_rollout_maps_a_refused_artifact_to_rejected(tlab: Lab) -> None:
    """A real rollout over both gateways: g0 refuses an artifact built for another device
    type (REJECTED, never retried though FAILED retries are allowed); g1 installs its own
    and commits (SUCCEEDED). Each device's truth carries its evidence since prepare()."""
    wrong = build_model_artifact(MODELS / "meter_anomaly_int8.tflite", tlab.art,
                                 device_type="other-board", artifact_name="model-x-other",
                                 dest_dir=DEST_DIR, filename="model.tflite")  # fmt: skip
    good = build_model_artifact(MODELS / "meter_anomaly_int8.tflite", tlab.art,
                                device_type="jetson-orin-nano", artifact_name="model-x-jetson",
                                dest_dir=DEST_DIR, filename="model.tflite")  # fmt: skip
    devices = []
    for gw, kind in ((tlab.g0, "other"), (tlab.g1, "jetson")):
        _fresh(gw)
        device = UpdateDevice(_client(gw), DESTINATION, device_type=kind)
        device.prepare()
        devices.append(device)
    payload_before = tlab.g0.remote_sha256(DESTINATION)  # what earlier tests left, or None
    config = RolloutConfig(in_progress_timeout_s=120,
                           retry=(RetryCriterion(FailureType.FAILED, 2),))  # fmt: skip
    with tlab.server("rejected.jsonl") as server:
        url = server.url("model-x-{device_type}.mender")
        result = Rollout(devices, Job("reject-1", "model-x", url), config).run()
    assert result.view() == {"g0": ExecutionStatus.REJECTED, "g1": ExecutionStatus.SUCCEEDED}
    assert len(result.executions["g0"].attempts) == 1  # REJECTED is never retried
    refused, updated = (device.truth() for device in devices)
    assert (refused.installed, refused.pending, refused.resumes) == ("factory", None, 0)
    assert refused.payload_sha256 == payload_before != wrong.model_sha256  # nothing installed
    assert "(device types [other-board]) not compatible with device rpi4" in (
        refused.files["update_log"])  # fmt: skip
    assert (updated.installed, updated.payload_sha256) == ("model-x-jetson", good.model_sha256)
    assert updated.resumes == 0 and "exit 0" in updated.files["update_log"]
    assert set(updated.files) >= {"status", "recoveries", "update_log", "payload_files",
                                  "markers"}  # fmt: skip
    assert [r.path for r in read_log(server.log_path)].count(f"/{wrong.file_name}") == 1


def test_signature_checks_reject_unsigned_and_foreign_artifacts(tlab: Lab) -> None:
    keys = tlab.tmp / "keys"
    keys.mkdir(exist_ok=True)
    for name in ("ours", "theirs"):
        subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout",
                        "-out", str(keys / f"{name}.pem")], check=True)  # fmt: skip
    public = subprocess.run(["openssl", "pkey", "-in", str(keys / "ours.pem"), "-pubout"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    model = MODELS / "meter_anomaly_float32.tflite"

    def build(name: str, key: str | None) -> ModelArtifact:
        return build_model_artifact(model, tlab.art, device_type="rpi4", artifact_name=name,
                                    dest_dir=DEST_DIR, filename="model.tflite",
                                    signing_key=keys / f"{key}.pem" if key else None)  # fmt: skip

    unsigned, foreign, signed = build("sig-none", None), build("sig-x", "theirs"), build(
        "sig-ok", "ours")  # fmt: skip
    assert signed.signed and not unsigned.signed
    with pytest.raises(UpdateError, match="gateway g0: verify_key is not a PEM public key"):
        MenderClient(tlab.g0, device_type="rpi4", verify_key=str(keys / "ours.pem"))
    client = MenderClient(tlab.g0, device_type="rpi4", verify_key=public)
    client.reset()
    with tlab.server("signed.jsonl") as server:
        for artifact, why in ((unsigned, "expecting signed artifact"),
                              (foreign, "invalid signature")):  # fmt: skip
            outcome = client.install(server.url(artifact.file_name))
            assert outcome.state == UpdateState.REJECTED and not outcome.ok, outcome.output
            assert why in outcome.output and outcome.status.pending is None
        accepted = client.install(server.url(signed.file_name))
    assert accepted.state == UpdateState.PENDING and accepted.artifact == "sig-ok"
    assert client.rollback().state == UpdateState.ROLLED_BACK
    _fresh(tlab.g0)  # the other tests' clients carry no key
