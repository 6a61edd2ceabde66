"""One exception hierarchy for the whole bench.

``InfrastructureError`` means the rig is broken (unreachable board, bad rig file, missing
root): the run cannot say anything about the device. ``DeviceFailure`` is a finding about
the device under test. Everything derives from ``BenchError`` so a CLI can print any of
them as one line.
"""


class BenchError(Exception):
    """Base of every error fieldrig raises on purpose."""


class RigError(BenchError):
    """A rig file is missing or invalid; the message names file, line and key."""


class InfrastructureError(BenchError):
    """The bench itself cannot do its job (board unreachable, lab down, no root)."""


class LabError(InfrastructureError):
    """The virtual lab could not be brought up, inspected or torn down."""


class TransportError(InfrastructureError):
    """A transport (SSH, serial) failed to connect or lost its peer."""


class HostKeyMismatch(TransportError):
    """The host key a gateway presented differs from the one pinned in the rig."""


class CommandTimeout(TransportError):
    """A remote command ran past its timeout and was killed."""


class DeviceFailure(BenchError):
    """The device under test did something wrong: a finding, not a rig problem."""


class ReservationError(InfrastructureError):
    """A lab place could not be reserved, acquired, checked or released (labgrid coordinator)."""
