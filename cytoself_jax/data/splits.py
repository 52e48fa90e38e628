"""Train/val/test splits by field of view, per protein, so crops of one field never straddle two splits."""
from __future__ import annotations

import warnings
import zlib
from typing import Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The crop table cannot be split as asked; the message is one line."""


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr[0] <= 0 or abs(fr.sum() - 1.0) > 1e-6:
        raise SplitError(f"split: fractions: expected three non-negative numbers (train > 0) summing to 1, "
                         f"found {tuple(fractions)}")
    return fr


def _assign_fields(sizes: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Split index (0/1/2) for each field, fields taken in the given (already shuffled) order.

    Each split with a positive fraction first gets one field while fields remain (train first); every further field
    goes to the split furthest below its target crop count.
    """
    target = fractions * sizes.sum()
    counts = np.zeros(3)
    out = np.empty(len(sizes), dtype=np.int64)
    seeded = [s for s in range(3) if fractions[s] > 0]
    for i, size in enumerate(sizes):
        split = seeded[i] if i < len(seeded) else int(np.argmax(target - counts))
        out[i] = split
        counts[split] += size
    return out


def split_by_field(table: pd.DataFrame, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                   allow_single_field: bool = False, where: str = "crop table") -> dict[str, np.ndarray]:
    """Split crops into ``{'train','val','test'}`` -> sorted int64 row positions of ``table``.

    Per protein, its fields of view (``fov`` column) are shuffled with a generator seeded by (``seed``, protein
    name), and assigned whole to the splits, aiming at ``fractions`` by crop count, at least one field per split
    (with a positive fraction) when the protein has >= 3 fields. A protein with a single field raises SplitError
    unless ``allow_single_field``, in which case its crops go to train only (with a warning). Deterministic: the
    result depends on ``seed`` and the table's contents, not on row order of other proteins. ``where`` names the
    table in error messages (e.g. its file).
    """
    fr = _check_fractions(fractions)
    for column in ("protein", "fov"):
        if column not in table.columns:
            raise SplitError(f"{where}: {column}: required column missing; found columns {list(table.columns)}")
    proteins = table["protein"].astype(str).to_numpy()
    fovs = table["fov"].astype(str).to_numpy()
    split_of_row = np.full(len(table), -1, dtype=np.int64)
    single = []
    for protein in np.unique(proteins):
        rows = np.flatnonzero(proteins == protein)
        fields, field_of_row, sizes = np.unique(fovs[rows], return_inverse=True, return_counts=True)
        if len(fields) == 1:
            if not allow_single_field:
                raise SplitError(f"{where}: fov: protein {protein!r} has all its {len(rows)} crops in one field "
                                 f"of view ({fields[0]!r}), so it cannot be split by field; set allow_single_field "
                                 f"(train.py: --config.data.allow_single_field=True) to put it in train only")
            single.append(protein)
        # Seed per protein (stable crc32 of its name): adding a protein never reshuffles the others.
        rng = np.random.default_rng([int(seed), zlib.crc32(protein.encode())])
        order = rng.permutation(len(fields))
        split_of_field = np.empty(len(fields), dtype=np.int64)
        split_of_field[order] = _assign_fields(sizes[order], fr)
        split_of_row[rows] = split_of_field[field_of_row]
    if single:
        warnings.warn(f"{len(single)} protein(s) with a single field of view go to train only: {single[:5]}",
                      stacklevel=2)
    return {name: np.flatnonzero(split_of_row == s).astype(np.int64) for s, name in enumerate(SPLITS)}


def split_sizes(table: pd.DataFrame, splits: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per protein (index, sorted): its number of fields of view and of crops in each split (columns fields,
    train, val, test)."""
    proteins = table["protein"].astype(str).to_numpy()
    split_of_row = np.full(len(table), "", dtype=object)
    for name, rows in splits.items():
        split_of_row[rows] = name
    frame = pd.DataFrame({"protein": proteins, "split": split_of_row})
    counts = pd.crosstab(frame["protein"], frame["split"]).reindex(columns=list(SPLITS), fill_value=0)
    fields = table.assign(protein=proteins).groupby("protein")["fov"].nunique()
    counts.insert(0, "fields", fields.reindex(counts.index).to_numpy())
    return counts


def _describe(sizes: pd.DataFrame, limit: int = 5) -> str:
    rows = [f"{p} ({r.fields} field{'s' if r.fields != 1 else ''}: train {r.train}, val {r.val}, test {r.test})"
            for p, r in sizes.head(limit).iterrows()]
    return "; ".join(rows) + (f"; ... ({len(sizes)} proteins)" if len(sizes) > limit else "")


def check_split_sizes(table: pd.DataFrame, splits: dict[str, np.ndarray], where: str = "crop table") -> list[str]:
    """Warnings for a training run's splits: an empty test split (eval would have nothing to test), with the split
    sizes per protein. Raises SplitError when train or val is empty (training needs both)."""
    sizes = split_sizes(table, splits)
    few = sizes[sizes["fields"] < len(SPLITS)]
    for name in ("train", "val"):
        if len(splits[name]) == 0:
            raise SplitError(f"{where}: fov: the {name} split is empty: each protein's fields of view go whole to one "
                             f"split and {len(few)} of {len(sizes)} proteins have fewer than 3 fields "
                             f"({_describe(few)}); image more fields per protein or change data.split_fractions")
    if len(splits["test"]) == 0:
        return [f"{where}: fov: the test split is empty, so eval will have no held-out crops to test: each protein's "
                f"fields of view go whole to one split and {len(few)} of {len(sizes)} proteins have fewer than 3 "
                f"fields; per protein: {_describe(sizes)}. Evaluate with eval.py --split val, or embed every crop "
                "with python -m cytoself_jax.embed"]
    return []


def empty_split_message(table: pd.DataFrame, splits: dict[str, np.ndarray], split: str, where: str,
                        minimum: int = 1) -> str:
    """One line for a split with fewer than `minimum` crops: why (fields per protein) and what to do."""
    if not splits:
        return f"{where}: crops: expected at least {minimum} crops, found {len(table)}"
    sizes = split_sizes(table, splits)
    few = sizes[sizes["fields"] < len(SPLITS)]
    n = len(splits.get(split, ())) if split in splits else len(table)
    why = (f"each protein's fields of view go whole to one split and {len(few)} of {len(sizes)} proteins have fewer "
           f"than 3 fields" if len(few) else "the store is small")
    return (f"{where}: split {split!r}: expected at least {minimum} crops, found {n}: {why} (per protein: "
            f"{_describe(sizes)}); evaluate another split (--split val or --split all), or embed every crop without "
            f"splits: python -m cytoself_jax.embed --ckpt RUN --data {where}")

