"""Mini-Circuits programmable RF attenuators (RCDAT / RUDAT / RCnDAT) over their Ethernet
Telnet line protocol, reached through pyvisa-py as ``TCPIP::<host>::23::SOCKET``.

Protocol facts used (Mini-Circuits "Programmable Attenuators - Programming Manual",
Prog_Manual-6-Programmable_Attenuator.pdf, Ethernet control chapter; the manual could not be
read here, so each fact below was cross-checked against public drivers that implement it:
Android ACTS ``attenuator_lib/minicircuits/telnet.py``, QCoDeS' Mini-Circuits RUDAT driver
and Mini-Circuits' own example scripts):

- Telnet on TCP port 23 (HTTP on port 80 takes the same commands in the URL path); one
  ASCII command per line, CR LF terminated; the leading ``:`` is optional.
- ``:MN?`` answers ``MN=<model>``, e.g. ``MN=RCDAT-6000-90`` (family - frequency - maximum
  attenuation in dB); ``:SN?`` answers ``SN=<serial>``.
- Single-channel models: ``:SETATT=<dB>`` sets, ``:ATT?`` answers the attenuation in dB.
- Multi-channel models (RC2DAT, RC4DAT, RC8DAT ...): ``:CHAN:<n>:SETATT:<dB>`` sets channel
  n (``:CHAN:1:2:SETATT:<dB>`` several at once), ``:CHAN:<n>:ATT?`` reads one channel,
  ``:ATT?`` answers every channel separated by spaces.
- A set answers a return code: ``0`` command failed or invalid attenuation, ``1`` success,
  ``2`` requested attenuation above the allowed range, set to the device's maximum instead.
- Attenuation moves in 0.25 dB steps (the RCDAT/RC4DAT 6 GHz-class data sheets).

Safety rules, as for the supplies (:mod:`bench.instruments.psu`): a set-point is checked
against the rig's ``max_db`` (and 0) before anything is written, and refused with
:class:`~bench.instruments.psu.SetpointRefused`; undeclared channels are never addressed;
``close()`` and the context manager put every channel at its ``safe_db`` first.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import pyvisa
from pyvisa import errors as visa_errors
from pyvisa.resources import MessageBasedResource

from bench.instruments.psu import InstrumentError, SetpointRefused, on_every_channel
from bench.rig import AttenuatorChannel

__all__ = [
    "STEP_DB",
    "Attenuator",
    "AttenuatorIdentity",
    "MiniCircuitsAttenuator",
    "parse_model",
]

STEP_DB = 0.25
"""Attenuation step of the RCDAT / RC4DAT families."""
_MODEL = re.compile(r"R[CU](\d*)DAT-[^-]+-(\d+(?:\.\d+)?)", re.IGNORECASE)
_RETURN_CODES = {
    "0": "command failed or invalid attenuation",
    "2": "requested attenuation above the device's range; it set its maximum instead",
}


@runtime_checkable
class Attenuator(Protocol):
    """The "attenuator" capability: per-channel RF attenuation with the rig's limits."""

    def set_db(self, channel: int, db: float) -> float: ...
    def get_db(self, channel: int) -> float: ...
    def safe_state(self) -> None: ...
    def detach(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class AttenuatorIdentity:
    """What the attenuator says it is, and what its model number implies."""

    model: str
    serial: str
    channels: int
    max_db: float


def parse_model(model: str) -> tuple[int, float]:
    """Channel count and maximum attenuation from a model number such as ``RC4DAT-6G-95``."""
    match = _MODEL.fullmatch(model.strip())
    if match is None:
        raise ValueError(f"{model!r} is not a Mini-Circuits RCDAT / RUDAT / RCnDAT model number")
    return int(match.group(1) or 1), float(match.group(2))


def _db_text(db: float) -> str:
    return f"{db:.2f}"


class MiniCircuitsAttenuator:
    """A Mini-Circuits programmable attenuator with the rig's per-channel limits."""

    def __init__(
        self,
        resource: str,
        channels: dict[int, AttenuatorChannel],
        name: str,
        *,
        resource_manager: str = "@py",
        timeout_ms: int = 3000,
        step_db: float = STEP_DB,
    ) -> None:
        if not channels:
            raise SetpointRefused(
                f"{name}: declare at least one attenuator channel with its limits"
            )
        self.name = name
        self.resource = resource
        self.channels = dict(channels)
        self.step_db = step_db
        self._lock = threading.RLock()
        self._closed = False
        self._pending = False  # a query's answer may still be in flight
        try:
            self._rm = pyvisa.ResourceManager(resource_manager)
            opened = self._rm.open_resource(
                resource,
                read_termination="\n",  # answers end CR LF; the CR is stripped
                write_termination="\r\n",
                timeout=timeout_ms,
                query_delay=0.0,
            )
        except (visa_errors.Error, OSError, ValueError) as exc:
            raise InstrumentError(
                f"{name}: cannot open {resource}: {exc}; check that the attenuator is powered, "
                "reachable from this host (Telnet, port 23) and that the resource string is right"
            ) from None
        if not isinstance(opened, MessageBasedResource):
            opened.close()
            raise InstrumentError(f"{name}: {resource} is not a message-based resource")
        self._res = opened
        try:
            self.identity = self._identify()
            self._check_channels()
        except BaseException:
            self._release()
            raise

    # --- the capability ---------------------------------------------------------------

    def identify(self) -> AttenuatorIdentity:
        """Model and serial number as the attenuator reports them (asked again)."""
        return self._identify()

    def set_db(self, channel: int, db: float) -> float:
        """Set ``channel`` to ``db`` rounded to the device step; returns the value set."""
        limits = self._declared(channel)
        where = f"{self.name} channel {channel}"
        if not math.isfinite(db) or db < 0:
            raise SetpointRefused(
                f"{where}: {db} dB refused before anything was sent: give a finite value from "
                f"0 to max_db {limits.max_db:g} dB"
            )
        if db > limits.max_db:
            raise SetpointRefused(
                f"{where}: {db:g} dB refused before anything was sent: it is above max_db "
                f"{limits.max_db:g} dB declared in the rig; lower it, or raise max_db in the rig"
            )
        value = round(db / self.step_db) * self.step_db
        if value > limits.max_db:  # rounding up crossed the limit: take the step below
            value = math.floor(db / self.step_db) * self.step_db
        if self.identity.channels == 1:
            command = f":SETATT={_db_text(value)}"
        else:
            command = f":CHAN:{channel}:SETATT:{_db_text(value)}"
        reply = self._query(command)
        if reply != "1":
            meaning = _RETURN_CODES.get(reply, "not a return code")
            raise InstrumentError(
                f"{where}: {command!r} answered {reply!r} ({meaning}); read the channel back "
                "with get_db and check the value against the device's range"
            )
        return value

    def get_db(self, channel: int) -> float:
        """The attenuation of ``channel`` in dB, as the attenuator reports it."""
        self._declared(channel)
        command = ":ATT?" if self.identity.channels == 1 else f":CHAN:{channel}:ATT?"
        reply = self._query(command)
        try:
            value = float(reply)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InstrumentError(f"{self.name}: {command!r} answered {reply!r}, not a dB value")
        return value

    def safe_state(self) -> None:
        """Every declared channel to its ``safe_db``."""

        def to_safe(item: tuple[int, AttenuatorChannel]) -> None:
            self.set_db(item[0], item[1].safe_db)

        with self._lock:
            on_every_channel(sorted(self.channels.items()), to_safe)

    def detach(self) -> None:
        """Close the session and leave every setting as it is: another process of the same
        run still uses the instrument and safes it at the end."""
        with self._lock:
            if not self._closed:
                self._release()

    def close(self) -> None:
        """Safe state first, then close the session; a second call does nothing."""
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

    # --- internals ------------------------------------------------------------------------

    def _identify(self) -> AttenuatorIdentity:
        model_reply, serial_reply = self._query(":MN?"), self._query(":SN?")
        if not model_reply.upper().startswith("MN=") or not serial_reply.upper().startswith("SN="):
            raise InstrumentError(
                f"{self.name}: {self.resource} answered {model_reply!r} / {serial_reply!r} to "
                "MN? / SN?; is it a Mini-Circuits programmable attenuator?"
            )
        model, serial = model_reply[3:].strip(), serial_reply[3:].strip()
        try:
            channels, max_db = parse_model(model)
        except ValueError as exc:
            raise InstrumentError(f"{self.name}: {exc}; fieldrig cannot drive it") from None
        return AttenuatorIdentity(model, serial, channels, max_db)

    def _check_channels(self) -> None:
        ident = self.identity
        for channel, limits in sorted(self.channels.items()):
            if not 1 <= channel <= ident.channels:
                raise SetpointRefused(
                    f"{self.name}: channel {channel} is declared but a {ident.model} has "
                    f"channels 1 to {ident.channels}; fix the rig's channel numbers"
                )
            if limits.max_db > ident.max_db:
                raise SetpointRefused(
                    f"{self.name} channel {channel}: max_db {limits.max_db:g} dB is beyond the "
                    f"{ident.model}'s {ident.max_db:g} dB range; lower max_db in the rig"
                )

    def _declared(self, channel: int) -> AttenuatorChannel:
        limits = self.channels.get(channel)
        if limits is None:
            declared = ", ".join(map(str, sorted(self.channels)))
            raise SetpointRefused(
                f"{self.name}: channel {channel} is not declared (declared: {declared}); "
                "refused before anything was sent: use a declared channel or declare it with "
                "its max_db and safe_db"
            )
        return limits

    def _query(self, command: str) -> str:
        with self._lock:
            if self._closed:
                raise InstrumentError(
                    f"{self.name}: the attenuator session is closed; open it again"
                )
            if self._pending:  # an interrupted or timed-out query: drop its late answer
                self._drain()
            self._pending = True
            try:
                reply = self._res.query(command).strip()
            except (visa_errors.Error, OSError) as exc:
                raise InstrumentError(
                    f"{self.name}: {command!r} to {self.resource} failed: {exc}; check that the "
                    "attenuator is on and reachable, then rerun"
                ) from None
            self._pending = False
            return reply

    def _drain(self) -> None:
        timeout = self._res.timeout
        self._res.timeout = 100
        try:
            for _ in range(8):
                self._res.read()
        except (visa_errors.Error, OSError):
            pass
        finally:
            self._res.timeout = timeout
            self._pending = False

    def _release(self) -> None:
        self._closed = True
        # Only our own session: pyvisa-py resource managers share one library session, and
        # closing it would close every other instrument this process has open.
        with contextlib.suppress(visa_errors.Error, OSError):
            self._res.close()
