"""IEEE 802.15.4g SUN-FSK airtime and unslotted CSMA-CA timing (simulated time, seconds).

Sources (checked 2024, see the report of fieldrig issue 5):
- PHY frame = SHR (preamble + SFD) + PHR + PSDU. MR-FSK PHR is 2 octets and the 2-FSK SFD is
  2 octets (16 symbols); RIOT ``sys/net/link_layer/ieee802154`` timings (802.15.4-2020
  20.2.2.2/20.2.2.3). The preamble is ``phyFSKPreambleLength`` octets of 0x55, configurable
  4..1000 (802.15.4g 18.1.1.1 / 9.3, quoted in Contiki's cc1200 802.15.4g 50 kbps config).
  Wi-SUN FAN profiles use a longer preamble; 8 octets is our default here (NOT verified
  against the Wi-SUN PHY spec, which is not public; pass ``preamble_octets`` to change it).
- PSDU at most 2047 octets (aMaxPhyPacketSize for SUN PHYs). FCS is 4 octets (CRC-32) or
  2 octets (CRC-16), selected by the PHR's FCS-type bit; the FCS is inside the PSDU.
- aTurnaroundTime is 1 ms for SUN PHYs (802.15.4g Table 70), CCA lasts 8 symbols
  (802.15.4-2020 Table 12-2 default), and aUnitBackoffPeriod = aTurnaroundTime + CCA time
  (RIOT ``ieee802154_calculate_unit_backoff_period``): 1000 + 8 * 20 us = 1.16 ms at 50 kbps.
- CSMA-CA defaults macMinBE 3, macMaxBE 5, macMaxCSMABackoffs 4; macMaxFrameRetries 3, so a
  frame is sent at most 1 + 3 = 4 times.
"""

from __future__ import annotations

import numpy as np

SYMBOL_S_50K = 20e-6
"""2-FSK at 50 kbps: one bit per symbol, so 20 us per symbol."""
MAX_PSDU_OCTETS = 2047
PHR_OCTETS = 2
SFD_OCTETS = 2
MIN_PREAMBLE_OCTETS = 4
DEFAULT_PREAMBLE_OCTETS = 8
FCS_OCTETS = 4
TURNAROUND_S = 1e-3
CCA_SYMBOLS = 8
MAC_MIN_BE = 3
MAC_MAX_BE = 5
MAC_MAX_CSMA_BACKOFFS = 4
MAC_MAX_FRAME_RETRIES = 3
MAX_ATTEMPTS = 1 + MAC_MAX_FRAME_RETRIES
IMM_ACK_MAC_OCTETS = 3
"""Frame control (2) + sequence number (1); the FCS is added on top."""


def _check_rate(rate_bps: int) -> None:
    if rate_bps <= 0:
        raise ValueError(f"rate must be positive, got {rate_bps} bit/s")


def frame_airtime_s(
    psdu_bytes: int,
    rate_bps: int = 50_000,
    *,
    preamble_octets: int = DEFAULT_PREAMBLE_OCTETS,
) -> float:
    """Airtime of one SUN-FSK (2-FSK, no FEC) frame whose PSDU (MAC frame incl. FCS) is given.

    ``(preamble + SFD + PHR + PSDU) * 8 / rate``; e.g. a 100-octet PSDU at 50 kbps with an
    8-octet preamble is (8 + 2 + 2 + 100) * 8 * 20 us = 17.92 ms.
    """
    _check_rate(rate_bps)
    if not 0 <= psdu_bytes <= MAX_PSDU_OCTETS:
        raise ValueError(f"PSDU must be 0..{MAX_PSDU_OCTETS} octets, got {psdu_bytes}")
    if preamble_octets < MIN_PREAMBLE_OCTETS:
        raise ValueError(f"preamble must be at least {MIN_PREAMBLE_OCTETS} octets")
    octets = preamble_octets + SFD_OCTETS + PHR_OCTETS + psdu_bytes
    return octets * 8 / rate_bps


def ack_airtime_s(
    rate_bps: int = 50_000,
    *,
    fcs_octets: int = FCS_OCTETS,
    preamble_octets: int = DEFAULT_PREAMBLE_OCTETS,
) -> float:
    """Airtime of an immediate ACK: PSDU = frame control + sequence number + FCS.

    (Wi-SUN actually uses enhanced ACKs with IEs, which are longer; pass a PSDU size to
    :func:`frame_airtime_s` for those.)
    """
    if fcs_octets not in (2, 4):
        raise ValueError("FCS is 2 or 4 octets")
    return frame_airtime_s(
        IMM_ACK_MAC_OCTETS + fcs_octets, rate_bps, preamble_octets=preamble_octets
    )


def unit_backoff_period_s(rate_bps: int = 50_000) -> float:
    """aUnitBackoffPeriod = aTurnaroundTime (1 ms, SUN) + CCA (8 symbols)."""
    _check_rate(rate_bps)
    return TURNAROUND_S + CCA_SYMBOLS / rate_bps


def backoff_exponent(nb: int) -> int:
    """BE for the ``nb``-th backoff (0-based): min(macMinBE + nb, macMaxBE)."""
    if not 0 <= nb <= MAC_MAX_CSMA_BACKOFFS:
        raise ValueError(f"backoff index must be 0..{MAC_MAX_CSMA_BACKOFFS}, got {nb}")
    return min(MAC_MIN_BE + nb, MAC_MAX_BE)


def random_backoff_s(nb: int, rng: np.random.Generator, rate_bps: int = 50_000) -> float:
    """One random backoff: uniform integer in [0, 2**BE - 1] unit backoff periods."""
    periods = int(rng.integers(0, (1 << backoff_exponent(nb))))
    return periods * unit_backoff_period_s(rate_bps)


def mean_backoff_s(nb: int, rate_bps: int = 50_000) -> float:
    """Mean of :func:`random_backoff_s`: (2**BE - 1) / 2 unit backoff periods."""
    return ((1 << backoff_exponent(nb)) - 1) / 2 * unit_backoff_period_s(rate_bps)


def max_csma_delay_s(rate_bps: int = 50_000) -> float:
    """Worst case before giving up: every backoff at its maximum plus a CCA after each."""
    cca = CCA_SYMBOLS / rate_bps
    total = 0.0
    for nb in range(MAC_MAX_CSMA_BACKOFFS + 1):
        total += ((1 << backoff_exponent(nb)) - 1) * unit_backoff_period_s(rate_bps) + cca
    return total
