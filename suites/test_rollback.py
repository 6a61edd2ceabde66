"""Staged rollouts of a model update through the real update client (Mender, standalone) on
every gateway, with faults injected at exact moments, invariants checked on every rollout.

Each test starts from the fleet on ``model-v1`` (committed), rolls ``model-v2`` (or a model
that fails its health check) out with the orchestrator's AWS-IoT-Jobs semantics, injects
its fault on a timeline that goes into the run, then reads every device back and checks
the invariants (committed version only, orchestrator's view = device, rollback reported as
failure, terminal within the timeout, stops widening at the abort threshold, bounded
retries). A violated invariant fails the test as a finding about the device under test,
with the evidence in ``rollback/<test>.json`` of the run. Timings (time to detect, to roll
back, until the orchestrator knows, completion) and download bytes over artifact size are
recorded with every rollout.

The artifact server runs in the virtual lab's cloud namespace; a real lab would name its
own (the suite skips there until a rig can say where).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.faults import (
    Fault,
    FaultTimeline,
    Flapping,
    LinkTarget,
    Partition,
    PowerCut,
    Protection,
    RateLimit,
)
from bench.plugin import Recorder
from bench.session import BenchSession
from bench.update import create_client
from bench.update.artifact import ModelArtifact, build_model_artifact, truncated_model
from bench.update.device import UpdateDevice
from bench.update.invariants import InvariantReport, check_rollout
from bench.update.rollout import (
    AbortCriterion,
    ExecutionStatus,
    FailureType,
    Job,
    RetryCriterion,
    Rollout,
    RolloutConfig,
    RolloutResult,
)
from bench.update.server import ServerProcess, read_log, summarize

pytestmark = pytest.mark.needs("backhaul")

MODELS = Path(__file__).resolve().parents[1] / "models"
DEST_DIR = "/root/models"
PAYLOAD = f"{DEST_DIR}/model.tflite"
PORT, SLOW_PORT = 18181, 18182
SLOW_BPS = 16_000  # the throttled server: the 99 KB model takes ~6 s to download
INSTALL_TIMEOUT_S = 20.0
FAULT_S = 3.0
FaultHook = Callable[["FaultTimeline", str, str], None]
"""Called with (timeline, device, step) at each step of each device's attempts."""


@dataclass
class Fleet:
    """What every rollback test shares: clients, artifacts and the artifact servers."""

    rig: BenchSession
    served: Path
    artifacts: dict[str, dict[str, ModelArtifact]]  # name -> device type -> artifact
    server: ServerProcess
    slow: ServerProcess
    devices: dict[str, UpdateDevice] = field(default_factory=dict)

    def url(self, name: str, slow: bool = False) -> str:
        return (self.slow if slow else self.server).url(f"{name}--{{device_type}}.mender")

    def sha(self, name: str) -> str:
        return next(iter(self.artifacts[name].values())).model_sha256


def _build(
    models: dict[str, Path], out: Path, device_types: set[str]
) -> dict[str, dict[str, ModelArtifact]]:
    built: dict[str, dict[str, ModelArtifact]] = {}
    for name, model in models.items():
        for device_type in sorted(device_types):
            art = build_model_artifact(
                model, out / device_type, device_type=device_type, dest_dir=DEST_DIR,
                artifact_name=name, filename="model.tflite",
            )  # fmt: skip
            shutil.copy(art.path, out / f"{name}--{device_type}.mender")
            built.setdefault(name, {})[device_type] = art
    return built


@pytest.fixture(scope="module")
def fleet(rig: BenchSession) -> Iterator[Fleet]:
    if rig.lab is None:
        pytest.skip("the artifact server's place is only known in the virtual lab so far")
    plan = rig.lab.plan
    work = rig.store.run_dir / "rollback"
    served = work / "artifacts"
    served.mkdir(parents=True, exist_ok=True)
    boards = {rig.spec.gateway(name).board for name in rig.gateways}
    models = {
        "model-v1": MODELS / "meter_anomaly_float32.tflite",
        "model-v2": MODELS / "substation_cam_float32.tflite",
        "model-bad": truncated_model(MODELS / "meter_anomaly_int8.tflite", work),
    }
    artifacts = _build(models, served, boards)
    common = {"namespace": plan.cloud_namespace}
    server = ServerProcess(served, work / "server.jsonl", str(plan.cloud_address), PORT, **common)
    slow = ServerProcess(served, work / "slow-server.jsonl", str(plan.cloud_address), SLOW_PORT,
                         throttle_bps=SLOW_BPS, **common)  # fmt: skip
    with server, slow:
        found = Fleet(rig, served, artifacts, server, slow)
        for name in rig.gateways:
            if name in rig.unavailable or rig.spec.gateway(name).backhaul is None:
                continue
            client = create_client(
                "mender", rig.gateway(name), device_type=rig.spec.gateway(name).board,
                install_timeout_s=INSTALL_TIMEOUT_S, commit_timeout_s=60.0,
            )  # fmt: skip
            found.devices[name] = UpdateDevice(client, PAYLOAD, device_type=client.device_type)
        yield found


def _on_v1(fleet: Fleet, names: Sequence[str]) -> list[UpdateDevice]:
    """Each device reset to the factory state, then updated to model-v1 and committed."""
    devices = []
    for name in names:
        device = fleet.devices[name]
        device.on_step = None
        device.recoveries.clear()
        device.client.reset()
        url = fleet.url("model-v1").replace("{device_type}", device.device_type or "")
        fleet.rig.progress(f"deploying model-v1 to {name} (factory reset first)")
        device.client.install(url)
        committed = device.client.commit()
        assert committed.status.installed == "model-v1", committed.output[-500:]
        device.prepare()
        devices.append(device)
    return devices


@dataclass
class Case:
    """One rollout under faults, its result and the invariant report."""

    result: RolloutResult
    report: InvariantReport
    timeline: FaultTimeline

    def statuses(self) -> dict[str, ExecutionStatus]:
        return {name: rec.status for name, rec in self.result.executions.items()}


def run_case(
    fleet: Fleet,
    results: Recorder,
    request: pytest.FixtureRequest,
    *,
    artifact: str,
    config: RolloutConfig,
    names: Sequence[str] | None = None,
    slow: bool = False,
    faults: FaultHook | None = None,
    new_payload_good: bool = True,
) -> Case:
    """Roll ``artifact`` out to ``names`` (default: every gateway); ``faults(timeline,
    device, step)`` is called at each device step and may schedule faults."""
    rig = fleet.rig
    chosen = list(names or fleet.devices)
    devices = _on_v1(fleet, chosen)
    log_path = (fleet.slow if slow else fleet.server).log_path
    log_start = len(read_log(log_path)) if log_path.exists() else 0
    job = Job(f"{request.node.name}-{int(time.time())}", artifact, fleet.url(artifact, slow))

    def sink(event: dict[str, object]) -> None:
        rig.store.record_event(gateway=str(event["device"]) or None, kind="rollout",
                               message=json.dumps(event, default=str))  # fmt: skip
        if event["kind"] in ("state", "abort"):
            to = event["to_state"] or event["detail"]
            rig.progress(f"rollout {job.job_id}: {event['device'] or 'job'} -> {to}")

    def fault_sink(event: dict[str, object]) -> None:
        rig.record_fault(_gateway_of(rig, str(event.get("target"))), event)

    with FaultTimeline(sink=fault_sink) as timeline:
        if faults is not None:
            for device in devices:
                device.on_step = lambda name, step: faults(timeline, name, step)
        rollout = Rollout(devices, job, config, sink=sink)
        result = rollout.run()
        rollout.wait_stragglers(INSTALL_TIMEOUT_S * 2)
    for device in devices:
        device.on_step = None
    truths = [device.truth() for device in devices]
    expected = {name: fleet.sha(name) for name in ("model-v1", artifact)}
    fault_at = {
        str(e.target).split(":")[0]: timeline.t0 + e.t_s - result.t0
        for e in timeline.events
        if e.action in ("apply", "down")
    }
    report = check_rollout(
        result, truths, expected, new_payload_good=new_payload_good,
        fault_at_s={d.name: t for d in devices for ns, t in fault_at.items() if d.name in ns},
        evidence_path=rig.store.run_dir / "rollback" / f"{_slug(request.node.name)}.json",
    )  # fmt: skip
    rig.store.record_event(
        gateway=None,
        kind="rollout_invariants",
        message=json.dumps(
            {"job": job.job_id, "summary": report.summary(),
             "verdicts": [asdict(v) | {"ok": v.ok} for v in report.verdicts]},
            default=str,
        ),
    )  # fmt: skip
    for row in report.metrics.measurements():
        if row["value"] is not None:
            results.record(row["metric"], row["value"], row["unit"],
                           device=row["gateway"] or "fleet", artifact=artifact)  # fmt: skip
    for name, status in sorted((n, r.status) for n, r in result.executions.items()):
        results.record("rollout.execution", str(status), "1", device=name, artifact=artifact)
    entries = (
        [r for r in read_log(log_path)[log_start:] if artifact in r.path]
        if log_path.exists()
        else []
    )
    size = next(iter(fleet.artifacts[artifact].values())).size
    if entries:
        summary = summarize(entries, entries[0].path, size)
        results.record("rollout.bytes_over_size", summary.bytes_sent / (size * len(chosen)), "1",
                       artifact=artifact, range_requests=summary.range_requests)  # fmt: skip
    return Case(result, report, timeline)


def _gateway_of(rig: BenchSession, target: str) -> str | None:
    """The gateway a fault target belongs to: its backhaul namespace, or "<gw> power"."""
    for gw in rig.spec.gateways:
        netns = gw.backhaul.netns if gw.backhaul is not None else None
        if target.split(" ")[0] == gw.name or (netns and target.startswith(f"{netns.namespace}:")):
            return gw.name
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _link(fleet: Fleet, device: str) -> tuple[LinkTarget, Protection]:
    """The device's backhaul and the management paths no fault may touch."""
    return fleet.rig.backhaul(device), fleet.rig.fault_protection()


def _partition(fleet: Fleet, device: str) -> Partition:
    target, protect = _link(fleet, device)
    return Partition(target, protect=protect)


def _at_first_install(make: Callable[[str], Fault], for_s: float | None) -> FaultHook:
    """A hook that puts ``make(device)`` in place just before each device's first install
    (removed ``for_s`` later; None: at the end of the rollout)."""
    first = _first("install")

    def faults(timeline: FaultTimeline, device: str, step: str) -> None:
        if first(device, step):
            _apply_now(timeline, make(device), for_s)

    return faults


def _apply_now(timeline: FaultTimeline, fault: Fault, for_s: float | None) -> None:
    """Schedule ``fault`` now and return once it is in place (it lands before the step)."""
    before = len(timeline.events)
    timeline.schedule(fault, at_s=max(0.0, time.monotonic() - timeline.t0), for_s=for_s)
    deadline = time.monotonic() + 10
    while not any(e.action in ("apply", "down") for e in timeline.events[before:]):
        if timeline.errors or time.monotonic() > deadline:
            raise BenchError(f"fault {fault.describe()} did not apply: {timeline.errors}")
        time.sleep(0.02)


def _first(step: str) -> Callable[[str, str], bool]:
    """True the first time ``step`` is reached on each device."""
    seen: set[str] = set()
    lock = threading.Lock()

    def check(device: str, reached: str) -> bool:
        with lock:
            if reached != step or device in seen:
                return False
            seen.add(device)
            return True

    return check


# --------------------------------------------------------------------------- the cases


def test_partition_at_download_start(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    faults = _at_first_install(lambda device: _partition(fleet, device), FAULT_S)
    config = RolloutConfig(
        in_progress_timeout_s=INSTALL_TIMEOUT_S + 30,
        retry=(RetryCriterion(FailureType.FAILED, 2),),
    )
    case = run_case(fleet, results, request, artifact="model-v2", config=config, faults=faults)
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.SUCCEEDED}, case.statuses()


def test_link_killed_mid_download_then_restored(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    """The link goes down a third of the way through the download and the connection's
    state is lost on the far side (the server restarts while the link is down, as a NAT or
    proxy forgets it), so when the link comes back the client gets a reset and must resume:
    it does, with a Range request (mender 3.4 waits about a minute first)."""
    name = next(iter(fleet.devices))
    first = _first("install")

    def faults(timeline: FaultTimeline, device: str, step: str) -> None:
        if first(device, step):
            at = time.monotonic() - timeline.t0 + 2.0  # about a third of the way through
            cut = _partition(fleet, device)
            timeline.schedule(cut, at_s=at, for_s=6.0)
            threading.Timer(3.0, _restart, args=(fleet.slow,)).start()

    fleet.devices[name].install_timeout_s = 150.0
    try:
        config = RolloutConfig(in_progress_timeout_s=180.0)
        case = run_case(fleet, results, request, artifact="model-v2", config=config,
                        names=[name], slow=True, faults=faults)  # fmt: skip
    finally:
        fleet.devices[name].install_timeout_s = None
    case.report.assert_all()
    assert case.statuses() == {name: ExecutionStatus.SUCCEEDED}
    entries = [r for r in read_log(fleet.slow.log_path) if "model-v2" in r.path]
    assert any(r.range for r in entries), "the download did not resume with a Range request"


def _restart(server: ServerProcess) -> None:
    server.stop()
    server.start()


def test_link_never_restored(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    faults = _at_first_install(lambda device: _partition(fleet, device), None)
    config = RolloutConfig(in_progress_timeout_s=INSTALL_TIMEOUT_S + 30,
                           retry=(RetryCriterion(FailureType.FAILED, 1),))  # fmt: skip
    case = run_case(fleet, results, request, artifact="model-v2", config=config, faults=faults)
    case.report.assert_all()
    assert set(case.statuses().values()) <= {ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT}


def test_flapping_during_download(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    def flap(device: str) -> Fault:
        target, protect = _link(fleet, device)
        seed = sum(device.encode())  # stable across runs (str hashes are salted)
        return Flapping(target, 1.5, 0.7, seed, start_down=False, protect=protect)

    faults = _at_first_install(flap, 8.0)
    config = RolloutConfig(in_progress_timeout_s=INSTALL_TIMEOUT_S + 30,
                           retry=(RetryCriterion(FailureType.ALL, 2),))  # fmt: skip
    case = run_case(
        fleet, results, request, artifact="model-v2", config=config, slow=True, faults=faults
    )
    case.report.assert_all()  # whatever the outcome, the invariants must hold


def test_rate_limit_outlasts_the_deadline(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    def slow_link(device: str) -> Fault:
        target, protect = _link(fleet, device)
        return RateLimit(target, kbit=16, protect=protect)  # the 99 KB model: about 50 s

    faults = _at_first_install(slow_link, None)
    config = RolloutConfig(in_progress_timeout_s=8.0)
    case = run_case(fleet, results, request, artifact="model-v2", config=config, faults=faults)
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.TIMED_OUT}, case.statuses()


def test_model_failing_its_health_check_rolls_back(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    config = RolloutConfig(in_progress_timeout_s=INSTALL_TIMEOUT_S + 60)
    case = run_case(
        fleet, results, request, artifact="model-bad", config=config, new_payload_good=False
    )
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.FAILED}
    assert all(rec.attempts[-1].outcome and rec.attempts[-1].outcome.rolled_back
               for rec in case.result.executions.values())  # fmt: skip


def _power_cut_case(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest, moment: str
) -> Case:
    """Cut the gateway's power at ``moment`` of its first attempt, for FAULT_S seconds."""
    names = [n for n in fleet.devices if fleet.rig.spec.gateway(n).power is not None]
    if not names:
        pytest.skip("no gateway with a power channel")
    cut: set[str] = set()
    lock = threading.Lock()

    def power_cut(timeline: FaultTimeline, device: str, delay_s: float) -> None:
        psu, channel, _ = fleet.rig.power(device)
        fault = PowerCut(psu, channel, name=f"{device} power")
        if delay_s:
            timeline.schedule(fault, at_s=time.monotonic() - timeline.t0 + delay_s, for_s=FAULT_S)
        else:
            _apply_now(timeline, fault, FAULT_S)

    def faults(timeline: FaultTimeline, device: str, step: str) -> None:
        with lock:
            if device in cut:
                return
            if moment == "download" and step == "install":
                cut.add(device)
                power_cut(timeline, device, 2.0)  # the throttled download takes ~6 s
            elif moment == "install" and step == "install":
                cut.add(device)
                watcher = threading.Thread(
                    target=_cut_when_downloaded,
                    args=(fleet, timeline, device, power_cut),
                    daemon=True,
                )
                watcher.start()
            elif moment == "commit" and step == "installed":
                cut.add(device)
                power_cut(timeline, device, 0.0)

    config = RolloutConfig(in_progress_timeout_s=INSTALL_TIMEOUT_S + 90,
                           retry=(RetryCriterion(FailureType.FAILED, 2),))  # fmt: skip
    return run_case(fleet, results, request, artifact="model-v2", config=config, names=names,
                    slow=moment in ("download", "install"), faults=faults)  # fmt: skip


def _cut_when_downloaded(
    fleet: Fleet,
    timeline: FaultTimeline,
    device: str,
    power_cut: Callable[[FaultTimeline, str, float], None],
) -> None:
    """Cut power the moment the server has sent the whole artifact to ``device``: the
    client is then writing the payload (ArtifactInstall)."""
    spec = fleet.rig.spec
    assert spec.virtual is not None
    address = str(spec.virtual.backhaul_address(spec.gateway_names().index(device)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in read_log(fleet.slow.log_path):
            mine = record.client.split(":")[0] == address
            if mine and "model-v2" in record.path and record.complete:
                power_cut(timeline, device, 0.0)
                return
        time.sleep(0.01)


def test_power_cut_during_download(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    case = _power_cut_case(fleet, results, request, "download")
    case.report.assert_all()


def test_power_cut_during_install(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    case = _power_cut_case(fleet, results, request, "install")
    case.report.assert_all()


def test_power_cut_between_install_and_commit(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    case = _power_cut_case(fleet, results, request, "commit")
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.SUCCEEDED}, case.statuses()


def test_canary_wave_failing_past_the_abort_threshold(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    if len(fleet.devices) < 2:
        pytest.skip("a canary wave needs at least two gateways")
    config = RolloutConfig(
        in_progress_timeout_s=INSTALL_TIMEOUT_S + 60,
        abort=(AbortCriterion(FailureType.FAILED, threshold_percent=50.0, min_executed=1),),
        max_concurrent=1,
    )
    case = run_case(
        fleet, results, request, artifact="model-bad", config=config, new_payload_good=False
    )
    case.report.assert_all()
    statuses = list(case.statuses().values())
    assert statuses.count(ExecutionStatus.FAILED) == 1, statuses
    assert statuses.count(ExecutionStatus.CANCELED) == len(statuses) - 1, statuses
