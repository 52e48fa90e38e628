"""README.md of an eval or embed output folder: what each file is and what every column of every CSV holds.

`describe_folder` reads the header of each CSV in the folder and looks each column up in `CSV_COLUMNS` (exact
names first, then the patterns of numbered or per-metric columns); a column nobody described is listed as such
and returned, so a new column cannot slip in undescribed without the evaluator noting it.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

from cytoself_jax.analysis.probe import PROBE_COLUMNS

EMBEDDING = "the global embedding (quantized global representation, flattened)"
FILES = {
    "metrics.md": "every score with its 95% interval and chance level, and notes (metrics.json: the same, as JSON, "
                  "with each stage's wall time in `seconds`)",
    "embeddings.h5ad": f"AnnData, one row per crop: obsm['X_cytoself'] = X = {EMBEDDING}; obsm['X_umap'] the atlas "
                       "map; uns: provenance, family_colors, descriptions of every column. In scanpy: "
                       "sc.pp.neighbors(adata, use_rep='X_cytoself', metric='cosine')",
    "proteins.h5ad": "AnnData, one row per protein (the mean of its crops' global embeddings): obsm['X_cytoself'], "
                     "X_umap, X_pca; obs family, crops, leiden; uns provenance, family_colors, leiden_colors",
    "atlas.html": "the interactive atlas: open it in a browser, offline (no network request)",
}
CSV_COLUMNS: dict[str, dict[str, str]] = {
    "neighbours.csv": {
        "protein": "the protein",
        "family": "its localization family ('' when unannotated)",
        "rank": "1 = its most similar protein",
        "neighbour": "another protein of the evaluated crops",
        "similarity": f"cosine similarity of the two proteins' mean {EMBEDDING}s (-1..1)",
        "neighbour_family": "the neighbour's family ('' when unannotated)",
    },
    "protein_profiles.csv": {
        "protein": "the protein", "family": "its localization family ('' when unannotated)",
        "crops": "its evaluated crops",
        "code_*": "feature spectrum: mean count per crop of local code k (counts per image averaged over the "
                  "protein's crops, not fractions; the local, not the global, representation)",
    },
    "probe.csv": {
        **{k: v for k, v in PROBE_COLUMNS.items() if not k.startswith("<")},
        **{f"{m}": f"{m.replace('_', ' ')} on the tested crops (a fraction); " + PROBE_COLUMNS["<metric>"]
           for m in ("macro_f1", "balanced_accuracy", "accuracy")},
        "*_ci_low": PROBE_COLUMNS["<metric>_ci_low / _ci_high"], "*_ci_high": PROBE_COLUMNS["<metric>_ci_low / _ci_high"],
        "*_chance": PROBE_COLUMNS["<metric>_chance"],
    },
    "retrieval.csv": {
        "protein": "the protein (its crops are the queries)",
        "map": f"same-protein mean average precision: each crop ranks crops of the evaluated and train split by "
               f"cosine similarity of the {EMBEDDING}; positives are the protein's crops from other fields of view",
        "chance": "expected mAP of a random ranking, same positives",
        "p_value": "copairs' permutation p-value of map against random rankings",
        "q_value": "Benjamini-Hochberg q-value over the proteins",
        "queries": "crops with at least one positive (scored)",
    },
    "unseen_proteins.csv": {
        "protein": "a protein held out of training (never seen by the model)",
        "family": "its annotated family", "crops": "its crops", "fields": "its fields of view",
        "nearest_*": "its k-th nearest known protein: name (family, cosine similarity of mean embeddings)",
        "predicted": "the family voted by its 3 nearest known proteins", "hit": "predicted == family",
        "votes": "how many of the 3 voted for the prediction",
    },
    "complexes.csv": {
        "complex": "the complex (from --complexes)", "subunits": "its subunits in the file",
        "present": "subunits among the evaluated proteins", "missing": "subunits not evaluated (space-separated)",
        "neighbour_fraction": "mean over present subunits of the fraction of its nearest proteins that are subunits",
        "null_fraction": "the same for random protein sets of the same size (mean)",
        "p_value": "fraction of random sets at least as tight (neighbour_fraction)",
        "mean_similarity": "mean cosine similarity between the subunits' mean embeddings",
        "null_similarity": "the same for random sets (mean)",
        "p_value_similarity": "fraction of random sets at least as similar",
        "q_value": "Benjamini-Hochberg q-value of p_value over the complexes",
    },
}


def describe_column(csv: str, column: str) -> str | None:
    """The description of one column of one CSV (exact name, then patterns); None when undescribed."""
    table = CSV_COLUMNS.get(csv, {})
    if column in table:
        return table[column]
    return next((text for pattern, text in table.items() if "*" in pattern and fnmatch.fnmatch(column, pattern)),
                None)


def describe_folder(folder: str | Path) -> tuple[str, list[str]]:
    """README.md text for an output folder; and the 'file: column' of every CSV column left undescribed."""
    import pandas as pd

    folder = Path(folder)
    lines = ["# What is in this folder", "", "Written by cytoself-jax (eval or embed); `cytoself-output.json` says "
             "for which run, checkpoint and store.", ""]
    for name, text in FILES.items():
        if (folder / name).exists():
            lines.append(f"- `{name}`: {text}")
    undescribed = []
    for csv in sorted(p.name for p in folder.glob("*.csv")):
        columns = list(pd.read_csv(folder / csv, nrows=0).columns)
        lines += ["", f"## {csv}", "", "| column | what it holds |", "|---|---|"]
        for column in columns:
            text = describe_column(csv, column)
            if text is None:
                undescribed.append(f"{csv}: {column}")
            lines.append(f"| `{column}` | {text or '(not described)'} |")
    return "\n".join(lines) + "\n", undescribed
