"""The README's three recipes, run as written (paths mapped into a temporary folder; train.py replaced by a tiny
untrained run, since training is tested elsewhere): a folder of crops (the real yeast crops, and an HPA-like
layout with one folder per field and a derived distance channel), arrays in Python (an HDF5 file written with
write_store and embedded directly), and raw fields of view (prepare, then embed)."""
import json
import re
import shlex
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile

from cytoself_jax import embed as embed_cli
from cytoself_jax import import_crops as import_cli
from cytoself_jax.analysis.report import EvalOptions, run_eval
from cytoself_jax.data.store import open_store, write_store
from cytoself_jax.data.synthetic import draw_field
from cytoself_jax.prepare.__main__ import main as prepare_main
from run_fixtures import make_run

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = {"cytoself_jax.embed": ["--umap-seeds", "1", "--bootstrap", "100", "--quiet"], "cytoself_jax.import_crops": ["--quiet"]}


def recipe(name: str) -> tuple[str, str]:
    """(language, code) of the fenced block after '<!-- recipe: name -->' in the README."""
    match = re.search(rf"<!-- recipe: {name} -->\n```(\w+)\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no recipe {name!r}"
    return match[1], match[2]


def mapped(code: str, paths: dict[str, Path]) -> str:
    """The code with each README path replaced (one pass, longest first, so no replacement is replaced again)."""
    keys = sorted(paths, key=len, reverse=True)
    return re.sub("|".join(map(re.escape, keys)), lambda m: str(paths[m[0]]), code)


def run_shell(code: str, extra: dict[str, list[str]] | None = None) -> list[str]:
    """Run the recipe's commands in-process: `python -m MODULE ...` calls MODULE's main, `eval.py` run_eval;
    `train.py` is skipped (the test made the run). Returns the commands run."""
    extra = {**FAST, **(extra or {})}
    done = []
    for line in code.replace("\\\n", " ").strip().splitlines():
        argv = shlex.split(line)
        assert argv[0].endswith("python"), line
        if argv[1] == "-m":
            module, args = argv[2], argv[3:] + extra.get(argv[2], [])
            main = {"cytoself_jax.import_crops": import_cli.main, "cytoself_jax.embed": embed_cli.main,
                    "cytoself_jax.prepare": prepare_main}[module]
            assert main(args) == 0, line
        elif argv[1] == "eval.py":
            ckpt = argv[argv.index("--ckpt") + 1] if "--ckpt" in argv else \
                next(a.split("=", 1)[1] for a in argv if a.startswith("--ckpt="))
            run_eval(ckpt, EvalOptions(umap_seeds=1, knn_max_train=200, map_max_crops=500, probe_max_crops=400,
                                        bootstrap=100, progress=False))
        else:
            assert argv[1] == "train.py", line
            continue
        done.append(argv[2] if argv[1] == "-m" else argv[1])
    return done


def test_recipe_folder_of_crops_yeast(yeast_dir, tmp_path):
    lang, code = recipe("yeast")
    assert lang == "bash"
    runs = tmp_path / "runs"
    paths = {"yeast-lu2019": yeast_dir, "data/yeast": tmp_path / "yeast", "runs/yeast": runs / "yeast"}
    code = mapped(code, paths)
    first, rest = code.split("\n.venv/bin/python train.py", 1)
    assert run_shell(first) == ["cytoself_jax.import_crops"]
    store = open_store(tmp_path / "yeast")
    assert len(store) == 1642 and store.channels == ("protein", "fiducial")
    make_run(runs / "yeast", tmp_path / "yeast", ("protein", "fiducial"))  # stands in for train.py
    assert run_shell(".venv/bin/python train.py" + rest) == ["eval.py"]
    m = json.loads((runs / "yeast" / "eval" / "test" / "metrics.json").read_text())
    assert m["run"]["crops"] > 0 and m["clustering_score"]["families"] == ["cytosol", "mitochondria"]


def _hpa_cells(root: Path, rng) -> None:
    """hpa_cells/<protein>/<field>/cell<N>_{protein,nucleus}.tif: 40x40 uint16 crops, a bright nucleus disk, the
    protein in the nucleus (NUC*) or around it (CYT*); families.csv with a 'family' column."""
    yy, xx = np.mgrid[:40, :40]
    for p, protein in enumerate(["NUC1", "NUC2", "CYT1", "CYT2"]):
        for field in ("field1", "field2"):
            for cell in range(3):
                cy, cx = 20 + rng.normal(0, 1.5), 20 + rng.normal(0, 1.5)
                r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
                nucleus = 200 + 3000 * (r < 8 + p % 2) + rng.poisson(20, r.shape)
                signal = (r < 8) if protein.startswith("NUC") else ((r > 9) & (r < 16))
                image = 100 + 2000 * signal * rng.random(r.shape) + rng.poisson(20, r.shape)
                for channel, pixels in (("protein", image), ("nucleus", nucleus)):
                    path = root / protein / field / f"cell{cell}_{channel}.tif"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(path, pixels.astype(np.uint16))
    pd.DataFrame({"protein": ["NUC1", "NUC2", "CYT1", "CYT2"],
                  "family": ["nucleoplasm", "nucleoplasm", "cytosol", "cytosol"]}).to_csv(root / "families.csv",
                                                                                         index=False)


def test_recipe_hpa_like_folder_per_field_with_derived_distance(tmp_path, tiny_store_path):
    _hpa_cells(tmp_path / "hpa_cells", np.random.default_rng(0))
    run_dir = make_run(tmp_path / "runs" / "demo", tiny_store_path, ("protein", "distance"))  # as the demo run; 32x32
    lang, code = recipe("hpa")
    paths = {"hpa_cells": tmp_path / "hpa_cells", "data/hpa": tmp_path / "hpa", "runs/demo": run_dir}
    assert run_shell(mapped(code, paths)) == ["cytoself_jax.import_crops", "cytoself_jax.embed"]
    store = open_store(tmp_path / "hpa")
    assert store.channels == ("protein", "nucleus", "distance") and len(store) == 24
    assert json.loads((store.path / "store.json").read_text())["derived"]["distance"]["crops_left_out"] == 0
    distance = np.asarray(store.images[:, 20, 20, 2])
    assert (distance >= 3).all()  # the crop centre lies inside its nucleus (radius 8-9, centre within ~3 px)
    assert (np.asarray(store.images[:, 0, 0, 2]) < -10).all()  # a corner lies far outside
    assert set(store.table["fov"]) == {f"{p}/field{f}" for p in ("NUC1", "NUC2", "CYT1", "CYT2") for f in (1, 2)}
    out = run_dir / "embed" / "hpa"
    adata = anndata.read_h5ad(out / "embeddings.h5ad")
    assert adata.n_obs == 24 and set(adata.obs["family"]) == {"nucleoplasm", "cytosol"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["fit"] == "resize" and m["clustering_score"] is not None


def test_recipe_arrays_in_python_hdf5(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.random((24, 40, 40, 2)) * 1000  # float64, 40x40: the run takes 32x32
    proteins = np.array([f"YP{i % 4}" for i in range(24)], dtype="S")
    with h5py.File(tmp_path / "cells.h5", "w") as f:
        f["images"], f["proteins"] = images, proteins
    other = tmp_path / "other-store"  # the data the run was "trained" on: other proteins, 32x32
    table = pd.DataFrame({"protein": [f"T{i % 3}" for i in range(12)], "fov": [str(i) for i in range(12)]})
    write_store(other, rng.random((12, 32, 32, 2)).astype(np.float32), table, ("protein", "fiducial"))
    run_dir = make_run(tmp_path / "runs" / "yeast", other, ("protein", "fiducial"))
    lang, code = recipe("arrays")
    assert lang == "python"
    code = mapped(code, {"cells.h5": tmp_path / "cells.h5", "data/my-cells": tmp_path / "my-cells",
                         "runs/yeast": run_dir})
    namespace: dict = {}
    with pytest.warns(UserWarning, match="converting float64 to float32"):
        exec(compile(code, "README.md:arrays", "exec"), namespace)
    store = open_store(tmp_path / "my-cells")
    assert store.images.dtype == np.float32 and len(store) == 24 and store.proteins == ("YP0", "YP1", "YP2", "YP3")
    np.testing.assert_array_equal(store.images[5], images[5].astype(np.float32))
    emb, run = namespace["emb"], namespace["run"]
    assert emb.global_vectors.shape == (24, *run.model.spec.global_shape)
    assert emb.local_vectors.shape == (24, *run.model.spec.local_shape)
    assert (emb.local_histograms.sum(axis=1) == np.prod(emb.local_indices.shape[1:])).all()


def test_recipe_raw_fields_of_view(tmp_path, tiny_store_path):
    fields = tmp_path / "fields"
    for k, (protein, fov) in enumerate([("P1", "a"), ("P1", "b"), ("P2", "a"), ("P2", "b")]):
        field = draw_field(np.random.default_rng(k), (256, 256), 8, family="mitochondria" if protein == "P1"
                           else "nucleus")
        (fields / protein).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(fields / protein / f"{fov}.tif", np.stack([field.protein, field.nucleus]).astype(np.uint16))
    run_dir = make_run(tmp_path / "runs" / "demo", tiny_store_path, ("protein", "distance"))  # as the demo run; 32x32
    lang, code = recipe("fields")
    code = mapped(code, {"fields": fields, "data/my-fields": tmp_path / "my-fields", "runs/demo": run_dir})
    small = ["--crop-size", "48", "--sigma", "2", "--laplace-sigma", "2", "--closing-radius", "4",
             "--min-nucleus-area", "50", "--workers", "1", "--montage-crops", "2", "--no-rescale"]  # 256x256 fields
    assert run_shell(code, {"cytoself_jax.prepare": small}) == ["cytoself_jax.prepare", "cytoself_jax.embed"]
    store = open_store(tmp_path / "my-fields" / "store")
    adata = anndata.read_h5ad(run_dir / "embed" / "my-fields" / "embeddings.h5ad")
    assert adata.n_obs == len(store) > 8 and set(adata.obs["protein"]) == {"P1", "P2"}
