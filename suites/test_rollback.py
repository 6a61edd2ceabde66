"""Staged rollouts of a model update through the real update client (Mender, standalone) on
every gateway, with faults injected at exact moments, invariants checked on every rollout.

Each test starts from the fleet on ``model-v1`` (committed), rolls ``model-v2`` (or a model
that fails its health check) out with the orchestrator's AWS-IoT-Jobs semantics, injects
its fault on a timeline that goes into the run, then reads every device back and checks
the invariants (committed version only, orchestrator's view = device, rollback reported as
failure, terminal within the timeout, stops widening at the abort threshold and within its
rate, bounded retries and resumes). A violated invariant fails the test as a finding about
the device under test, with the evidence in ``rollback/<test>.json`` of the run (state
sequences, the case's fault timeline, device files, downloads, fault phases). Timings (time
to detect and to roll back from the fault's start, until the orchestrator knows,
completion) and bytes the artifact server sent each device over its artifact's size are
recorded with every rollout. Each fault case also asserts WHERE its fault landed (the
phase, from the server's log and the device's steps) and that it landed at all.

The artifact server runs in the virtual lab's cloud namespace; a real lab would name its
own (the suite skips there until a rig can say where).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.errors import BenchError
from bench.faults import (
    Fault,
    FaultTimeline,
    Flapping,
    LinkTarget,
    Loss,
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
from bench.update.invariants import (
    DeviceDownload,
    DeviceMetrics,
    FaultPhase,
    InvariantReport,
    check_rollout,
    device_download,
    fault_phase,
)
from bench.update.rollout import (
    AbortCriterion,
    ExecutionStatus,
    ExponentialRate,
    FailureType,
    Job,
    RetryCriterion,
    Rollout,
    RolloutConfig,
    RolloutRate,
    RolloutResult,
)
from bench.update.server import RequestRecord, ServerProcess, log_size, read_log

pytestmark = pytest.mark.needs("backhaul")

MODELS = Path(__file__).resolve().parents[1] / "models"
DEST_DIR = "/root/models"
PAYLOAD = f"{DEST_DIR}/model.tflite"
PORT, SLOW_PORT = 18181, 18182
SLOW_BPS = 16_000  # the throttled server: the 99 KB model takes ~6 s to download
INSTALL_TIMEOUT_S = 20.0
FAULT_S = 3.0
#: the install step's storage write time on every board (see build_model_artifact): without
#: it a 100 KB model installs in ~0.1 s and a cut "during install" would be a race
WRITE_TIME_S = 1.0
LOSS_PERCENT = 15.0
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

    def size(self, name: str, device: UpdateDevice) -> int:
        """Bytes of the artifact file ``device`` downloads for ``name``."""
        return self.artifacts[name][device.device_type or ""].size


def _build(
    models: dict[str, Path], out: Path, device_types: set[str]
) -> dict[str, dict[str, ModelArtifact]]:
    built: dict[str, dict[str, ModelArtifact]] = {}
    for name, model in models.items():
        for device_type in sorted(device_types):
            art = build_model_artifact(
                model, out / device_type, device_type=device_type, dest_dir=DEST_DIR,
                artifact_name=name, filename="model.tflite", write_time_s=WRITE_TIME_S,
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
    """One rollout under faults: its result, the invariant report, the fault timeline, what
    the artifact server sent each device, and where each device's first fault landed."""

    result: RolloutResult
    report: InvariantReport
    timeline: FaultTimeline
    downloads: dict[str, DeviceDownload]
    phases: dict[str, FaultPhase]
    netns: dict[str, str]  # backhaul namespace -> gateway

    def statuses(self) -> dict[str, ExecutionStatus]:
        return {name: rec.status for name, rec in self.result.executions.items()}

    def metrics(self, device: str) -> DeviceMetrics:
        return next(m for m in self.report.metrics.devices if m.device == device)

    def starts(self) -> list[tuple[float, str, int]]:
        """(rollout seconds, device, rate in force) of every IN_PROGRESS, in order."""
        return [
            (e.t_s, e.device, int(e.data["rate_per_minute"]))
            for e in self.result.events
            if e.kind == "state" and e.to_state == ExecutionStatus.IN_PROGRESS
        ]

    def down_periods(self, device: str) -> list[tuple[float, float]]:
        """Rollout-second spans when a fault held ``device``'s link down (flapping)."""
        offset = self.timeline.t0 - self.result.t0
        spans, down_at = [], None
        for e in self.timeline.events:
            if _gateway_of_target(self.result.devices, e.target, self.netns) != device:
                continue
            if e.action == "down" and down_at is None:
                down_at = e.t_s + offset
            elif e.action in ("up", "remove") and down_at is not None:
                spans.append((down_at, e.t_s + offset))
                down_at = None
        return spans


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
    max_resumes: int = 0,
) -> Case:
    """Roll ``artifact`` out to ``names`` (default: every gateway); ``faults(timeline,
    device, step)`` is called at each device step and may schedule faults. ``max_resumes``
    bounds each device's download resumes (its own count and the server's)."""
    rig = fleet.rig
    chosen = list(names or fleet.devices)
    devices = _on_v1(fleet, chosen)
    server = fleet.slow if slow else fleet.server
    log_from = log_size(server.log_path)  # only this case's transfers count
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
    wall_t0 = time.time() - (time.monotonic() - result.t0)
    records = read_log(server.log_path, log_from)
    downloads = {d.name: _download(fleet, d, job, artifact, records, wall_t0) for d in devices}
    netns = _netns(rig)
    starts = _fault_starts(timeline, result, chosen, netns)
    phases = {
        name: fault_phase(result, downloads[name], start, applied)
        for name, (start, applied) in starts.items()
    }
    report = check_rollout(
        result, truths, expected, new_payload_good=new_payload_good, max_resumes=max_resumes,
        fault_at_s={name: start for name, (start, _) in starts.items()},
        downloads=downloads.values(), faults=[e.to_dict() for e in timeline.events],
        extra_evidence={"fault_phases": {n: asdict(p) for n, p in phases.items()},
                        "wall_t0": wall_t0},
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
    for name, phase in sorted(phases.items()):
        results.record("rollout.fault_phase", phase.phase, "1", device=name,
                       artifact=artifact, fault_start_s=phase.start_s,
                       served_by_start=phase.served_by_start)  # fmt: skip
    case = Case(result, report, timeline, downloads, phases, netns)
    _check_downloads(case)
    return case


def _download(
    fleet: Fleet,
    device: UpdateDevice,
    job: Job,
    artifact: str,
    records: Sequence[RequestRecord],
    wall_t0: float,
) -> DeviceDownload:
    """What the server sent ``device`` of its own artifact file, from ``records``."""
    url = job.url.replace("{device_type}", device.device_type or "")
    return device_download(
        device.name, records, client=_address(fleet, device.name),
        path=urlsplit(url).path, size=fleet.size(artifact, device), wall_t0=wall_t0,
    )  # fmt: skip


def _check_downloads(case: Case) -> None:
    """What the server's log says must agree with the devices: a device that committed the
    new artifact was sent every byte of it; a single unbroken transfer is each byte once."""
    for name, down in case.downloads.items():
        assert down.unique_bytes <= down.size, (name, asdict(down))
        if case.result.executions[name].status == ExecutionStatus.SUCCEEDED:
            assert down.unique_bytes == down.size, (name, asdict(down))
        if len(down.transfers) == 1 and down.transfers[0].complete:
            assert down.ratio is not None and 0.99 <= down.ratio <= 1.01, (name, asdict(down))


def _address(fleet: Fleet, device: str) -> str:
    """The device's backhaul address: the client address the artifact server logs."""
    spec = fleet.rig.spec
    assert spec.virtual is not None
    return str(spec.virtual.backhaul_address(spec.gateway_names().index(device)))


def _netns(rig: BenchSession) -> dict[str, str]:
    """Backhaul namespace -> gateway."""
    found = {}
    for gw in rig.spec.gateways:
        netns = gw.backhaul.netns if gw.backhaul is not None else None
        if netns is not None:
            found[netns.namespace] = gw.name
    return found


def _gateway_of_target(devices: Sequence[str], target: str, netns: dict[str, str]) -> str | None:
    """Exact match: ``gw1 power:ch1`` or ``<backhaul netns>:<iface>`` (gw1 never gw10)."""
    first = target.split(" ")[0]
    if first in devices:
        return first
    return netns.get(target.split(":")[0])


def _fault_starts(
    timeline: FaultTimeline, result: RolloutResult, devices: Sequence[str], netns: dict[str, str]
) -> dict[str, tuple[float, float]]:
    """Per device, its FIRST fault: (start, in place) in rollout seconds. The start of an
    apply is taken before apply() ran (a power cut kills the device before it returns);
    a flapping link's first down is when its first partition was in place."""
    offset = timeline.t0 - result.t0
    found: dict[str, tuple[float, float]] = {}
    for e in timeline.events:
        device = _gateway_of_target(devices, e.target, netns)
        if device is None or device in found:
            continue
        if e.action == "apply" and e.kind != "flapping":
            began = float(e.details.get("started_s", e.t_s))
            found[device] = (round(began + offset, 6), round(e.t_s + offset, 6))
        elif e.action == "down":
            found[device] = (round(e.t_s + offset, 6), round(e.t_s + offset, 6))
    return found


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


def _phases(case: Case) -> dict[str, str]:
    return {name: phase.phase for name, phase in case.phases.items()}


def test_partition_at_download_start(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    faults = _at_first_install(lambda device: _partition(fleet, device), FAULT_S)
    config = RolloutConfig(
        in_progress_timeout_s=INSTALL_TIMEOUT_S + 30,
        retry=(RetryCriterion(FailureType.FAILED, 2),),
    )
    case = run_case(fleet, results, request, artifact="model-v2", config=config, faults=faults,
                    max_resumes=2)  # fmt: skip
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.SUCCEEDED}, case.statuses()
    assert _phases(case) == dict.fromkeys(fleet.devices, "before_download"), case.phases


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
                        names=[name], slow=True, faults=faults, max_resumes=3)  # fmt: skip
    finally:
        fleet.devices[name].install_timeout_s = None
    case.report.assert_all()
    assert case.statuses() == {name: ExecutionStatus.SUCCEEDED}
    phase = case.phases[name]
    assert phase.phase == "download", asdict(phase)
    assert phase.served_by_start is not None and 0 < phase.served_by_start < phase.size
    down = case.downloads[name]
    assert down.range_requests >= 1, f"the download did not resume: {asdict(down)}"
    # a resume, not a restart: from where the client had got to, so the ratio is over 1
    # only by what was sent twice, at most what the broken transfer had sent
    broken = down.transfers[0]
    resumed = next(t for t in down.transfers if t.offset > 0)
    assert 0 < resumed.offset <= broken.offset + broken.sent, asdict(down)
    assert down.ratio == pytest.approx(1.0 + down.resent_bytes / down.size), asdict(down)
    assert 0 <= down.resent_bytes < broken.sent, asdict(down)


def _restart(server: ServerProcess) -> None:
    server.stop()
    server.start()


def test_link_never_restored(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    faults = _at_first_install(lambda device: _partition(fleet, device), None)
    config = RolloutConfig(in_progress_timeout_s=INSTALL_TIMEOUT_S + 30,
                           retry=(RetryCriterion(FailureType.FAILED, 1),))  # fmt: skip
    case = run_case(fleet, results, request, artifact="model-v2", config=config, faults=faults,
                    max_resumes=2)  # fmt: skip
    case.report.assert_all()
    assert set(case.statuses().values()) <= {ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT}
    assert _phases(case) == dict.fromkeys(fleet.devices, "before_download"), case.phases
    for name in fleet.devices:
        detect = case.metrics(name).time_to_detect_s
        assert detect is not None and detect > 0, case.metrics(name)


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
    case = run_case(fleet, results, request, artifact="model-v2", config=config, slow=True,
                    faults=faults, max_resumes=5)  # fmt: skip
    case.report.assert_all()  # whatever the outcome, the invariants must hold
    for name, down in case.downloads.items():
        spans = [(t.start_s, t.end_s) for t in down.transfers]
        downs = case.down_periods(name)
        overlap = [d for d in downs for s in spans if d[0] < s[1] and s[0] < d[1]]
        assert overlap, f"{name}: the link never went down during a transfer: {downs} {spans}"


def test_rate_limit_outlasts_the_deadline(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    def slow_link(device: str) -> Fault:
        target, protect = _link(fleet, device)
        return RateLimit(target, kbit=16, protect=protect)  # the 99 KB model: about 50 s

    faults = _at_first_install(slow_link, None)
    config = RolloutConfig(in_progress_timeout_s=8.0)
    case = run_case(fleet, results, request, artifact="model-v2", config=config, faults=faults,
                    max_resumes=2)  # fmt: skip
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.TIMED_OUT}, case.statuses()
    assert _phases(case) == dict.fromkeys(fleet.devices, "before_download"), case.phases


def test_loss_during_download(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    """15 % of frames dropped each way on the backhaul from before the download until the
    rollout ends: every device still gets the update; completion time and bytes recorded."""

    def lossy(device: str) -> Fault:
        target, protect = _link(fleet, device)
        return Loss(target, LOSS_PERCENT, protect=protect)

    faults = _at_first_install(lossy, None)
    config = RolloutConfig(in_progress_timeout_s=INSTALL_TIMEOUT_S + 30,
                           retry=(RetryCriterion(FailureType.FAILED, 1),))  # fmt: skip
    case = run_case(fleet, results, request, artifact="model-v2", config=config, faults=faults,
                    max_resumes=3)  # fmt: skip
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.SUCCEEDED}, case.statuses()
    assert case.report.metrics.completion_s is not None
    for name, down in case.downloads.items():
        # the loss was in place before the first byte went out, for the whole download
        assert case.phases[name].phase == "before_download", asdict(case.phases[name])
        assert down.transfers and case.phases[name].applied_s < down.transfers[0].start_s
        assert down.ratio is not None and down.ratio >= 1.0, asdict(down)


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
    for name, down in case.downloads.items():  # one clean download each: 1.0
        assert down.ratio is not None and 0.99 <= down.ratio <= 1.01, asdict(down)
        metrics = case.metrics(name)
        assert metrics.rolled_back and not metrics.false_rollback
        assert metrics.time_to_roll_back_s is not None and metrics.time_to_roll_back_s > 0


def _power_cut_case(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest, moment: str
) -> Case:
    """Cut the gateway's power at ``moment`` of its first attempt, for FAULT_S seconds,
    and assert that every gateway's cut happened, in that phase, and that time to detect
    is there exactly when an attempt failed after the cut."""
    names = [n for n in fleet.devices if fleet.rig.spec.gateway(n).power is not None]
    if not names:
        pytest.skip("no gateway with a power channel")
    cut: set[str] = set()
    missed: list[str] = []
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
                    args=(fleet, timeline, device, power_cut, missed),
                    daemon=True,
                )
                watcher.start()
            elif moment == "commit" and step == "installed":
                cut.add(device)
                power_cut(timeline, device, 0.0)

    config = RolloutConfig(in_progress_timeout_s=INSTALL_TIMEOUT_S + 90,
                           retry=(RetryCriterion(FailureType.FAILED, 2),))  # fmt: skip
    case = run_case(fleet, results, request, artifact="model-v2", config=config, names=names,
                    slow=moment in ("download", "install"), faults=faults)  # fmt: skip
    assert not missed, missed
    assert sorted(case.phases) == sorted(names), f"no cut on some gateways: {case.phases}"
    for name in names:
        phase = case.phases[name]
        assert phase.phase == moment, f"{name}: cut landed in {phase.phase}: {asdict(phase)}"
        failed = [e for e in case.result.events if e.device == name and e.kind == "state"
                  and e.to_state == ExecutionStatus.FAILED and e.t_s >= phase.start_s]  # fmt: skip
        detect = case.metrics(name).time_to_detect_s
        assert (detect is not None and detect >= 0) == bool(failed), (case.metrics(name), failed)
    return case


def _cut_when_downloaded(
    fleet: Fleet,
    timeline: FaultTimeline,
    device: str,
    power_cut: Callable[[FaultTimeline, str, float], None],
    missed: list[str],
) -> None:
    """Cut power the moment the server has written the last byte of ``device``'s artifact
    (a transfer logged from now on, to this device's address): the client is then
    finishing the download and installing the payload."""
    update = fleet.devices[device]
    client = _address(fleet, device)
    path = urlsplit(
        fleet.url("model-v2", slow=True).replace("{device_type}", update.device_type or "")
    ).path
    size = fleet.size("model-v2", update)
    offset = log_size(fleet.slow.log_path)  # earlier cases' transfers do not count
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for r in read_log(fleet.slow.log_path, offset):
            mine = r.method == "GET" and r.client == client and urlsplit(r.path).path == path
            if mine and r.complete and (r.start or 0) + r.sent >= size:
                power_cut(timeline, device, 0.0)
                return
        time.sleep(0.002)
    missed.append(f"{device}: the server sent no whole {path} within 60 s, so no cut")


def test_power_cut_during_download(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    case = _power_cut_case(fleet, results, request, "download")
    case.report.assert_all()
    for name, phase in case.phases.items():  # the server had not sent it all at the cut
        assert phase.served_by_start is not None and phase.served_by_start < phase.size
        assert case.metrics(name).time_to_detect_s is not None  # the running install died


def test_power_cut_during_install(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    case = _power_cut_case(fleet, results, request, "install")
    case.report.assert_all()
    for name, phase in case.phases.items():  # after the last byte, before install returned
        assert phase.transfer is not None and phase.transfer.end_s <= phase.start_s
        assert phase.installed_s is None or phase.installed_s > phase.applied_s
        assert case.metrics(name).time_to_detect_s is not None  # the running install died


def test_power_cut_between_install_and_commit(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    """The pending install survives the cut: the commit, issued while the gateway is
    down, waits for it to boot (the bench reconnects) and the health check passes."""
    case = _power_cut_case(fleet, results, request, "commit")
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.SUCCEEDED}, case.statuses()
    offset = case.timeline.t0 - case.result.t0
    for name, phase in case.phases.items():
        back = [e.t_s + offset for e in case.timeline.events
                if e.action == "remove" and e.target.startswith(f"{name} power")]  # fmt: skip
        assert back and phase.committed_s is not None and phase.committed_s > back[0], phase


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


def test_rollout_rate_rises_exponentially_on_real_gateways(
    fleet: Fleet, results: Recorder, request: pytest.FixtureRequest
) -> None:
    """A real rate: 1 start a minute until a device succeeds, then x2 per success (max 4):
    each start after the first waits for a success, and the checker re-derives the rate
    from the real timings. Then the same record, doctored, must fail the checker."""
    if len(fleet.devices) < 2:
        pytest.skip("a rate needs at least two gateways")
    exponential = ExponentialRate(base_per_minute=1, increment_factor=2.0, succeeded_things=1)
    rate = RolloutRate(maximum_per_minute=4, exponential=exponential)
    config = RolloutConfig(in_progress_timeout_s=INSTALL_TIMEOUT_S + 30, rate=rate)
    case = run_case(fleet, results, request, artifact="model-v2", config=config)
    case.report.assert_all()
    assert set(case.statuses().values()) == {ExecutionStatus.SUCCEEDED}, case.statuses()
    starts = case.starts()
    assert [r for _, _, r in starts] == [1, 2, 4, 4][: len(starts)], starts
    done = {e.device: e.t_s for e in case.result.events
            if e.kind == "state" and e.to_state == ExecutionStatus.SUCCEEDED}  # fmt: skip
    for (_, before, _), (t_s, name, _) in itertools.pairwise(starts):
        assert done[before] <= t_s, f"{name} started at {t_s} before {before} succeeded"
    # staged violations against the real devices' truth: a stricter rate than the one the
    # rollout ran, and an orchestrator that says a device failed while it runs model-v2
    truths = [fleet.devices[name].truth() for name in case.result.devices]
    expected = {name: fleet.sha(name) for name in ("model-v1", "model-v2")}
    strict = replace(case.result, config=replace(config, rate=RolloutRate(maximum_per_minute=1)))
    report = check_rollout(strict, truths, expected)
    assert not report.verdict("stops_widening").ok, report.summary()
    first = starts[0][1]
    lie = replace(case.result.executions[first], status=ExecutionStatus.FAILED)
    doctored = replace(case.result, executions={**case.result.executions, first: lie})
    report = check_rollout(doctored, truths, expected)
    messages = [v.message for v in report.verdict("view_matches_device").violations]
    assert any("runs 'model-v2'" in m for m in messages), messages
