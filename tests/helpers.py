"""Small builders shared by tests and benchmarks."""

from __future__ import annotations

from bench.rig import Rig, parse_rig

SUPPLY_RIG = """
name: bench
gateways:
  - name: a
    board: rpi4
    ssh: {{host: 192.0.2.1, auth: {{agent: true}}, host_key: {{tofu: /tmp/kh}}}}
    power: {{instrument: psu, channel: 1}}
instruments:
  psu:
    driver: keysight-e36300
    resource: TCPIP::127.0.0.1::{port}::SOCKET
    channels:
      1: {{max_voltage: 6.0, max_current: 3.0, voltage: 5.0, current_limit: 2.0}}
"""


def supply_rig(port: int) -> Rig:
    """A one-gateway rig whose Keysight supply listens on 127.0.0.1:`port` (the gateway's
    address is documentation-only, TEST-NET-1: nothing ever connects to it)."""
    return parse_rig(SUPPLY_RIG.format(port=port), "bench.yaml")
