"""Write the tables behind a report as ``data/<name>.csv`` and ``data/<name>.parquet``.

Columns keep plain types: a column mixing numbers and text is written as text (JSON for
anything that is not a string), so the CSV and the Parquet file hold the same values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def _text(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return value if isinstance(value, str) else json.dumps(value, default=str)


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every object column holding one type (text where mixed)."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        kinds = {
            type(v)
            for v in out[column]
            if v is not None and not (isinstance(v, float) and pd.isna(v))
        }
        if kinds <= {bool}:
            out[column] = out[column].astype("boolean")
        elif not kinds <= {str}:
            out[column] = [_text(v) for v in out[column]]
    return out.reset_index(drop=True)


def write_tables(tables: Mapping[str, pd.DataFrame], data_dir: Path) -> list[Path]:
    """Write every table in both formats; return the paths written."""
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in tables.items():
        table = plain(frame)
        csv_path, parquet_path = data_dir / f"{name}.csv", data_dir / f"{name}.parquet"
        tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, csv_path)
        tmp = parquet_path.with_name(f".{parquet_path.name}.{os.getpid()}.tmp")
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)  # type: ignore[no-untyped-call]
        os.replace(tmp, parquet_path)
        written += [csv_path, parquet_path]
    return written
