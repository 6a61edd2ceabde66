"""Per-link loss model: log-distance path loss, link budget to delivery, Gilbert-Elliott.

Calibration (DESIGN.md section 5, measured Wi-SUN 2-FSK figures): a TYPICAL link delivers
85 % of frames on the first attempt and 94 % within three attempts ("after three tries" is
read as three transmissions in total, i.e. the first plus two retries; the 802.15.4 MAC with
macMaxFrameRetries = 3 may send up to four, see :func:`GilbertElliott.delivery_within`).
Independent 15 % loss would give 1 - 0.15**3 = 99.66 % within three; the measured 94 % says
losses are bursty, hence the two-state channel.

This module is the ONE Gilbert-Elliott implementation: :class:`GilbertElliott` (one link with
its own generator) and the mesh simulator (:mod:`bench.mesh.sim`, one state per directed link,
parameters following each link's current margin) both step the chain with
:func:`gilbert_step`, draw a fresh state with :func:`gilbert_fresh_state` and take their
parameters from :func:`gilbert_rates` / :func:`gilbert_from_margin`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NOISE_FLOOR_DBM = -95.0
TYPICAL_FIRST_ATTEMPT = 0.85
TYPICAL_WITHIN_THREE = 0.94
TYPICAL_MARGIN_DB = 10.0
"""SNR margin (received power minus noise floor) of a typical link."""
MARGIN_SLOPE_DB = 2.0
"""Width of the logistic budget-to-delivery curve (dB per e-fold of the odds)."""


def path_loss_db(
    distance_m: float,
    pl0_db: float = 40.0,
    exponent: float = 3.0,
    sigma_db: float = 3.0,
    rng: np.random.Generator | None = None,
    *,
    d0_m: float = 1.0,
) -> float:
    """Log-distance path loss with log-normal shadowing.

    PL(d) = PL(d0) + 10 n log10(d / d0) + X, X ~ N(0, sigma**2) dB (sigma about 3 dB outdoors,
    8 dB indoors). Without ``rng`` the shadowing term is left out (the median loss).
    """
    if distance_m <= 0:
        raise ValueError(f"distance must be positive, got {distance_m} m")
    loss = pl0_db + 10 * exponent * math.log10(max(distance_m, d0_m) / d0_m)
    if rng is not None and sigma_db > 0:
        loss += float(rng.normal(0.0, sigma_db))
    return loss


def link_margin_db(
    tx_power_dbm: float, loss_db: float, noise_dbm: float = NOISE_FLOOR_DBM
) -> float:
    """Link budget: received power (tx power - path loss) minus the noise floor."""
    return tx_power_dbm - loss_db - noise_dbm


_M50_DB = TYPICAL_MARGIN_DB - MARGIN_SLOPE_DB * math.log(
    TYPICAL_FIRST_ATTEMPT / (1 - TYPICAL_FIRST_ATTEMPT)
)
"""Margin of 50 % first-attempt delivery."""
P_BAD_CAP = 0.999
"""Stationary P(Bad) is capped here so even a hopeless link can leave its Bad state."""


def delivery_probability(margin_db: float) -> float:
    """First-attempt delivery for a link margin: a logistic curve in dB.

    P(margin) = 1 / (1 + exp(-(margin - m50) / s)) with s = MARGIN_SLOPE_DB and m50 chosen so
    P(TYPICAL_MARGIN_DB) = 0.85: m50 = TYPICAL_MARGIN_DB - s ln(0.85 / 0.15).
    """
    x = (margin_db - _M50_DB) / MARGIN_SLOPE_DB
    if x < -700:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x))


def delivery_probability_array(margin_db: np.ndarray) -> np.ndarray:
    """:func:`delivery_probability` for many margins at once (same curve)."""
    x = np.clip((np.asarray(margin_db, dtype=float) - _M50_DB) / MARGIN_SLOPE_DB, -700.0, 700.0)
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=float)


def gilbert_step(
    bad: bool,
    u_loss: float,
    u_flip: float,
    p_good_to_bad: float,
    p_bad_to_good: float,
    loss_good: float = 0.0,
    loss_bad: float = 1.0,
) -> tuple[bool, bool]:
    """One attempt on a Gilbert-Elliott channel in state ``bad``, given two uniforms.

    Returns (delivered, next state): the attempt is lost with the state's loss rate
    (``u_loss < loss``), then the state flips with the state's transition probability
    (``u_flip < p``). Every user of the channel model goes through this function.
    """
    delivered = u_loss >= (loss_bad if bad else loss_good)
    if u_flip < (p_bad_to_good if bad else p_good_to_bad):
        bad = not bad
    return delivered, bad


def gilbert_fresh_state(u: float, p_bad: float) -> bool:
    """A state drawn from the stationary distribution (after a long idle gap): Bad when
    ``u < p_bad``."""
    return u < p_bad


@dataclass
class GilbertElliott:
    """Two-state (Good/Bad) Markov channel; each attempt is lost with the state's loss rate.

    The state steps once per attempt (after it). Stationary P(Bad) = p / (p + r) with
    p = p_good_to_bad, r = p_bad_to_good. Marginal loss = piG lG + piB lB.
    """

    p_good_to_bad: float
    p_bad_to_good: float
    loss_good: float
    loss_bad: float
    rng: np.random.Generator
    bad: bool = field(default=False)

    def __post_init__(self) -> None:
        for name in ("p_good_to_bad", "p_bad_to_good", "loss_good", "loss_bad"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability, got {value}")
        if self.p_good_to_bad + self.p_bad_to_good <= 0:
            raise ValueError("the chain must be able to change state")
        self.forget()

    @property
    def stationary_bad(self) -> float:
        return self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good)

    @property
    def marginal_loss(self) -> float:
        pb = self.stationary_bad
        return (1 - pb) * self.loss_good + pb * self.loss_bad

    def forget(self) -> None:
        """Draw the state from the stationary distribution (a long idle gap between frames)."""
        self.bad = gilbert_fresh_state(float(self.rng.random()), self.stationary_bad)

    def transmit(self) -> bool:
        """One attempt: True when delivered. Then the state steps (:func:`gilbert_step`)."""
        u = self.rng.random(2)
        delivered, self.bad = gilbert_step(
            self.bad,
            float(u[0]),
            float(u[1]),
            self.p_good_to_bad,
            self.p_bad_to_good,
            self.loss_good,
            self.loss_bad,
        )
        return delivered

    def transmit_many(self, n: int) -> np.ndarray:
        """``n`` consecutive attempts (the same stream as ``n`` calls of :meth:`transmit`)."""
        u = self.rng.random((n, 2)).tolist()
        out = np.empty(n, dtype=bool)
        bad = self.bad
        lg, lb, pgb, pbg = self.loss_good, self.loss_bad, self.p_good_to_bad, self.p_bad_to_good
        for i, (u_loss, u_flip) in enumerate(u):
            out[i], bad = gilbert_step(bad, u_loss, u_flip, pgb, pbg, lg, lb)
        self.bad = bad
        return out

    def delivery_within(self, attempts: int) -> float:
        """P(delivered within ``attempts`` back-to-back tries), starting from stationarity.

        P(all lost) = pi D (T D)**(k-1) 1, D = diag(lG, lB), T the transition matrix.
        """
        if attempts < 1:
            raise ValueError("at least one attempt")
        pg, pb = 1 - self.stationary_bad, self.stationary_bad
        d = np.diag([self.loss_good, self.loss_bad])
        t = np.array(
            [
                [1 - self.p_good_to_bad, self.p_good_to_bad],
                [self.p_bad_to_good, 1 - self.p_bad_to_good],
            ]
        )
        v = np.array([pg, pb]) @ d
        for _ in range(attempts - 1):
            v = v @ t @ d
        return float(1 - v.sum())


def gilbert_params(first_attempt: float, within_k: float, k: int = 3) -> tuple[float, float]:
    """Classic Gilbert channel (lG = 0, lB = 1) matching two delivery figures analytically.

    Marginal loss L = piB = 1 - first_attempt. All k attempts lost means Bad at the first and
    staying Bad k - 1 times: piB (1 - r)**(k-1) = 1 - within_k, so
    r = 1 - ((1 - within_k) / L) ** (1 / (k - 1)) and p = r L / (1 - L).
    For 0.85 / 0.94 / k = 3: r = 1 - sqrt(0.4) = 0.3675, p = 0.06485; the mean burst lasts
    1 / r = 2.7 attempts and P(loss | previous loss) = 1 - r = 0.632 against 0.15 overall.
    """
    loss = 1 - first_attempt
    if not 0 < loss < 1 or k < 2 or not first_attempt < within_k < 1:
        raise ValueError("need 0 < first_attempt < within_k < 1 and k >= 2")
    ratio = (1 - within_k) / loss
    r = 1 - ratio ** (1 / (k - 1))
    p = r * loss / (1 - loss)
    if not 0 < p <= 1:
        raise ValueError("these figures need p_good_to_bad > 1; not a Gilbert channel")
    return p, r


_TYPICAL_P, TYPICAL_R = gilbert_params(TYPICAL_FIRST_ATTEMPT, TYPICAL_WITHIN_THREE, 3)


def gilbert_rates_array(p_bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p_good_to_bad, p_bad_to_good) of Gilbert links whose stationary P(Bad) is ``p_bad``.

    The typical burst length is kept (r = TYPICAL_R, p = r piB / (1 - piB)) while p <= 1;
    for links worse than that (piB > 1 / (1 + r)) p is 1 and the bursts lengthen instead,
    r = (1 - piB) / piB, so the stationary loss stays exactly piB.
    """
    pb = np.asarray(p_bad, dtype=float)
    p = TYPICAL_R * pb / (1.0 - pb)
    worse = p > 1.0
    r = np.where(worse, (1.0 - pb) / np.where(worse, pb, 1.0), TYPICAL_R)
    return np.minimum(p, 1.0), r


def gilbert_rates(p_bad: float) -> tuple[float, float]:
    """:func:`gilbert_rates_array` for one link."""
    p, r = gilbert_rates_array(np.array([p_bad]))
    return float(p[0]), float(r[0])


def gilbert_from_margin(margin_db: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_good_to_bad, p_bad_to_good, stationary P(Bad)) of classic Gilbert links (lG = 0,
    lB = 1) for many margins: P(Bad) = 1 - :func:`delivery_probability`, capped at
    :data:`P_BAD_CAP`; rates from :func:`gilbert_rates_array`."""
    pb = np.minimum(1.0 - delivery_probability_array(margin_db), P_BAD_CAP)
    p, r = gilbert_rates_array(pb)
    return p, r, pb


def link_from_margin(margin_db: float, rng: np.random.Generator) -> GilbertElliott:
    """A Gilbert link whose first-attempt delivery follows :func:`delivery_probability`
    (the parameters of :func:`gilbert_from_margin`)."""
    p, r, _ = gilbert_from_margin(np.array([margin_db]))
    return GilbertElliott(float(p[0]), float(r[0]), 0.0, 1.0, rng)


def calibrated_link(rng: np.random.Generator) -> GilbertElliott:
    """The TYPICAL link: 85 % first attempt, 94 % within three attempts (stationary start)."""
    return GilbertElliott(_TYPICAL_P, TYPICAL_R, 0.0, 1.0, rng)
