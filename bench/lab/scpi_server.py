"""A virtual SCPI bench supply on TCP, reached exactly like an LXI instrument.

``ScpiPsuServer`` speaks the Keysight E36300 dialect (channel lists ``(@n)``, and the
generic ``INST:NSEL n`` + bare commands), or on request the Rigol DP800 or Siglent SPD3303X
dialect, each with only that family's commands so a driver that sends the wrong family's
command gets ``-113,"Undefined header"`` as it would from the real supply. SCPI rules
implemented: LF-terminated lines, several commands per line separated by ``;`` (a header
without a leading ``:`` continues the previous one's path), case-insensitive short/long
mnemonics with optional nodes, one answer line per line (answers joined by ``;``), an error
queue of 20 with -350 on overflow.

In keysight-e36300 mode the supply also has a measurement datalogger (the commands of
:data:`bench.instruments.dialects.KEYSIGHT_ARRAY`): ``SENS:SWE:POIN`` / ``SENS:SWE:TINT`` /
``SENS:SWE:OFFS:POIN`` configure a sweep, ``INIT:ACQ`` arms it, ``TRIG:ACQ`` starts it and
``FETC:ARR:CURR?`` / ``FETC:ARR:VOLT?`` return its arrays (``MEAS:ARR:...?`` does all three).
The sweep runs in real time: a thread wakes at least every millisecond and reads the load
for every point whose time has come, asking it about the point's own time, so each point is
read at most ~1 ms (plus scheduling) after its time; a sweep of ``points`` x ``interval``
takes that long, and a fetch waits for it (without holding the supply). The interval is
rounded to a 20.48 us sample clock, as a Keysight digitizer does; ``SENS:SWE:TINT?``
answers the rounded value.

The load is pluggable: a :class:`LoadBackend` says what current a channel draws at a
voltage and hears when an output switches. :class:`ResistiveLoad` is a seeded resistor
with noise. When the load would exceed the limit, the channel either trips its OCP (output
off, ``OUTP:PROT:TRIP?`` 1 until ``OUTP:PROT:CLE``) or, with OCP off, regulates in CC.

Run one: ``python -m bench.lab.scpi_server --port 5025 --channels 3``. It binds loopback
addresses only.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Protocol, Self

from bench.lab.line_server import LineServer, check_loopback

__all__ = [
    "SERVER_DIALECTS",
    "ChannelState",
    "LoadBackend",
    "ResistiveLoad",
    "ScpiPsuServer",
    "VirtualPsu",
    "main",
]

SERVER_DIALECTS = ("keysight-e36300", "rigol-dp800", "siglent-spd3303x")
ERROR_QUEUE_SIZE = 20
TRANSCRIPT_SIZE = 10_000  # the newest commands kept for inspection
ARRAY_MAX_POINTS = 4096  # the datalogger's bounds (keysight-e36300 mode)
ARRAY_MIN_INTERVAL_S = 20.48e-6
ARRAY_MAX_INTERVAL_S = 40_000.0
ARRAY_CLOCK_S = 20.48e-6  # sample clock the interval is rounded to
ARRAY_RESET_POINTS = 1024  # *RST values
ARRAY_RESET_INTERVAL_S = 20.48e-6
_ARRAY_MAX_OFFSET = 1_000_000
_ARRAY_WAKE_S = 0.001  # the sweep thread sleeps at most this long between reads
_FETCH_GRACE_S = 2.0  # a fetch waits this long past the sweep's end before giving up


class LoadBackend(Protocol):
    """What hangs on the supply's outputs."""

    def current(self, channel: int, volts: float, now: float) -> float:
        """Amperes the load on ``channel`` draws at ``volts`` (monotonic time ``now``)."""
        ...

    def on_output(self, channel: int, on: bool) -> None:
        """The output of ``channel`` switched (called outside the supply's lock)."""
        ...


class ResistiveLoad:
    """A fixed resistance per channel plus Gaussian current noise, seeded."""

    def __init__(
        self, ohms: float | Mapping[int, float] = 20.0, *, noise_a: float = 0.001, seed: int = 0
    ) -> None:
        self._default = ohms if isinstance(ohms, int | float) else 20.0
        self._ohms: dict[int, float] = {} if isinstance(ohms, int | float) else dict(ohms)
        self._noise = noise_a
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.events: list[tuple[int, bool]] = []

    def set_ohms(self, channel: int, ohms: float) -> None:
        with self._lock:
            self._ohms[channel] = ohms

    def current(self, channel: int, volts: float, now: float) -> float:
        with self._lock:
            ohms = self._ohms.get(channel, self._default)
            return max(0.0, volts / ohms + self._random.gauss(0.0, self._noise))

    def on_output(self, channel: int, on: bool) -> None:
        with self._lock:
            self.events.append((channel, on))


@dataclass
class ChannelState:
    """One output of the virtual supply (set-points, protection, trips)."""

    max_voltage: float  # the instrument's range, not the rig's limit
    max_current: float
    voltage: float = 0.0
    current: float = 0.0
    ovp_level: float = 0.0
    ovp_enabled: bool = True
    ocp_level: float | None = None  # None: trips at the current set-point
    ocp_enabled: bool = False
    output: bool = False
    ovp_tripped: bool = False
    ocp_tripped: bool = False

    @property
    def ovp_max(self) -> float:
        return round(self.max_voltage * 1.1, 6)


@dataclass
class _Acquisition:
    """One channel's datalogger: configuration and the state of its current sweep."""

    points: int = ARRAY_RESET_POINTS
    interval: float = ARRAY_RESET_INTERVAL_S
    offset: int = 0
    state: str = "idle"  # idle -> initiated -> acquiring -> done
    start: float = 0.0  # monotonic time of point 0
    generation: int = 0  # bumped by every trigger and reset: a stale sweep thread stops
    volts: list[float] = field(default_factory=list)
    amps: list[float] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.points * self.interval


class _ScpiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Node:
    long: str
    short: str
    optional: bool
    suffix: bool  # a numeric suffix (SOUR2, CH1) names the channel


@dataclass(frozen=True)
class _Call:
    channels: list[int]
    params: list[str]
    explicit: bool  # the command named its channel(s)


_Handler = Callable[[_Call], str | None]
_TOKEN = re.compile(r"\[:?([A-Za-z#]+)\]|:?([A-Za-z#]+)")
_NODE = re.compile(r"([A-Z]+)(\d*)")
_CHANNEL_LIST = re.compile(r"\(@([\d,:\s]+)\)")
_CHANNEL_WORD = re.compile(r"(?:CH|OUTP|OUTPUT)(\d+)", re.IGNORECASE)


def _compile(pattern: str) -> tuple[_Node, ...]:
    nodes = []
    for optional, required in _TOKEN.findall(pattern):
        word = optional or required
        suffix = word.endswith("#")
        word = word.rstrip("#")
        short = "".join(c for c in word if c.isupper())
        nodes.append(_Node(word.upper(), short, bool(optional), suffix))
    return tuple(nodes)


def _match(nodes: Sequence[tuple[str, str]], pattern: Sequence[_Node]) -> tuple[bool, int | None]:
    """Match header nodes (name, digits) to a pattern; the channel from a suffix if any."""
    if not pattern:
        return not nodes, None
    head, rest = pattern[0], pattern[1:]
    if nodes:
        name, digits = nodes[0]
        if name in (head.long, head.short) and (not digits or head.suffix):
            ok, channel = _match(nodes[1:], rest)
            if ok:
                return True, channel if channel is not None else (int(digits) if digits else None)
    if head.optional:
        return _match(nodes, rest)
    return False, None


def _split_params(text: str) -> list[str]:
    params, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            params.append(text[start:i].strip())
            start = i + 1
    last = text[start:].strip()
    if last or params:
        params.append(last)
    return params


def _channel_list(body: str) -> list[int]:
    channels: list[int] = []
    for part in body.split(","):
        low, _, high = part.strip().partition(":")
        if not low.isdigit() or (high and not high.isdigit()):
            raise _ScpiError(-224, "Illegal parameter value")
        channels.extend(range(int(low), int(high or low) + 1))
    return channels


@dataclass(frozen=True)
class _Profile:
    idn: str
    ranges: tuple[tuple[float, float], ...]
    number: Callable[[float], str]
    words: tuple[str, str]  # how a boolean state is answered (true, false)
    channel_lists: bool  # (@n) accepted as a channel parameter
    channel_words: bool  # CHn accepted as a channel parameter
    signed_errors: bool
    ovp_on_reset: bool


_PROFILES = {
    "keysight-e36300": _Profile(
        idn="Keysight Technologies,E36313A,VIRTUAL0001,fieldrig-virtual",
        ranges=((6.0, 10.0), (25.0, 2.0), (25.0, 2.0)),
        number=lambda v: f"{v:+.8E}",
        words=("1", "0"),
        channel_lists=True,
        channel_words=False,
        signed_errors=True,
        ovp_on_reset=True,
    ),
    "rigol-dp800": _Profile(
        idn="RIGOL TECHNOLOGIES,DP832,DP8VIRTUAL0001,00.01.17",
        ranges=((30.0, 3.0), (30.0, 3.0), (5.0, 3.0)),
        number=lambda v: f"{v:.4f}",
        words=("ON", "OFF"),
        channel_lists=False,
        channel_words=True,
        signed_errors=False,
        ovp_on_reset=False,
    ),
    "siglent-spd3303x": _Profile(
        idn="Siglent Technologies,SPD3303X,SPD3XVIRTUAL0001,1.01.01.02.05,V3.0",
        ranges=((32.0, 3.2), (32.0, 3.2), (5.0, 3.2)),
        number=lambda v: f"{v:.3f}",
        words=("1", "0"),
        channel_lists=False,
        channel_words=True,
        signed_errors=False,
        ovp_on_reset=False,
    ),
}


class VirtualPsu:
    """The instrument model behind the socket: state, command tables, error queue.

    Thread-safe; :meth:`execute` runs one line and returns the answer line, if any.
    """

    def __init__(
        self,
        dialect: str = "keysight-e36300",
        channels: int = 3,
        backend: LoadBackend | None = None,
        ranges: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        if dialect not in _PROFILES:
            raise ValueError(f"unknown dialect {dialect!r}; use one of {', '.join(_PROFILES)}")
        if channels < 1:
            raise ValueError("a supply has at least one channel")
        self.dialect = dialect
        self._profile = _PROFILES[dialect]
        table = list(ranges or self._profile.ranges)
        table += [table[-1]] * (channels - len(table))
        self._ranges = table[:channels]
        self.backend: LoadBackend = backend if backend is not None else ResistiveLoad()
        self._lock = threading.RLock()
        self._acquired = threading.Condition(self._lock)  # a sweep finished or was dropped
        self._acquisitions: dict[int, _Acquisition] = {}
        self._errors: deque[tuple[int, str]] = deque()
        self._events: list[tuple[int, bool]] = []
        self._transcript: deque[str] = deque(maxlen=TRANSCRIPT_SIZE)
        self._channels: dict[int, ChannelState] = {}
        self._selected = 1
        self._commands = self._table()
        with self._lock:
            self._reset()

    # --- inspection (for tests and the lab) ------------------------------------------------

    def channel(self, number: int) -> ChannelState:
        """A snapshot of one channel's state."""
        with self._lock:
            return replace(self._channels[number])

    def transcript(self) -> list[str]:
        """The commands received (newest ``TRANSCRIPT_SIZE``), one per ``;``-separated unit."""
        with self._lock:
            return list(self._transcript)

    def clear_transcript(self) -> None:
        with self._lock:
            self._transcript.clear()

    # --- execution ------------------------------------------------------------------------------

    def execute(self, line: str) -> str | None:
        answers: list[str] = []
        with self._lock:
            path: list[str] = []
            for segment in line.split(";"):
                segment = segment.strip()
                if not segment:
                    continue
                self._transcript.append(segment)
                try:
                    answer, path = self._run(segment, path)
                except _ScpiError as exc:
                    self._push(exc.code, exc.message)
                    continue
                if answer is not None:
                    answers.append(answer)
            events = self._take_events()
        self._dispatch(events)
        return ";".join(answers) if answers else None

    def poll(self) -> None:
        """Re-evaluate protection on every output that is on (the load may have changed)."""
        with self._lock:
            now = time.monotonic()
            for number, state in self._channels.items():
                if state.output:
                    self._evaluate(number, now)
            events = self._take_events()
        self._dispatch(events)

    def _run(self, segment: str, path: list[str]) -> tuple[str | None, list[str]]:
        header, _, rest = segment.partition(" ")
        header, rest = header.strip().upper(), rest.strip()
        if header.startswith("*"):
            return self._common(header, rest), path
        query = header.endswith("?")
        header = header.rstrip("?")
        names = header[1:].split(":") if header.startswith(":") else [*path, *header.split(":")]
        nodes: list[tuple[str, str]] = []
        for name in names:
            match = _NODE.fullmatch(name)
            if match is None:
                raise _ScpiError(-113, "Undefined header")
            nodes.append((match.group(1), match.group(2)))
        for pattern, is_query, handler in self._commands:
            ok, suffix = _match(nodes, pattern)
            if ok and is_query == query:
                return handler(self._call(rest, suffix)), names[:-1]
        raise _ScpiError(-113, "Undefined header")

    def _call(self, text: str, suffix: int | None) -> _Call:
        channels: list[int] = []
        params: list[str] = []
        for token in _split_params(text):
            listed = _CHANNEL_LIST.fullmatch(token) if self._profile.channel_lists else None
            word = _CHANNEL_WORD.fullmatch(token) if self._profile.channel_words else None
            if listed:
                channels += _channel_list(listed.group(1))
            elif word:
                channels.append(int(word.group(1)))
            else:
                params.append(token)
        explicit = bool(channels) or suffix is not None
        if not channels:
            channels = [suffix if suffix is not None else self._selected]
        for number in channels:
            if number not in self._channels:
                raise _ScpiError(-224, "Illegal parameter value")
        return _Call(channels, params, explicit)

    def _common(self, header: str, rest: str) -> str | None:
        if rest:
            raise _ScpiError(-108, "Parameter not allowed")
        if header == "*IDN?":
            return self._profile.idn
        if header == "*OPC?":
            return "1"
        if header in ("*OPC", "*WAI"):
            return None
        if header == "*RST":
            self._reset()
            return None
        if header == "*CLS" and self.dialect != "siglent-spd3303x":
            self._errors.clear()
            return None
        raise _ScpiError(-113, "Undefined header")

    def _reset(self) -> None:
        for number, (vmax, imax) in enumerate(self._ranges, start=1):
            old = self._channels.get(number)
            if old is not None and old.output:
                self._events.append((number, False))
            state = ChannelState(vmax, imax, current=imax, ovp_enabled=self._profile.ovp_on_reset)
            state.ovp_level = state.ovp_max
            self._channels[number] = state
            old_sweep = self._acquisitions.get(number)
            generation = old_sweep.generation + 1 if old_sweep is not None else 0
            self._acquisitions[number] = _Acquisition(generation=generation)
        self._selected = 1
        self._acquired.notify_all()

    def _push(self, code: int, message: str) -> None:
        if len(self._errors) < ERROR_QUEUE_SIZE - 1:
            self._errors.append((code, message))
        elif len(self._errors) == ERROR_QUEUE_SIZE - 1:
            self._errors.append((-350, "Queue overflow"))

    def _take_events(self) -> list[tuple[int, bool]]:
        events, self._events = self._events, []
        return events

    def _dispatch(self, events: list[tuple[int, bool]]) -> None:
        for number, on in events:
            self.backend.on_output(number, on)

    # --- the physics -------------------------------------------------------------------------

    def _switch(self, number: int, on: bool) -> None:
        state = self._channels[number]
        if on and (state.ovp_tripped or state.ocp_tripped):
            raise _ScpiError(-221, "Settings conflict; protection tripped, clear it first")
        if state.output != on:
            state.output = on
            self._events.append((number, on))
        if on:
            self._evaluate(number, time.monotonic())

    def _evaluate(self, number: int, now: float) -> float:
        """Trip OVP/OCP if due; the current the load demands (0 when off)."""
        state = self._channels[number]
        if not state.output:
            return 0.0
        if state.ovp_enabled and state.voltage > state.ovp_level:
            state.ovp_tripped = True
            self._switch(number, False)
            return 0.0
        demand = max(0.0, self.backend.current(number, state.voltage, now))
        if state.ocp_enabled:
            level = state.ocp_level
            over = (
                demand > state.current
                if level is None
                else (demand > level and min(demand, state.current) >= level)
            )
            if over:
                state.ocp_tripped = True
                self._switch(number, False)
                return 0.0
        return demand

    def _sample(self, number: int, now: float | None = None) -> tuple[float, float]:
        """One measurement of (volts, amps) at the terminals (at monotonic time ``now``)."""
        state = self._channels[number]
        demand = self._evaluate(number, time.monotonic() if now is None else now)
        if not state.output:
            return 0.0, 0.0
        if demand > state.current:  # constant-current regulation
            return state.voltage * state.current / demand, state.current
        return state.voltage, demand

    # --- parameters ----------------------------------------------------------------------------

    @staticmethod
    def _one(call: _Call) -> str:
        if not call.params or not call.params[0]:
            raise _ScpiError(-109, "Missing parameter")
        if len(call.params) > 1:
            raise _ScpiError(-108, "Parameter not allowed")
        return call.params[0]

    @staticmethod
    def _none(call: _Call) -> None:
        if call.params:
            raise _ScpiError(-108, "Parameter not allowed")

    def _value(self, call: _Call, high: float) -> float:
        token = self._one(call).upper()
        if token in ("MIN", "MINIMUM", "DEF", "DEFAULT"):
            return 0.0
        if token in ("MAX", "MAXIMUM"):
            return high
        try:
            value = float(token)
        except ValueError:
            raise _ScpiError(-224, "Illegal parameter value") from None
        if not 0.0 <= value <= high:
            raise _ScpiError(-222, "Data out of range")
        return value

    def _bool(self, call: _Call) -> bool:
        token = self._one(call).upper()
        if token in ("ON", "1"):
            return True
        if token in ("OFF", "0"):
            return False
        raise _ScpiError(-224, "Illegal parameter value")

    def _answer(self, call: _Call, value: Callable[[ChannelState, int], str]) -> str:
        self._none(call)
        return ",".join(value(self._channels[n], n) for n in call.channels)

    def _word(self, flag: bool) -> str:
        return self._profile.words[0 if flag else 1]

    # --- handlers ---------------------------------------------------------------------------------

    def _error_next(self, call: _Call) -> str:
        self._none(call)
        code, message = self._errors.popleft() if self._errors else (0, "No error")
        sign = "+" if self._profile.signed_errors and code >= 0 else ""
        return f'{sign}{code},"{message}"'

    def _select_number(self, call: _Call) -> None:
        token = self._one(call)
        if not token.isdigit() or int(token) not in self._channels:
            raise _ScpiError(-224, "Illegal parameter value")
        self._selected = int(token)

    def _select_name(self, call: _Call) -> None:
        if call.explicit and len(call.channels) == 1 and not call.params:
            self._selected = call.channels[0]  # INST CH2 where CHn is a channel word
            return
        word = _CHANNEL_WORD.fullmatch(self._one(call))
        if word is None or int(word.group(1)) not in self._channels:
            raise _ScpiError(-224, "Illegal parameter value")
        self._selected = int(word.group(1))

    def _set_voltage(self, call: _Call) -> None:
        for n in call.channels:
            state = self._channels[n]
            state.voltage = self._value(call, state.max_voltage)
            self._evaluate(n, time.monotonic())

    def _set_current(self, call: _Call) -> None:
        for n in call.channels:
            state = self._channels[n]
            state.current = self._value(call, state.max_current)
            self._evaluate(n, time.monotonic())

    def _set_ovp(self, call: _Call) -> None:
        for n in call.channels:
            state = self._channels[n]
            state.ovp_level = self._value(call, state.ovp_max)
            self._evaluate(n, time.monotonic())

    def _set_ovp_state(self, call: _Call) -> None:
        for n in call.channels:
            self._channels[n].ovp_enabled = self._bool(call)
            self._evaluate(n, time.monotonic())

    def _set_ocp(self, call: _Call) -> None:
        for n in call.channels:
            state = self._channels[n]
            state.ocp_level = self._value(call, state.max_current * 1.1)
            self._evaluate(n, time.monotonic())

    def _set_ocp_state(self, call: _Call) -> None:
        for n in call.channels:
            self._channels[n].ocp_enabled = self._bool(call)
            self._evaluate(n, time.monotonic())

    def _set_output(self, call: _Call) -> None:
        on = self._bool(call)
        for n in call.channels:
            self._switch(n, on)

    def _clear_trips(self, call: _Call) -> None:
        self._none(call)
        for n in call.channels:
            self._channels[n].ovp_tripped = self._channels[n].ocp_tripped = False

    def _siglent_status(self, call: _Call) -> str:
        self._none(call)
        word = 0b0100  # independent mode
        for bit, n in ((4, 1), (5, 2)):
            if n in self._channels and self._channels[n].output:
                word |= 1 << bit
        return f"0x{word:04X}"

    def _measure(self, call: _Call, pick: Callable[[float, float], float]) -> str:
        self._none(call)
        return ",".join(self._profile.number(pick(*self._sample(n))) for n in call.channels)

    def _power(self, call: _Call) -> str:
        return self._measure(call, lambda v, i: v * i)

    def _alarm(self, call: _Call, pick: Callable[[ChannelState], bool]) -> str:
        return self._answer(call, lambda s, n: "YES" if pick(s) else "NO")

    def _reads(self, pick: Callable[[ChannelState], float | bool]) -> _Handler:
        """A query answering one channel attribute per channel (numbers or state words)."""

        def show(state: ChannelState, number: int) -> str:
            value = pick(state)
            return self._word(value) if isinstance(value, bool) else self._profile.number(value)

        return lambda call: self._answer(call, show)

    # --- the datalogger (keysight-e36300 mode) -------------------------------------------------

    def _integer(self, call: _Call, low: int, high: int, default: int) -> int:
        token = self._one(call).upper()
        if token in ("MIN", "MINIMUM"):
            return low
        if token in ("MAX", "MAXIMUM"):
            return high
        if token in ("DEF", "DEFAULT"):
            return default
        try:
            value = float(token)
        except ValueError:
            raise _ScpiError(-224, "Illegal parameter value") from None
        if not value.is_integer():
            raise _ScpiError(-224, "Illegal parameter value")
        if not low <= value <= high:
            raise _ScpiError(-222, "Data out of range")
        return int(value)

    def _idle_sweeps(self, call: _Call) -> list[_Acquisition]:
        sweeps = [self._acquisitions[n] for n in call.channels]
        if any(sweep.state == "acquiring" for sweep in sweeps):
            raise _ScpiError(-221, "Settings conflict; a measurement is in progress")
        return sweeps

    def _set_points(self, call: _Call) -> None:
        points = self._integer(call, 1, ARRAY_MAX_POINTS, ARRAY_RESET_POINTS)
        for sweep in self._idle_sweeps(call):
            sweep.points = points

    def _set_interval(self, call: _Call) -> None:
        token = self._one(call).upper()
        if token in ("MIN", "MINIMUM", "DEF", "DEFAULT"):
            value = ARRAY_MIN_INTERVAL_S
        elif token in ("MAX", "MAXIMUM"):
            value = ARRAY_MAX_INTERVAL_S
        else:
            try:
                value = float(token)
            except ValueError:
                raise _ScpiError(-224, "Illegal parameter value") from None
            if not ARRAY_MIN_INTERVAL_S <= value <= ARRAY_MAX_INTERVAL_S:  # NaN fails too
                raise _ScpiError(-222, "Data out of range")
        ticks = max(1, round(value / ARRAY_CLOCK_S))
        for sweep in self._idle_sweeps(call):
            sweep.interval = ticks * ARRAY_CLOCK_S

    def _set_offset(self, call: _Call) -> None:
        # positive offsets delay the first point; pre-trigger (negative) capture is not modelled
        offset = self._integer(call, 0, _ARRAY_MAX_OFFSET, 0)
        for sweep in self._idle_sweeps(call):
            sweep.offset = offset

    def _initiate(self, call: _Call) -> None:
        self._none(call)
        for sweep in self._acquisitions_of(call):
            if sweep.state == "acquiring":
                raise _ScpiError(-213, "Init ignored")
        for sweep in self._acquisitions_of(call):
            sweep.state = "initiated"
            sweep.volts, sweep.amps = [], []

    def _acquisitions_of(self, call: _Call) -> list[_Acquisition]:
        return [self._acquisitions[n] for n in call.channels]

    def _trigger(self, call: _Call) -> None:
        self._none(call)
        now = time.monotonic()
        for number in call.channels:
            sweep = self._acquisitions[number]
            if sweep.state != "initiated":
                raise _ScpiError(-211, "Trigger ignored")
            sweep.state = "acquiring"
            sweep.start = now + sweep.offset * sweep.interval
            sweep.generation += 1
            threading.Thread(
                target=self._run_sweep,
                args=(number, sweep.generation),
                name=f"scpi-psu-sweep{number}",
                daemon=True,
            ).start()

    def _run_sweep(self, number: int, generation: int) -> None:
        """Read the load at every point's time until the sweep is complete."""
        while True:
            with self._lock:
                sweep = self._acquisitions[number]
                if sweep.generation != generation or sweep.state != "acquiring":
                    return
                now = time.monotonic()
                while len(sweep.amps) < sweep.points:
                    at = sweep.start + len(sweep.amps) * sweep.interval
                    if at > now:
                        break
                    volts, amps = self._sample(number, at)
                    sweep.volts.append(volts)
                    sweep.amps.append(amps)
                done = len(sweep.amps) == sweep.points and now >= sweep.end
                if done:
                    sweep.state = "done"
                    self._acquired.notify_all()
                    wake = now
                elif len(sweep.amps) < sweep.points:
                    wake = sweep.start + len(sweep.amps) * sweep.interval
                else:
                    wake = sweep.end
                events = self._take_events()
            self._dispatch(events)
            if done:
                return
            time.sleep(min(max(wake - time.monotonic(), 0.0), _ARRAY_WAKE_S))

    def _fetch_array(self, call: _Call, pick: Callable[[_Acquisition], list[float]]) -> str:
        """The arrays of the last sweep; waits (without holding the supply) for one running."""
        self._none(call)
        answers: list[str] = []
        for number in call.channels:
            sweep = self._acquisitions[number]
            if sweep.state == "acquiring":
                self._wait_for_sweep(number, sweep)
            if self._acquisitions[number] is not sweep or sweep.state != "done":
                raise _ScpiError(-230, "Data corrupt or stale")
            answers.append(",".join(self._profile.number(v) for v in pick(sweep)))
        return ",".join(answers)

    def _wait_for_sweep(self, number: int, sweep: _Acquisition) -> None:
        """Wait until ``sweep`` ends or is dropped (by *RST), releasing the supply meanwhile."""

        def over() -> bool:
            return self._acquisitions[number] is not sweep or sweep.state != "acquiring"

        deadline = sweep.end + _FETCH_GRACE_S
        self._acquired.wait_for(over, timeout=max(0.0, deadline - time.monotonic()))

    def _measure_array(self, call: _Call, pick: Callable[[_Acquisition], list[float]]) -> str:
        """MEASure:ARRay: initiate, trigger and fetch in one query."""
        self._initiate(call)
        self._trigger(call)
        return self._fetch_array(call, pick)

    def _table(self) -> list[tuple[tuple[_Node, ...], bool, _Handler]]:
        level = "[:LEVel][:IMMediate][:AMPLitude]"
        where = "[CH#]" if self.dialect == "siglent-spd3303x" else "[SOURce#]"
        volt, curr, meas = f"{where}:VOLTage{level}", f"{where}:CURRent{level}", "MEASure[:SCALar]"
        reads = self._reads
        commands: list[tuple[str, bool, _Handler]] = [
            ("SYSTem:ERRor[:NEXT]", True, self._error_next),
            ("SYSTem:VERSion", True, lambda c: "1999.0"),
            ("INSTrument:NSELect", False, self._select_number),
            ("INSTrument:NSELect", True, lambda c: str(self._selected)),
            ("INSTrument[:SELect]", False, self._select_name),
            ("INSTrument[:SELect]", True, lambda c: f"CH{self._selected}"),
            (f"{meas}:VOLTage[:DC]", True, lambda c: self._measure(c, lambda v, i: v)),
            (f"{meas}:CURRent[:DC]", True, lambda c: self._measure(c, lambda v, i: i)),
            (volt, False, self._set_voltage),
            (volt, True, reads(lambda s: s.voltage)),
            (curr, False, self._set_current),
            (curr, True, reads(lambda s: s.current)),
            ("OUTPut[:STATe]", False, self._set_output),
        ]
        if self.dialect == "siglent-spd3303x":
            commands += [
                (f"{meas}:POWEr[:DC]", True, self._power),
                ("SYSTem:STATus", True, self._siglent_status),
            ]
            return [(_compile(p), q, h) for p, q, h in commands]
        prot = "[SOURce#]:VOLTage:PROTection"
        ocp = "[SOURce#]:CURRent:PROTection"
        commands += [
            ("OUTPut[:STATe]", True, reads(lambda s: s.output)),
            (f"{prot}[:LEVel]", False, self._set_ovp),
            (f"{prot}[:LEVel]", True, reads(lambda s: s.ovp_level)),
            (f"{prot}:STATe", False, self._set_ovp_state),
            (f"{prot}:STATe", True, reads(lambda s: s.ovp_enabled)),
            (f"{prot}:TRIPped", True, reads(lambda s: s.ovp_tripped)),
            (f"{ocp}:STATe", False, self._set_ocp_state),
            (f"{ocp}:STATe", True, reads(lambda s: s.ocp_enabled)),
            (f"{ocp}:TRIPped", True, reads(lambda s: s.ocp_tripped)),
        ]
        if self.dialect == "keysight-e36300":
            commands += [
                (f"{meas}:POWer[:DC]", True, self._power),
                (
                    "OUTPut:PROTection:TRIPped",
                    True,
                    reads(lambda s: s.ovp_tripped or s.ocp_tripped),
                ),
                ("OUTPut:PROTection:CLEar", False, self._clear_trips),
                *self._datalogger_table(),
            ]
        else:  # rigol-dp800: protection under OUTPut:OVP / OUTPut:OCP, alarms answer YES/NO
            commands += [
                (f"{meas}:POWEr[:DC]", True, self._power),
                ("OUTPut:OVP:VALue", False, self._set_ovp),
                ("OUTPut:OVP:VALue", True, reads(lambda s: s.ovp_level)),
                ("OUTPut:OVP[:STATe]", False, self._set_ovp_state),
                ("OUTPut:OVP[:STATe]", True, reads(lambda s: s.ovp_enabled)),
                ("OUTPut:OVP:ALARm", True, lambda c: self._alarm(c, lambda s: s.ovp_tripped)),
                ("OUTPut:OVP:CLEar", False, self._clear_trips),
                ("OUTPut:OCP:VALue", False, self._set_ocp),
                ("OUTPut:OCP:VALue", True, reads(lambda s: s.ocp_level or s.current)),
                ("OUTPut:OCP[:STATe]", False, self._set_ocp_state),
                ("OUTPut:OCP[:STATe]", True, reads(lambda s: s.ocp_enabled)),
                ("OUTPut:OCP:ALARm", True, lambda c: self._alarm(c, lambda s: s.ocp_tripped)),
                ("OUTPut:OCP:CLEar", False, self._clear_trips),
            ]
        return [(_compile(p), q, h) for p, q, h in commands]

    def _datalogger_table(self) -> list[tuple[str, bool, _Handler]]:
        sweep = "[SENSe]:SWEep"
        acquisitions = self._acquisitions_of

        def show(pick: Callable[[_Acquisition], float]) -> _Handler:
            def answer(call: _Call) -> str:
                self._none(call)
                return ",".join(self._profile.number(pick(a)) for a in acquisitions(call))

            return answer

        def whole(pick: Callable[[_Acquisition], int]) -> _Handler:
            def answer(call: _Call) -> str:
                self._none(call)
                return ",".join(f"{pick(a):+d}" for a in acquisitions(call))

            return answer

        def amps(a: _Acquisition) -> list[float]:
            return a.amps

        def volts(a: _Acquisition) -> list[float]:
            return a.volts

        return [
            (f"{sweep}:POINts", False, self._set_points),
            (f"{sweep}:POINts", True, whole(lambda a: a.points)),
            (f"{sweep}:TINTerval", False, self._set_interval),
            (f"{sweep}:TINTerval", True, show(lambda a: a.interval)),
            (f"{sweep}:OFFSet:POINts", False, self._set_offset),
            (f"{sweep}:OFFSet:POINts", True, whole(lambda a: a.offset)),
            ("INITiate[:IMMediate]:ACQuire", False, self._initiate),
            ("TRIGger:ACQuire[:IMMediate]", False, self._trigger),
            ("FETCh:ARRay:CURRent[:DC]", True, lambda c: self._fetch_array(c, amps)),
            ("FETCh:ARRay:VOLTage[:DC]", True, lambda c: self._fetch_array(c, volts)),
            ("MEASure:ARRay:CURRent[:DC]", True, lambda c: self._measure_array(c, amps)),
            ("MEASure:ARRay:VOLTage[:DC]", True, lambda c: self._measure_array(c, volts)),
        ]


@dataclass
class ScpiPsuServer:
    """A threaded TCP server around a :class:`VirtualPsu` (``start()``, ``stop()``, ``port``)."""

    host: str = "127.0.0.1"
    port: int = 0
    dialect: str = "keysight-e36300"
    channels: int = 3
    backend: LoadBackend | None = None
    ranges: Sequence[tuple[float, float]] | None = None
    poll_s: float = 0.05
    psu: VirtualPsu = field(init=False)
    _server: LineServer | None = field(default=None, init=False, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        check_loopback(self.host, "the virtual PSU")
        self.psu = VirtualPsu(self.dialect, self.channels, self.backend, self.ranges)

    @property
    def resource(self) -> str:
        """The VISA resource string that reaches this server."""
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    def start(self) -> Self:
        self._server = LineServer(
            self.psu.execute, host=self.host, port=self.port, name="scpi-psu"
        ).start()
        self.port = self._server.port
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._monitor, name="scpi-psu-monitor", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # shortcuts to the instrument model
    def channel(self, number: int) -> ChannelState:
        return self.psu.channel(number)

    def transcript(self) -> list[str]:
        return self.psu.transcript()

    def clear_transcript(self) -> None:
        self.psu.clear_transcript()

    def _monitor(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.psu.poll()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lab.scpi_server",
        description="A virtual SCPI bench supply on 127.0.0.1 (resistive load per channel).",
    )
    parser.add_argument("--port", type=int, default=5025, help="TCP port (0: any free port)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--dialect", choices=SERVER_DIALECTS, default="keysight-e36300")
    parser.add_argument("--ohms", type=float, default=20.0, help="load resistance per channel")
    parser.add_argument("--noise-a", type=float, default=0.001, help="current noise (1 sigma)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    load = ResistiveLoad(args.ohms, noise_a=args.noise_a, seed=args.seed)
    server = ScpiPsuServer(
        port=args.port, dialect=args.dialect, channels=args.channels, backend=load
    ).start()
    print(
        f"virtual {args.dialect} supply with {args.channels} channel(s) on {server.resource}",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
