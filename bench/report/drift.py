"""Fleet drift: gateways whose stack differs from the rest of their board type, and
failures that happen only on some device fingerprints.

Board type is the inventory's ``board_model``. Within a board type the most common
fingerprint is the norm when it is held by more gateways than any other; a gateway with
another fingerprint is named with the stack fields that differ. When no fingerprint is the
most common (1 against 1), every gateway of the type is named as differing from the others.

A test (its pytest id with the gateway's name taken out) that failed on some fingerprints
and passed on others is pointed out; "minority" when fewer than half of the fingerprints
that ran it failed.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.fleet.inventory import FINGERPRINT_FIELDS
from bench.report.load import RunData

_FAILED = ("failed", "error")


@dataclass(frozen=True)
class Drift:
    """A gateway whose stack differs from the norm of its board type."""

    board: str
    gateway: str
    fingerprint: str
    norm: str | None  # the board type's most common fingerprint; None without one
    differences: dict[str, tuple[str, str]]  # field: (this gateway's, the norm's)

    @property
    def text(self) -> str:
        if self.norm is None:
            return (
                f"{self.gateway} ({self.board}) has fingerprint {self.fingerprint}; the other "
                "gateways of this board type have other stacks and none is the majority"
            )
        diffs = "; ".join(
            f"{k} {mine} (others: {theirs})" for k, (mine, theirs) in self.differences.items()
        )
        return (
            f"{self.gateway} ({self.board}) differs from the other {self.board} gateways "
            f"(fingerprint {self.fingerprint}, most have {self.norm}): {diffs}"
        )


@dataclass(frozen=True)
class FingerprintFailure:
    """A test that failed on some fingerprints and passed on the others."""

    test: str
    failing: tuple[tuple[str, str], ...]  # (gateway, fingerprint)
    failing_fingerprints: int
    fingerprints: int  # that ran the test

    @property
    def minority(self) -> bool:
        return 2 * self.failing_fingerprints < self.fingerprints

    @property
    def text(self) -> str:
        where = ", ".join(f"{g} ({fp})" for g, fp in self.failing)
        share = f"{self.failing_fingerprints} of {self.fingerprints} fingerprints"
        kind = (
            "only on a minority of device fingerprints"
            if self.minority
            else "only on some fingerprints"
        )
        return f"{self.test} fails {kind} ({share}): {where}; it passes on the others"


def _field_text(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(str(value.get(k)) for k in ("name", "version") if value.get(k)) or str(
            value
        )
    return str(value)


def fleet_drift(run: RunData) -> list[Drift]:
    """Gateways that differ from the rest of their board type (see the module docstring)."""
    by_board: dict[str, list[str]] = {}
    for gateway in sorted(run.inventory):
        by_board.setdefault(run.board_of(gateway), []).append(gateway)
    found: list[Drift] = []
    for board, gateways in sorted(by_board.items()):
        if len(gateways) < 2:
            continue
        counts = Counter(run.fingerprint_of(g) for g in gateways)
        (top, top_n), *rest = counts.most_common()
        norm = top if not rest or rest[0][1] < top_n else None
        norm_inv = next((run.inventory[g] for g in gateways if run.fingerprint_of(g) == norm), {})
        for gateway in gateways:
            fingerprint = run.fingerprint_of(gateway)
            if fingerprint == norm:
                continue
            inv = run.inventory[gateway]
            differences = {
                key: (_field_text(inv.get(key)), _field_text(norm_inv.get(key)))
                for key in FINGERPRINT_FIELDS
                if norm is not None and inv.get(key) != norm_inv.get(key)
            }
            found.append(Drift(board, gateway, fingerprint, norm, differences))
    return found


def family_of_test(test: str, gateway: str | None) -> str:
    """A pytest id with the gateway's name taken out of its parameters."""
    if not gateway or "[" not in test:
        return test
    name, params = test.split("[", 1)
    params = re.sub(rf"(?<![^\[\-]){re.escape(gateway)}(?=[\-\]])", "*", "[" + params)
    return name + params


def fingerprint_failures(run: RunData) -> list[FingerprintFailure]:
    """Tests that failed on some fingerprints and passed on the others."""
    runs: dict[str, dict[str, set[str]]] = {}  # family -> fingerprint -> outcomes
    gateways: dict[tuple[str, str], set[str]] = {}
    for _, row in run.outcomes.iterrows():
        gateway = row["gateway"]
        if not isinstance(gateway, str) or row["outcome"] == "skipped":
            continue
        family = family_of_test(str(row["test"]), gateway)
        fingerprint = run.fingerprint_of(gateway)
        runs.setdefault(family, {}).setdefault(fingerprint, set()).add(str(row["outcome"]))
        if row["outcome"] in _FAILED:
            gateways.setdefault((family, fingerprint), set()).add(gateway)
    found = []
    for family, by_fp in sorted(runs.items()):
        failing = sorted(fp for fp, outcomes in by_fp.items() if outcomes & set(_FAILED))
        if not failing or len(failing) == len(by_fp):
            continue
        named = tuple((g, fp) for fp in failing for g in sorted(gateways[(family, fp)]))
        found.append(FingerprintFailure(family, named, len(failing), len(by_fp)))
    return found


def drift_table(run: RunData) -> pd.DataFrame:
    """Every gateway with its board type, fingerprint and whether it drifts."""
    drifting = {d.gateway: d for d in fleet_drift(run)}
    rows = []
    for gateway in sorted(run.inventory):
        drift = drifting.get(gateway)
        rows.append(
            {
                "run": run.run_id,
                "board": run.board_of(gateway),
                "gateway": gateway,
                "fingerprint": run.fingerprint_of(gateway),
                "drifts": drift is not None,
                "norm": None if drift is None else drift.norm,
                "detail": "" if drift is None else drift.text,
            }
        )
    columns = ["run", "board", "gateway", "fingerprint", "drifts", "norm", "detail"]
    return pd.DataFrame(rows, columns=columns)


def fingerprint_failures_table(run: RunData) -> pd.DataFrame:
    rows = [
        {
            "run": run.run_id,
            "test": f.test,
            "failing": ", ".join(f"{g} ({fp})" for g, fp in f.failing),
            "failing_fingerprints": f.failing_fingerprints,
            "fingerprints": f.fingerprints,
            "minority": f.minority,
            "detail": f.text,
        }
        for f in fingerprint_failures(run)
    ]
    columns = [
        "run",
        "test",
        "failing",
        "failing_fingerprints",
        "fingerprints",
        "minority",
        "detail",
    ]
    return pd.DataFrame(rows, columns=columns)
