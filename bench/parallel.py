"""One bench session across pytest-xdist workers (``pytest suites/ -n N``).

The first worker to finish collecting leads: it does what a serial session does once (holds
the rig, brings the lab up, opens the run, clears stale faults, powers the gateways). The
others join that run: they append to the same run directory, whose records are written a
line at a time, so one run's records are merged by construction. At the end the leader
waits until every other worker has let go, then finishes the run and takes the lab down.

Tests are grouped for ``--dist loadgroup``: every test of one gateway in that gateway's
group, tests that use the whole fleet (no gateway parameter) in group ``fleet``. Across
workers a gateway's test holds its gateway shared and the supply it measures through
exclusively; a fleet test holds every gateway exclusively. Gateways are taken through a
turnstile, so a waiting fleet test is not starved by a stream of gateway tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

from bench.errors import BenchError
from bench.locks import FileLock, lock_dir, lock_file

FLEET_GROUP = "fleet"
S = TypeVar("S")


class RunGroup:
    """The workers of one ``pytest -n`` run, sharing one bench session.

    Two locks: ``decide`` (exclusive, held briefly) orders the workers' choice to lead or
    join and holds the run's facts; ``members`` is held shared by every worker until it
    ends, so the leader can wait for the others by asking for it exclusively."""

    def __init__(self, testrunuid: str) -> None:
        self.uid = testrunuid
        self._decide = FileLock(lock_file(f"xdist-{testrunuid}"))
        self._members = FileLock(lock_file(f"xdist-{testrunuid}-members"))
        self.leader = False

    def start(
        self, lead: Callable[[], S], join: Callable[[Path], S], run_dir: Callable[[S], Path]
    ) -> S:
        """Lead (the first worker here) or join the run the leader opened."""
        self._decide.acquire()
        try:
            info = self._decide.read()
            if "error" in info:
                raise BenchError(str(info["error"]))
            if info.get("closed"):
                raise BenchError(f"pytest-xdist run {self.uid}: the run already ended")
            self._members.acquire(shared=True)
            try:
                if "run_dir" in info:
                    return join(Path(info["run_dir"]))
                try:
                    session = lead()
                except BenchError as exc:
                    self._decide.write({"error": str(exc)})
                    raise
                self._decide.write({"run_dir": str(run_dir(session)), "leader": os.getpid()})
                self.leader = True
                return session
            except BaseException:
                self._members.release()
                raise
        finally:
            self._decide.release()

    def finish(self, close: Callable[[], None]) -> None:
        """Followers let go; the leader waits for them, then runs ``close``."""
        if not self.leader:
            self._members.release()
            return
        self._members.acquire()  # blocks while any follower still holds its share
        try:
            close()
        finally:
            self._decide.acquire()
            self._decide.write(self._decide.read() | {"closed": True})
            self._decide.release()
            self._members.release()


def run_dir_of(testrunuid: str) -> Path | None:
    """The run directory the workers of ``testrunuid`` wrote (for the controller's summary)."""
    info = FileLock(lock_file(f"xdist-{testrunuid}")).read()
    return Path(info["run_dir"]) if "run_dir" in info else None


def forget(testrunuid: str) -> None:
    """Remove the run's lock files once every worker is gone."""
    for path in lock_dir().glob(f"xdist-{testrunuid}*.lock"):
        path.unlink(missing_ok=True)


@contextmanager
def hold_for_test(
    testrunuid: str,
    *,
    gateway: str | None,
    fleet: list[str],
    instruments: list[str],
) -> Iterator[None]:
    """Hold what one test needs across workers: its gateway shared and ``instruments``
    exclusively, or (``gateway`` None) every gateway of ``fleet`` exclusively."""

    def lock(name: str) -> FileLock:
        return FileLock(lock_file(f"xdist-{testrunuid}-{name}"))

    with ExitStack() as held:
        turnstile = lock("turnstile")
        turnstile.acquire()
        held.callback(turnstile.release)
        if gateway is None:  # keeps the turnstile: gateway tests queue behind this one
            for name in sorted(fleet):
                gw = lock(f"gw-{name}")
                gw.acquire()
                held.callback(gw.release)
        else:
            gw = lock(f"gw-{gateway}")
            gw.acquire(shared=True)
            held.callback(gw.release)
            turnstile.release()
        for name in sorted(instruments):
            instrument = lock(f"instrument-{name}")
            instrument.acquire()
            held.callback(instrument.release)
        yield
