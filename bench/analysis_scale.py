"""How the analysis grows with the number of crops (issue 25): the embed command (and with --eval, eval.py --split
test) on stores of --sizes crops, per stage (metrics.json "seconds" and "peak_rss_mib"), each command in its own
process (its own peak memory), with the growth exponent of each stage between sizes and over all of them.

The stores are drawn from a source store (default: the run's own): crops sampled with replacement (seeded), each
turned by a random dihedral transform (rot90/flip), relabelled into --proteins proteins ('<source protein>-<k>', the
source's family) with a field of view per --fov-crops crops; written chunk by chunk (never held whole) into
WORK/store-<N> and reused when built with the same parameters. Outputs go to WORK/{embed,eval}-<N>.

python bench/analysis_scale.py --ckpt runs/demo --sizes 10000 100000 1000000 --out bench/results/analysis_scale.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

import benchlib
from compare_runs import git_commit
from cytoself_jax.memory import maxrss_bytes

KEY = "analysis_scale"  # store.json key of a store this benchmark built; suffix of its record beside each output
LABELS = {"embed": "embed (read + normalise + model, one pass)", "clustering": "clustering (UMAPs)",
          "retrieval": "retrieval (kNN + mAP)", "protein_atlas": "protein_atlas (Leiden)",
          "interactive_atlas": "interactive_atlas (HTML)", "embeddings_h5ad": "embeddings_h5ad (h5ad)"}
CAPS = {"knn_max_train": "kNN reference crops (eval only: the embed command has no train split)",
        "map_max_crops": "retrieval's mAP crops", "probe_max_crops": "linear_probe, unseen_proteins crops",
        "atlas_thumbnails": "interactive_atlas thumbnails", "atlas_max_points": "interactive_atlas crops drawn as "
        "points (a density image shows all)", "umap_max_crops": "clustering's UMAP fits (the atlas "
        "places the other crops by transform)"}


def dihedral(images: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """images (B, H, W, C) each turned by its code d in 0..7: rot90 d % 4 times over (H, W), then W flipped if
    d >= 4."""
    out = np.empty_like(images)
    for d in np.unique(codes):
        sel = codes == d
        turned = np.rot90(images[sel], int(d) % 4, axes=(1, 2))
        out[sel] = turned[:, :, ::-1] if d >= 4 else turned
    return out


def plan(table: pd.DataFrame, n: int, proteins: int, fov_crops: int, seed: int,
         square: bool = True) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(source rows (n,), dihedral codes (n,), crop table) of a store of n crops of `proteins` proteins, protein
    after protein: protein j is '<source protein j mod S>-<j div S>' with its family, its crops drawn with
    replacement from that source protein's, a field of view per fov_crops crops; the table's source column says
    '<source row>:<code>'. Non-square crops get rotations by 0 or 180 degrees only."""
    if not 1 <= proteins <= n:
        raise benchlib.BenchError(f"--proteins: expected 1 <= proteins <= crops ({n}), got {proteins}")
    rng = np.random.default_rng(seed)
    names = np.asarray(sorted(table["protein"].unique()), dtype=object)
    rows_of = {p: np.flatnonzero(table["protein"].to_numpy() == p) for p in names[:proteins]}
    family_of = table.groupby("protein")["family"].first() if "family" in table else None
    counts = np.full(proteins, n // proteins) + (np.arange(proteins) < n % proteins)
    src, prot, fam, fov = [], [], [], []
    for j, count in enumerate(counts):
        source = names[j % len(names)]
        name = f"{source}-{j // len(names)}"
        src.append(rows_of[source][rng.integers(0, len(rows_of[source]), count)])
        prot.append(np.full(count, name, dtype=object))
        fam.append(np.full(count, family_of[source] if family_of is not None else "", dtype=object))
        fov.append(np.asarray([f"{name}/f{k}" for k in range(-(-count // fov_crops))], dtype=object)
                   .repeat(fov_crops)[:count])
    rows = np.concatenate(src)
    codes = rng.integers(0, 8, n) & (7 if square else 6)
    out = pd.DataFrame({"protein": np.concatenate(prot), "fov": np.concatenate(fov), "family": np.concatenate(fam),
                        "source": pd.Series(rows).astype(str) + ":" + pd.Series(codes).astype(str)})
    return rows, codes, out


def build_store(source_path: str | os.PathLike, path: str | os.PathLike, n: int, proteins: int, fov_crops: int = 20,
                seed: int = 0, chunk: int = 4096, progress: bool = True) -> tuple[Any, float, bool]:
    """(opened store, seconds, reused): the store of `plan` at path, written chunk by chunk; one already there with
    the same parameters (its store.json's analysis_scale record) is reused, another of ours replaced, anything
    else refused."""
    from tqdm.auto import tqdm

    from cytoself_jax.data.store import META_FILE, create_store, fingerprint, open_store

    started, source, path = time.perf_counter(), open_store(source_path), Path(path)
    params = {"source": str(Path(source_path).absolute()), "source_fingerprint": fingerprint(source), "crops": n,
              "proteins": proteins, "fov_crops": fov_crops, "seed": seed}
    if path.exists():
        try:
            theirs = json.loads((path / META_FILE).read_text()).get(KEY)
        except (OSError, ValueError, AttributeError):
            theirs = None
        if theirs is None:
            raise benchlib.BenchError(f"{path}: exists and was not built by this benchmark; choose another --work")
        if theirs == params:
            return open_store(path), time.perf_counter() - started, True
    h, w = source.image_shape[:2]
    rows, codes, table = plan(source.table, n, proteins, fov_crops, seed, square=h == w)
    with create_store(path, n, source.image_shape, source.channels, source.images.dtype, overwrite=True) as writer:
        for start in tqdm(range(0, n, chunk), desc=f"store of {n:,} crops", unit="chunk", disable=not progress):
            picked, inverse = np.unique(rows[start:start + chunk], return_inverse=True)
            crops = np.asarray(source.images[picked])[inverse]
            writer.images[start:start + chunk] = dihedral(crops, codes[start:start + chunk])
        store = writer.finalize(table, {KEY: params})
    return store, time.perf_counter() - started, False


def growth_exponents(sizes: Sequence[int], values: Sequence[float | None]) -> dict[str, Any]:
    """{'pairs': log(v2/v1) / log(N2/N1) between consecutive sizes, 'fit': the least-squares slope of log v on
    log N over every size with a positive value}; None where a value is missing or not positive."""
    ok = [v is not None and v > 0 for v in values]
    pairs = [math.log(values[i + 1] / values[i]) / math.log(sizes[i + 1] / sizes[i]) if ok[i] and ok[i + 1] else None
             for i in range(len(sizes) - 1)]
    x = [math.log(n) for n, good in zip(sizes, ok) if good]
    y = [math.log(v) for v, good in zip(values, ok) if good]
    fit = float(np.polyfit(x, y, 1)[0]) if len(set(x)) >= 2 else None
    return {"pairs": pairs, "fit": fit}


def run_child(command: Sequence[str], log: Path) -> dict[str, Any]:
    """Run a command (output into log): its wall seconds, exit status and peak resident memory (MiB; the largest
    of the process and its waited-for children, from wait4)."""
    started = time.perf_counter()
    with open(log, "w") as stream:
        proc = subprocess.Popen(list(command), stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - started, "returncode": proc.returncode,
            "peak_rss_mib": round(maxrss_bytes(usage.ru_maxrss) / 2**20, 1)}


def measure(kind: str, args: argparse.Namespace, n: int, store_path: Path) -> dict[str, Any]:
    """Run (or, with --reuse, read back) one command on one store: the child's numbers and metrics.json's stages."""
    out, record_path = Path(args.work) / f"{kind}-{n}", Path(args.work) / f"{kind}-{n}.{KEY}.json"
    if kind == "embed":
        command = [sys.executable, "-m", "cytoself_jax.embed", "--ckpt", args.ckpt, "--data", str(store_path),
                   "--out", str(out), "--quiet", "--force", *shlex.split(args.embed_args)]
    else:
        command = [sys.executable, str(Path(__file__).resolve().parents[1] / "eval.py"), "--ckpt", args.ckpt,
                   "--data", str(store_path), "--split", "test", "--out", str(out), "--force",
                   *shlex.split(args.eval_args)]
    built = json.loads((store_path / "store.json").read_text())[KEY]  # the store's parameters
    earlier = json.loads(record_path.read_text()) if record_path.is_file() else None
    if out.exists() and earlier is None:
        raise benchlib.BenchError(f"{out}: exists and was not written by this benchmark; choose another --work")
    if not (args.reuse and earlier and earlier["command"] == command and earlier.get("store") == built
            and earlier["returncode"] == 0 and (out / "metrics.json").is_file()):
        print(f"{kind} {n:,} crops: {shlex.join(command)}", flush=True)
        earlier = {"command": command, "store": built, **run_child(command, out.with_suffix(".log"))}
        record_path.write_text(json.dumps(earlier, indent=1) + "\n")
    if earlier["returncode"]:
        lines = out.with_suffix(".log").read_text().strip().splitlines() or [""]
        return {**earlier, "error": lines[-1], "seconds": {}, "stage_peak_rss_mib": {}, "stage_anonymous_rss_mib": {}}
    metrics = json.loads((out / "metrics.json").read_text())
    crops = metrics.get("run", {}).get("crops", n)
    embed_s = metrics["seconds"].get("embed")
    return {**earlier, "crops": crops, "seconds": metrics["seconds"],
            "stages": ["embed", *metrics.get("evaluators", ())],
            "stage_peak_rss_mib": metrics.get("peak_rss_mib") or {},
            "stage_anonymous_rss_mib": metrics.get("anonymous_rss_mib") or {},
            "embed_crops_per_s": crops / embed_s if embed_s else None}


def report(kind: str, sizes: Sequence[int], results: dict[int, dict]) -> dict[str, Any]:
    """Print the stage x size table of one command with each stage's growth exponents; returns the exponents."""
    stages = list(dict.fromkeys(s for n in sizes for s in [*results[n]["stages"], *results[n]["seconds"]]))
    series = {s: tuple([results[n].get(key, {}).get(s) for n in sizes] for key in
                       ("seconds", "stage_peak_rss_mib", "stage_anonymous_rss_mib")) for s in stages}
    outside = [results[n]["wall_s"] - sum(results[n]["seconds"].values()) for n in sizes]
    series["outside the stages (start-up, checks, writes)"] = (outside, [None] * len(sizes), [None] * len(sizes))
    series["total (process)"] = ([results[n]["wall_s"] for n in sizes], [results[n]["peak_rss_mib"] for n in sizes],
                                 [None] * len(sizes))
    exps = {s: {"seconds": growth_exponents(sizes, t), "peak_rss_mib": growth_exponents(sizes, m),
                "anonymous_rss_mib": growth_exponents(sizes, a)} for s, (t, m, a) in series.items()}
    columns = ["stage", *[f"{c} @{n:,}" for n in sizes for c in ("s", "MiB", "anon MiB")],
               *[f"exp {a:,}->{b:,}" for a, b in zip(sizes, sizes[1:])], "exp fit", "MiB exp fit"]
    r2 = lambda v: None if v is None else round(v, 2)  # noqa: E731
    rows = [[LABELS.get(s, s), *[v for triple in zip(t, m, a) for v in triple], *map(r2, exps[s]["seconds"]["pairs"]),
             r2(exps[s]["seconds"]["fit"]), r2(exps[s]["peak_rss_mib"]["fit"])] for s, (t, m, a) in series.items()]
    title = "embed command (every crop)" if kind == "embed" else "eval.py --split test"
    benchlib.print_table(f"{title}: seconds, peak RSS and anonymous RSS after each stage; time growth exponents",
                         columns, rows)
    speed = ", ".join(f"{n:,}: {results[n].get('embed_crops_per_s') or 0:,.0f}" for n in sizes)
    print(f"embed stage crops/s ({kind}): {speed}")
    return exps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a trained run (train.py)")
    p.add_argument("--source", default=None, help="store to draw crops from (default: the run's own)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--proteins", type=int, default=400, help="proteins of every store")
    p.add_argument("--fov-crops", type=int, default=20, help="crops per field of view")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/analysis_scale", help="stores and outputs go here")
    p.add_argument("--eval", action="store_true", help="also eval.py --split test on every store")
    p.add_argument("--reuse", action="store_true", help="read back an earlier identical command's output instead "
                   "of running it again")
    p.add_argument("--embed-args", default="", help="extra options of the embed command (one string)")
    p.add_argument("--eval-args", default="", help="extra flags of eval.py (one string)")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args()
    sizes = sorted(set(args.sizes))
    if sizes[0] < 3 or args.fov_crops < 1:
        raise benchlib.BenchError(f"--sizes, --fov-crops: expected sizes >= 3 and fov-crops >= 1, got {sizes}")
    source = args.source or json.loads((Path(args.ckpt) / "dataset.json").read_text())["store"]
    load_start = list(os.getloadavg())
    Path(args.work).mkdir(parents=True, exist_ok=True)
    kinds = ["embed", "eval"] if args.eval else ["embed"]
    builds, results = {}, {k: {} for k in kinds}
    for n in sizes:
        path = Path(args.work) / f"store-{n}"
        _, seconds, reused = build_store(source, path, n, args.proteins, args.fov_crops, args.seed)
        builds[n] = {"store": str(path), "seconds": seconds, "reused": reused}
        print(f"store of {n:,} crops: {'reused' if reused else f'built in {seconds:.1f} s'} ({path})", flush=True)
        for kind in kinds:
            results[kind][n] = measure(kind, args, n, path)
    exponents, failed = {}, {k: [n for n in sizes if results[k][n].get("error")] for k in kinds}
    for kind in kinds:
        for n in failed[kind]:
            print(f"{kind} {n:,} crops failed (status {results[kind][n]['returncode']}): {results[kind][n]['error']}")
        good = [n for n in sizes if n not in failed[kind]]
        if good:
            exponents[kind] = report(kind, good, results[kind])
    from cytoself_jax.analysis.options import EvalOptions

    caps = {name: getattr(EvalOptions(), name) for name in CAPS if hasattr(EvalOptions(), name)}
    print("\nCapped stages (a seeded subsample above the cap, so their time flattens past it; defaults):")
    for name, value in caps.items():
        print(f"- {name} = {value:,}: {CAPS[name]}")
    print("Per-stage MiB is the process's peak so far (ru_maxrss after the stage, counting the pages of the "
          "memory-mapped store read so far); anon MiB its anonymous resident memory after the stage (the arrays it "
          "holds); store building is not counted; "
          "the embed stage includes compiling the model in the first process of each command only (later ones "
          "load it from the persistent compilation cache).")
    record = {"benchmark": KEY, "ckpt": args.ckpt, "source": source, "sizes": sizes, "proteins": args.proteins,
              "fov_crops": args.fov_crops, "seed": args.seed, "builds": builds, "results": results,
              "exponents": exponents, "caps": caps, "git_commit": git_commit(), "load_average_start": load_start,
              **benchlib.environment([])}
    record["load_average_end"] = record.pop("load_average")
    benchlib.write_json(record, args.out)


if __name__ == "__main__":
    benchlib.run_cli(main)
