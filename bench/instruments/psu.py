"""SCPI bench supplies over pyvisa: the "psu" capability and one table-driven driver.

Safety rules, in the order they apply:

- Every set-point is checked against the channel's ``max_voltage`` / ``max_current`` from
  the rig BEFORE anything is written; a violation raises :class:`SetpointRefused`. Channels
  the rig does not declare are never addressed, not even to read them.
- OVP (at ``max_voltage``) and OCP (at ``current_limit``) are configured and enabled before
  an output goes on: ``output(ch, True)`` configures a channel first if this session has not.
- Every configuration write is followed by the dialect's error query; an instrument error
  raises :class:`InstrumentError` with the supply's own text.
- ``acquire_array`` (families with a datalogger) checks the point count, the interval and
  the sweep's length before anything is sent, and reads the error queue after every step.
- ``close()``, the context manager and :func:`safe_on_exit` (atexit + SIGTERM) put every
  output in the rig's declared safe state. A SIGKILLed process cannot restore anything:
  whoever opens the supply next must call :meth:`ScpiPsu.safe_state` at start, which turns
  the outputs a crashed run left on back to their safe state.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

import pyvisa
from pyvisa import errors as visa_errors
from pyvisa.resources import MessageBasedResource

from bench.errors import BenchError, InfrastructureError
from bench.instruments.dialects import DIALECTS, ArrayCommands, Dialect
from bench.rig import Channel, Instrument

T = TypeVar("T")

__all__ = [
    "MAX_ACQUISITION_S",
    "AcquisitionRefused",
    "ArrayReading",
    "ArraySupply",
    "InstrumentError",
    "PowerSupply",
    "SafeExitGuard",
    "ScpiPsu",
    "SetpointRefused",
    "open_psu",
    "safe_on_exit",
]

_MAX_ERRORS = 20  # error-queue entries read after one write
MAX_ACQUISITION_S = 60.0
"""Longest sweep (points x interval) one ``acquire_array`` call may block for; capture
longer stretches as several sweeps (the sampler does)."""
_FETCH_MARGIN_S = 5.0  # beyond the sweep's own length, for the fetch's round trip
_ERROR_CODE = re.compile(r"\s*([+-]?\d+)")


class SetpointRefused(BenchError):
    """A set-point beyond the rig's limits, or an undeclared channel: nothing was written."""


class InstrumentError(InfrastructureError):
    """The supply reported an error, did not answer, or answered something unreadable."""


class AcquisitionRefused(BenchError):
    """An array acquisition the supply cannot do (no datalogger, too many points, interval
    or sweep length out of bounds): refused before anything was sent."""


@dataclass(frozen=True)
class ArrayReading:
    """One datalogger sweep of a channel: point ``i`` was taken at
    ``start_ns + i * interval_s`` on the bench's wall clock."""

    channel: int
    start_ns: int  # bench wall clock at the trigger, i.e. at the first point
    interval_s: float  # the interval the supply reports using, not the one asked for
    volts: tuple[float, ...]
    amps: tuple[float, ...]

    def times_ns(self) -> list[int]:
        """The bench wall-clock time of every point."""
        return [self.start_ns + round(i * self.interval_s * 1e9) for i in range(len(self.amps))]

    def watts(self) -> list[float]:
        return [v * i for v, i in zip(self.volts, self.amps, strict=True)]


class PowerSupply(Protocol):
    """The "psu" capability: a multi-channel bench supply with the rig's limits applied."""

    def identify(self) -> str: ...
    def configure(self, channel: int) -> None: ...
    def set_voltage(self, channel: int, volts: float) -> None: ...
    def set_current_limit(self, channel: int, amps: float) -> None: ...
    def output(self, channel: int, on: bool) -> None: ...
    def output_state(self, channel: int) -> bool: ...
    def measure_voltage(self, channel: int) -> float: ...
    def measure_current(self, channel: int) -> float: ...
    def measure_power(self, channel: int) -> float: ...
    def safe_state(self) -> None: ...
    def detach(self) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class ArraySupply(PowerSupply, Protocol):
    """A supply whose driver can read a channel through the instrument's datalogger."""

    @property
    def has_datalogger(self) -> bool: ...
    def acquire_array(self, channel: int, points: int, interval_s: float) -> ArrayReading: ...


def _number(value: float) -> str:
    return f"{value:.6g}"


def on_every_channel(channels: Iterable[T], action: Callable[[T], None]) -> None:
    """``action`` on every channel even when some fail (a safe state must reach all it
    can); then raise the first failure, saying how many more channels failed."""
    failures: list[BenchError] = []
    for channel in channels:
        try:
            action(channel)
        except BenchError as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        more = f" (and {len(failures) - 1} more channel(s) failed)"
        raise InstrumentError(f"{failures[0]}{more}") from failures[0]


class ScpiPsu:
    """A SCPI supply driven by a :class:`~bench.instruments.dialects.Dialect` table."""

    def __init__(
        self,
        name: str,
        instrument: Instrument,
        dialect: Dialect,
        *,
        resource_manager: str = "@py",
        timeout_ms: int = 5000,
    ) -> None:
        self.name = name
        self.instrument = instrument
        self.dialect = dialect
        self._lock = threading.RLock()
        self._configured: set[int] = set()
        self._pending = False  # a query's answer may still be in flight
        self._closed = False
        resource = instrument.resource
        try:
            self._rm = pyvisa.ResourceManager(resource_manager)
            opened = self._rm.open_resource(
                resource,
                read_termination="\n",
                write_termination="\n",
                timeout=timeout_ms,
                query_delay=0.0,
            )
        except (visa_errors.Error, OSError, ValueError) as exc:
            raise InstrumentError(
                f"{name}: cannot open {resource}: {exc}; check that the supply is powered, "
                "reachable from this host and that the rig's resource string is right"
            ) from None
        if not isinstance(opened, MessageBasedResource):
            opened.close()
            raise InstrumentError(f"{name}: {resource} is not a message-based (SCPI) resource")
        self._res = opened
        try:
            self._idn = self._query(dialect.identify)
            self._check_vendor()
            self._clear_errors()
        except BaseException:
            self._release()
            raise

    # --- the capability ---------------------------------------------------------------

    def identify(self) -> str:
        """The supply's ``*IDN?`` answer."""
        return self._query(self.dialect.identify)

    def configure(self, channel: int) -> None:
        """Apply the rig's OVP, current limit + OCP and voltage set-point, each checked."""
        spec = self._declared(channel)
        self._check(channel, "voltage", spec.voltage, spec.max_voltage, "V", "max_voltage")
        self._check(
            channel, "current limit", spec.current_limit, spec.max_current, "A", "max_current"
        )
        d = self.dialect
        steps = (
            (d.ovp_level, spec.max_voltage),
            (d.ovp_enable, 0.0),
            (d.set_current, spec.current_limit),
            (d.ocp_level, spec.current_limit),
            (d.ocp_enable, 0.0),
            (d.set_voltage, spec.voltage),
        )
        with self._lock:
            self._select(channel)
            for template, value in steps:
                if template is not None:
                    self._setting(template.format(ch=channel, value=_number(value)))
            self._configured.add(channel)

    def set_voltage(self, channel: int, volts: float) -> None:
        spec = self._declared(channel)
        self._check(channel, "voltage", volts, spec.max_voltage, "V", "max_voltage")
        with self._lock:
            self._select(channel)
            self._setting(self.dialect.set_voltage.format(ch=channel, value=_number(volts)))

    def set_current_limit(self, channel: int, amps: float) -> None:
        """Set the current limit; where OCP has its own level it follows the limit."""
        spec = self._declared(channel)
        self._check(channel, "current limit", amps, spec.max_current, "A", "max_current")
        with self._lock:
            self._select(channel)
            for template in (self.dialect.set_current, self.dialect.ocp_level):
                if template is not None:
                    self._setting(template.format(ch=channel, value=_number(amps)))

    def output(self, channel: int, on: bool) -> None:
        """Switch an output; switching on configures the channel first if not yet done."""
        self._declared(channel)
        with self._lock:
            if on and channel not in self._configured:
                self.configure(channel)
            self._select(channel)
            template = self.dialect.output_on if on else self.dialect.output_off
            self._setting(template.format(ch=channel))

    def output_state(self, channel: int) -> bool:
        reply = self._channel_query(channel, self.dialect.output_query)
        try:
            return self.dialect.parse_output(reply, channel)
        except ValueError as exc:
            raise InstrumentError(
                f"{self.name}: unreadable output state {reply!r} for channel {channel}: {exc}"
            ) from None

    def measure_voltage(self, channel: int) -> float:
        return self._measure(channel, self.dialect.measure_voltage)

    def measure_current(self, channel: int) -> float:
        return self._measure(channel, self.dialect.measure_current)

    def measure_power(self, channel: int) -> float:
        """``MEAS:POW?`` where the dialect has it, else voltage times current."""
        if self.dialect.measure_power is not None:
            return self._measure(channel, self.dialect.measure_power)
        with self._lock:
            return self.measure_voltage(channel) * self.measure_current(channel)

    @property
    def has_datalogger(self) -> bool:
        """Whether this family has array acquisition (``acquire_array``)."""
        return self.dialect.array is not None

    def acquire_array(self, channel: int, points: int, interval_s: float) -> ArrayReading:
        """One datalogger sweep: ``points`` readings of volts and amps, ``interval_s`` apart.

        Configures the sweep (points, interval, no trigger offset), reads the interval back
        (the supply rounds it to its sample clock), initiates and triggers the acquisition,
        then fetches both arrays of that one acquisition. Every step is followed by the error
        query. Blocks for the sweep's length (points x interval), at most
        ``MAX_ACQUISITION_S``. The start time is the bench clock at the trigger (the middle
        of its round trip), so point ``i`` lies at ``start_ns + i * interval_s``.
        """
        self._declared(channel)
        table = self._array_commands(channel, points, interval_s)
        with self._lock:
            self._select(channel)
            self._setting(table.points.format(ch=channel, value=str(points)))
            self._setting(table.interval.format(ch=channel, value=f"{interval_s:.9g}"))
            actual = self._interval_read_back(table.interval_query.format(ch=channel), interval_s)
            if table.offset is not None:
                self._setting(table.offset.format(ch=channel))
            self._setting(table.initiate.format(ch=channel))
            before = time.time_ns()
            self._setting(table.trigger.format(ch=channel))
            start_ns = (before + time.time_ns()) // 2
            timeout = self._res.timeout
            self._res.timeout = max(timeout, (points * actual + _FETCH_MARGIN_S) * 1000)
            try:
                amps = self._fetch_array(table.fetch_current.format(ch=channel), points)
            finally:
                self._res.timeout = timeout
            volts = self._fetch_array(table.fetch_voltage.format(ch=channel), points)
        return ArrayReading(channel, start_ns, actual, volts, amps)

    def safe_state(self) -> None:
        """Every declared channel to its safe state (off unless the rig says "on")."""
        with self._lock:
            on_every_channel(
                sorted(self.instrument.channels.items()),
                lambda item: self.output(item[0], item[1].safe_state == "on"),
            )

    def detach(self) -> None:
        """Close the session and leave every setting as it is: another process of the same
        run still uses the instrument and safes it at the end."""
        with self._lock:
            if not self._closed:
                self._release()

    def close(self) -> None:
        """Safe state first, then close the VISA session; a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            try:
                self.safe_state()
            finally:
                self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- safety checks --------------------------------------------------------------------

    def _declared(self, channel: int) -> Channel:
        spec = self.instrument.channels.get(channel)
        if spec is None:
            declared = ", ".join(map(str, sorted(self.instrument.channels)))
            raise SetpointRefused(
                f"{self.name}: channel {channel} is not declared in the rig (declared: "
                f"{declared}); refused before anything was sent: use a declared channel or "
                f"add channel {channel} with its limits under instruments.{self.name}.channels"
            )
        return spec

    def _check(
        self, channel: int, what: str, value: float, limit: float, unit: str, key: str
    ) -> None:
        where = f"{self.name} channel {channel}"
        if not math.isfinite(value) or value < 0:
            raise SetpointRefused(
                f"{where}: {what} {value} {unit} refused before anything was sent: it must be "
                f"a finite number from 0 to {key} {limit:g} {unit}"
            )
        if value > limit:
            raise SetpointRefused(
                f"{where}: {what} {value:g} {unit} refused before anything was sent: it is "
                f"above {key} {limit:g} {unit} declared in the rig; lower the set-point, or "
                f"raise {key} in the rig file only if the wiring and the board allow it"
            )

    def _array_commands(self, channel: int, points: int, interval_s: float) -> ArrayCommands:
        table = self.dialect.array
        where = f"{self.name} channel {channel}"
        if table is None:
            raise AcquisitionRefused(
                f"{where}: array acquisition refused: a {self.dialect.family} has no "
                "datalogger in fieldrig's dialect table; read it with point queries "
                "(SupplyChannelMeter) instead"
            )
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise AcquisitionRefused(
                f"{where}: {points!r} points refused before anything was sent: give a whole "
                f"number from 1 to {table.max_points}"
            )
        if points > table.max_points:
            raise AcquisitionRefused(
                f"{where}: {points} points refused before anything was sent: a "
                f"{self.dialect.family} holds at most {table.max_points} per sweep; take "
                "several sweeps or a longer interval"
            )
        low, high = table.min_interval_s, table.max_interval_s
        if not math.isfinite(interval_s) or not low <= interval_s <= high:
            raise AcquisitionRefused(
                f"{where}: interval {interval_s} s refused before anything was sent: it must "
                f"be from {low:g} s to {high:g} s"
            )
        if points * interval_s > MAX_ACQUISITION_S:
            raise AcquisitionRefused(
                f"{where}: a sweep of {points} x {interval_s:g} s = "
                f"{points * interval_s:g} s refused before anything was sent: one sweep "
                f"blocks the supply's session, keep it within {MAX_ACQUISITION_S:g} s"
            )
        return table

    def _interval_read_back(self, query: str, asked: float) -> float:
        reply = self._checked_query(query)
        try:
            actual = float(reply)
        except ValueError:
            raise InstrumentError(
                f"{self.name}: {query!r} answered {reply!r}, not a number"
            ) from None
        if not math.isfinite(actual) or actual <= 0 or abs(actual - asked) > 0.5 * asked:
            raise InstrumentError(
                f"{self.name}: asked for a {asked:g} s sample interval, the supply reports "
                f"{actual:g} s ({query!r}); refusing to timestamp points with either"
            )
        return actual

    def _fetch_array(self, query: str, points: int) -> tuple[float, ...]:
        data = self._checked_query(query)
        try:
            values = tuple(float(v) for v in data.split(","))
        except ValueError:
            raise InstrumentError(
                f"{self.name}: {query!r} answered {data[:60]!r}..., not a list of numbers"
            ) from None
        if len(values) != points:
            raise InstrumentError(
                f"{self.name}: {query!r} returned {len(values)} points, {points} were "
                "configured; another session may have changed the sweep"
            )
        return values

    def _checked_query(self, query: str) -> str:
        """A query followed by the error queue, in one message where the dialect allows: a
        query the supply rejects then answers with its error instead of not at all."""
        error_query = self.dialect.error_query
        with self._lock:
            if self.dialect.compound:
                answer, _, reply = self._query(f"{query};:{error_query.lstrip(':')}").rpartition(
                    ";"
                )
            else:
                answer, reply = self._query(query), self._query(error_query)
            self._raise_errors(reply, query)
        return answer

    # --- I/O ------------------------------------------------------------------------------

    def _check_vendor(self) -> None:
        vendors = self.dialect.idn_vendors
        maker = self._idn.split(",", 1)[0].upper()
        if vendors and not any(v in maker for v in vendors):
            raise InstrumentError(
                f"{self.name}: {self.instrument.resource} identifies as {self._idn!r}, not a "
                f"{self.dialect.family}; fix instruments.{self.name}.driver in the rig "
                f"(it says {self.instrument.driver!r})"
            )

    def _clear_errors(self) -> None:
        if self.dialect.clear_status is not None:
            self._write(self.dialect.clear_status)
        for _ in range(_MAX_ERRORS):  # what a crashed run left in the queue is not ours
            if self._error_code(self._query(self.dialect.error_query)) == 0:
                break

    def _select(self, channel: int) -> None:
        if self.dialect.select is not None:
            self._setting(self.dialect.select.format(ch=channel))

    def _channel_query(self, channel: int, template: str) -> str:
        self._declared(channel)
        with self._lock:
            self._select(channel)
            return self._query(template.format(ch=channel))

    def _measure(self, channel: int, template: str) -> float:
        reply = self._channel_query(channel, template)
        try:
            return float(reply)
        except ValueError:
            raise InstrumentError(
                f"{self.name}: {template.format(ch=channel)!r} answered {reply!r}, not a number"
            ) from None

    def _setting(self, command: str) -> None:
        """Write one configuration command, then read the error queue."""
        error_query = self.dialect.error_query
        with self._lock:
            if self.dialect.compound:  # one message: no Nagle/delayed-ACK stall between two
                reply = self._query(f"{command};:{error_query.lstrip(':')}")
            else:
                self._write(command)
                reply = self._query(error_query)
            self._raise_errors(reply, command)

    def _raise_errors(self, reply: str, command: str) -> None:
        """Read the error queue on from ``reply`` (its first entry); raise if not empty."""
        error_query = self.dialect.error_query
        with self._lock:
            errors: list[str] = []
            while self._error_code(reply) != 0 and len(errors) < _MAX_ERRORS:
                errors.append(reply)
                reply = self._query(error_query)
        if errors:
            raise InstrumentError(
                f"{self.name}: the supply reported {'; '.join(errors)} after {command!r}; "
                "check the command and value against the supply's range and programming guide"
            )

    def _error_code(self, reply: str) -> int:
        match = _ERROR_CODE.match(reply)
        if match is None:
            raise InstrumentError(
                f"{self.name}: {self.dialect.error_query!r} answered {reply!r}, not an error "
                "code; is the rig's driver right for this supply?"
            )
        return int(match.group(1))

    def _write(self, command: str) -> None:
        with self._lock:
            self._usable()
            try:
                self._res.write(command)
            except (visa_errors.Error, OSError) as exc:
                raise self._io_error(command, exc) from None

    def _query(self, command: str) -> str:
        with self._lock:
            self._usable()
            self._pending = True
            try:
                reply = self._res.query(command)
            except (visa_errors.Error, OSError) as exc:
                raise self._io_error(command, exc) from None
            self._pending = False
            return reply.strip()

    def _usable(self) -> None:
        if self._closed:
            raise InstrumentError(f"{self.name}: the supply session is closed; open it again")
        if self._pending:  # an interrupted or timed-out query: drop its late answer
            timeout = self._res.timeout
            self._res.timeout = 100
            try:
                for _ in range(_MAX_ERRORS):
                    self._res.read()
            except (visa_errors.Error, OSError):
                pass
            finally:
                self._res.timeout = timeout
                self._pending = False

    def _io_error(self, command: str, exc: BaseException) -> InstrumentError:
        return InstrumentError(
            f"{self.name}: {command!r} to {self.instrument.resource} failed: {exc}; check that "
            "the supply is on and reachable, then rerun"
        )

    def _release(self) -> None:
        self._closed = True
        # Only our own session: pyvisa-py resource managers share one library session, and
        # closing it would close every other instrument this process has open.
        with contextlib.suppress(visa_errors.Error, OSError):
            self._res.close()


def open_psu(name: str, instrument: Instrument, *, resource_manager: str = "@py") -> ScpiPsu:
    """Open the supply ``name`` of the rig with the dialect its ``driver`` names."""
    dialect = DIALECTS.get(instrument.driver)
    if dialect is None:
        raise InfrastructureError(
            f"{name}: driver {instrument.driver!r} is not a SCPI supply; use one of "
            f"{', '.join(DIALECTS)}"
        )
    return ScpiPsu(name, instrument, dialect, resource_manager=resource_manager)


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class SafeExitGuard:
    """Closes a supply (safe state first) at interpreter exit and on SIGTERM.

    The SIGTERM handler closes the supply, restores the previous handler and then lets it
    act: a previous Python handler is called, the default one terminates the process as
    SIGTERM would have. :meth:`remove` (or leaving a ``with`` block) undoes both hooks.
    Signal handlers can only be set from the main thread; elsewhere only atexit is used.
    """

    def __init__(self, psu: PowerSupply) -> None:
        self._psu = psu
        self._previous: _Handler = None
        self._installed = False
        atexit.register(self._close)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True

    def remove(self) -> None:
        """Unregister from atexit and restore the previous SIGTERM handler."""
        atexit.unregister(self._close)
        if self._installed and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGTERM, previous)
        self._installed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _close(self) -> None:
        try:
            self._psu.close()
        except BenchError as exc:
            print(f"fieldrig: could not put the supply in its safe state: {exc}", file=sys.stderr)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._close()
        previous = self._previous
        self.remove()
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):
            os.kill(os.getpid(), signal.SIGTERM)


def safe_on_exit(psu: PowerSupply) -> SafeExitGuard:
    """Put ``psu`` in its safe state at exit and on SIGTERM (see :class:`SafeExitGuard`)."""
    return SafeExitGuard(psu)
