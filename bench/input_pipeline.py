"""Input-pipeline throughput: crops/s that data/pipeline.make_dataset delivers from an on-disk crop store.

Training batches (shuffled, normalized, dihedrally augmented) of `--batch` crops, for each number of worker
processes in `--workers`. The store is `--store`, or synthetic cells drawn at `--size` px into a temporary
folder. One long epoch (the store's rows repeated to `--batches` batches) per worker count; reported: seconds to
the first batch (start-up, paid once per epoch) and steady crops/s over the batches after it. The store is read
through the OS page cache: a store larger than RAM is bounded by the disk instead. Prints a table, writes JSON.

python bench/input_pipeline.py --workers 0 1 2 --out bench/results/input_pipeline_cpu2.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import benchlib
from cytoself_jax.data.pipeline import make_dataset
from cytoself_jax.data.store import CropStore, open_store
from cytoself_jax.data.synthetic import write_synthetic_store


def measure(store: CropStore, channels: Sequence[str], *, batch: int, batches: int, num_workers: int,
            prefetch: int, seed: int = 0) -> dict[str, Any]:
    """Time one epoch of `batches` training batches of `batch` crops from `store` with num_workers workers."""
    if batches < 2:
        raise benchlib.BenchError(f"--batches: expected at least 2 (the first one is start-up), got {batches}")
    repeats = -(-batches * batch // len(store))
    rows = np.tile(np.arange(len(store)), repeats)[: batches * batch]
    start = time.perf_counter()
    dataset = make_dataset(store, rows, channels=channels, batch_size=batch, train=True, seed=seed,
                           num_workers=num_workers, prefetch=prefetch)
    first = None
    count = 0
    for b in dataset:
        count += len(b["image"])
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    steady = (count - batch) / (end - first)
    return {"num_workers": num_workers, "prefetch": prefetch, "batches": len(dataset), "crops": count,
            "first_batch_s": first - start, "crops_per_s": steady, "crops_per_s_with_startup": count / (end - start),
            "wall_s": end - start}


def run(store: CropStore, channels: Sequence[str], *, batch: int = 256, batches: int = 20,
        workers: Sequence[int] = (0, 1, 2), prefetch: int = 4) -> dict[str, Any]:
    """Measure every worker count in `workers`; the JSON record."""
    rows = []
    for w in workers:
        if w < 0:
            raise benchlib.BenchError(f"--workers: expected counts >= 0, got {w}")
        rows.append(measure(store, channels, batch=batch, batches=batches, num_workers=w, prefetch=prefetch))
    return {
        "benchmark": "input_pipeline",
        "store": {"path": str(store.path), "crops": len(store), "shape": list(store.images.shape),
                  "dtype": str(store.images.dtype), "bytes": int(store.images.nbytes), "channels": list(store.channels)},
        "channels": list(channels),
        "batch": batch,
        "results": rows,
        "best_crops_per_s": max(r["crops_per_s"] for r in rows),
        "peak_memory_bytes": benchlib.peak_memory([])[0],
        "peak_memory_source": "process peak RSS (main process; workers not included)",
        **benchlib.environment([]),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=None, help="crop store to read (default: draw synthetic cells into a temp dir)")
    p.add_argument("--size", type=int, default=100, help="crop size of the drawn synthetic store")
    p.add_argument("--crops", type=int, default=2048, help="crops in the drawn synthetic store")
    p.add_argument("--store-dtype", default="float32", choices=("float32", "float16"), help="of the drawn store")
    p.add_argument("--channels", nargs="+", default=["protein", "distance"], help="channels the model sees")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=20, help="batches per measurement (the first is start-up)")
    default_workers = [0] + [2**i for i in range(int(np.log2(os.cpu_count() or 1)) + 1)]
    p.add_argument("--workers", type=int, nargs="+", default=default_workers,
                   help="worker process counts to measure (default: 0 and powers of 2 up to the cores)")
    p.add_argument("--prefetch", type=int, default=4, help="batches buffered (per worker)")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        if args.store:
            store = open_store(args.store)
        else:
            proteins = max(1, args.crops // 128)
            store = write_synthetic_store(Path(tmp) / "store", proteins=proteins,
                                          crops_per_protein=-(-args.crops // proteins), fields_per_protein=4,
                                          size=args.size, dtype=args.store_dtype, workers=os.cpu_count() or 1)
        result = run(store, args.channels, batch=args.batch, batches=args.batches, workers=args.workers,
                     prefetch=args.prefetch)
    rows = [[r["num_workers"], result["batch"], r["crops_per_s"], r["first_batch_s"], r["crops_per_s_with_startup"]]
            for r in result["results"]]
    title = (f"input pipeline: {result['store']['crops']} crops {'x'.join(map(str, result['store']['shape'][1:]))} "
             f"{result['store']['dtype']}, channels {' '.join(args.channels)}, train augmentation")
    benchlib.print_table(title, ["workers", "batch", "crops/s (steady)", "first batch s", "crops/s incl. start-up"], rows)
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
