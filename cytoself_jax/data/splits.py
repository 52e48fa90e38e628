"""Train/val/test splits by field of view, per protein, so crops of one field never straddle two splits; proteins
held out of training altogether (the paper's use: placing proteins the model never saw)."""
from __future__ import annotations

import dataclasses
import math
import warnings
import zlib
from typing import Iterable, Sequence

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
                   allow_single_field: bool = False, where: str = "crop table", fold: int = 0
                   ) -> dict[str, np.ndarray]:
    """Split crops into ``{'train','val','test'}`` -> sorted int64 row positions of ``table``.

    Per protein, its fields of view (``fov`` column) are shuffled with a generator seeded by (``seed``, protein
    name), and assigned whole to the splits, aiming at ``fractions`` by crop count, at least one field per split
    (with a positive fraction) when the protein has >= 3 fields. ``fold`` rotates the shuffled order by ``fold``
    places before the assignment (fold 0: no rotation), so that folds 0..F-1 of a protein with F fields give each
    field each place once: with 4 fields and (0.8, 0.1, 0.1) every field is the test field in exactly one fold.
    A protein with a single field raises SplitError unless ``allow_single_field``, in which case its crops go to
    train only (with a warning). Deterministic: the
    result depends on ``seed`` and the table's contents, not on row order of other proteins. ``where`` names the
    table in error messages (e.g. its file).
    """
    fr = _check_fractions(fractions)
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or fold < 0:
        raise SplitError(f"split: fold: expected an integer >= 0 (config.data.split_fold), found {fold!r}")
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
        order = np.roll(rng.permutation(len(fields)), int(fold))
        split_of_field = np.empty(len(fields), dtype=np.int64)
        split_of_field[order] = _assign_fields(sizes[order], fr)
        split_of_row[rows] = split_of_field[field_of_row]
    if single:
        warnings.warn(f"{len(single)} protein(s) with a single field of view go to train only: {single[:5]}",
                      stacklevel=2)
    return {name: np.flatnonzero(split_of_row == s).astype(np.int64) for s, name in enumerate(SPLITS)}


def choose_heldout_proteins(proteins: Iterable[str], heldout: float | Sequence[str], seed: int = 0,
                            where: str = "crop table") -> list[str]:
    """The proteins kept out of training, sorted. ``proteins``: the store's protein names (any order, repeats
    allowed, e.g. the table's column); ``heldout`` (config.data.heldout_proteins): a fraction in [0, 1) or a
    sequence of protein names (0 or () = none).

    A fraction f holds out round(f * P) of the P proteins (at least 1 when f > 0), always leaving 2 to train on:
    each protein gets a key drawn from a generator seeded by (``seed``, crc32 of its name) and the proteins with
    the smallest keys are held out. So the choice depends on ``seed`` and the set of names only (not their order),
    a larger fraction holds out a superset, and adding a protein to the store changes the choice by at most that
    protein and the one it displaces. Names must all be in ``proteins`` (SplitError, one line, naming ``where``).
    """
    names = np.unique(np.asarray(list(proteins), dtype=str))
    field = "config.data.heldout_proteins"
    if isinstance(heldout, str):
        raise SplitError(f"{field}: expected a fraction in [0, 1) or a list of protein names, found the string "
                         f"{heldout!r}; write a list, e.g. --config.data.heldout_proteins=\"('{heldout}',)\"")
    if isinstance(heldout, (int, float, np.integer, np.floating)) and not isinstance(heldout, bool):
        if not 0 <= heldout < 1:
            raise SplitError(f"{field}: expected a fraction in [0, 1) or a list of protein names, found {heldout!r}")
        count = max(1, math.floor(heldout * len(names) + 0.5)) if heldout > 0 else 0
        if count and count > len(names) - 2:
            raise SplitError(f"{field}: holding out {heldout:g} of {len(names)} proteins ({count}) leaves fewer than "
                             f"2 to train on ({where}); use a smaller fraction")
        keys = np.array([np.random.default_rng([int(seed), zlib.crc32(p.encode())]).random() for p in names])
        return sorted(names[np.argsort(keys, kind="stable")[:count]].tolist())
    if not isinstance(heldout, (list, tuple, np.ndarray)) or not all(isinstance(p, str) for p in heldout):
        raise SplitError(f"{field}: expected a fraction in [0, 1) or a list of protein names, found {heldout!r}")
    chosen = sorted(set(heldout))
    missing = [p for p in chosen if p not in set(names)]
    if missing:
        raise SplitError(f"{where}: protein: {field} names {len(missing)} protein(s) not in the store: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (the store has {len(names)} proteins, e.g. "
                         f"{names[:3].tolist()})")
    if len(chosen) > len(names) - 2:
        raise SplitError(f"{field}: holding out {len(chosen)} of {len(names)} proteins leaves fewer than 2 to train "
                         f"on ({where})")
    return chosen


@dataclasses.dataclass(frozen=True)
class RunSplits:
    """A training run's crops: ``splits`` {'train','val','test'} -> sorted int64 row positions (proteins it trains
    on only), ``heldout_proteins`` (sorted names), ``heldout_rows`` (sorted int64 rows of those proteins, in no
    split), ``trained_proteins`` (sorted names: the classifier's classes, in class order)."""

    splits: dict[str, np.ndarray]
    heldout_proteins: tuple[str, ...]
    heldout_rows: np.ndarray
    trained_proteins: tuple[str, ...]


def splits_for_config(table: pd.DataFrame, config, where: str = "crop table",
                      allow_single_field: bool | None = None) -> RunSplits:
    """The splits of a run's config (config.data: split_fractions, split_seed, split_fold, heldout_proteins,
    heldout_seed, allow_single_field; a config saved before a field existed gets its default) on a crop table,
    as training makes them: held-out proteins are chosen first and their crops go to no split; the other
    proteins are split by field exactly as split_by_field on them alone. ``allow_single_field`` overrides the
    config's (eval of split 'all'). Training and eval both call this, so they agree."""
    data = config.data
    for column in ("protein", "fov"):
        if column not in table.columns:
            raise SplitError(f"{where}: {column}: required column missing; found columns {list(table.columns)}")
    proteins = table["protein"].astype(str).to_numpy()
    heldout_value = data.get("heldout_proteins", 0)
    if isinstance(heldout_value, (list, tuple)):  # a config read from JSON holds a list
        heldout_value = tuple(heldout_value)
    heldout = choose_heldout_proteins(proteins, heldout_value, seed=data.get("heldout_seed", 0), where=where)
    is_heldout = np.isin(proteins, heldout)
    kept = np.flatnonzero(~is_heldout)
    single = data.get("allow_single_field", False) if allow_single_field is None else allow_single_field
    # Each protein is split on its own (seeded by its name), so splitting the kept rows alone changes nothing else.
    sub = split_by_field(table.iloc[kept], tuple(data.split_fractions), seed=data.split_seed,
                         allow_single_field=single, where=where, fold=data.get("split_fold", 0))
    return RunSplits(splits={name: kept[rows] for name, rows in sub.items()}, heldout_proteins=tuple(heldout),
                     heldout_rows=np.flatnonzero(is_heldout).astype(np.int64),
                     trained_proteins=tuple(np.unique(proteins[kept]).tolist()))


def class_ids(proteins: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """int32 class of each crop's protein (N,): its position in ``classes`` (the run's trained proteins), -1 for a
    protein that is not a class (held out, or new)."""
    index = {p: i for i, p in enumerate(classes)}
    return np.array([index.get(p, -1) for p in np.asarray(proteins, dtype=str)], dtype=np.int32)


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

