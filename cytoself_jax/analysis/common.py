"""Input checks and small table helpers shared by the analysis modules (numpy and pandas only)."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse


class AnalysisInputError(ValueError):
    """Bad input to an analysis function; the message is one line: '<function>: <argument>: <what was expected>'."""


def fail(where: str, field: str, what: str) -> AnalysisInputError:
    return AnalysisInputError(f"{where}: {field}: {what}")


def smallest_int(largest: int) -> type:
    """int16 when values up to `largest` (>= 0) fit it, else int32: per-crop code indices and counts, kept for
    every crop of an evaluation and written to its h5ad; signed, so differences of counts do not wrap around."""
    return np.int16 if largest <= np.iinfo(np.int16).max else np.int32


def as_matrix(values, where: str, field: str, flatten: bool = False, min_rows: int = 1) -> np.ndarray:
    """(N, d) float array with finite entries; with flatten=True any (N, ...) array is flattened to (N, prod(...)).

    float32 and float64 are kept as they are (a (110k, 9216) float32 embedding must not double in memory);
    other dtypes become float64."""
    array = np.asarray(values)
    if flatten and array.ndim > 2:
        array = array.reshape(len(array), -1)
    if array.ndim != 2:
        raise fail(where, field, f"expected a 2-D array (N, d), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise fail(where, field, f"expected numbers, got dtype {array.dtype}")
    if len(array) < min_rows or array.shape[1] == 0:
        raise fail(where, field, f"expected at least {min_rows} rows and 1 column, got shape {array.shape}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
        raise fail(where, field, f"expected finite values, found NaN/inf in {len(bad)} rows (first: row {bad[0]})")
    return array


def as_labels(labels, num_rows: int, where: str, field: str) -> np.ndarray:
    """Labels as a 1-D array of str of length num_rows; missing values (None, NaN) become ''."""
    if np.ndim(labels) != 1:
        raise fail(where, field, f"expected a 1-D sequence of labels, got shape {np.shape(labels)}")
    series = pd.Series(np.asarray(labels, dtype=object))
    if len(series) != num_rows:
        raise fail(where, field, f"expected {num_rows} labels (one per row), got {len(series)}")
    return series.where(series.notna(), "").astype(str).to_numpy()


def group_means(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean row of each group. values (N, d), groups (N,) -> (sorted unique group names (G,), means (G, d) float64).

    A sparse one-hot (G, N) product, in the dtype of float32 values, keeps memory at the size of the result: no
    dense (G, N) matrix and no float64 copy of a (110k, 9216) float32 embedding.
    """
    names, inverse = np.unique(groups, return_inverse=True)
    dtype = values.dtype if values.dtype == np.float32 else np.float64
    onehot = scipy.sparse.csr_matrix(
        (np.ones(len(groups), dtype), (inverse, np.arange(len(groups)))), shape=(len(names), len(groups))
    )
    sums = np.asarray(onehot @ values, dtype=np.float64)
    return names, sums / np.bincount(inverse, minlength=len(names))[:, None]


def check_choice(value: str, choices: Sequence[str], where: str, field: str) -> str:
    if value not in choices:
        raise fail(where, field, f"expected one of {list(choices)}, got {value!r}")
    return value


def safe_name(name: str) -> str:
    """A file-name-safe form of a protein, family or store name (runs of other characters become '_')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"
