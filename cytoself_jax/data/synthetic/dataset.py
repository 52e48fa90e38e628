"""The synthetic dataset: proteins (with complexes), one random generator per protein, field and crop, and the
crops drawn (in parallel, reproducibly) and streamed into a crop store."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cytoself_jax.data.store import CropStore, create_store
from cytoself_jax.data.synthetic.cells import SyntheticError
from cytoself_jax.data.synthetic.families import FAMILY_NAMES, ProteinSpec, draw_protein
from cytoself_jax.data.synthetic.imaging import CHANNELS, Acquisition, crop_channels, draw_acquisition, draw_crop

# Key spaces of the per-object random generators (see `crop_rng`).
_PROTEIN_KEY, _FIELD_KEY, _CROP_KEY, _COMPLEX_KEY = 0, 1, 2, 3


COMPLEX_SIZE = 3  # subunits of each synthetic complex


def complex_members(num_proteins: int, complexes: int, families: Sequence[str] = FAMILY_NAMES) -> list[list[int]]:
    """Protein indices of each synthetic complex: complex c is COMPLEX_SIZE proteins of family c % F (F families,
    round-robin as in make_proteins), its (c // F)-th group of that family's proteins."""
    n_families, out = len(families), []
    for c in range(complexes):
        group = c // n_families
        members = [c % n_families + n_families * (COMPLEX_SIZE * group + m) for m in range(COMPLEX_SIZE)]
        if members[-1] >= num_proteins:
            raise SyntheticError(f"synthetic: complexes: {complexes} complexes of {COMPLEX_SIZE} proteins of one "
                                 f"family need more than {num_proteins} proteins (families round-robin)")
        out.append(members)
    return out


def complex_name(c: int) -> str:
    return f"CPLX{c + 1}"


def make_proteins(num_proteins: int, seed: int, families: Sequence[str] = FAMILY_NAMES,
                  complexes: int = 0) -> list[ProteinSpec]:
    """`num_proteins` proteins named SYN001..., families assigned round-robin; protein i depends only on (seed, i).

    With complexes > 0, the subunits of each complex (complex_members) share one draw of their family's
    parameters (the complex's sub-pattern, depending only on (seed, complex)) and keep their own brightness, so
    they look alike while other proteins of the family do not; complexes=0 gives the proteins of before."""
    if num_proteins < 1:
        raise SyntheticError(f"synthetic: proteins: expected at least 1, got {num_proteins}")
    width = max(3, len(str(num_proteins)))
    proteins = [draw_protein(_rng(seed, _PROTEIN_KEY, i), families[i % len(families)], f"SYN{i + 1:0{width}d}")
                for i in range(num_proteins)]
    for c, members in enumerate(complex_members(num_proteins, complexes, families)):
        shared = draw_protein(_rng(seed, _COMPLEX_KEY, c), proteins[members[0]].family).params
        for i in members:
            proteins[i] = dataclasses.replace(proteins[i], params=dict(shared))
    return proteins


def complexes_csv_path(store_path: str | os.PathLike) -> Path:
    """Where write_synthetic_store puts the ground-truth complexes (protein, complex) of a store: beside it."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + "_complexes.csv")


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)))


def field_rng(seed: int, protein: int, field: int) -> np.random.Generator:
    """The generator of field `field` of protein number `protein` in the dataset drawn with `seed`."""
    return _rng(seed, _FIELD_KEY, protein, field)


def crop_rng(seed: int, protein: int, crop: int) -> np.random.Generator:
    """The generator of crop `crop` of protein number `protein` in the dataset drawn with `seed`."""
    return _rng(seed, _CROP_KEY, protein, crop)


# ---------------------------------------------------------------------------------------------------------
# The dataset: proteins x fields x crops, streamed into a crop store
# ---------------------------------------------------------------------------------------------------------
BLOCK = 128  # crops drawn per task: bounds memory per worker and keeps the progress bar moving


def field_of_crop(crop: int, crops_per_protein: int, fields_per_protein: int) -> int:
    """The field (0-based) a protein's crop number `crop` comes from: consecutive crops share a field."""
    return crop * fields_per_protein // crops_per_protein


def dataset_table(proteins: Sequence[ProteinSpec], crops_per_protein: int, fields_per_protein: int,
                  seed: int) -> pd.DataFrame:
    """The crop table (protein, fov, family, source) of a synthetic dataset, in array order."""
    fields = [field_of_crop(j, crops_per_protein, fields_per_protein) + 1 for j in range(crops_per_protein)]
    return pd.DataFrame({
        "protein": [p.name for p in proteins for _ in fields],
        "fov": [f"{p.name}/{k}" for p in proteins for k in fields],
        "family": [p.family for p in proteins for _ in fields],
        "source": f"synthetic seed={seed}",
    })


def draw_protein_crops(protein: ProteinSpec, index: int, start: int, stop: int, *, crops_per_protein: int,
                       fields_per_protein: int, size: int, seed: int) -> np.ndarray:
    """Crops start..stop-1 of protein number `index`: (stop - start, size, size, 3) float32 in CHANNELS order.

    Each crop depends only on (seed, index, crop number); its field's imaging conditions only on
    (seed, index, field), so any chunking gives the same dataset.
    """
    acquisitions: dict[int, Acquisition] = {}
    out = np.empty((stop - start, size, size, len(CHANNELS)), dtype=np.float32)
    for j in range(start, stop):
        k = field_of_crop(j, crops_per_protein, fields_per_protein)
        if k not in acquisitions:
            acquisitions[k] = draw_acquisition(field_rng(seed, index, k))
        out[j - start] = crop_channels(draw_crop(crop_rng(seed, index, j), protein, size, acquisitions[k]))
    return out


def _blocks(num_proteins: int, crops_per_protein: int) -> Iterator[tuple[int, int, int]]:
    for i in range(num_proteins):
        for start in range(0, crops_per_protein, BLOCK):
            yield i, start, min(start + BLOCK, crops_per_protein)


def write_synthetic_store(path: str | os.PathLike, *, proteins: int = 40, crops_per_protein: int = 120,
                          fields_per_protein: int = 6, size: int = 64, seed: int = 0, dtype: str = "float32",
                          workers: int = 1, overwrite: bool = False, progress: bool = True,
                          complexes: int = 0) -> CropStore:
    """Draw a synthetic dataset and stream it into a crop store at `path`; returns the opened store.

    `proteins` proteins (families round-robin), each with `crops_per_protein` crops of `size` x `size` px split
    evenly over `fields_per_protein` fields of view. Channels CHANNELS, raw counts / px; dtype float32 or
    float16 (enough: counts stay far below 65504 and float16's rounding is far below the shot noise).
    `workers` > 1 draws in that many processes; the result is identical for any `workers`.
    `complexes` > 0 draws that many complexes (see make_proteins) and writes their subunits as a CSV (protein,
    complex) beside the store (complexes_csv_path), the ground truth of eval.py --complexes.
    """
    checks = {"proteins": (proteins, 1), "crops_per_protein": (crops_per_protein, 1),
              "fields_per_protein": (fields_per_protein, 1), "size": (size, 16), "workers": (workers, 1)}
    for name, (value, low) in checks.items():
        if int(value) != value or value < low:
            raise SyntheticError(f"synthetic: {name}: expected an integer >= {low}, got {value!r}")
    if fields_per_protein > crops_per_protein:
        raise SyntheticError(f"synthetic: fields_per_protein: expected at most crops_per_protein "
                             f"({crops_per_protein}) so every field has a crop, got {fields_per_protein}")
    if dtype not in ("float32", "float16"):
        raise SyntheticError(f"synthetic: dtype: expected 'float32' or 'float16', got {dtype!r}")
    specs = make_proteins(proteins, seed, complexes=complexes)
    table = dataset_table(specs, crops_per_protein, fields_per_protein, seed)
    if complexes:
        table["source"] = f"synthetic seed={seed} complexes={complexes}"
    kwargs = dict(crops_per_protein=crops_per_protein, fields_per_protein=fields_per_protein, size=size, seed=seed)
    with (create_store(path, len(table), (size, size, len(CHANNELS)), CHANNELS, dtype, overwrite=overwrite) as writer,
          tqdm(total=len(table), desc="drawing synthetic crops", unit="crop", disable=not progress) as bar):
        if workers == 1:
            blocks = (draw_protein_crops(specs[i], i, a, b, **kwargs)
                      for i, a, b in _blocks(proteins, crops_per_protein))
            _write_blocks(writer.images, _blocks(proteins, crops_per_protein), blocks, crops_per_protein, bar)
        else:
            # spawn, not fork: the parent may hold JAX's threads, which fork does not survive.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = _bounded_map(lambda i, a, b: pool.submit(draw_protein_crops, specs[i], i, a, b, **kwargs),
                                       _blocks(proteins, crops_per_protein), 2 * workers)
                _write_blocks(writer.images, _blocks(proteins, crops_per_protein), results, crops_per_protein, bar)
        store = writer.finalize(table)
    if complexes:
        pd.DataFrame([(specs[i].name, complex_name(c)) for c, members in
                      enumerate(complex_members(proteins, complexes)) for i in members],
                     columns=["protein", "complex"]).to_csv(complexes_csv_path(path), index=False)
    return store


def _bounded_map(submit: Callable[[int, int, int], Future],
                 blocks: Iterator[tuple[int, int, int]], in_flight: int) -> Iterator[np.ndarray]:
    """Results of `submit` over `blocks` in order, with at most `in_flight` blocks drawn but not yet written."""
    queue: deque[Future] = deque()
    for block in blocks:
        queue.append(submit(*block))
        if len(queue) >= in_flight:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()


def _write_blocks(images: np.ndarray, blocks: Iterator[tuple[int, int, int]], arrays: Iterator[np.ndarray],
                  crops_per_protein: int, bar: tqdm) -> None:
    for (i, a, b), array in zip(blocks, arrays):
        images[i * crops_per_protein + a:i * crops_per_protein + b] = array
        bar.update(b - a)
