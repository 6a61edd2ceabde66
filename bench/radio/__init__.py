"""Radio dongle support: Spinel over HDLC-lite codec (see :mod:`bench.radio.hdlc` and
:mod:`bench.radio.spinel`)."""

from bench.radio.hdlc import HdlcDecoder, encode_frame, fcs16
from bench.radio.spinel import Cmd, Prop, SpinelError, SpinelFrame

__all__ = ["Cmd", "HdlcDecoder", "Prop", "SpinelError", "SpinelFrame", "encode_frame", "fcs16"]
