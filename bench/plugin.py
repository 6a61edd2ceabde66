"""The fieldrig pytest plugin: --rig, gateway fixtures, capability markers, result capture.

Registered through the ``pytest11`` entry point, so an installed fieldrig works in any
directory. Nothing happens unless a collected test uses one of the fixtures below.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.errors import BenchError
from bench.faults.chaos import RandomFaults
from bench.faults.chaos import from_env as random_faults
from bench.faults.leaks import FaultLeaked, LeakCheck
from bench.gateway import ConnectedGateway
from bench.instruments.meter import ArraySupplyMeter, SupplyChannelMeter
from bench.instruments.psu import PowerSupply
from bench.parallel import FLEET_GROUP, RunGroup, forget, hold_for_test, run_dir_of
from bench.radio.capability import Radio
from bench.results import RunStore
from bench.results.store import read_jsonl
from bench.rig import Rig, load_rig
from bench.session import BenchSession

FIXTURES = frozenset({"rig", "gateway", "gateways", "results", "gateway_power"})
STATE_KEY = pytest.StashKey["PluginState"]()


class PluginState:
    """Per-pytest-session state of the plugin."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._spec: Rig | None = None
        self.session: BenchSession | None = None
        self.start_error: str | None = None
        self.group: RunGroup | None = None  # pytest-xdist workers sharing one session
        self.testrunuid: str | None = None  # the controller's pytest-xdist run
        self.chaos: RandomFaults | None = None  # $FIELDRIG_RANDOM_FAULTS (soak runs)
        self.leaks = LeakCheck(exempt=lambda f: self.chaos is not None and self.chaos.owns(f))

    @property
    def spec(self) -> Rig:
        if self._spec is None:
            try:
                self._spec = load_rig(self.config.getoption("rig"))
            except BenchError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._spec

    def selected_gateways(self) -> list[str]:
        """The rig's gateways, restricted by --gateway (unknown names are a usage error)."""
        names = self.spec.gateway_names()
        wanted: list[str] = self.config.getoption("gateway") or []
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise pytest.UsageError(
                f"--gateway {unknown[0]}: rig '{self.spec.name}' has no such gateway; "
                f"it has {', '.join(names)}"
            )
        return [n for n in names if not wanted or n in wanted]

    def say(self, line: str) -> None:
        """A line on the terminal now, also while a test runs (output capture is
        suspended for it, as pytest's own live logging does)."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            print(line, file=sys.stderr)
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is None:
            reporter.write_line(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


def _state(config: pytest.Config) -> PluginState:
    return config.stash[STATE_KEY]


def _worker_run(config: pytest.Config) -> str | None:
    """The pytest-xdist run this process is a worker of (None: not a worker)."""
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput["testrunuid"])


def _default_to_loadgroup(config: pytest.Config) -> None:
    """``-n N`` without ``--dist`` distributes with ``loadgroup`` (pytest-xdist would pick
    ``load``), so a gateway's tests stay in one worker."""
    explicit = any(str(a).startswith("--dist") for a in config.invocation_params.args)
    if getattr(config.option, "numprocesses", None) and not explicit:
        config.option.dist = "loadgroup"
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get("fieldrig_loadgroup"):
        config.option.loadgroup = True  # workers parse the command line, not our choice


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fieldrig", "fieldrig hardware-in-the-loop bench")
    group.addoption(
        "--rig",
        default="virtual",
        help="rig name (rigs/NAME.yaml) or path to a rig file; default: virtual (the virtual lab)",
    )
    group.addoption(
        "--gateway",
        action="append",
        default=[],
        metavar="NAME",
        help="run only on this gateway (repeatable)",
    )
    group.addoption(
        "--keep-lab", action="store_true", help="leave the virtual lab up after the run"
    )
    group.addoption(
        "--runs-dir",
        default=None,
        help="where runs are stored (default: reports/runs under the rootdir)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "board(*ids): run only on gateways of these boards")
    config.addinivalue_line("markers", "tag(*tags): run only on gateways carrying all these tags")
    config.addinivalue_line(
        "markers", "needs(*capabilities): run only where the gateway has them (psu, radio, ...)"
    )
    config.stash[STATE_KEY] = PluginState(config)
    _default_to_loadgroup(config)


def pytest_collection(session: pytest.Session) -> None:
    """Check an explicitly given --rig / --gateway before collecting (one-line usage error)."""
    config = session.config
    if config.getoption("gateway") or config.getoption("rig") != "virtual":
        _state(config).selected_gateways()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gateway" in metafunc.fixturenames:
        state = _state(metafunc.config)
        try:
            names = state.selected_gateways()
        except pytest.UsageError as exc:  # reported once, cleanly, when collection ends
            state.start_error = str(exc)
            names = []
        metafunc.parametrize("gateway", names, ids=names, indirect=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, group tests by gateway (fleet-wide tests in one group)."""
    if _worker_run(config) is None:
        return
    for item in items:
        if _uses_bench(item):
            item.add_marker(pytest.mark.xdist_group(_gateway_param(item) or FLEET_GROUP))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reports this worker's collection
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if _state(config).start_error:
        raise pytest.UsageError(_state(config).start_error)
    if config.option.collectonly or not any(_uses_bench(item) for item in session.items):
        return
    state = _state(config)
    runs_dir = Path(config.getoption("runs_dir") or config.rootpath / "reports" / "runs")
    selected = state.selected_gateways()

    def lead() -> BenchSession:
        return BenchSession.start(
            state.spec,
            selected=selected,
            runs_dir=runs_dir,
            argv=["pytest", *config.invocation_params.args],
            say=state.say,
        )

    def join(run_dir: Path) -> BenchSession:
        return BenchSession.join(state.spec, run_dir, selected=selected, say=state.say)

    uid = _worker_run(config)
    try:
        if uid is None:
            state.session = lead()
        else:
            state.group = RunGroup(uid)
            state.session = state.group.start(lead, join, lambda s: s.store.run_dir)
    except BenchError as exc:
        raise pytest.UsageError(str(exc)) from None
    if state.group is None or state.group.leader:
        try:
            state.chaos = random_faults(state.session)
        except BenchError as exc:
            raise pytest.UsageError(str(exc)) from None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _state(session.config)
    if state.session is None:
        return
    status = "interrupted" if exitstatus == pytest.ExitCode.INTERRUPTED else "complete"
    bench = state.session
    if state.chaos is not None:
        state.chaos.stop()

    def close() -> None:
        bench.close(status, keep_lab=session.config.getoption("keep_lab"), say=state.say)

    if state.group is None:
        close()
    elif state.group.leader:
        state.group.finish(close)  # waits for the other workers first
    else:
        close()  # a joined worker only lets go
        state.group.finish(close)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist controller: remember the run id its workers share; pass on the
    distribution mode chosen for them."""
    _state(node.config).testrunuid = str(node.workerinput["testrunuid"])
    node.workerinput["fieldrig_loadgroup"] = node.config.getoption("dist") == "loadgroup"


def pytest_unconfigure(config: pytest.Config) -> None:
    uid = _state(config).testrunuid
    if uid is not None:
        forget(uid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Under pytest-xdist, hold the test's gateway (or the whole fleet) and the supply it
    measures through, across workers."""
    state = _state(item.config)
    uid = _worker_run(item.config)
    if uid is None or state.session is None or not _uses_bench(item):
        return (yield)
    gateway = _gateway_param(item)
    instruments = []
    if gateway is not None and "gateway_power" in getattr(item, "fixturenames", ()):
        power = state.spec.gateway(gateway).power
        instruments = [power.instrument] if power is not None else []
    with hold_for_test(
        uid, gateway=gateway, fleet=list(state.session.gateways), instruments=instruments
    ):
        return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Faults on before a test's setup are not its doing (see bench.faults.leaks)."""
    _state(item.config).leaks.begin()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: Any) -> Any:
    """A fixture wider than a function owns the faults it applies until its teardown."""
    leaks = _state(request.config).leaks
    before = leaks.snapshot()
    try:
        return (yield)
    finally:
        if fixturedef.scope != "function":
            leaks.adopt(fixturedef, before)


def pytest_fixture_post_finalizer(fixturedef: pytest.FixtureDef[Any], request: Any) -> None:
    _state(request.config).leaks.finalized(fixturedef)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """A fault still on after its test's teardown is removed and fails the test's teardown
    as a bench error (FaultLeaked), recorded in the run's events as fault_leaked."""
    failure: BaseException | None = None
    result = None
    try:
        result = yield
    except BaseException as exc:
        failure = exc
    state = _state(item.config)
    leaks = state.leaks.end()
    if leaks and state.session is not None:
        for leak in leaks:
            state.session.store.record_event(
                gateway=_gateway_param(item),
                kind="fault_leaked",
                message=json.dumps({"test": item.nodeid, "fault": leak.fault, "error": leak.error}),
            )
    if failure is not None:
        raise failure
    if leaks:
        raise FaultLeaked(
            f"{item.nodeid}: {len(leaks)} fault(s) outlived the test and were removed: "
            f"{'; '.join(map(str, leaks))}; end each fault in its test (with fault: ... or "
            "a FaultTimeline)"
        )
    return result


def pytest_terminal_summary(terminalreporter: Any) -> None:
    state = _state(terminalreporter.config)
    bench = state.session
    if bench is None and state.testrunuid is not None:
        _controller_summary(terminalreporter, state.testrunuid)
    if bench is None:
        return
    if bench.unavailable:
        terminalreporter.section("fieldrig infrastructure errors", red=True)
        for name, reason in bench.unavailable.items():
            terminalreporter.write_line(f"{name}: {reason}")
    terminalreporter.write_line(
        f"fieldrig run {bench.store.run_id} ({'virtual' if bench.virtual else 'hardware'}): "
        f"{bench.store.run_dir}"
    )


def _controller_summary(terminalreporter: Any, testrunuid: str) -> None:
    """What the workers' shared run recorded: its directory and infrastructure errors."""
    run_dir = run_dir_of(testrunuid)
    if run_dir is None:
        return
    failed = [
        e for e in read_jsonl(run_dir / "events.jsonl") if e.get("kind") == "health_check_failed"
    ]
    if failed:
        terminalreporter.section("fieldrig infrastructure errors", red=True)
        for event in failed:
            terminalreporter.write_line(f"{event['gateway']}: {event['message']} (one worker)")
    terminalreporter.write_line(f"fieldrig run {run_dir.name} (pytest-xdist workers): {run_dir}")


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    """pytest-benchmark's machine_info describes the host; add the devices that measured."""
    bench = _state(config).session
    if bench is not None:
        machine_info["fieldrig"] = {
            "rig": bench.name,
            "virtual": bench.virtual,
            "run_id": bench.store.run_id,
            "devices": bench.inventory,
        }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    bench = _state(item.config).session
    if bench is None or not _uses_bench(item):
        return report
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.when == "setup" and report.failed:
            outcome = "error"
        message = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        elif report.failed:
            message = report.longreprtext.strip().splitlines()[-1] if report.longreprtext else ""
        bench.store.record_outcome(
            test=item.nodeid,
            gateway=_gateway_param(item),
            outcome=outcome,
            duration_s=report.duration,
            message=message,
        )
    return report


def _uses_bench(item: pytest.Item) -> bool:
    """Whether the test uses this plugin's fixtures (not a same-named fixture of its own)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in FIXTURES.intersection(info.names_closure):
        definitions = info.name2fixturedefs.get(name)
        if definitions and definitions[-1].func.__module__ == __name__:
            return True
    return False


def _gateway_param(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("gateway") if callspec is not None else None
    return value if isinstance(value, str) else None


def _bench(request: pytest.FixtureRequest) -> BenchSession:
    bench = _state(request.config).session
    if bench is None:  # only when the fixture is requested dynamically
        pytest.skip("fieldrig session not started (no fixture use seen at collection)")
    return bench


def _unmet(gw: ConnectedGateway, item: pytest.Item) -> str | None:
    """Why this gateway cannot run this test, from its board/tag/needs markers."""
    spec = gw.spec
    for mark in item.iter_markers("board"):
        if spec.board not in mark.args:
            return f"{gw.name} is a {spec.board}; test needs board {' or '.join(mark.args)}"
    for mark in item.iter_markers("tag"):
        missing = [t for t in mark.args if t not in spec.tags]
        if missing:
            return f"{gw.name} lacks tag {', '.join(missing)}"
    for mark in item.iter_markers("needs"):
        missing = [c for c in mark.args if c not in spec.capabilities]
        if missing:
            return f"{gw.name} has no {', '.join(missing)} capability in the rig"
    return None


@pytest.fixture(scope="session")
def rig(request: pytest.FixtureRequest) -> BenchSession:
    """The session's bench: rig spec, lab, connected gateways, inventory, run store."""
    return _bench(request)


@pytest.fixture
def gateway(request: pytest.FixtureRequest, rig: BenchSession) -> ConnectedGateway:
    """One gateway (tests are parametrized over the selected gateways; ids are their names)."""
    name: str = request.param
    if name in rig.unavailable:
        pytest.skip(f"{name} unavailable (infrastructure): {rig.unavailable[name]}")
    gw = rig.gateways[name]
    reason = _unmet(gw, request.node)
    if reason:
        pytest.skip(reason)
    return gw


@pytest.fixture
def gateways(rig: BenchSession) -> list[ConnectedGateway]:
    """All selected, healthy gateways."""
    return rig.healthy


@pytest.fixture
def gateway_power(
    gateway: ConnectedGateway, rig: BenchSession
) -> tuple[PowerSupply, int, SupplyChannelMeter | ArraySupplyMeter]:
    """(supply, channel, meter) powering this test's gateway; skipped where there is none."""
    try:
        return rig.power(gateway.name)
    except BenchError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def gateway_radio(gateway: ConnectedGateway, rig: BenchSession) -> Iterator[Radio]:
    """This test's gateway's radio dongle through its driver; skipped where there is none."""
    try:
        radio = rig.radio(gateway.name)
    except BenchError as exc:
        pytest.skip(str(exc))
    try:
        yield radio
    finally:
        radio.close()


class Recorder:
    """Records measurements of the current test into the run (the `results` fixture)."""

    def __init__(self, store: RunStore, item: pytest.Item, gateway: str | None) -> None:
        self.store = store
        self.gateway = gateway
        self.suite = Path(str(item.path)).stem.removeprefix("test_")
        self.test = getattr(item, "originalname", item.name)
        callspec = getattr(item, "callspec", None)
        self.parameters = {
            k: v for k, v in (callspec.params.items() if callspec else ()) if k != "gateway"
        }

    def record(
        self, metric: str, value: float | int | str | bool, unit: str, **parameters: Any
    ) -> None:
        """Append one measurement; it is on disk when this returns."""
        params = {k: _plain(v) for k, v in {**self.parameters, **parameters}.items()}
        self.store.record(
            gateway=self.gateway,
            suite=self.suite,
            test=self.test,
            metric=metric,
            value=value,
            unit=unit,
            parameters=params,
        )


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


@pytest.fixture
def results(request: pytest.FixtureRequest, rig: BenchSession) -> Iterator[Recorder]:
    """The recorder for this test; measurements carry the test's gateway when it has one."""
    yield Recorder(rig.store, request.node, _gateway_param(request.node))
