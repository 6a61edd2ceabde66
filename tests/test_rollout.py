"""The rollout orchestrator and the invariant checker, against scripted in-test devices.

Unit level beside the real suite (suites/test_rollback.py drives the Mender client): each
fake device is driven on the orchestrator's own threads, keeps an installed artifact and a
payload like a real one, and follows a script of steps with delays. Rate and timeout
logic runs on a ScaledClock where minutes matter; everything else on the real clock.
Every invariant is shown to hold on a clean rollout and to be caught when violated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from bench.errors import DeviceFailure
from bench.results.units import check_metric, check_unit
from bench.update.invariants import (
    INVARIANTS,
    DeviceDownload,
    DeviceTruth,
    InvariantInputError,
    InvariantReport,
    InvariantViolation,
    check_rollout,
    device_download,
    fault_phase,
    state_sequence,
)
from bench.update.rollout import (
    MARK_DETECTED,
    MARK_RECOVERED,
    MARK_ROLLED_BACK,
    TERMINAL,
    AbortCriterion,
    AttemptContext,
    ExecutionStatus,
    ExponentialRate,
    FailureType,
    Job,
    Outcome,
    RetryCriterion,
    Rollout,
    RolloutConfig,
    RolloutError,
    RolloutRate,
    RolloutResult,
    ScaledClock,
)
from bench.update.server import RequestRecord

S = ExecutionStatus
OLD, NEW = "model-v1", "model-v2"
SHA = {name: hashlib.sha256(name.encode()).hexdigest() for name in (OLD, NEW)}
JOB = Job(job_id="job-1", artifact_name=NEW, url="http://cloud/model-v2.mender")


class FakeDevice:
    """A scripted update client. Steps: ``ok``, ``bad`` (health check fails, rolls back),
    ``reject``, ``hang`` (answers only when released; then installs), ``slow`` (a real
    ``delay`` then installs), ``raise``, and violations: ``lie`` (rolls back, says
    SUCCEEDED), ``mix`` (new payload under old name), ``pending`` (never commits)."""

    def __init__(self, name: str, script: list[str], delay: float = 0.0) -> None:
        self.name = name
        self.script = script
        self.delay = delay  # seconds of the rollout's clock per step
        self.installed = OLD
        self.payload = SHA[OLD]
        self.pending: str | None = None
        self.rolled_back = False
        self.resumes = 0  # it downloads nothing, so it never resumes
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def run_update(self, ctx: AttemptContext) -> Outcome:
        with self._lock:
            step = self.script[min(self.calls, len(self.script) - 1)]
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(ctx.clock.real_seconds(self.delay))  # a device ignores the server's timer
            return self._step(step, ctx)
        finally:
            with self._lock:
                self.running -= 1

    def _step(self, step: str, ctx: AttemptContext) -> Outcome:
        if step == "hang":
            self.release.wait(10.0)
            step = "ok"
        if step == "slow":
            time.sleep(0.4)
            step = "ok"
        if step == "ok":
            self.installed, self.payload = NEW, SHA[NEW]
            return Outcome(S.SUCCEEDED, "committed", installed=NEW)
        if step in ("bad", "lie"):
            ctx.mark(MARK_DETECTED, "health check exited 1")
            ctx.mark(MARK_ROLLED_BACK)
            self.rolled_back = True
            if step == "lie":
                return Outcome(S.SUCCEEDED, "committed", rolled_back=True, installed=NEW)
            return Outcome(S.FAILED, "health check failed", rolled_back=True, installed=OLD)
        if step == "reject":
            return Outcome(S.REJECTED, "artifact not compatible", installed=OLD)
        if step == "mix":
            self.payload = SHA[NEW]  # payload replaced, name still the old one
            return Outcome(S.FAILED, "commit failed", installed=OLD)
        if step == "pending":
            self.pending = NEW
            return Outcome(S.FAILED, "no commit", installed=OLD)
        if step == "raise":
            raise OSError("ssh: connection reset")
        raise AssertionError(f"unknown step {step}")

    def truth(self) -> DeviceTruth:
        return DeviceTruth(
            device=self.name,
            before=OLD,
            installed=self.installed,
            payload_sha256=self.payload,
            pending=self.pending,
            rolled_back=self.rolled_back,
            resumes=self.resumes,
        )


def fleet(*scripts: list[str], delay: float = 0.0) -> list[FakeDevice]:
    return [FakeDevice(f"gw{i}", script, delay) for i, script in enumerate(scripts)]


def run(
    devices: list[FakeDevice], config: RolloutConfig, **kwargs: object
) -> tuple[Rollout, RolloutResult]:
    rollout = Rollout(devices, JOB, config, **kwargs)  # type: ignore[arg-type]
    return rollout, rollout.run()


def check(result: RolloutResult, devices: list[FakeDevice], **kwargs: object) -> InvariantReport:
    return check_rollout(result, [d.truth() for d in devices], SHA, **kwargs)  # type: ignore[arg-type]


def starts(result: RolloutResult) -> list[float]:
    return [e.t_s for e in result.events if e.kind == "state" and e.to_state == S.IN_PROGRESS]


def max_in_window(times: list[float]) -> int:
    return max(sum(1 for s in times if t - 60 < s <= t) for t in times)


# --- rate ----------------------------------------------------------------------------------


def test_constant_rate_is_never_exceeded() -> None:
    devices = fleet(*[["ok"]] * 7)
    config = RolloutConfig(in_progress_timeout_s=30, rate=RolloutRate(maximum_per_minute=3))
    _, result = run(devices, config, clock=ScaledClock(240))
    times = starts(result)
    assert len(times) == 7
    assert max_in_window(times) == 3
    assert times[3] - times[0] >= 60 and times[6] - times[3] >= 60
    assert all(s is S.SUCCEEDED for s in result.view().values())
    check(result, devices).assert_all()


def test_exponential_rate_rises_after_successes() -> None:
    exp = ExponentialRate(base_per_minute=2, increment_factor=2, succeeded_things=2)
    config = RolloutConfig(
        in_progress_timeout_s=30, rate=RolloutRate(maximum_per_minute=8, exponential=exp)
    )
    devices = fleet(*[["ok"]] * 12, delay=1.0)
    _, result = run(devices, config, clock=ScaledClock(240))
    rates = [e.data["rate_per_minute"] for e in result.events if e.to_state == S.IN_PROGRESS]
    times = starts(result)
    assert rates[:2] == [2, 2] and 4 in rates and rates[-1] == 8
    assert rates == sorted(rates)
    assert sum(1 for t in times if t < 60) == 8  # 2 at base, then 4/min, then the 8/min cap
    assert max_in_window(times) == 8
    check(result, devices).assert_all()


def test_rate_schedule_follows_the_aws_example() -> None:
    rate = RolloutRate(
        maximum_per_minute=1000,
        exponential=ExponentialRate(base_per_minute=50, increment_factor=2, notified_things=1000),
    )
    assert [rate.per_minute(n, 0) for n in (0, 999, 1000, 2000, 3000, 10_000)] == [
        50, 50, 100, 200, 400, 1000,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda: RolloutRate(maximum_per_minute=0),
        lambda: RolloutRate(maximum_per_minute=5, exponential=ExponentialRate(10, 2, 1)),
        lambda: ExponentialRate(base_per_minute=5, increment_factor=1.0, notified_things=3),
        lambda: ExponentialRate(5, 2, notified_things=3, succeeded_things=3),
        lambda: AbortCriterion(FailureType.FAILED, threshold_percent=120, min_executed=1),
        lambda: AbortCriterion(FailureType.FAILED, threshold_percent=50, min_executed=0),
        lambda: RetryCriterion(FailureType.REJECTED, retries=1),
        lambda: RetryCriterion(FailureType.FAILED, retries=11),
        lambda: RolloutConfig(in_progress_timeout_s=0),
        lambda: Outcome(S.IN_PROGRESS),
        lambda: Rollout(fleet(["ok"], ["ok"]) * 2, JOB, RolloutConfig(in_progress_timeout_s=1)),
    ],
)
def test_bad_configuration_is_refused(make: object) -> None:
    with pytest.raises(RolloutError):
        make()  # type: ignore[operator]


# --- abort, cancel ---------------------------------------------------------------------------


def abort_config(**kwargs: object) -> RolloutConfig:
    return RolloutConfig(
        in_progress_timeout_s=5,
        abort=(AbortCriterion(FailureType.FAILED, threshold_percent=50, min_executed=3),),
        **kwargs,  # type: ignore[arg-type]
    )


def test_abort_at_threshold_after_minimum_and_nothing_starts_after() -> None:
    devices = fleet(["bad"], ["bad"], ["bad"], *[["ok"]] * 7, delay=0.01)
    _, result = run(devices, abort_config(max_concurrent=1))
    view = result.view()
    # two failures were below the minimum: the third device still started
    assert [view[f"gw{i}"] for i in range(3)] == [S.FAILED] * 3
    assert all(view[f"gw{i}"] is S.CANCELED for i in range(3, 10))
    assert result.aborted is not None and "3 of 3 executed" in result.aborted.reason
    assert all(e.seq < result.aborted.seq for e in result.events if e.to_state == S.IN_PROGRESS)
    assert [d.calls for d in devices] == [1, 1, 1] + [0] * 7
    check(result, devices).assert_all()


def test_abort_lets_in_progress_executions_finish() -> None:
    devices = fleet(["bad"], ["bad"], ["slow"], *[["slow"]] * 7, delay=0.01)
    config = RolloutConfig(
        in_progress_timeout_s=5,
        abort=(AbortCriterion(FailureType.ALL, threshold_percent=50, min_executed=2),),
        max_concurrent=3,
    )
    _, result = run(devices, config)
    assert result.aborted is not None
    view = result.view()
    assert view["gw2"] is S.SUCCEEDED  # in progress at the abort: finished, not cancelled
    started = {e.device for e in result.events if e.to_state == S.IN_PROGRESS}
    assert len(started) <= 4
    assert all(view[name] is S.CANCELED for name in result.devices if name not in started)
    check(result, devices).assert_all()


def test_cancel_before_run_cancels_every_execution() -> None:
    devices = fleet(["ok"], ["ok"])
    rollout = Rollout(devices, JOB, RolloutConfig(in_progress_timeout_s=1))
    rollout.cancel("operator stop")
    result = rollout.run()
    assert set(result.view().values()) == {S.CANCELED}
    assert [d.calls for d in devices] == [0, 0]
    check(result, devices).assert_all()


# --- timeout, retries ----------------------------------------------------------------------


def test_timeout_ends_as_timed_out_and_the_late_answer_is_recorded() -> None:
    devices = fleet(["hang"], ["ok"])
    rollout, result = run(devices, RolloutConfig(in_progress_timeout_s=30), clock=ScaledClock(20))
    record = result.executions["gw0"]
    assert record.status is S.TIMED_OUT and record.attempts[0].still_running
    took = record.attempts[0].ended_s - record.attempts[0].started_s  # type: ignore[operator]
    assert took >= 30  # not before its timeout; that it ended before the answer: below
    assert check(result, devices).verdict("terminal_in_time").ok
    devices[0].release.set()
    assert rollout.wait_stragglers(5)
    later = rollout.result()
    record = later.executions["gw0"]
    assert record.attempts[0].late and record.known_status is S.SUCCEEDED
    gw0 = [e for e in later.events if e.device == "gw0"]
    assert [e.kind for e in gw0][-1] == "late"
    timed_out = next(e for e in gw0 if e.to_state == S.TIMED_OUT)
    assert timed_out.seq < gw0[-1].seq and timed_out.t_s < gw0[-1].t_s
    check(later, devices).assert_all()  # the device runs the new one, and the view knows it


def test_retries_are_bounded_per_failure_type() -> None:
    devices = fleet(["bad", "bad", "bad", "ok"], ["bad", "ok"], ["reject", "ok"], delay=0.01)
    config = RolloutConfig(
        in_progress_timeout_s=5, retry=(RetryCriterion(FailureType.FAILED, retries=2),)
    )
    _, result = run(devices, config)
    gw0, gw1, gw2 = (result.executions[f"gw{i}"] for i in range(3))
    assert (gw0.status, len(gw0.attempts), gw0.retries) == (S.FAILED, 3, {"FAILED": 2})
    assert (gw1.status, len(gw1.attempts)) == (S.SUCCEEDED, 2)
    assert (gw2.status, len(gw2.attempts)) == (S.REJECTED, 1)  # REJECTED is never retried
    assert state_sequence(result, "gw1") == [
        "QUEUED", "IN_PROGRESS", "FAILED", "QUEUED", "IN_PROGRESS", "SUCCEEDED",
    ]  # fmt: skip
    check(result, devices).assert_all()


def test_retry_criterion_all_bounds_the_total() -> None:
    devices = fleet(["bad", "bad", "ok"])
    config = RolloutConfig(
        in_progress_timeout_s=5,
        retry=(
            RetryCriterion(FailureType.FAILED, retries=5),
            RetryCriterion(FailureType.ALL, retries=1),
        ),
    )
    _, result = run(devices, config)
    assert len(result.executions["gw0"].attempts) == 2
    check(result, devices).assert_all()


def test_retry_after_timeout_waits_for_the_running_call() -> None:
    device = FakeDevice("gw0", ["slow", "ok"])  # the slow call answers after 0.4 s
    config = RolloutConfig(
        in_progress_timeout_s=0.3, retry=(RetryCriterion(FailureType.TIMED_OUT, retries=1),)
    )
    _, result = run([device], config)
    assert state_sequence(result, "gw0") == [
        "QUEUED", "IN_PROGRESS", "TIMED_OUT", "QUEUED", "IN_PROGRESS", "SUCCEEDED",
    ]  # fmt: skip
    assert device.max_running == 1  # never two updates at once on one device
    kinds = [e.kind for e in result.events if e.device == "gw0"]
    assert kinds.index("late") < len(kinds) - 1 - kinds[::-1].index("state")
    check(result, [device]).assert_all()
    # a call still running one more timeout after its TIMED_OUT: no retry at all
    device = FakeDevice("gw0", ["slow", "ok"])
    _, result = run([device], dataclasses.replace(config, in_progress_timeout_s=0.1))
    assert state_sequence(result, "gw0") == ["QUEUED", "IN_PROGRESS", "TIMED_OUT"]
    assert any(e.kind == "note" and "no retry" in e.detail for e in result.events)
    assert device.calls == 1


def test_a_device_that_raises_is_failed_and_the_error_kept() -> None:
    devices = fleet(["raise"], ["ok"])
    _, result = run(devices, RolloutConfig(in_progress_timeout_s=5))
    assert result.view() == {"gw0": S.FAILED, "gw1": S.SUCCEEDED}
    assert result.errors and "OSError: ssh: connection reset" in result.errors[0]
    assert Outcome("SUCCEEDED").status is S.SUCCEEDED  # type: ignore[arg-type]


def test_every_change_is_an_event_to_the_sink() -> None:
    got: list[dict[str, object]] = []
    devices = fleet(["bad", "ok"], ["ok"], ["reject"], delay=0.01)
    config = RolloutConfig(
        in_progress_timeout_s=5, retry=(RetryCriterion(FailureType.FAILED, retries=1),)
    )
    _, result = run(devices, config, sink=got.append)
    assert got == [e.to_dict() for e in result.events]
    assert [e.seq for e in result.events] == list(range(len(result.events)))
    assert all(a.t_s <= b.t_s for a, b in zip(result.events, result.events[1:], strict=False))
    json.dumps(got)
    for name, status in result.view().items():
        seq = state_sequence(result, name)
        assert seq[0] == "QUEUED" and seq[-1] == status and status in TERMINAL
    marks = [e.data["mark"] for e in result.events if e.kind == "mark"]
    assert marks == [MARK_DETECTED, MARK_ROLLED_BACK]


# --- the invariant checker -------------------------------------------------------------------


def mixed_fleet() -> tuple[list[FakeDevice], RolloutResult]:
    devices = fleet(["ok"], ["bad"], ["bad", "ok"], ["reject"], ["ok"], delay=0.01)
    config = RolloutConfig(
        in_progress_timeout_s=5, retry=(RetryCriterion(FailureType.FAILED, retries=1),)
    )
    _, result = run(devices, config)
    return devices, result


def test_a_clean_rollout_passes_and_has_metrics() -> None:
    devices, result = mixed_fleet()
    report = check(result, devices, new_payload_good=False, max_resumes=3)
    assert report.ok, report.summary()
    assert [v.invariant for v in report.verdicts] == list(INVARIANTS)
    report.assert_all()
    m = report.metrics
    assert m.completion_s is not None and m.completion_s > 0
    assert m.stranded == () and m.false_rollbacks == ()
    gw1 = next(d for d in m.devices if d.device == "gw1")
    assert gw1.rolled_back and gw1.time_to_detect_s is not None
    assert 0 <= gw1.time_to_detect_s <= gw1.time_to_roll_back_s <= gw1.time_to_know_s  # type: ignore[operator]
    for row in m.measurements():
        check_metric(row["metric"])
        check_unit(row["unit"])


def assert_caught(report: InvariantReport, invariant: str, text: str, tmp_path: Path) -> None:
    verdict = report.verdict(invariant)
    assert not verdict.ok
    assert any(text in v.message for v in verdict.violations), verdict.violations
    path = tmp_path / "evidence.json"
    with pytest.raises(InvariantViolation) as caught:
        report.assert_all(path)
    assert isinstance(caught.value, DeviceFailure)
    line = str(caught.value)
    assert "\n" not in line and invariant in line and str(path) in line
    doc = json.loads(path.read_text())
    assert doc["devices"] and doc["events"]
    assert not doc["verdicts"][INVARIANTS.index(invariant)]["ok"]


def test_new_payload_under_old_name_is_caught(tmp_path: Path) -> None:
    devices = fleet(["ok"], ["mix"], ["pending"])
    _, result = run(devices, RolloutConfig(in_progress_timeout_s=5))
    report = check(result, devices)
    assert_caught(report, "committed_version", "new payload under old name", tmp_path)
    assert_caught(report, "committed_version", "not committed", tmp_path)


def test_an_orchestrator_view_that_lies_is_caught(tmp_path: Path) -> None:
    devices, result = mixed_fleet()
    lie = dataclasses.replace(result.executions["gw1"], status=S.SUCCEEDED)
    staged = dataclasses.replace(result, executions={**result.executions, "gw1": lie})
    assert check(result, devices).verdict("view_matches_device").ok
    report = check(staged, devices)
    assert_caught(report, "view_matches_device", "should run 'model-v2'", tmp_path)
    assert_caught(report, "view_matches_device", "the events end at FAILED", tmp_path)


def test_a_rollback_reported_as_success_is_caught(tmp_path: Path) -> None:
    devices = fleet(["ok"], ["lie"])
    _, result = run(devices, RolloutConfig(in_progress_timeout_s=5))
    report = check(result, devices)
    assert_caught(report, "rollback_is_failure", "rolled back, device reported SUCCEEDED", tmp_path)
    assert_caught(report, "view_matches_device", "reported 'model-v2'", tmp_path)


def test_an_execution_past_its_timeout_or_never_ending_is_caught(tmp_path: Path) -> None:
    devices = fleet(["ok"], ["ok"])
    _, result = run(devices, RolloutConfig(in_progress_timeout_s=5))
    ends = [e for e in result.events if e.to_state == S.SUCCEEDED]
    late = dataclasses.replace(ends[0], t_s=ends[0].t_s + 11)
    staged = dataclasses.replace(
        result, events=tuple(late if e is ends[0] else e for e in result.events if e is not ends[1])
    )
    report = check(staged, devices, grace_s=5)
    assert_caught(report, "terminal_in_time", "over 10 s (timeout + grace)", tmp_path)
    assert_caught(report, "terminal_in_time", "never ended", tmp_path)


def test_a_start_after_the_abort_criteria_held_is_caught(tmp_path: Path) -> None:
    devices = fleet(["bad"], ["bad"], ["bad"], ["ok"], ["ok"], delay=0.01)
    _, result = run(devices, RolloutConfig(in_progress_timeout_s=5, max_concurrent=1))
    assert check(result, devices).ok  # no abort configured: starting them all was right
    # the record claims it had an abort criterion: it kept widening after it held
    staged = dataclasses.replace(result, config=abort_config(max_concurrent=1))
    report = check(staged, devices)
    assert_caught(report, "stops_widening", "after the abort criteria held", tmp_path)
    assert {v.device for v in report.verdict("stops_widening").violations} == {"gw3", "gw4"}


def test_61_starts_in_a_minute_are_caught(tmp_path: Path) -> None:
    devices = fleet(*[["ok"]] * 61)
    _, result = run(devices, RolloutConfig(in_progress_timeout_s=5))
    assert check(result, devices).ok
    staged = dataclasses.replace(
        result, config=dataclasses.replace(result.config, rate=RolloutRate(maximum_per_minute=60))
    )
    report = check(staged, devices)
    assert_caught(report, "stops_widening", "61 starts in the 60 s", tmp_path)


def test_unbounded_retries_and_resumes_are_caught(tmp_path: Path) -> None:
    devices = fleet(["bad"] * 4)
    retry3 = (RetryCriterion(FailureType.FAILED, retries=3),)
    _, result = run(devices, RolloutConfig(in_progress_timeout_s=5, retry=retry3))
    assert len(result.executions["gw0"].attempts) == 4
    staged = dataclasses.replace(
        result,
        config=dataclasses.replace(
            result.config, retry=(RetryCriterion(FailureType.FAILED, retries=1),)
        ),
    )
    assert_caught(check(staged, devices), "retries_bounded", "allowed 1", tmp_path)
    truths = [dataclasses.replace(devices[0].truth(), resumes=5)]
    report = check_rollout(result, truths, SHA, max_resumes=3)
    assert_caught(report, "retries_bounded", "resumed 5 times", tmp_path)


def test_metrics_count_false_rollbacks_and_time_from_the_fault() -> None:
    devices, result = mixed_fleet()
    start = min(starts(result))
    report = check(result, devices, new_payload_good=True, fault_at_s={"gw1": start})
    assert set(report.metrics.false_rollbacks) == {"gw1", "gw2"}
    gw1 = next(d for d in report.metrics.devices if d.device == "gw1")
    assert gw1.reference_s == start and gw1.time_to_detect_s is not None


def test_incomplete_input_is_an_input_error() -> None:
    devices, result = mixed_fleet()
    with pytest.raises(InvariantInputError, match="no DeviceTruth for gw4"):
        check_rollout(result, [d.truth() for d in devices[:4]], SHA)
    with pytest.raises(InvariantInputError, match="lacks model-v2"):
        check_rollout(result, [d.truth() for d in devices], {OLD: SHA[OLD]})


# --- downloads, resumes, fault phases and fault-relative timings -----------------------------


def get(
    client: str, path: str, t: float, sent: int, expected: int, start: int = 0
) -> RequestRecord:
    """A line of the artifact server's log (wall times; the tests put t0 at 1000.0)."""
    return RequestRecord(
        time=1000.0 + t, client=client, method="GET", path=path,
        range=f"bytes={start}-" if start else None, status=206 if start else 200,
        start=start, end=start + expected - 1, expected=expected, sent=sent,
        complete=sent == expected, duration_s=0.5,
    )  # fmt: skip


SERVER_LOG = [
    get("10.0.0.10", "/a--x.mender", 0.0, 1000, 1000),
    get("10.0.0.11", "/a--y.mender", 0.0, 400, 1000),  # broken off, then resumed at 300
    get("10.0.0.11", "/a--y.mender?retry=1", 1.0, 700, 700, start=300),
    get("10.0.0.110", "/a--y.mender", 0.0, 1000, 1000),  # another device: exact address
    get("10.0.0.11", "/other.mender", 0.0, 50, 50),  # another file
    dataclasses.replace(get("10.0.0.11", "/a--y.mender", 2.0, 0, 0), method="HEAD"),
]
ADDRESS = {"gw0": ("10.0.0.10", "/a--x.mender"), "gw1": ("10.0.0.11", "/a--y.mender"),
           "gw2": ("10.0.0.12", "/a--x.mender")}  # fmt: skip


def downloads(log: list[RequestRecord] = SERVER_LOG) -> list[DeviceDownload]:
    return [
        device_download(name, log, client=client, path=path, size=1000, wall_t0=1000.0)
        for name, (client, path) in ADDRESS.items()
    ]


def test_bytes_over_size_is_per_device_from_the_server_log() -> None:
    gw0, gw1, gw2 = downloads()
    assert (gw0.bytes_sent, gw0.unique_bytes, gw0.range_requests, gw0.ratio) == (1000, 1000, 0, 1.0)
    # 400 + 700 sent, bytes 300-399 twice: 1.1, the 0.1 exactly what was re-sent
    assert (gw1.bytes_sent, gw1.unique_bytes, gw1.resent_bytes) == (1100, 1000, 100)
    assert gw1.ratio == pytest.approx(1.1) and gw1.range_requests == 1
    assert [t.start_s for t in gw1.transfers] == [0.0, 1.0] and gw1.transfers[1].offset == 300
    assert gw2.transfers == () and gw2.ratio is None  # never asked: no figure, not 0
    devices, result = mixed_fleet()
    report = check(result, devices, downloads=[gw0, gw1, gw2], max_resumes=1)
    assert report.ok, report.summary()
    assert report.metrics.bytes_over_size == pytest.approx(2100 / 2000)  # gw2 does not dilute
    rows = {(r["gateway"], r["metric"]): r["value"] for r in report.metrics.measurements()}
    assert rows[("gw1", "rollout.bytes_over_size")] == pytest.approx(1.1)
    assert rows[("gw1", "rollout.bytes_resent")] == 100
    assert rows[(None, "rollout.bytes_over_size")] == pytest.approx(1.05)
    assert ("gw2", "rollout.bytes_over_size") not in rows
    doc = report.evidence["devices"]["gw1"]["download"]
    assert doc["transfers"][1]["offset"] == 300


def test_resumes_the_server_saw_are_bounded_and_a_blind_check_is_refused(
    tmp_path: Path,
) -> None:
    devices, result = mixed_fleet()
    resumed = [get("10.0.0.11", "/a--y.mender", i, 100, 100, start=100 * i) for i in range(1, 6)]
    report = check(result, devices, downloads=downloads(resumed), max_resumes=3)
    assert_caught(report, "retries_bounded", "resumed 5 times, more than 3 (Range", tmp_path)
    blind = [dataclasses.replace(d.truth(), resumes=None) for d in devices]
    with pytest.raises(InvariantInputError, match="no resume count for gw3, gw4"):
        check_rollout(result, blind, SHA, downloads=downloads(), max_resumes=3)


class StepDevice:
    """Announces its steps as the real UpdateDevice does, a pause after each."""

    def __init__(self, name: str, pause_s: float = 0.05) -> None:
        self.name = name
        self.pause_s = pause_s

    def run_update(self, ctx: AttemptContext) -> Outcome:
        for step in ("attempt", "install", "installed", "committed"):
            ctx.mark(step)
            time.sleep(self.pause_s)
        return Outcome(S.SUCCEEDED, "committed", installed=NEW)


def test_fault_phase_is_read_from_the_steps_and_the_server_log() -> None:
    result = Rollout([StepDevice("gw0")], JOB, RolloutConfig(in_progress_timeout_s=5)).run()
    at = {e.data["mark"]: e.t_s for e in result.events if e.kind == "mark"}
    mid = (at["install"] + at["installed"]) / 2  # the download ends here
    transfer = get("10.0.0.10", "/a--x.mender", 0.0, 1000, 1000)
    log = [dataclasses.replace(transfer, time=1000.0 + at["install"] + 0.001,
                               duration_s=mid - at["install"] - 0.001)]  # fmt: skip
    (down, *_) = downloads(log)

    def phase(start: float, applied: float | None = None) -> str:
        return fault_phase(result, down, start, start if applied is None else applied).phase

    assert phase(at["attempt"]) == "before_download"
    during = fault_phase(result, down, mid - 0.005, mid - 0.004)
    assert during.phase == "download" and during.served_by_start is not None
    assert during.served_by_start < during.size and during.attempt == 1
    assert phase(mid + 0.002) == "install"
    assert phase(mid + 0.002, at["installed"] + 0.001) == "ambiguous"  # install returned meanwhile
    assert phase(at["installed"] + 0.001) == "commit"
    assert phase(at["committed"] + 0.001) == "after_commit"
    broken = [dataclasses.replace(log[0], sent=600, complete=False)]
    (cut, *_) = downloads(broken)
    assert fault_phase(result, cut, mid + 0.002, mid + 0.003).phase == "download"


class RecoveringDevice:
    """Fails once as a power cut makes it (detected before the cut's apply returns), then
    rolls back the install the cut left pending and succeeds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def run_update(self, ctx: AttemptContext) -> Outcome:
        self.calls += 1
        if self.calls == 1:
            ctx.mark(MARK_DETECTED, "gateway lost")
            return Outcome(S.FAILED, "gateway lost")
        ctx.mark(MARK_RECOVERED, "rolled back pending model-v2")
        return Outcome(S.SUCCEEDED, "committed", installed=NEW)

    def truth(self) -> DeviceTruth:
        return DeviceTruth(self.name, OLD, NEW, SHA[NEW], resumes=0)


def test_timings_count_from_the_fault_start_and_a_recovery_is_a_roll_back() -> None:
    device = RecoveringDevice("gw0")
    config = RolloutConfig(in_progress_timeout_s=5, retry=(RetryCriterion(FailureType.FAILED, 1),))
    result = Rollout([device], JOB, config).run()
    detected = next(e for e in result.events if e.data.get("mark") == MARK_DETECTED)
    recovered = next(e for e in result.events if e.data.get("mark") == MARK_RECOVERED)
    start = detected.t_s - 0.01  # the cut began, the device failed, then apply() returned
    report = check_rollout(result, [device.truth()], SHA, new_payload_good=True,
                           fault_at_s={"gw0": start})  # fmt: skip
    (m,) = report.metrics.devices
    assert m.time_to_detect_s == pytest.approx(0.01, abs=1e-5)
    assert m.time_to_roll_back_s == pytest.approx(recovered.t_s - start, abs=1e-5)
    assert not m.rolled_back and not m.false_rollback  # a recovery is not a false rollback
    # the old reference (after apply() returned, i.e. after the detection) loses it
    late = check_rollout(result, [device.truth()], SHA, fault_at_s={"gw0": detected.t_s + 0.01})
    assert late.metrics.devices[0].time_to_detect_s is None
