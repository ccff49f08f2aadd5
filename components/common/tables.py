"""Parquet files of the step outputs (local or gs://), read a few columns at a time, with errors that name the file."""
from __future__ import annotations

import tempfile

import numpy as np

from components.common import storage


def read_columns(uri: str, wanted, required, what: str):
    """The columns of a Parquet file that exist among `wanted`; ValueError naming the file if `required` lack."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        local = storage.local_copy(uri, tmp)
        try:
            names = pq.read_schema(local).names
            missing = [c for c in required if c not in names]
            if missing:
                shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
                raise ValueError(f"{what} {uri} lacks the columns {shown}")
            return pq.read_table(local, columns=[c for c in wanted if c in names])
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow's errors name neither the file nor the fix
            raise ValueError(f"{what} {uri} cannot be read as Parquet ({type(e).__name__}: {e})") from e


def column_array(table, name: str, dtype, fill=None) -> np.ndarray:
    """One column of an Arrow table as a NumPy array of dtype, its nulls replaced by fill (when given)."""
    column = table[name]
    if column.null_count and fill is not None:
        import pyarrow.compute as pc

        column = pc.fill_null(column, fill)
    return np.asarray(column.to_numpy(), dtype=dtype)
