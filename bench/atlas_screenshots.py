"""Screenshots of atlas.html for docs/ATLAS.md, from a crop store without a trained model: the points are a UMAP of
the crops' protein-channel pixels (downsampled), so the page is shown, not a model. Hover, search and lasso.

python bench/atlas_screenshots.py data/demo-synthetic docs/
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import benchlib
import html_atlas
from cytoself_jax.analysis import atlas_html, neighbours, thumbnails
from cytoself_jax.analysis.atlas import compute_umap
from cytoself_jax.data.store import open_store

GD = "const g = document.getElementById('atlas');"


def build(store_path: Path, html: Path, crops: int = 1500) -> pd.DataFrame:
    store = open_store(store_path)
    rows = np.sort(np.random.default_rng(0).choice(len(store), size=min(crops, len(store)), replace=False))
    images = np.asarray(store.images[rows], dtype=np.float32)
    p = store.channels.index("protein")
    small = images[:, ::4, ::4, p].reshape(len(rows), -1)
    small = (small - small.mean(1, keepdims=True)) / (small.std(1, keepdims=True) + 1e-6)
    xy = compute_umap(small, seed=0)
    table = store.table.iloc[rows].reset_index(drop=True)[["protein", "family", "fov"]]
    table["split"] = "all"
    proteins = table["protein"].to_numpy()
    thumbs, note = thumbnails.crop_thumbnails(images, atlas_html.protein_subsample(proteins, 400), proteins,
                                              store.channels, pixel_size_um=0.2)
    names, profiles = neighbours.protein_profiles(small, proteins)
    near = neighbours.nearest_proteins(profiles, names, n=5)
    nearest = {q: list(zip(g["neighbour"], g["similarity"])) for q, g in near.groupby("protein")}
    atlas_html.write_atlas_html(html, xy, table, thumbs, title="Localization atlas (pixels UMAP, demo store)",
                                neighbours=nearest, thumbnail_note=note,
                                provenance={"run": "none (pixel UMAP for the screenshot)", "store": str(store_path),
                                            "umap_seed": 0, "crops": len(rows)})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("docs")
    args = parser.parse_args()
    docs = Path(args.docs)
    html = docs / "_atlas_screenshot.html"
    table = build(Path(args.store), html)
    driver = html_atlas.headless_chromium(1400, 860)
    if driver is None:
        raise benchlib.BenchError("no chromium/chromedriver on PATH")
    try:
        driver.get(html.resolve().as_uri())
        html_atlas.wait_for(driver, html_atlas.PLOTLY_DRAWN)
        row = int(driver.execute_script("return JSON.parse(document.getElementById('atlas-meta').textContent)"
                                        ".thumb_rows[3];"))
        html_atlas.hover_row(driver, row)
        time.sleep(0.5)
        driver.save_screenshot(str(docs / "atlas_hover.png"))
        protein = table["protein"][row]
        box = driver.find_element("id", "search")
        box.send_keys(protein[:-1].lower())
        time.sleep(1.0)
        box.send_keys(protein[-1].lower())
        time.sleep(1.0)
        driver.save_screenshot(str(docs / "atlas_search.png"))
        box.clear()
        driver.execute_script(GD + " document.getElementById('colour-by').value = 'protein';"
                              " document.getElementById('colour-by').dispatchEvent(new Event('change'));")
        time.sleep(1.0)
        driver.execute_script(GD + " Plotly.relayout(g, {'xaxis.range': g._fullLayout.xaxis.range,"
                              " dragmode: 'lasso'});")
        driver.execute_script(GD + " const t = g._fullData[0]; const pts = [];"
                              " for (let j = 0; j < t.x.length; j++) if (t.x[j] < g._fullLayout.xaxis.range[0] +"
                              " (g._fullLayout.xaxis.range[1] - g._fullLayout.xaxis.range[0]) * 0.25)"
                              " pts.push(j); Plotly.restyle(g, {selectedpoints: [pts]}, [0]);"
                              " g.emit('plotly_selected', {points: pts.map(j => ({data: t, customdata: t.customdata[j]}))});")
        time.sleep(1.0)
        driver.save_screenshot(str(docs / "atlas_colour_by_lasso.png"))
    finally:
        driver.quit()
        html.unlink(missing_ok=True)


if __name__ == "__main__":
    benchlib.run_cli(main)
