"""What every evaluator reads: the evaluated split's embeddings and table, the run, the store, the options, and
the shared expensive pieces (the train reference, the held-out proteins' crops, UMAPs), each computed once, on
first use, so an evaluator that is not run costs nothing.

Evaluators (analysis/evaluators/) are functions EvalContext -> Evaluation; they write files into ctx.out and
return Score records, details for metrics.json and notes.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from cytoself_jax.analysis.embed import SplitOutputs, extract
from cytoself_jax.analysis.options import EvalOptions
from cytoself_jax.analysis.parallel import in_processes
from cytoself_jax.analysis.records import Score
from cytoself_jax.analysis.scores import NON_CLASSES
from cytoself_jax.data.store import CropStore
from cytoself_jax.imaging.fit import Fit
from cytoself_jax.run import Run


@dataclasses.dataclass
class Evaluation:
    """An evaluator's result: scores (rendered everywhere), details (metrics.json entries, key -> JSON value;
    a key of None writes no entry) and notes (one line each: why something was skipped or how it was computed)."""

    scores: list[Score] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class EvalContext:
    """One evaluation's inputs. rows: store rows of the evaluated split (N,); table: their crop table rows
    (protein, fov, family, ...; index 0..N-1); outputs: the model's pass over them (embeddings, logits,
    reconstruction errors, `examples`' reconstructions); class_ids (N,): each crop's class in the run's
    classifier (-1: a protein the run was not trained on); splits: the run's split of this store by field
    ({} without splits); heldout: proteins held out of training (their crops are in no split)."""

    options: EvalOptions
    out: Path
    run: Run
    store: CropStore
    store_path: Path
    fit: Fit | None
    rows: np.ndarray
    table: pd.DataFrame
    outputs: SplitOutputs
    examples: np.ndarray
    class_ids: np.ndarray
    splits: dict[str, np.ndarray]
    heldout: tuple[str, ...] = ()
    _cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------------ the split

    @property
    def proteins(self) -> np.ndarray:
        return self.table["protein"].to_numpy()

    @property
    def families(self) -> np.ndarray:
        return self.table["family"].to_numpy()

    @property
    def fovs(self) -> np.ndarray:
        """Field of view of each crop, the unit of independence of every interval."""
        return self.table["fov"].astype(str).to_numpy()

    @property
    def vectors(self) -> np.ndarray:
        """(N, d) the global embedding, flattened: the atlas' embedding."""
        return self.outputs.global_vectors.reshape(len(self.outputs), -1)

    @property
    def channels(self) -> tuple[str, ...]:
        return self.run.channels

    @property
    def held_out_split(self) -> bool:
        """True for val/test: a train split exists to be the reference of kNN and probes."""
        return self.options.split in ("val", "test") and bool(self.splits)

    def annotated(self, labels: np.ndarray) -> np.ndarray:
        """Mask of labels that are a localization class (not '', 'others', 'mixed')."""
        return ~np.isin(labels, NON_CLASSES)

    # ------------------------------------------------------------------------------------------ shared pieces

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute() once per evaluation."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def embed_rows(self, rows: np.ndarray, desc: str) -> SplitOutputs:
        """Embeddings (encoders and quantizers only) of other store rows, with the evaluation's batch settings."""
        o, config = self.options, self.run.config
        return extract(self.run.model, self.run.variables, self.store, rows, full=False, desc=desc,
                       channels=self.channels, batch_size=o.batch_size or config.train.eval_batch_size,
                       num_workers=config.data.num_workers, prefetch=config.data.prefetch, progress=o.progress,
                       fit=self.fit)

    def reference(self) -> tuple[np.ndarray, SplitOutputs] | None:
        """(store rows, embeddings) of the train split, a seeded subsample of at most knn_max_train crops: the
        reference kNN and the probes learn from. None without a held-out split."""
        if not self.held_out_split:
            return None

        def compute():
            train = self.splits["train"]
            rows = train[subsample(len(train), self.options.knn_max_train, self.options.seed)]
            return rows, self.embed_rows(rows, "train crops (reference)")
        return self.cached("reference", compute)

    def validation(self) -> tuple[np.ndarray, SplitOutputs] | None:
        """(store rows, embeddings) of the val split (at most probe_max_crops, seeded) on which probes choose their
        settings; None when the evaluated split is val itself (choosing on it would score the choice) or empty."""
        val = self.splits.get("val") if self.splits else None
        if self.options.split != "test" or val is None or len(val) == 0:
            return None

        def compute():
            rows = val[subsample(len(val), self.options.probe_max_crops, self.options.seed)]
            return rows, self.embed_rows(rows, "val crops (probe settings)")
        return self.cached("validation", compute)

    def unseen(self) -> tuple[np.ndarray, SplitOutputs] | None:
        """(store rows, embeddings) of every crop of the proteins held out of training; None when none were."""
        if not self.heldout or not self.splits:
            return None

        def compute():
            rows = np.flatnonzero(np.isin(self.store.table["protein"].to_numpy(), self.heldout))
            return rows, self.embed_rows(rows, "held-out proteins' crops")
        return self.cached("unseen", compute)

    def pixels(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), H*W*C) pixels of these store rows as the model sees them (probe.crop_pixels), read once per
        evaluation: the linear probe and the unseen-protein probe fit on the same train and val rows."""
        from cytoself_jax.analysis import probe

        rows = np.asarray(rows, np.int64)
        key = "pixels-" + hashlib.sha256(rows.tobytes()).hexdigest()
        return self.cached(key, lambda: probe.crop_pixels(self.store, rows, self.channels, self.fit))

    def umap_rows(self) -> np.ndarray:
        """Positions (into the split) of the crops every UMAP is fit on: all of them, or a seeded subsample of
        options.umap_max_crops (a UMAP's cost grows faster than its size)."""
        return self.cached("umap-rows", lambda: subsample(len(self.rows), self.options.umap_max_crops,
                                                           self.options.seed))

    def umap_kwargs(self) -> dict[str, Any]:
        o = self.options
        return dict(n_neighbors=min(o.umap_neighbors, len(self.umap_rows()) - 1), min_dist=o.umap_min_dist,
                    metric=o.umap_metric)

    def umap(self, seed: int) -> np.ndarray:
        """(len(umap_rows()), 2) UMAP of the global embeddings of the umap_rows() crops with this seed (computed
        once)."""
        return self._fitted_umap(seed)[1]

    def umaps(self, seeds: Sequence[int]) -> list[np.ndarray]:
        """[umap(seed) for seed in seeds], the UMAPs not made yet fitted side by side in worker processes (each
        seeded UMAP runs on one core)."""
        from cytoself_jax.analysis.atlas import fit_umap_of_seed

        # The atlas map's fitted model is kept when it places further crops: fitted here, not sent between processes.
        missing = [s for s in dict.fromkeys(seeds) if f"umap-{s}" not in self._cache and not self._keeps_model(s)]
        vectors, kwargs = self.vectors[self.umap_rows()], self.umap_kwargs()
        fitted = in_processes(fit_umap_of_seed, [(vectors, s, kwargs) for s in missing], desc="UMAPs", unit="umap",
                              progress=self.options.progress)
        for seed, (_, xy) in zip(missing, fitted):
            self._cache[f"umap-{seed}"] = (None, xy)
        return [self.umap(s) for s in seeds]

    def _keeps_model(self, seed: int) -> bool:
        return seed == self.atlas_seed and len(self.umap_rows()) < len(self.rows)

    def _fitted_umap(self, seed: int) -> tuple[Any, np.ndarray]:
        from cytoself_jax.analysis.atlas import fit_umap

        def compute():
            reducer, xy = fit_umap(self.vectors[self.umap_rows()], seed=seed, **self.umap_kwargs())
            # only the atlas map places further crops: the other seeds' fitted models are not kept
            return (reducer if self._keeps_model(seed) else None), xy
        return self.cached(f"umap-{seed}", compute)

    @property
    def atlas_seed(self) -> int:
        """The atlas map's UMAP seed: the options' seed, fixed and recorded, never chosen by a score."""
        return self.options.seed

    def atlas_xy(self) -> np.ndarray:
        """(N, 2) the atlas map of every crop of the split: the UMAP at atlas_seed, the crops it was not fit on
        placed by its transform (atlas.png, atlas.html, X_umap)."""
        from cytoself_jax.analysis.atlas import place_on_umap

        def compute():
            reducer, fitted = self._fitted_umap(self.atlas_seed)
            fit_rows = self.umap_rows()
            if len(fit_rows) == len(self.rows):
                return fitted
            xy = np.empty((len(self.rows), 2), np.float32)
            xy[fit_rows] = fitted
            rest = np.setdiff1d(np.arange(len(self.rows)), fit_rows)
            xy[rest] = place_on_umap(reducer, self.vectors[rest], progress=self.options.progress)
            return xy
        return self.cached("atlas-xy", compute)

    def umap_note(self) -> str | None:
        """The line saying how the UMAPs were made when they were fit on a subsample (None when on every crop or
        when no UMAP was made)."""
        if "umap-rows" not in self._cache:
            return None
        fitted, n = len(self.umap_rows()), len(self.rows)
        if fitted == n:
            return None
        return (f"UMAP: fit on a seeded subsample of {fitted} of {n} crops (--umap_max_crops); the clustering scores "
                f"are taken on those crops, the atlas places the other {n - fitted} with the fitted UMAP's transform")


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded subsample of at most `limit` of n items (all of them when n <= limit)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def largest(values: np.ndarray, exclude: Sequence[str] = NON_CLASSES) -> list[str]:
    """Distinct values sorted by count (descending, then name), those in `exclude` left out."""
    s = pd.Series(values)
    counts = s[~s.isin(list(exclude))].value_counts()
    return sorted(counts.index, key=lambda v: (-counts[v], v))


def has_classes(labels: np.ndarray, minimum: int = 2) -> bool:
    """At least `minimum` distinct localization classes among labels."""
    return len(set(labels) - set(NON_CLASSES)) >= minimum


def interval_of_mean(ctx: EvalContext, per_row: np.ndarray, keep: np.ndarray | None = None,
                     groups: np.ndarray | None = None) -> tuple[float | None, float | None, int]:
    """95% interval of the mean of per-row values (rows `keep` of the split), by a bootstrap over fields of view
    (`groups`, default the split's); returns (low, high, number of fields)."""
    from cytoself_jax.analysis.uncertainty import bootstrap_mean_ci

    keep = np.ones(len(per_row), bool) if keep is None else keep
    groups = ctx.fovs if groups is None else groups
    ci = bootstrap_mean_ci(np.asarray(per_row, np.float64)[keep], groups[keep], n_boot=ctx.options.bootstrap,
                           seed=ctx.options.seed)
    return ci.low, ci.high, ci.n_groups


def interval_of(ctx: EvalContext, statistic: Callable[[np.ndarray], float], groups: np.ndarray,
                n_boot: int | None = None) -> tuple[float | None, float | None, int]:
    """95% interval of statistic(row positions) by a bootstrap over fields of view `groups` (one per row), with
    the options' number of resamples or at most `n_boot` (for costly statistics)."""
    from cytoself_jax.analysis.uncertainty import bootstrap_ci

    resamples = min(ctx.options.bootstrap, n_boot or ctx.options.bootstrap)
    ci = bootstrap_ci(statistic, groups, n_boot=resamples, seed=ctx.options.seed)
    return ci.low, ci.high, ci.n_groups
