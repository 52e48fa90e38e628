"""One evaluation of a training run: embeddings, metrics, tables and pictures of a split, in one output folder.

run_eval(run_dir, EvalOptions(...)) checks everything it can before any heavy work (run directory, checkpoint,
store compatibility, options, output folder), then writes into a temporary sibling folder renamed into place at the
end (analysis/outdir.py), so a failed or interrupted evaluation never leaves a partial output folder, and replaces
only a folder an earlier evaluation wrote. With by_field=False it embeds every crop of any compatible store, without
splits (the embed command). See eval.py for the command line.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cytoself_jax.analysis import atlas, interpret, neighbours, outdir, plots, scores, spectrum
from cytoself_jax.analysis.common import AnalysisInputError, group_means
from cytoself_jax.analysis.embed import SplitOutputs, extract
from cytoself_jax.analysis import atlas_html, complexes, probe, proteins as protein_level  # the evaluators
from cytoself_jax.data.pipeline import StoreSource
from cytoself_jax.data.splits import SplitError, empty_split_message, split_by_field
from cytoself_jax.data.store import META_FILE, CropStore, fingerprint, open_store
from cytoself_jax.imaging.fit import FITS, Fit, FitError, fit_for
from cytoself_jax.run import checkpoint_step, has_checkpoint, load_run, load_run_config

SPLITS = ("train", "val", "test", "all")
NON_CLASSES = scores.NON_CLASSES
MAX_FAMILY_SPECTRA = 12  # spectra_families.png shows the largest families only


class EvalError(ValueError):
    """The evaluation cannot run as asked; the message is one line naming the file or option and what was expected."""


@dataclasses.dataclass
class EvalOptions:
    """What to evaluate and how. Defaults follow the paper (UMAP: euclidean, 15 neighbours, min_dist 0.1)."""

    split: str = "test"  # train, val, test (held out by the run's split settings) or all
    data: str = ""  # crop store to evaluate; '' = the run's own (dataset.json 'store')
    out: str = ""  # output folder; '' = RUN_DIR/eval/<split>[-latest|-random-init] (default_out_dir)
    which: str = "best"  # checkpoint: best (validation) or latest
    random_init: bool = False  # evaluate the untrained model of the run's config (a floor for every metric)
    batch_size: int = 0  # global eval batch; 0 = config.train.eval_batch_size
    umap_seeds: int = 5  # UMAPs for the clustering score (mean +- sd); the atlas shows the best one
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    umap_metric: str = "euclidean"
    knn_k: int = 10
    knn_max_train: int = 50_000  # kNN reference: at most this many train crops (seeded subsample)
    map_max_crops: int = 5_000  # mAP queries: at most this many eval crops (seeded subsample; O(N^2) cost)
    family: str = ""  # atlas_<family>.png; '' = the largest family
    proteins: Sequence[str] = ()  # spectra_proteins.png; () = the most imaged protein of the 3 largest families
    interpret: str = ""  # protein of the interpretation picture; '' = the first of `proteins`
    interpret_codes: int = 3  # spectrum peaks zeroed (each alone, then all together)
    neighbours: int = 10  # nearest proteins listed per protein
    atlas_thumbnails: int = 2000  # atlas.html: crops with their own hover thumbnail (at least one per protein)
    probe_max_crops: int = 10_000  # linear probes: at most this many train and eval crops each (seeded subsample)
    complexes: str = ""  # CSV (protein, complex): complexes.csv/.png, tightness of each complex's subunits
    complex_permutations: int = 1000  # label permutations of the complexes' null
    seed: int = 0  # subsamples, UMAP seeds (seed, seed+1, ...), example crops
    svg: bool = False  # also write .svg copies of the atlas and spectra
    fit: str = ""  # crops of another size than the run's: 'center-crop' or 'resize' ('' = refuse them)
    by_field: bool = True  # False: every crop of the store, no split by field (embedding new data; split='all')
    progress: bool = True
    force: bool = False  # recompute even when the output folder already holds this very evaluation


@dataclasses.dataclass
class EvalResult:
    out_dir: Path
    metrics: dict
    reused: bool = False  # the output folder already held this evaluation (same checkpoint, store and options)


# ---------------------------------------------------------------------------------------------------- checks


def _check_options(o: EvalOptions) -> None:
    if o.split not in SPLITS:
        raise EvalError(f"--split: expected one of {list(SPLITS)}, got {o.split!r}")
    if o.which not in ("best", "latest"):
        raise EvalError(f"--which: expected 'best' or 'latest', got {o.which!r}")
    for name in ("umap_seeds", "umap_neighbors", "knn_k", "knn_max_train", "map_max_crops", "interpret_codes",
                 "neighbours"):
        if getattr(o, name) < (2 if name in ("umap_neighbors", "map_max_crops") else 1):
            raise EvalError(f"--{name}: expected a positive integer, got {getattr(o, name)}")
    if o.fit not in ("", *FITS):
        raise EvalError(f"fit: expected '' or one of {list(FITS)}, got {o.fit!r}")
    if not o.by_field and o.split != "all":
        raise EvalError(f"--split {o.split}: embedding every crop (no split by field) takes split 'all'")
    if o.batch_size < 0:
        raise EvalError(f"--batch_size: expected >= 0 (0 = the run's eval batch size), got {o.batch_size}")
    for name in ("atlas_thumbnails", "probe_max_crops", "complex_permutations"):
        if getattr(o, name) < 1:
            raise EvalError(f"--{name}: expected a positive integer, got {getattr(o, name)}")
    if o.complexes:
        complexes.read_complexes(o.complexes)  # a bad file fails now, not after the embedding


def _check_checkpoint(run_dir: Path, which: str) -> None:
    if not has_checkpoint(run_dir, which):
        other = "--which best" if which == "latest" else "--which latest"
        raise EvalError(f"{run_dir / 'checkpoints' / which}: no complete '{which}' checkpoint: train first, evaluate "
                        f"the other checkpoint with {other}, or pass --random_init")


def _open_compatible_store(path: Path, run_dir: Path, info: dict, fit: str = "") -> tuple[CropStore, Fit | None]:
    """The store and the Fit its crops need (None when they have the run's size)."""
    store = open_store(path)
    channels = list(info["channels"])
    missing = [c for c in channels if c not in store.channels]
    if missing:
        raise EvalError(f"{path / META_FILE}: channels: the run {run_dir} was trained on {channels}, the store has "
                        f"{list(store.channels)} (incompatible checkpoint)")
    try:
        return store, fit_for(store.image_shape[:2], info["image_shape"][:2], fit, f"{path / META_FILE}",
                              f"the run {run_dir}")
    except FitError as e:
        raise EvalError(str(e)) from None


def default_out_dir(run_dir: Path, options: EvalOptions, run_store: str | Path = "") -> Path:
    """RUN_DIR/eval/<split> (best checkpoint), <split>-latest (latest) or <split>-random-init (untrained floor);
    for another store than the run's own (`run_store`), <split>...-<store name>; without splits (by_field=False),
    RUN_DIR/embed/<store name>[-latest|-random-init] (a store named 'store', as prepare writes OUT/store, is named
    after its parent). A folder named after the data never holds the run's own eval."""
    suffix = "-random-init" if options.random_init else ("-latest" if options.which == "latest" else "")
    data = Path(options.data or run_store).absolute()
    name = _safe_name(data.parent.name if data.name == "store" else data.name)  # prepare writes OUT/store
    if not options.by_field:
        return Path(run_dir) / "embed" / (name + suffix)
    other = options.data and Path(options.data).resolve() != Path(run_store or options.data).resolve()
    return Path(run_dir) / "eval" / (options.split + suffix + (f"-{name}" if other else ""))


# ---------------------------------------------------------------------------------------------------- helpers


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def _has_classes(labels: np.ndarray, minimum: int = 2) -> bool:
    return len(set(labels) - set(NON_CLASSES)) >= minimum


def _shared_label(labels: np.ndarray) -> bool:
    return bool(len(labels)) and np.unique(labels, return_counts=True)[1].max() >= 2


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded subsample of at most `limit` of n items (all of them when n <= limit)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def codebook_usage(counts: np.ndarray) -> dict:
    """Usage of a codebook from its code counts (K,) over a split: perplexity (exp of the entropy of code usage,
    1..K), codes used (count > 0) and dead codes (never used)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    used = int(np.count_nonzero(counts))
    return {"num_codes": int(len(counts)), "perplexity": float(np.exp(-np.sum(nz * np.log(nz)))),
            "codes_used": used, "dead_codes": int(len(counts) - used)}


def _undefined_as_none(fn, notes: list[str], what: str):
    """fn() or, when the metric is undefined for this embedding (e.g. a collapsed codebook gives identical
    vectors, so class radii are 0), None with a note saying why."""
    try:
        return fn()
    except AnalysisInputError as e:
        notes.append(f"{what}: undefined here ({e})")
        return None


def _chance_map(labels: np.ndarray) -> float:
    # Expected AP of a random ranking is the fraction of positives among the others, averaged per label as in mAP.
    names, counts = np.unique(labels, return_counts=True)
    keep = counts >= 2
    return float(np.mean((counts[keep] - 1) / (len(labels) - 1)))


def _largest(values: np.ndarray, exclude: Sequence[str] = NON_CLASSES) -> list[str]:
    """Distinct values sorted by count (descending, then name), those in `exclude` left out."""
    s = pd.Series(values)
    counts = s[~s.isin(list(exclude))].value_counts()
    return sorted(counts.index, key=lambda v: (-counts[v], v))


# ---------------------------------------------------------------------------------------------------- metrics


def _scores(o: EvalOptions, ev: SplitOutputs, table: pd.DataFrame, class_ids: np.ndarray, num_classes: int,
            channels: Sequence[str], global_codes: int, train: SplitOutputs | None, train_proteins: np.ndarray | None,
            notes: list[str]) -> tuple[dict, np.ndarray, str]:
    """The metrics dict (without 'run' and 'neighbours'), the atlas UMAP coordinates (N, 2) and its caption."""
    proteins = table["protein"].to_numpy()
    families = table["family"].to_numpy()
    x = ev.global_vectors.reshape(len(ev), -1)
    m: dict[str, Any] = {}

    se = ev.squared_error
    m["reconstruction_mse"] = {"all": float(se.mean()),
                               "per_channel": {c: float(v) for c, v in zip(channels, se.mean(axis=0))}}
    global_counts = np.bincount(ev.global_indices.reshape(-1), minlength=global_codes)
    m["codebooks"] = {"local": codebook_usage(ev.local_histograms.sum(axis=0)),
                      "global": codebook_usage(global_counts)}
    for level, usage in m["codebooks"].items():
        if usage["codes_used"] == 1:
            notes.append(f"{level} codebook: every position of every crop took the same code (collapsed, as in an "
                         "untrained model), so its embedding carries no information")

    known = class_ids >= 0
    heads = {}
    for level, logits in sorted(ev.logits.items()):
        top1, top5 = scores.classifier_topk(logits, class_ids, k=(1, 5))
        heads[level] = {"top1": top1, "top5": top5}
    # Chance level of protein identity top-k: a uniform guess among the run's proteins.
    m["chance"] = {"top1": 1 / num_classes, "top5": min(5, num_classes) / num_classes}
    m["classifier"] = {**heads, "crops_unknown_protein": int(np.sum(~known))} if heads and known.any() else None
    if not heads:
        notes.append("classifier: the model has no identification head (config.model.heads is empty)")
    elif not known.any():
        notes.append("classifier: no crop is of a protein the run was trained on, so protein identity is not scored")
    elif int(np.sum(~known)):
        notes.append(f"classifier: {int(np.sum(~known))} crops of proteins the run was not trained on count as misses")

    if train is not None:
        k = min(o.knn_k, len(train))
        top1, top5 = scores.knn_accuracy(train.global_vectors, train_proteins, x, proteins, k=k,
                                          progress=o.progress)
        m["knn"] = {"top1": top1, "top5": top5, "k": k, "metric": "euclidean", "train_crops": int(len(train))}
    else:
        m["knn"] = None
        notes.append(f"kNN: needs a held-out split to query (--split val or test), not {o.split!r}")

    n_neighbors = min(o.umap_neighbors, len(x) - 1)
    if n_neighbors != o.umap_neighbors:
        notes.append(f"UMAP: n_neighbors lowered to {n_neighbors} (only {len(x)} crops)")
    umap_kw = dict(n_neighbors=n_neighbors, min_dist=o.umap_min_dist, metric=o.umap_metric)
    seeds = list(range(o.seed, o.seed + o.umap_seeds))
    if _has_classes(families):
        values, coords = scores.umap_clustering_scores(x, families, seeds=seeds, progress=o.progress, **umap_kw)
        best = int(np.argmax(values))
        m["clustering_score"] = {
            "umap": {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                     "scores": [float(v) for v in values], "seeds": seeds, "best_seed": seeds[best], **umap_kw},
            "raw": _undefined_as_none(lambda: scores.clustering_score(x, families), notes, "clustering score (raw)"),
            "families": _largest(families), "excluded": [c for c in NON_CLASSES if c],
        }
        xy = coords[best]
    else:
        m["clustering_score"] = None
        notes.append("clustering score: needs at least 2 annotated localization families among the crops")
        xy = atlas.compute_umap(x, seed=o.seed, **umap_kw)
        best = 0

    sample = _subsample(len(x), o.map_max_crops, o.seed)
    if len(sample) < len(x):
        notes.append(f"mAP: computed on a seeded subsample of {len(sample)} of {len(x)} crops (seed {o.seed})")
    xs, ps, fs = x[sample], proteins[sample], families[sample]
    annotated = ~np.isin(fs, NON_CLASSES)
    by_protein, by_family = _shared_label(ps), _shared_label(fs[annotated]) and _has_classes(fs[annotated])
    m["map"] = {
        "protein": scores.mean_average_precision(xs, ps, progress=o.progress) if by_protein else None,
        "chance_protein": _chance_map(ps) if by_protein else None,
        "family": (scores.mean_average_precision(xs[annotated], fs[annotated], progress=o.progress) if by_family
                   else None),
        "chance_family": _chance_map(fs[annotated]) if by_family else None,
        "crops": int(len(sample)), "subsampled": bool(len(sample) < len(x)), "seed": o.seed, "metric": "cosine",
    }
    if not by_family:
        notes.append("mAP same family: needs 2 annotated families with 2 crops or more")
    return m, xy, f"UMAP seed {seeds[best]}" + (f", best of {len(seeds)}" if len(seeds) > 1 else "")


# ---------------------------------------------------------------------------------------------------- writing


def _write_h5ad(path: Path, ev: SplitOutputs, table: pd.DataFrame, split_names: np.ndarray, class_ids: np.ndarray,
                xy: np.ndarray, uns: dict) -> None:
    import anndata

    def small_int(a: np.ndarray, top: int) -> np.ndarray:
        return a.astype(np.int16 if top <= np.iinfo(np.int16).max else np.int32)

    obs = pd.DataFrame({
        "protein": pd.Categorical(table["protein"].to_numpy()),
        "fov": pd.Categorical(table["fov"].to_numpy()),
        "family": pd.Categorical(table["family"].to_numpy()),
        "split": pd.Categorical(split_names),
        "index": ev.index.astype(np.int64),
        "label": class_ids.astype(np.int32),
    }, index=pd.Index([str(i) for i in ev.index], name="crop"))
    k_local, k_global = uns["local_codes"], uns["global_codes"]
    adata = anndata.AnnData(
        X=ev.global_vectors.reshape(len(ev), -1).astype(np.float32),
        obs=obs,
        obsm={"local_histogram": small_int(ev.local_histograms, int(ev.local_histograms.max(initial=0))),
              "local_indices": small_int(ev.local_indices.reshape(len(ev), -1), k_local),
              "global_indices": small_int(ev.global_indices.reshape(len(ev), -1), k_global),
              "X_umap": xy.astype(np.float32)},
        uns=uns,
    )
    adata.write_h5ad(path)


def _format(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metric_rows(m: dict) -> list[tuple[str, str, str]]:
    """(metric, value, meaning) rows of a metrics dict, for metrics.md and the printed summary."""
    rows = [("reconstruction MSE", _format(m["reconstruction_mse"]["all"], 4),
             "mean squared error on normalized pixels (" + ", ".join(
                 f"{c} {_format(v, 4)}" for c, v in m["reconstruction_mse"]["per_channel"].items()) + ")")]
    for level, u in m["codebooks"].items():
        rows.append((f"{level} codebook perplexity", _format(u["perplexity"], 1),
                     f"{u['codes_used']} of {u['num_codes']} codes used, {u['dead_codes']} dead (over the split)"))
    chance = f"chance {m['chance']['top1']:.3f} / {m['chance']['top5']:.3f}"
    if m["classifier"]:
        for level in ("local", "global"):
            if level in m["classifier"]:
                c = m["classifier"][level]
                rows.append((f"classifier top-1 / top-5 ({level} head)", f"{c['top1']:.3f} / {c['top5']:.3f}",
                             f"protein identity ({chance})"))
    if m["knn"]:
        k = m["knn"]
        rows.append(("kNN top-1 / top-5", f"{k['top1']:.3f} / {k['top5']:.3f}",
                     f"protein identity by vote of the {k['k']} nearest of {k['train_crops']} train crops "
                     f"(global embedding; {chance})"))
    cs = m["clustering_score"]
    if cs:
        u = cs["umap"]
        rows.append(("clustering score (UMAP)", f"{u['mean']:.2f} +- {u['sd']:.2f}",
                     f"localization families on {len(u['seeds'])} UMAP{'s' if len(u['seeds']) > 1 else ''} of the "
                     f"global embedding "
                     f"({len(cs['families'])} families)"))
        rows.append(("clustering score (raw)", _format(cs["raw"], 3), "same score on the raw global embedding"))
    mp = m["map"]
    rows.append(("mAP same protein", _format(mp["protein"]), f"retrieval, cosine (chance {_format(mp['chance_protein'])})"
                 + (f", {mp['crops']} crops subsampled" if mp["subsampled"] else "")))
    rows.append(("mAP same family", _format(mp["family"]), f"retrieval, cosine (chance {_format(mp['chance_family'])})"))
    nb = m.get("neighbours")
    if nb and nb["top1_same_family"] is not None:
        rows.append(("nearest protein same family", _format(nb["top1_same_family"]),
                     f"fraction of {nb['annotated_proteins']} annotated proteins (neighbours.csv)"))
    return rows + _evaluator_rows(m)


def _evaluator_rows(m: dict) -> list[tuple[str, str, str]]:
    """metric_rows of the evaluators (probe, protein atlas, complexes); absent keys (older metrics.json) skip."""
    rows = []
    for target, what in (("family", "localization family"), ("protein", "protein identity")):
        scores_of = (m.get("probe") or {}).get(target) or {}
        emb, pix = scores_of.get("embedding"), scores_of.get("pixels")
        if emb:
            rows.append((f"linear probe {target}: macro-F1 / balanced acc.",
                         f"{emb['macro_f1']:.3f} / {emb['balanced_accuracy']:.3f}",
                         f"{what}, logistic regression on the global embedding, train -> {emb['test']} held-out "
                         f"crops ({emb['classes']} classes; probe.csv)"))
        if pix:
            rows.append((f"pixel baseline {target}: macro-F1 / balanced acc.",
                         f"{pix['macro_f1']:.3f} / {pix['balanced_accuracy']:.3f}",
                         f"same probe on PCA({pix['pca_components']}) of protein-channel pixels"))
    p = m.get("proteins")
    if p:
        rows.append(("protein communities (Leiden)", str(p["communities"]),
                     f"of {p['proteins']} proteins (proteins.h5ad); adjusted Rand index vs families "
                     f"{_format(p['adjusted_rand_family'])}"))
    c = m.get("complexes")
    if c:
        rows.append(("complexes tighter than chance", f"{c['significant_q05']} / {c['scored']}",
                     f"q < 0.05 vs {c['permutations']} label permutations; median neighbour fraction "
                     f"{_format(c['median_neighbour_fraction'])} (null {_format(c['median_null_fraction'])}; "
                     "complexes.csv)"))
    return rows


def metrics_markdown(m: dict) -> str:
    """metrics.md: the run, a table of metrics with their meaning, and the notes."""
    r = m["run"]
    model = "untrained (random init) model" if r["random_init"] else f"checkpoint '{r['checkpoint']}' (step {r['step']})"
    lines = [f"# Evaluation of {r['run_dir']}", "",
             f"{model}; split **{r['split']}** of {r['store']}: {r['crops']} crops, {r['proteins']} proteins, "
             f"{r['families']} annotated families.", "", "| metric | value | meaning |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in metric_rows(m)]
    if m["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in m["notes"]]
    return "\n".join(lines) + "\n"


def summary_table(m: dict) -> str:
    """The short table printed at the end of eval.py."""
    rows = [(a, b) for a, b, _ in metric_rows(m)]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{width}}  {b}" for a, b in rows)


def result_text(result: EvalResult) -> str:
    """What eval.py and the embed command print at the end: crops, summary table, notes, where the outputs are."""
    m, out = result.metrics, result.out_dir
    r = m["run"]
    lines = [f"\n{r['split']} {'split' if r['split'] != 'all' else 'crops'}: {r['crops']} crops, {r['proteins']} "
             f"proteins ({'random init' if r['random_init'] else 'step ' + str(r['step'])})", summary_table(m)]
    lines += [f"  note: {note}" for note in m["notes"]]
    lines.append(f"outputs: {out} (atlas: {out / 'atlas.png'}; table: {out / 'metrics.md'})")
    if result.reused:
        lines.append("  (already evaluated: same checkpoint, store and options, so nothing was recomputed; "
                     "--force recomputes)")
    return "\n".join(lines)


def evaluation_identity(o: EvalOptions, run_dir: Path, store: CropStore) -> dict:
    """What an evaluation's outputs depend on: the options (not where they go or how progress shows), the
    checkpoint (step and the time its folder was written: a new run in the same folder differs), the store's
    fingerprint and the complexes table's bytes. Recorded in the output's marker."""
    options = {k: v for k, v in dataclasses.asdict(o).items() if k not in ("out", "progress", "force")}
    options["proteins"] = list(o.proteins)
    checkpoint: Any = "random-init"
    if not o.random_init:
        step = checkpoint_step(run_dir, o.which)
        checkpoint = {"which": o.which, "step": step,
                      "written_ns": (run_dir / "checkpoints" / o.which / str(step)).stat().st_mtime_ns}
    complexes_sha = hashlib.sha256(Path(o.complexes).read_bytes()).hexdigest() if o.complexes else ""
    return {"run_dir": str(run_dir.absolute()), "checkpoint": checkpoint, "options": options,
            "store": fingerprint(store), "complexes_sha256": complexes_sha}


def _already_evaluated(out: Path, identity: dict) -> dict | None:
    """The metrics of `out` when its marker records this very evaluation and every file it lists is still there
    (a deleted picture is written again); None otherwise."""
    marker = outdir.read_marker(out)
    if marker.get("evaluation") != json.loads(json.dumps(identity)):  # through JSON: tuples become lists
        return None
    if not all((out / name).is_file() for name in marker.get("files", ())):
        return None
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and "run" in metrics else None


# ---------------------------------------------------------------------------------------------------- main


def run_eval(run_dir: str | Path, options: EvalOptions = EvalOptions()) -> EvalResult:
    """Evaluate a run on a split and write its outputs (see README "Outputs"); returns (out_dir, metrics)."""
    o = dataclasses.replace(options, proteins=tuple(options.proteins))
    run_dir = Path(run_dir)
    _check_options(o)
    config, info = load_run_config(run_dir)
    if not o.random_init:
        _check_checkpoint(run_dir, o.which)
    store_path = Path(o.data or info["store"])
    store, fit = _open_compatible_store(store_path, run_dir, info, o.fit)
    channels = tuple(info["channels"])
    splits = _splits(o, config, store, store_path, run_dir)
    split_of_row = np.full(len(store), "all", dtype=object)
    for name, idx in splits.items():
        split_of_row[idx] = name
    rows = np.arange(len(store)) if o.split == "all" else splits[o.split]
    if len(rows) < 3:
        raise EvalError(empty_split_message(store.table, splits, o.split, str(store_path), minimum=3))
    table = store.table.iloc[rows].reset_index(drop=True)
    proteins, families = table["protein"].to_numpy(), table["family"].to_numpy()
    shown = _choose_proteins(o, proteins, families)
    family = o.family or next(iter(_largest(families)), "")
    if o.family and o.family not in set(families):
        raise EvalError(f"--family: no crop of the {o.split} split has family {o.family!r}; families: "
                        f"{_largest(families)}")
    out = Path(o.out) if o.out else default_out_dir(run_dir, o, info["store"])
    command = "eval" if o.by_field else "embed"
    try:
        outdir.check_replaceable(out, command)
    except outdir.OutputFolderError as e:
        raise EvalError(str(e)) from None
    identity = evaluation_identity(o, run_dir, store)
    done = None if o.force else _already_evaluated(out, identity)
    if done is not None:  # the same command run again (the README's first one): seconds, not minutes
        return EvalResult(out_dir=out, metrics=done, reused=True)

    run = load_run(run_dir, o.which, random_init=o.random_init)
    model, variables, step = run.model, run.variables, run.step
    class_of = {p: i for i, p in enumerate(info["proteins"])}
    class_ids = np.array([class_of.get(p, -1) for p in proteins], dtype=np.int64)
    run_kw = dict(channels=channels, batch_size=o.batch_size or config.train.eval_batch_size,
                  num_workers=config.data.num_workers, prefetch=config.data.prefetch, progress=o.progress, fit=fit)

    tmp = outdir.staging_folder(out, command, {"run_dir": str(run_dir), "store": str(store_path), "split": o.split,
                                               "checkpoint": run.checkpoint, "evaluation": identity})
    try:
        examples = _example_rows(proteins, families, 8, o.seed)
        ev = extract(model, variables, store, rows, full=True, reconstruct=examples, desc=f"{o.split} crops",
                     **run_kw)
        notes: list[str] = []
        train, train_proteins, train_rows = None, None, None
        if o.split in ("val", "test"):
            train_rows = splits["train"][_subsample(len(splits["train"]), o.knn_max_train, o.seed)]
            train = extract(model, variables, store, train_rows, full=False, desc="train crops (kNN)", **run_kw)
            train_proteins = store.table["protein"].to_numpy()[train_rows]
            if len(train_rows) < len(splits["train"]):
                notes.append(f"kNN: reference is a seeded subsample of {len(train_rows)} of {len(splits['train'])} "
                             f"train crops (seed {o.seed})")
        metrics, xy, caption = _scores(o, ev, table, class_ids, len(info["proteins"]), channels,
                                       model.spec.vq_global.num_codes, train, train_proteins, notes)
        metrics["run"] = {"run_dir": str(run_dir), "checkpoint": "random-init" if o.random_init else o.which,
                          "step": int(step), "random_init": o.random_init, "store": str(store_path),
                          "split": o.split, "crops": int(len(rows)), "proteins": int(len(set(proteins))),
                          "families": len(_largest(families)), "fit": o.fit if fit is not None else ""}
        metrics["notes"] = notes
        _tables_and_pictures(o, tmp, run_dir, model, variables, store, rows, channels, ev, examples, table, xy,
                             caption, family, shown, metrics, fit)
        uns = {"channels": list(channels), "proteins": list(info["proteins"]), "split": o.split,
               "run_dir": str(run_dir), "store": str(store_path), "step": int(step), "random_init": o.random_init,
               "local_shape": list(model.spec.local_shape), "global_shape": list(model.spec.global_shape),
               "local_codes": model.spec.vq_local.num_codes, "global_codes": model.spec.vq_global.num_codes}
        _write_h5ad(tmp / "embeddings.h5ad", ev, table, split_of_row[rows], class_ids, xy, uns)
        _evaluators(o, tmp, store, rows, ev, table, xy, train, train_rows, metrics)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        (tmp / "metrics.md").write_text(metrics_markdown(metrics))
        outdir.commit(tmp, out, command)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return EvalResult(out_dir=out, metrics=metrics)


def _splits(o: EvalOptions, config, store: CropStore, store_path: Path, run_dir: Path) -> dict[str, np.ndarray]:
    """The run's split by field of this store ({} without splits: by_field=False)."""
    if not o.by_field:
        return {}
    try:
        with warnings.catch_warnings():  # single-field proteins are training's concern, said there
            warnings.simplefilter("ignore")
            return split_by_field(store.table, tuple(config.data.split_fractions), seed=config.data.split_seed,
                                  allow_single_field=config.data.allow_single_field or o.split == "all",
                                  where=str(store_path / "crops.csv"))
    except SplitError as e:
        raise EvalError(f"{e}; to embed every crop of a store without splits (new data, any number of fields), "
                        f"run python -m cytoself_jax.embed --ckpt {run_dir} --data {store_path}") from None


def _choose_proteins(o: EvalOptions, proteins: np.ndarray, families: np.ndarray) -> list[str]:
    """Proteins whose spectra are drawn: the requested ones (checked), else the most imaged protein of each of the
    3 largest families (or the 3 most imaged proteins when no family is annotated)."""
    present = set(proteins)
    for name in (*o.proteins, *([o.interpret] if o.interpret else [])):
        if name not in present:
            raise EvalError(f"--proteins/--interpret: protein {name!r} has no crop in the {o.split} split "
                            f"(e.g. {sorted(present)[:5]})")
    if o.proteins:
        return list(o.proteins)
    fams = _largest(families)[:3]
    if not fams:
        return _largest(proteins, exclude=())[:3]
    return [_largest(proteins[families == f], exclude=())[0] for f in fams]


def _example_rows(proteins: np.ndarray, families: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Positions of up to `count` example crops of distinct proteins, families taken in turn (largest first)."""
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(sorted(set(proteins[families == f]))) for f in _largest(families, exclude=())]
    picks: list[int] = []
    for turn in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if turn < len(g) and len(picks) < count:
                picks.append(int(np.flatnonzero(proteins == g[turn])[0]))
    return np.asarray(picks, dtype=np.int64)


def _tables_and_pictures(o: EvalOptions, out: Path, run_dir: Path, model, variables, store: CropStore,
                         rows: np.ndarray, channels: Sequence[str], ev: SplitOutputs, examples: np.ndarray,
                         table: pd.DataFrame, xy: np.ndarray, caption: str, family: str, shown: list[str],
                         metrics: dict, fit: Fit | None = None) -> None:
    """Everything but embeddings.h5ad and metrics.*: atlas pictures, reconstructions, spectra, profiles,
    neighbours, interpretation, curves; adds metrics['neighbours'] and notes."""
    proteins, families = table["protein"].to_numpy(), table["family"].to_numpy()
    notes = metrics["notes"]
    # Atlas: by family, or by protein when nothing is annotated.
    title = f"Localization atlas, {o.split} split ({caption})"
    if _has_classes(families, 1):
        atlas.plot_atlas(xy, families, out / "atlas.png", title=title, svg=o.svg)
    else:
        atlas.plot_atlas(xy, proteins, out / "atlas.png", title=title + ", by protein", grey=(), svg=o.svg)
    if family:
        atlas.plot_family_proteins(xy, families, proteins, family, out / f"atlas_{_safe_name(family)}.png", svg=o.svg)

    # Reconstructions of example crops of distinct proteins.
    source = StoreSource(store, rows, channels, fit)
    images = np.stack([source[int(i)]["image"] for i in examples])
    plots.plot_reconstructions(images, ev.reconstructions, out / "reconstructions.png", channels=channels,
                               row_titles=[f"{proteins[i]}\n{families[i]}" for i in examples],
                               svg=False)

    # Feature spectra: per-protein mean local code histograms (protein_profiles.csv), code clustering, pictures.
    names, spectra = spectrum.protein_spectra(ev.local_histograms, proteins)
    family_of = neighbours.protein_families(proteins, families)
    counts = pd.Series(proteins).value_counts()
    profile_table = pd.DataFrame(spectra, columns=[f"code_{k}" for k in range(spectra.shape[1])])
    profile_table.insert(0, "crops", [int(counts[n]) for n in names])
    profile_table.insert(0, "family", [family_of[n] for n in names])
    profile_table.insert(0, "protein", names)
    profile_table.to_csv(out / "protein_profiles.csv", index=False, float_format="%.6g")
    clusters = None
    if len(names) >= 2:
        corr, used = spectrum.code_correlation(spectra)
        if used.sum() >= 2:
            clusters = spectrum.cluster_codes(corr, used, n_clusters=min(11, int(used.sum())))
            spectrum.plot_code_correlation(corr, clusters, out / "feature_spectrum.png")
            rows_of = {n: i for i, n in enumerate(names)}
            spectrum.plot_spectra(spectra[[rows_of[p] for p in shown]],
                                  [f"{p} ({family_of[p] or 'no family'})" for p in shown], clusters,
                                  out / "spectra_proteins.png", svg=o.svg)
            fams = _largest(np.array([family_of[n] for n in names]))
            if len(fams) > MAX_FAMILY_SPECTRA:
                notes.append(f"spectra_families.png: the {MAX_FAMILY_SPECTRA} largest of {len(fams)} families")
                fams = fams[:MAX_FAMILY_SPECTRA]
            if fams:
                keep = np.isin([family_of[n] for n in names], fams)
                fam_names, fam_spectra = group_means(spectra[keep], np.array([family_of[n] for n in names])[keep])
                spectrum.plot_spectra(fam_spectra, [f"{f} (mean of proteins)" for f in fam_names], clusters,
                                      out / "spectra_families.png", svg=o.svg)
    if clusters is None:
        notes.append("feature spectrum: needs at least 2 proteins and 2 used local codes; pictures skipped")

    # Proteins like mine: nearest proteins by the cosine similarity of their mean global embeddings.
    if len(names) >= 2:
        p_names, profiles = neighbours.protein_profiles(ev.global_vectors, proteins)
        near = neighbours.nearest_proteins(profiles, p_names, n=min(o.neighbours, len(p_names) - 1),
                                           metric="cosine", families=family_of)
        near.to_csv(out / "neighbours.csv", index=False, float_format="%.4f")
        first = near[(near["rank"] == 1) & ~near["family"].isin(NON_CLASSES)]
        metrics["neighbours"] = {
            "basis": "mean global embedding per protein, cosine similarity",
            "annotated_proteins": int(len(first)),
            "top1_same_family": float(np.mean(first["family"] == first["neighbour_family"])) if len(first) else None,
        }
    else:
        metrics["neighbours"] = None

    # Feature interpretation (paper Fig. 5) on a representative crop of one protein.
    target = o.interpret or shown[0]
    _interpretation(o, out, model, variables, source, ev, proteins, target, spectra[list(names).index(target)],
                    clusters, channels[0])

    # Training curves of the run (not for the untrained floor).
    if not o.random_init:
        if (run_dir / "metrics.jsonl").is_file():
            plots.plot_training_curves(run_dir / "metrics.jsonl", out / "curves.png", svg=False)
        else:
            notes.append(f"{run_dir / 'metrics.jsonl'}: missing; curves.png skipped")


def _interpretation(o: EvalOptions, out: Path, model, variables, source: StoreSource, ev: SplitOutputs,
                    proteins: np.ndarray, target: str, protein_spectrum: np.ndarray, clusters, channel: str) -> None:
    """Zero the top peaks of the image spectrum of the crop of `target` closest (L1) to its protein spectrum."""
    candidates = np.flatnonzero(proteins == target)
    hist = ev.local_histograms[candidates].astype(np.float64)
    crop = int(candidates[np.argmin(np.abs(hist - protein_spectrum).sum(axis=1))])
    image_spectrum = ev.local_histograms[crop]
    peaks = interpret.top_spectrum_codes(image_spectrum, o.interpret_codes)
    code_sets = [[int(c)] for c in peaks] + ([[int(c) for c in peaks]] if len(peaks) > 1 else [])
    positions = int(image_spectrum.sum())

    def describe(code: int) -> str:
        cluster = f", cluster {spectrum.roman(int(clusters.labels[code]))}" if clusters is not None and \
            clusters.labels[code] > 0 else ""
        return f"code {code}\n{image_spectrum[code]}/{positions} positions{cluster}"

    titles = [describe(c[0]) for c in code_sets[: len(peaks)]]
    if len(peaks) > 1:
        titles.append(f"all {len(peaks)} peaks\n{int(image_spectrum[peaks].sum())}/{positions} positions")
    result = interpret.interpret_codes(model, variables, source[crop]["image"], code_sets)
    which = f"{len(peaks)} largest spectrum peaks" if len(peaks) > 1 else "largest spectrum peak"
    interpret.plot_interpretation(
        result, out / f"interpretation_{_safe_name(target)}.png", titles, channel=0, channel_name=channel,
        title=f"{target}: crop {int(ev.index[crop])}, its {which} zeroed ({channel} channel)")


# ---------------------------------------------------------------------------------------------------- evaluators


def _evaluators(o: EvalOptions, out: Path, store: CropStore, rows: np.ndarray, ev: SplitOutputs, table: pd.DataFrame,
                xy: np.ndarray, train: SplitOutputs | None, train_rows: np.ndarray | None, metrics: dict) -> None:
    """The output families with one entry point each (analysis/atlas_html, proteins, complexes, probe): run them
    in order and put their summaries into metrics ('atlas_html', 'proteins', 'complexes', 'probe')."""
    notes = metrics["notes"]
    proteins = table["protein"].to_numpy()
    protein_channel = store.channel_indices(("protein",))[0]
    thumbs = atlas_html.thumbnail_rows(proteins, o.atlas_thumbnails, o.seed)
    thumbnails = {int(i): atlas_html.thumbnail_png(store.images[int(rows[i])][..., protein_channel])
                  for i in thumbs}
    metrics["atlas_html"] = atlas_html.write_atlas_html(out / "atlas.html", xy, table, thumbnails,
                                                        title=f"Localization atlas, {o.split} split")

    summary, adata = protein_level.protein_atlas(out, ev.global_vectors, table, n_neighbors=o.umap_neighbors,
                                                 seed=o.seed, svg=o.svg)
    metrics["proteins"] = summary
    if summary is None:
        notes.append(f"protein atlas: needs at least {protein_level.MIN_PROTEINS} proteins; proteins.h5ad skipped")
    metrics["complexes"] = None
    if o.complexes and adata is not None:
        metrics["complexes"] = complexes.evaluate_complexes(out, adata, o.complexes, o.complex_permutations, o.seed,
                                                            svg=o.svg)
    elif o.complexes:
        notes.append("complexes: need the protein atlas (too few proteins); skipped")

    metrics["probe"] = None
    if train is None:
        notes.append(f"linear probe: needs a held-out split (--split val or test), not {o.split!r}")
        return
    train_pick = _subsample(len(train_rows), o.probe_max_crops, o.seed)
    eval_pick = _subsample(len(rows), o.probe_max_crops, o.seed)
    if len(train_pick) < len(train_rows) or len(eval_pick) < len(rows):
        notes.append(f"linear probe: seeded subsamples of {len(train_pick)} train and {len(eval_pick)} "
                     f"{o.split} crops (--probe_max_crops)")
    features = {
        "embedding": (train.global_vectors[train_pick].reshape(len(train_pick), -1),
                      ev.global_vectors[eval_pick].reshape(len(eval_pick), -1)),
        "pixels": (probe.protein_pixels(store, train_rows[train_pick]), probe.protein_pixels(store, rows[eval_pick])),
    }
    metrics["probe"] = probe.run_probes(out, features, store.table.iloc[train_rows[train_pick]].reset_index(drop=True),
                                        table.iloc[eval_pick].reset_index(drop=True), seed=o.seed)
    if metrics["probe"]["family"]["embedding"] is None:
        notes.append("linear probe of family: needs 2 annotated families in train and test")
