"""fieldrig: a hardware-in-the-loop bench for edge gateways (import package ``bench``)."""

__version__ = "0.1.0"
