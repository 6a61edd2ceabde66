"""The tidy tables behind every table and plot of a report, built from one run.

Each function returns a :class:`pandas.DataFrame` with one row per observation and plain
column types, so the same frame feeds the HTML, the Markdown and ``data/`` (CSV + Parquet).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import pandas as pd

from bench.report.load import (
    IDENTITY_KEYS,
    LATENCY_SERIES,
    STRIP_POINTS,
    RunData,
    param_text,
)

#: suite-specific tables cover these metrics; the rest go to "other measurements"
COVERED_PREFIXES: Final = (
    "latency.", "energy.", "power.", "mesh.", "liveness.", "quality.", "rollout.", "update.",
)  # fmt: skip


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


def _params_frame(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    out = frame.copy()
    for key in keys:
        out[key] = [
            param_text(p[key]) if isinstance(p, dict) and key in p else None
            for p in frame["parameters"]
        ]
    return out


def pivot_metrics(
    run: RunData, prefix: str, keys: Sequence[str], *, suite: str | None = None
) -> pd.DataFrame:
    """Records whose metric starts with ``prefix``, one row per gateway and ``keys``, one
    column per metric (``<rest of the name>_<unit>``; the last record wins)."""
    m = run.measurements
    rows = m[m["metric"].astype(str).str.startswith(prefix)]
    if suite is not None:
        rows = rows[rows["suite"] == suite]
    if rows.empty:
        return pd.DataFrame(columns=["gateway", *keys])
    rows = _params_frame(rows, keys)
    table: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _, row in rows.sort_values("order").iterrows():
        ident = (str(row["gateway"]), *(row[k] for k in keys))
        entry = table.setdefault(
            ident, {"gateway": ident[0], **dict(zip(keys, ident[1:], strict=True))}
        )
        unit = str(row["unit"]).replace("/", "_per_")
        suffix = "" if unit in ("1", "count") else f"_{unit}"
        name = str(row["metric"])[len(prefix) :].replace(".", "_") + suffix
        entry[name] = _num(row["value"])
    return pd.DataFrame(list(table.values()))


def runs_table(runs: Sequence[RunData], roles: dict[str, str]) -> pd.DataFrame:
    rows = []
    for run in runs:
        info = run.info
        rows.append(
            {
                "run": run.run_id,
                "role": roles.get(run.run_id, "series"),
                "rig": info.get("rig_name"),
                "virtual": run.virtual,
                "status": info.get("status"),
                "start": info.get("start"),
                "end": info.get("end"),
                "git_commit": info.get("git_commit"),
                "git_dirty": info.get("git_dirty"),
                "fieldrig_version": info.get("fieldrig_version"),
                "python_version": info.get("python_version"),
                "platform": info.get("platform"),
                "hostname": info.get("hostname"),
                "rig_sha256": info.get("rig_sha256"),
                "argv": " ".join(str(a) for a in info.get("argv") or []),
                "problems": len(run.problems),
            }
        )
    return pd.DataFrame(rows)


def outcomes_table(run: RunData) -> pd.DataFrame:
    frame = run.outcomes.copy()
    frame["fingerprint"] = [run.fingerprint_of(g) for g in frame["gateway"]]
    frame["time"] = frame["time"].astype(str)
    return frame[
        ["run", "time", "test", "gateway", "fingerprint", "outcome", "duration_s", "message"]
    ]


def _runtime_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return " ".join(str(value.get(k)) for k in ("name", "version") if value.get(k))
    return None if value is None else str(value)


def inventory_table(run: RunData) -> pd.DataFrame:
    rows = []
    for gateway, inv in sorted(run.inventory.items()):
        inv = inv if isinstance(inv, dict) else {}
        rows.append(
            {
                "run": run.run_id,
                "gateway": gateway,
                "board": run.board_of(gateway),
                "os": inv.get("os"),
                "kernel": inv.get("kernel"),
                "arch": inv.get("arch"),
                "libc": inv.get("libc"),
                "python": inv.get("python"),
                "runtime": _runtime_text(inv.get("inference_runtime")),
                "fingerprint": inv.get("fingerprint"),
            }
        )
    columns = ["run", "gateway", "board", "os", "kernel", "arch", "libc", "python", "runtime",
               "fingerprint"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


_CONFIG: Final = ("model", "variant", "threads", "delegate")


def latency_table(run: RunData) -> pd.DataFrame:
    """Per gateway, model, variant and threads: the recorded distribution summary."""
    frame = pivot_metrics(run, "latency.", _CONFIG, suite="inference")
    if frame.empty:
        return frame
    frame.insert(0, "run", run.run_id)
    frame.insert(2, "board", [run.board_of(g) for g in frame["gateway"]])
    sources = []
    for _, row in frame.iterrows():
        found = [
            s for k, s in run.samples.items()
            if k.metric == LATENCY_SERIES and k.gateway == row["gateway"]
            and all(k.param(c) == row[c] for c in _CONFIG if row[c] is not None)
        ]  # fmt: skip
        sources.append(found[0].source if found else "missing")
    frame["raw_samples"] = sources
    wanted = [
        c for c in frame.columns if not c.startswith(tuple(f"{m}_" for m in ("std", "min", "max")))
    ]
    return frame[wanted]


def latency_plot_tables(run: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(box: quantiles over all raw samples per configuration, points: a strip subset)."""
    boxes, points = [], []
    for key, samples in sorted(run.samples.items()):
        if key.metric != LATENCY_SERIES:
            continue
        ident = {k: key.param(k) for k in _CONFIG}
        label = f"{key.gateway} {ident['model']}/{ident['variant']} t{ident['threads']}"
        boxes.append({"run": run.run_id, "gateway": key.gateway, **ident, "label": label,
                      "count": samples.count, **samples.quantiles})  # fmt: skip
        for value in samples.values[:STRIP_POINTS]:
            points.append({"run": run.run_id, "gateway": key.gateway, **ident, "label": label,
                           "latency_us": float(value)})  # fmt: skip
    return pd.DataFrame(boxes), pd.DataFrame(points)


def energy_table(run: RunData) -> pd.DataFrame:
    energy = pivot_metrics(run, "energy.", _CONFIG, suite="power")
    if energy.empty:
        return energy
    extra = pivot_metrics(run, "power.", _CONFIG, suite="power")
    extra = extra.dropna(subset=["model"]) if "model" in extra else extra.iloc[0:0]
    keep = [c for c in extra.columns if c in ("gateway", *_CONFIG) or c.startswith(
        ("idle_baseline", "untrusted_windows", "sampling_rate"))]  # fmt: skip
    frame = (
        energy.merge(extra[keep], on=["gateway", *_CONFIG], how="left") if len(extra) else energy
    )
    frame.insert(0, "run", run.run_id)
    frame.insert(2, "board", [run.board_of(g) for g in frame["gateway"]])
    return frame


def power_table(run: RunData) -> pd.DataFrame:
    """Per gateway: idle watts and boot time (records without a model)."""
    frame = pivot_metrics(run, "power.", ("model",), suite="power")
    if frame.empty:
        return frame
    frame = frame[frame["model"].isna()].drop(columns=["model"])
    keep = [
        c for c in frame.columns if c == "gateway" or c.startswith(("idle", "boot", "sampling"))
    ]
    frame = frame[keep].dropna(axis=1, how="all").copy()
    frame.insert(0, "run", run.run_id)
    frame.insert(2, "board", [run.board_of(g) for g in frame["gateway"]])
    return frame.reset_index(drop=True)


def _with_delivery(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or "loss" not in frame:
        return frame
    frame = frame.copy()
    frame["delivery"] = 1 - frame["loss"]
    if "loss_ci_high" in frame and "loss_ci_low" in frame:
        frame["delivery_ci_low"] = 1 - frame["loss_ci_high"]
        frame["delivery_ci_high"] = 1 - frame["loss_ci_low"]
    return frame


def _interval_names(run: RunData, prefix: str) -> dict[tuple[str, str], str]:
    m = run.measurements
    rows = m[m["metric"] == f"{prefix}loss"]
    out = {}
    for _, row in rows.iterrows():
        params = row["parameters"] if isinstance(row["parameters"], dict) else {}
        ident = "hops" if "hops" in params else "attenuation_db"
        out[(str(row["gateway"]), param_text(params.get(ident)))] = str(params.get("interval"))
    return out


def mesh_delivery_table(run: RunData) -> pd.DataFrame:
    """Delivery (1 - loss) with its 95 % interval by gateway and hop count."""
    frame = _with_delivery(pivot_metrics(run, "mesh.delivery.", ("hops",), suite="mesh"))
    if frame.empty:
        return frame
    names = _interval_names(run, "mesh.delivery.")
    frame["interval"] = [
        names.get((g, h), "") for g, h in zip(frame["gateway"], frame["hops"], strict=True)
    ]
    frame.insert(0, "run", run.run_id)
    order = frame["hops"].map(lambda h: 1e9 if h == "all" else float(h) if h else 0.0)
    return (
        frame.assign(_o=order)
        .sort_values(["gateway", "_o"])
        .drop(columns="_o")
        .reset_index(drop=True)
    )


def mesh_attenuation_table(run: RunData) -> pd.DataFrame:
    frame = _with_delivery(
        pivot_metrics(run, "mesh.attenuation.", ("attenuation_db",), suite="mesh")
    )
    if frame.empty:
        return frame
    names = _interval_names(run, "mesh.attenuation.")
    frame["interval"] = [
        names.get((g, a), "")
        for g, a in zip(frame["gateway"], frame["attenuation_db"], strict=True)
    ]
    frame.insert(0, "run", run.run_id)
    order = frame["attenuation_db"].astype(float)
    return (
        frame.assign(_o=order)
        .sort_values(["gateway", "_o"])
        .drop(columns="_o")
        .reset_index(drop=True)
    )


def collapsed_measurements(
    run: RunData, prefixes: Sequence[str], *, exclude: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per series (metric, gateway, identifying parameters) of the metrics that
    start with one of ``prefixes``: how many records, and their value or mean."""
    m = run.measurements
    metric = m["metric"].astype(str)
    mask = (
        metric.str.startswith(tuple(prefixes))
        if prefixes
        else ~metric.str.startswith(COVERED_PREFIXES)
    )
    if exclude:
        mask &= ~metric.str.startswith(tuple(exclude))
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _, row in m[mask].sort_values("order").iterrows():
        params = row["parameters"] if isinstance(row["parameters"], dict) else {}
        context = ", ".join(f"{k}={param_text(params[k])}" for k in IDENTITY_KEYS if k in params)
        ident = (
            row["suite"],
            row["test"],
            row["metric"],
            str(row["gateway"]),
            context,
            row["unit"],
        )
        entry = rows.setdefault(ident, {"run": run.run_id, "suite": ident[0], "test": ident[1],
                                        "metric": ident[2], "gateway": ident[3], "context": context,
                                        "unit": ident[5], "records": 0, "_values": []})  # fmt: skip
        entry["records"] += 1
        entry["_values"].append(row["value"])
    out = []
    for entry in rows.values():
        values = entry.pop("_values")
        numbers = [v for v in (_num(x) for x in values) if v is not None]
        entry["value"] = numbers[-1] if len(values) == 1 and numbers else None
        entry["text"] = None if numbers else json.dumps(values[-1], default=str)
        entry["mean"] = sum(numbers) / len(numbers) if numbers else None
        out.append(entry)
    columns = [
        "run",
        "suite",
        "test",
        "metric",
        "gateway",
        "context",
        "unit",
        "records",
        "value",
        "text",
        "mean",
    ]
    return pd.DataFrame(out, columns=columns)


def events_table(run: RunData) -> pd.DataFrame:
    rows = [
        {"run": run.run_id, "time": e.get("time"), "gateway": e.get("gateway"),
         "kind": e.get("kind"), "message": str(e.get("message"))}
        for e in run.events
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["run", "time", "gateway", "kind", "message"])


def problems_table(runs: Sequence[RunData]) -> pd.DataFrame:
    rows = [{"run": r.run_id, "problem": p} for r in runs for p in r.problems]
    rows += [
        {"run": r.run_id, "problem": f"suite {s}: not in this run"}
        for r in runs
        for s in r.absent_suites
    ]
    return pd.DataFrame(rows, columns=["run", "problem"])
