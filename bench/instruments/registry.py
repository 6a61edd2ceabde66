"""Instrument drivers by the name a rig file gives: power supplies under
``instruments.<name>.driver``, RF attenuators under ``attenuators.<name>.driver``.

Adding a SCPI family is one :class:`~bench.instruments.dialects.Dialect` table; adding a
non-SCPI supply is one module whose factory is registered here with :func:`register`.
A factory is called as ``factory(name, instrument, **options)`` and returns a
:class:`~bench.instruments.psu.PowerSupply`.
"""

from collections.abc import Callable

from bench.errors import InfrastructureError
from bench.instruments.attenuator import Attenuator, MiniCircuitsAttenuator
from bench.instruments.dialects import DIALECTS
from bench.instruments.psu import PowerSupply, open_psu
from bench.rig import Attenuator as AttenuatorSpec
from bench.rig import Instrument

__all__ = ["ATTENUATOR_DRIVERS", "DRIVERS", "open_attenuator", "open_supply", "register"]

PsuFactory = Callable[..., PowerSupply]

DRIVERS: dict[str, PsuFactory] = dict.fromkeys(DIALECTS, open_psu)


def register(driver: str, factory: PsuFactory) -> None:
    """Make ``driver`` usable in rig files; a name is registered once."""
    if driver in DRIVERS:
        raise ValueError(f"power-supply driver {driver!r} is already registered")
    DRIVERS[driver] = factory


def open_supply(name: str, instrument: Instrument, **options: object) -> PowerSupply:
    """Open the rig's supply ``name`` with the driver its rig entry names."""
    factory = DRIVERS.get(instrument.driver)
    if factory is None:
        raise InfrastructureError(
            f"{name}: no power-supply driver {instrument.driver!r}; registered: "
            f"{', '.join(sorted(DRIVERS))}"
        )
    return factory(name, instrument, **options)


AttenuatorFactory = Callable[[str, AttenuatorSpec], Attenuator]


def _minicircuits(name: str, spec: AttenuatorSpec) -> Attenuator:
    return MiniCircuitsAttenuator(spec.resource, dict(spec.channels), name)


ATTENUATOR_DRIVERS: dict[str, AttenuatorFactory] = {"minicircuits-rcdat": _minicircuits}


def open_attenuator(name: str, spec: AttenuatorSpec) -> Attenuator:
    """Open the rig's attenuator ``name`` with the driver its rig entry names."""
    factory = ATTENUATOR_DRIVERS.get(spec.driver)
    if factory is None:
        raise InfrastructureError(
            f"{name}: no attenuator driver {spec.driver!r}; registered: "
            f"{', '.join(sorted(ATTENUATOR_DRIVERS))}"
        )
    return factory(name, spec)
