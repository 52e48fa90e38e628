"""The interactive atlas: one self-contained HTML file (plotly.js inlined, opens offline from disk).

Every crop is a point of the UMAP, coloured by family (one WebGL `scattergl` trace per family, so the legend
toggles families: click hides one, double-click shows only that one). Hovering a point shows its protein and
family in plotly's label, and protein, family, field and a thumbnail of the crop in a side panel; a search box
highlights all crops of a protein; zoom with the wheel or a box, pan with shift-drag (or the toolbar).

Why plotly: at 100,000 points it opened about twice as fast as bokeh's WebGL backend in headless chromium
(docs/ATLAS.md has the measurement). Its renderer is plotly.js; the few lines of JavaScript here only wire the
side panel and the search box to plotly's events.

Thumbnails: an image per crop would make the file grow by ~1 kB per point (100 MB at 100k points), so only a
seeded subsample of crops (`max_thumbnails`) gets its own thumbnail, plus one representative crop per protein;
hovering any other crop shows its protein's representative, captioned as such.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cytoself_jax.analysis.common import as_labels, fail
from cytoself_jax.figures import categorical_palette
from cytoself_jax.analysis.scores import NON_CLASSES

THUMBNAIL_PIXELS = 48  # side of a thumbnail; crops are resized to it (grayscale PNG, ~1 kB)
SEARCH_TRACE = "search"  # name of the trace that draws the searched protein's crops on top


def thumbnail_png(image: np.ndarray, size: int = THUMBNAIL_PIXELS) -> str:
    """A data URI (base64 PNG, grayscale, size x size) of one 2-D image (H, W), scaled from its own 1st to
    99.8th percentile to 0..255."""
    from PIL import Image

    plane = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(plane, [1.0, 99.8])
    scaled = np.clip((plane - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(plane)
    picture = Image.fromarray((scaled * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_rows(proteins: np.ndarray, max_thumbnails: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of the crops that get a thumbnail: the first crop of each protein (its representative)
    and a seeded random subsample of the others, at most max(max_thumbnails, number of proteins) in all."""
    first = np.unique(proteins, return_index=True)[1]
    rest = np.setdiff1d(np.arange(len(proteins)), first)
    extra = max(0, min(len(rest), max_thumbnails - len(first)))
    chosen = np.random.default_rng(seed).choice(rest, size=extra, replace=False) if extra else []
    return np.sort(np.concatenate([first, chosen]).astype(np.int64))


def write_atlas_html(path: str | Path, coords, table: pd.DataFrame, thumbnails: dict[int, str],
                     title: str = "Localization atlas") -> dict:
    """Write the interactive atlas of N crops to path (.html).

    coords (N, 2) UMAP coordinates; table has N rows with columns protein, family, fov; thumbnails maps a row
    position to a data URI (thumbnail_png), and must hold one row of every protein (thumbnail_rows does).
    Returns {"points", "thumbnails", "bytes"}.
    """
    import plotly.graph_objects as go

    where = "write_atlas_html"
    xy = np.asarray(coords, dtype=np.float32)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.all(np.isfinite(xy)):
        raise fail(where, "coords", f"expected finite (N, 2) coordinates, got shape {xy.shape}")
    missing = [c for c in ("protein", "family", "fov") if c not in table.columns]
    if missing or len(table) != len(xy):
        raise fail(where, "table", f"expected {len(xy)} rows with columns protein, family, fov; got {len(table)} "
                   f"rows, missing {missing}")
    proteins = as_labels(table["protein"].to_numpy(), len(xy), where, "table.protein")
    families = as_labels(table["family"].to_numpy(), len(xy), where, "table.family")
    fov_names, fov_of = np.unique(as_labels(table["fov"].to_numpy(), len(xy), where, "table.fov"),
                                  return_inverse=True)
    unseen = sorted(set(proteins) - {proteins[r] for r in thumbnails})
    if unseen:
        raise fail(where, "thumbnails", f"expected a thumbnail of every protein, none for {unseen[:5]}")

    thumb_rows = sorted(thumbnails)
    thumb_index = {row: i for i, row in enumerate(thumb_rows)}
    representative = {}
    for row in thumb_rows:
        representative.setdefault(proteins[row], thumb_index[row])

    names, counts = np.unique(families, return_counts=True)
    palette = categorical_palette(names, grey=NON_CLASSES)
    fig = go.Figure()
    # Grey (unannotated) classes first and large families before small ones, so small families stay on top.
    for name in sorted(names, key=lambda n: (n not in NON_CLASSES, -counts[names == n][0], n)):
        rows = np.flatnonzero(families == name)
        label = name or "unannotated"
        fig.add_trace(go.Scattergl(
            x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=f"{label} ({len(rows)})", text=proteins[rows],
            customdata=rows.astype(np.int32),
            marker={"size": 4 if len(xy) > 20_000 else 6, "opacity": 0.7, "color": _css(palette[name])},
            hovertemplate=f"<b>%{{text}}</b><br>{label}<extra></extra>",
        ))
    fig.add_trace(go.Scattergl(x=[], y=[], mode="markers", name=SEARCH_TRACE, showlegend=False, hoverinfo="skip",
                               marker={"size": 9, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}}))
    fig.update_layout(
        title=title, template="plotly_white", dragmode="zoom", hovermode="closest", height=760,
        xaxis={"title": "UMAP 1", "showticklabels": False}, yaxis={"title": "UMAP 2", "showticklabels": False,
                                                                      "scaleanchor": "x"},
        legend={"title": {"text": "family (crops): click hides, double-click isolates"}, "itemsizing": "constant"},
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    meta = {"fovs": fov_names.tolist(), "fov_of": fov_of.astype(int).tolist(),
            "thumbs": [thumbnails[r] for r in thumb_rows], "thumb_of": {str(r): i for r, i in thumb_index.items()},
            "representative": representative, "proteins": sorted(set(proteins)), "search_trace": SEARCH_TRACE}
    plot = fig.to_html(full_html=False, include_plotlyjs=True, div_id="atlas",
                       config={"scrollZoom": True, "displaylogo": False, "responsive": True})
    page = _PAGE.format(title=_escape(title), plot=plot, script=_SCRIPT,
                        meta=json.dumps(meta, separators=(",", ":")).replace("</", "<\\/"))
    path = Path(path).with_suffix(".html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return {"points": int(len(xy)), "thumbnails": len(thumb_rows), "bytes": path.stat().st_size}


def _css(colour: Sequence[float]) -> str:
    r, g, b = (int(round(255 * c)) for c in colour[:3])
    return f"rgb({r},{g},{b})"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 8px; display: flex; gap: 12px; }}
#main {{ flex: 1; min-width: 0; }}
#side {{ flex: 0 0 210px; font-size: 13px; }}
#search {{ width: 200px; }}
#crop img {{ width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }}
.caption {{ color: #666; font-size: 11px; }}
</style></head>
<body><div id="side">
<label for="search">Find a protein</label><br><input id="search" list="protein-names" placeholder="protein name">
<datalist id="protein-names"></datalist><div id="search-status" class="caption"></div><hr>
<div id="crop"><div class="caption">Hover over a point to see its crop.</div></div>
</div>
<div id="main">{plot}</div>
<script type="application/json" id="atlas-meta">{meta}</script>
<script>{script}</script>
</body></html>
"""

# Glue only: the side panel follows plotly_hover; the search box fills the search trace with a protein's crops.
_SCRIPT = """
(function () {
  const gd = document.getElementById('atlas');
  const meta = JSON.parse(document.getElementById('atlas-meta').textContent);
  const crop = document.getElementById('crop');
  const status = document.getElementById('search-status');
  const searchTrace = gd.data.findIndex(t => t.name === meta.search_trace);
  const names = document.getElementById('protein-names');
  for (const p of meta.proteins) { const o = document.createElement('option'); o.value = p; names.appendChild(o); }

  function line(label, value) {
    const div = document.createElement('div');
    const b = document.createElement('b'); b.textContent = label + ': ';
    div.appendChild(b); div.appendChild(document.createTextNode(value)); return div;
  }
  gd.on('plotly_hover', function (ev) {
    const p = ev.points[0];
    if (p.curveNumber === searchTrace) return;
    const row = p.customdata, own = meta.thumb_of[String(row)];
    const img = document.createElement('img');
    img.src = meta.thumbs[own !== undefined ? own : meta.representative[p.text]];
    crop.replaceChildren(line('protein', p.text), line('family', p.data.name.replace(/ \\(\\d+\\)$/, '')),
                         line('field', meta.fovs[meta.fov_of[row]]), img);
    const cap = document.createElement('div'); cap.className = 'caption';
    cap.textContent = own !== undefined ? 'this crop (protein channel)' : 'another crop of ' + p.text +
                      ' (this one has no thumbnail in the file)';
    crop.appendChild(cap);
  });
  function search() {
    const name = document.getElementById('search').value.trim();
    const xs = [], ys = [];
    // _fullData: the traces as plotly resolved them (gd.data keeps numpy's base64 arrays encoded).
    if (name) gd._fullData.forEach(function (t, i) {
      if (i === searchTrace || !t.text) return;
      for (let j = 0; j < t.text.length; j++) if (t.text[j] === name) { xs.push(t.x[j]); ys.push(t.y[j]); }
    });
    Plotly.restyle(gd, {x: [xs], y: [ys]}, [searchTrace]);
    status.textContent = !name ? '' : (xs.length ? name + ': ' + xs.length + ' crops outlined' : 'no crop of ' + name);
  }
  document.getElementById('search').addEventListener('input', search);
})();
"""
