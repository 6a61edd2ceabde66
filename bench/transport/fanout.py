"""Run one command on many gateways at once, with per-gateway results and errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.errors import BenchError
from bench.gateway import ConnectedGateway
from bench.transport.agent import AgentClient, Command, CommandResult, PendingCommand


@dataclass
class FanOutResult:
    """Per-gateway outcome: a result for those that answered, an error for those that did not."""

    results: dict[str, CommandResult] = field(default_factory=dict)
    errors: dict[str, BenchError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.ok for r in self.results.values())


def fan_out(
    gateways: Sequence[ConnectedGateway],
    command: Command,
    *,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    check: bool = False,
) -> FanOutResult:
    """Send `command` to every gateway before waiting for any of them.

    Already-connected gateways cost one frame each; the rest connect in parallel first.
    With ``check=True`` a non-zero exit lands in ``errors`` instead of ``results``.
    """
    outcome = FanOutResult()
    agents: dict[str, AgentClient] = {}
    offline = [gw for gw in gateways if not gw.connected]
    for gw in gateways:
        if gw.connected:
            agents[gw.name] = gw.connect()
    if offline:
        with ThreadPoolExecutor(max_workers=min(32, len(offline))) as pool:
            futures = {gw.name: pool.submit(gw.connect) for gw in offline}
        for name, fut in futures.items():
            try:
                agents[name] = fut.result()
            except BenchError as exc:
                outcome.errors[name] = exc
    pending: dict[str, PendingCommand] = {}
    for name, agent in agents.items():
        try:
            pending[name] = agent.submit_run(command, timeout=timeout, env=env)
        except BenchError as exc:
            outcome.errors[name] = exc
    for name, cmd in pending.items():
        try:
            outcome.results[name] = cmd.result(check=check)
        except BenchError as exc:
            outcome.errors[name] = exc
    return outcome
