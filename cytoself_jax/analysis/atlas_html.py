"""The interactive atlas: one self-contained HTML page (plotly.js inlined; it opens offline from disk and reaches
no network: every control that would send data away is switched off, `PLOTLY_CONFIG`).

Every crop is a point of the UMAP; above `max_points` crops a seeded subsample keeping every protein is drawn as
points, over a density image (2-D histogram) of every crop. The page (JavaScript in `_SCRIPT`, plotly.js does the
drawing) offers:
- colour by family, Leiden community, protein or split (one WebGL trace per group, so the legend hides a group on
  click and isolates it on double-click; with more than `MAX_LEGEND` groups one trace, coloured per point);
- hover: plotly's label names protein and group; the side panel shows protein, family, field and the crop's
  composite thumbnail (thumbnails.py);
- search: case-insensitive prefix of protein names; the matching crops are outlined (only in shown groups), the
  view zooms to them and the panel shows the protein with its nearest proteins as links;
- lasso or box selection: the panel lists the selected proteins and crops and saves them as CSV (in the browser);
- the axes keep their range when groups are hidden; the plot's height follows the window; the wheel scrolls the
  page (Ctrl or Cmd + wheel zooms);
- a provenance block (run, checkpoint, UMAP seed and parameters, date).

Thumbnails: one per crop would add ~2-4 kB per point, so only a seeded subsample (protein_subsample) gets its own,
plus one representative crop per protein; hovering any other crop shows its protein's representative, captioned.
Why plotly: at 100,000 points it opened faster than bokeh's WebGL backend (docs/ATLAS.md).
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cytoself_jax.analysis.colours import category_colours, family_colours, family_label, legend_order
from cytoself_jax.analysis.common import as_labels, fail

SEARCH_TRACE = "search"  # name of the trace that outlines the searched proteins' crops, drawn last
MAX_LEGEND = 40  # a colour-by with more groups is one trace coloured per point, without legend entries
DENSITY_BINS = 512  # cells per axis of the density layer drawn beneath the points above max_points
COLOUR_BY = ("family", "leiden", "protein", "split")  # table columns the page can colour by, in menu order
COLOUR_BY_TITLES = {"family": "family", "leiden": "Leiden community (protein graph)", "protein": "protein",
                    "split": "split"}
# No control that reaches the network: no "share chart" (plotly.js 4 shows it unless told: showSendToCloud
# defaults to true and plotlyServerURL to plotly's cloud), no plotly logo link, no "edit in Chart Studio" link.
PLOTLY_CONFIG = {"showSendToCloud": False, "showEditInChartStudio": False, "showLink": False,
                 "plotlyServerURL": "", "displaylogo": False, "modeBarButtonsToRemove": ["sendChartToCloud"],
                 "scrollZoom": False, "responsive": True, "displayModeBar": True, "typesetMath": False,
                 "toImageButtonOptions": {"filename": "atlas", "scale": 2}}


def protein_subsample(proteins: np.ndarray, max_rows: int, seed: int = 0, keep: Sequence[int] = ()) -> np.ndarray:
    """Sorted positions of a seeded subsample of crops that keeps every protein: the rows `keep`, the first crop
    (its representative) of each protein without one among them and a seeded random subsample of the others, at
    most max(max_rows, those kept) in all. The atlas' thumbnails (keep nothing) and its drawn points (keep the
    thumbnails' rows)."""
    keep = np.asarray(keep, dtype=np.int64)
    names, first = np.unique(proteins, return_index=True)
    required = np.union1d(keep, first[~np.isin(names, proteins[keep])])
    rest = np.setdiff1d(np.arange(len(proteins)), required)
    extra = max(0, min(len(rest), max_rows - len(required)))
    chosen = np.random.default_rng(seed).choice(rest, size=extra, replace=False) if extra else []
    return np.sort(np.concatenate([required, chosen]).astype(np.int64))


def density_counts(xy: np.ndarray, x_range: Sequence[float], y_range: Sequence[float],
                   bins: int = DENSITY_BINS) -> np.ndarray:
    """(bins, bins) counts of the points in each cell of the rectangle x_range x y_range, indexed [x, y]."""
    return np.histogram2d(xy[:, 0], xy[:, 1], bins=bins, range=[x_range, y_range])[0]


def density_png(counts: np.ndarray) -> str:
    """density_counts as a PNG data URI, the first row the highest y: grey from light to dark with
    log(1 + count), transparent where no point falls."""
    from PIL import Image

    level = np.log1p(counts) / np.log1p(max(counts.max(), 1))
    pixels = np.stack([np.round(225 - 175 * level), np.where(counts > 0, 255, 0)], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 0, 2)[::-1])).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _groups(key: str, values: np.ndarray, drawn: np.ndarray) -> dict:
    """One colour-by entry: group names (of every crop) in legend order, each drawn crop's group code (base64
    int32) and colours."""
    if key == "family":
        labels = np.array([family_label(v) for v in values], dtype=object)
        names, colours = legend_order(labels), family_colours(labels)
    else:
        labels = values
        distinct = sorted(set(values), key=lambda v: (len(v), v) if key == "leiden" else v)
        names, colours = distinct, category_colours(distinct, repeat_ok=True)
    code_of = {n: i for i, n in enumerate(names)}
    codes = np.array([code_of[v] for v in labels], dtype=np.int32)[drawn]
    return {"title": COLOUR_BY_TITLES.get(key, key), "names": list(names), "colours": [colours[n] for n in names],
            "codes": _b64(codes), "legend": len(names) <= MAX_LEGEND}


def write_atlas_html(path: str | Path, coords, table: pd.DataFrame, thumbnails: Mapping[int, str],
                     title: str = "Localization atlas", *, neighbours: Mapping[str, Sequence] | None = None,
                     provenance: Mapping[str, object] | None = None, thumbnail_note: str = "",
                     max_points: int | None = None, seed: int = 0) -> dict:
    """Write the interactive atlas of N crops to path (.html).

    coords (N, 2) UMAP coordinates; table: N rows with columns protein, family, fov and optionally leiden and
    split (each becomes a colour-by choice); thumbnails: row position -> data URI (thumbnails.composite_png), one
    row of every protein at least (protein_subsample); neighbours: protein -> [(neighbour, similarity), ...] shown
    as links when a search finds the protein; provenance: label -> value, listed in the page; thumbnail_note:
    one line under every thumbnail (what its colours and scale bar mean).
    Above max_points crops (None: no limit) only a seeded subsample is drawn as points, the thumbnails' crops among
    them (protein_subsample, seed; at most max(max_points, thumbnails)), over a density image of every crop
    (density_png); the page and its provenance say so, and hover, search, lasso and CSV see the drawn points only.
    Returns {"points" (N), "drawn_points", "thumbnails", "bytes"}.
    """
    from plotly.offline import get_plotlyjs

    where = "write_atlas_html"
    xy = np.asarray(coords, dtype=np.float32)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.all(np.isfinite(xy)):
        raise fail(where, "coords", f"expected finite (N, 2) coordinates, got shape {xy.shape}")
    missing = [c for c in ("protein", "family", "fov") if c not in table.columns]
    if missing or len(table) != len(xy):
        raise fail(where, "table", f"expected {len(xy)} rows with columns protein, family, fov; got {len(table)} "
                   f"rows, missing {missing}")
    columns = {c: as_labels(table[c].to_numpy(), len(xy), where, f"table.{c}") for c in ("protein", "fov")}
    proteins = columns["protein"]
    unseen = sorted(set(proteins) - {proteins[r] for r in thumbnails})
    if unseen:
        raise fail(where, "thumbnails", f"expected a thumbnail of every protein, none for {unseen[:5]}")

    thumb_rows = sorted(int(r) for r in thumbnails)
    capped = max_points is not None and len(xy) > max_points
    drawn = protein_subsample(proteins, max_points, seed, keep=thumb_rows) if capped else np.arange(len(xy))
    colour_by = {key: _groups(key, as_labels(table[key].to_numpy(), len(xy), where, f"table.{key}"), drawn)
                 for key in COLOUR_BY if key in table.columns}
    protein_names = colour_by["protein"]["names"]
    protein_index = {p: i for i, p in enumerate(protein_names)}
    representative = {}
    for i, row in enumerate(thumb_rows):
        representative.setdefault(protein_index[proteins[row]], i)
    fov_names, fov_of = np.unique(columns["fov"], return_inverse=True)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = 0.04 * np.maximum(hi - lo, 1e-3)
    family_of = {}
    for p, f in zip(proteins, table["family"].to_numpy()):
        family_of.setdefault(p, family_label(f if isinstance(f, str) else ""))
    meta = {
        "x": _b64(xy[drawn, 0]), "y": _b64(xy[drawn, 1]), "n": int(len(drawn)), "colour_by": colour_by,
        "fovs": fov_names.tolist(), "fov_of": _b64(fov_of[drawn].astype(np.int32)),
        "thumbs": [thumbnails[r] for r in thumb_rows], "thumb_rows": np.searchsorted(drawn, thumb_rows).tolist(),
        "representative": representative,
        "protein_family": [family_of[p] for p in protein_names],
        "neighbours": {p: [[str(n), round(float(s), 4)] for n, s in near] for p, near in (neighbours or {}).items()},
        "range": {"x": [float(lo[0] - pad[0]), float(hi[0] + pad[0])], "y": [float(lo[1] - pad[1]),
                                                                            float(hi[1] + pad[1])]},
        "marker": 4 if len(xy) > 20_000 else 6, "search_trace": SEARCH_TRACE, "title": title,
        "thumbnail_note": thumbnail_note, "config": PLOTLY_CONFIG,
    }
    note, provenance = "", dict(provenance or {})
    if capped:
        meta.update(_subsample_meta(xy, meta["range"], drawn, proteins, protein_names))
        n, shown = f"{len(xy):,}", f"{len(drawn):,}"
        note = (f'<div id="density-note"><b>{shown} of {n} crops drawn as points</b> (a seeded sample keeping every '
                f'protein); the grey layer beneath them shows the density of all {n} crops. Hover, search, legend '
                f'counts, lasso and its CSV cover the drawn points only.</div><hr>')
        provenance.update({"atlas_points_drawn": len(drawn), "atlas_density_layer": f"all {len(xy)} crops, "
                           f"{DENSITY_BINS} x {DENSITY_BINS} cells, grey = log(1 + count)"})
    options = "".join(f'<option value="{k}">{html.escape(v["title"])}</option>' for k, v in colour_by.items())
    page = _PAGE.format(title=html.escape(title), plotlyjs=get_plotlyjs(), script=_SCRIPT, options=options,
                        note=note, provenance=_provenance_html(provenance),
                        meta=json.dumps(meta, separators=(",", ":")).replace("</", "<\\/"))
    path = Path(path).with_suffix(".html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return {"points": int(len(xy)), "drawn_points": int(len(drawn)), "thumbnails": len(thumb_rows),
            "bytes": path.stat().st_size}


def _subsample_meta(xy: np.ndarray, view: Mapping[str, Sequence[float]], drawn: np.ndarray, proteins: np.ndarray,
                  protein_names: Sequence[str]) -> dict:
    """The page's data of a subsampled atlas: each drawn point's crop row, each protein's number of crops and the
    density image of every crop as a plotly layout image spanning the view (data coordinates, beneath the points)."""
    (x0, x1), (y0, y1) = view["x"], view["y"]
    crops = Counter(proteins)
    return {"crop_rows": _b64(drawn.astype(np.int32)), "protein_crops": [crops[p] for p in protein_names],
            "density": {"source": density_png(density_counts(xy, (x0, x1), (y0, y1))), "xref": "x", "yref": "y",
                        "x": x0, "y": y1, "sizex": x1 - x0, "sizey": y1 - y0, "xanchor": "left",
                        "yanchor": "top", "sizing": "stretch", "layer": "below"}}


def _provenance_html(provenance: Mapping[str, object]) -> str:
    if not provenance:
        return ""
    rows = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in provenance.items())
    return f'<details id="provenance" open><summary>Provenance</summary><dl>{rows}</dl></details>'


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval';
 style-src 'unsafe-inline'; img-src data: blob:; worker-src blob:; connect-src 'none'">
<style>
body {{ font-family: sans-serif; margin: 8px; display: flex; gap: 12px; align-items: flex-start; }}
#main {{ flex: 1; min-width: 0; }}
#atlas {{ height: calc(100vh - 24px); min-height: 380px; }}
#side {{ flex: 0 0 230px; font-size: 13px; max-height: calc(100vh - 16px); overflow-y: auto; position: sticky;
  top: 8px; }}
#search, #colour-by {{ width: 220px; }}
#crop img {{ width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }}
.caption {{ color: #666; font-size: 11px; }}
a.protein {{ color: #0b5394; cursor: pointer; }}
#selection-list {{ max-height: 160px; overflow-y: auto; }}
dl {{ margin: 2px 0; font-size: 11px; }} dt {{ font-weight: bold; }} dd {{ margin: 0 0 3px 6px; word-break: break-all; }}
</style></head>
<body><div id="side">{note}
<label for="search">Find a protein</label><br>
<input id="search" placeholder="name or start of a name" autocomplete="off">
<div id="search-status" class="caption"></div>
<label for="colour-by">Colour by</label><br><select id="colour-by">{options}</select><hr>
<div id="crop"><div class="caption">Hover over a point to see its crop; search to see a protein and the proteins
nearest to it.</div></div><hr>
<div id="selection"><div class="caption">Lasso or box select (toolbar) to list crops.</div></div><hr>
{provenance}
<div class="caption">Wheel: scrolls the page; Ctrl/Cmd + wheel, drag a box or the toolbar: zoom. Double-click:
whole map. Legend: click hides a group, double-click shows it alone.</div>
</div>
<div id="main"><div id="atlas"></div></div>
<script>{plotlyjs}</script>
<script type="application/json" id="atlas-meta">{meta}</script>
<script>{script}</script>
</body></html>
"""

# The page's glue: traces built from the base64 columns, hover panel, search, colour-by, lasso, Ctrl+wheel zoom.
_SCRIPT = r"""
(function () {
  const meta = JSON.parse(document.getElementById('atlas-meta').textContent);
  const gd = document.getElementById('atlas');
  const $ = id => document.getElementById(id);
  function decode(b64, Type) {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    return new Type(bytes.buffer);
  }
  const X = decode(meta.x, Float32Array), Y = decode(meta.y, Float32Array), FOV = decode(meta.fov_of, Int32Array);
  const CROP = meta.crop_rows ? decode(meta.crop_rows, Int32Array) : null;  // crop row of each point, when subsampled
  const codes = {};
  for (const k in meta.colour_by) codes[k] = decode(meta.colour_by[k].codes, Int32Array);
  const proteinNames = meta.colour_by.protein.names, PROT = codes.protein;
  const thumbOf = new Map(meta.thumb_rows.map((r, i) => [r, i]));
  const familyOf = i => meta.protein_family[PROT[i]];
  let key = 'family', searchHits = [], selectedRows = [];

  function traces(k) {
    const c = meta.colour_by[k], code = codes[k], out = [];
    const groupRows = c.names.map(() => []);
    for (let i = 0; i < meta.n; i++) groupRows[code[i]].push(i);
    function trace(rows, name, colour, rank) {
      return {type: 'scattergl', mode: 'markers', name: name, legendrank: rank,
              x: rows.map(i => X[i]), y: rows.map(i => Y[i]), customdata: rows,
              text: rows.map(i => proteinNames[PROT[i]]),
              marker: {size: meta.marker, opacity: 0.75, color: colour},
              hovertemplate: k === 'protein' ? '<b>%{text}</b><extra></extra>'
                : '<b>%{text}</b><br>' + (k === 'leiden' ? 'community ' : '') + name.replace(/ \(\d+\)$/, '')
                  + '<extra></extra>'};
    }
    if (c.legend) {
      // Unannotated underneath, then the largest groups first, so small groups stay on top; legend in name order.
      const order = c.names.map((n, g) => g).sort((a, b) =>
        (c.names[b] === 'unannotated') - (c.names[a] === 'unannotated') || groupRows[b].length - groupRows[a].length);
      for (const g of order) if (groupRows[g].length)
        out.push(trace(groupRows[g], c.names[g] + ' (' + groupRows[g].length + ')', c.colours[g], 1000 + g));
    } else {
      const all = Array.from({length: meta.n}, (_, i) => i);
      const t = trace(all, c.title, all.map(i => c.colours[code[i]]), 1000);
      t.showlegend = false; out.push(t);
    }
    out.push({type: 'scattergl', mode: 'markers', name: meta.search_trace, showlegend: false, hoverinfo: 'skip',
              x: [], y: [], marker: {size: meta.marker + 5, color: 'rgba(0,0,0,0)',
                                     line: {width: 2, color: 'black'}}});
    return out;
  }
  function layout(k) {
    return {title: {text: meta.title}, dragmode: 'zoom', hovermode: 'closest',
            autosize: true, uirevision: 'atlas', plot_bgcolor: 'white', paper_bgcolor: 'white',
            xaxis: {title: {text: 'UMAP 1'}, showticklabels: false, zeroline: false, showgrid: false,
                    range: meta.range.x.slice(), autorange: false},
            yaxis: {title: {text: 'UMAP 2'}, showticklabels: false, zeroline: false, showgrid: false,
                    range: meta.range.y.slice(), autorange: false, scaleanchor: 'x'},
            legend: {title: {text: meta.colour_by[k].title + (CROP ? ' (drawn crops)' : ' (crops)')
                                   + ': click hides, double-click isolates'}, itemsizing: 'constant'},
            images: meta.density ? [Object.assign({}, meta.density)] : [],
            margin: {l: 40, r: 20, t: 50, b: 40}};
  }
  const searchIndex = () => gd.data.findIndex(t => t.name === meta.search_trace);

  function line(label, value) {
    const div = document.createElement('div');
    const b = document.createElement('b'); b.textContent = label + ': ';
    div.appendChild(b); div.appendChild(document.createTextNode(value)); return div;
  }
  function caption(text) { const d = document.createElement('div'); d.className = 'caption'; d.textContent = text; return d; }
  function thumb(i) { const img = document.createElement('img'); img.src = meta.thumbs[i]; return img; }
  function proteinLink(name, suffix) {
    const a = document.createElement('a'); a.className = 'protein'; a.href = '#'; a.textContent = name;
    a.addEventListener('click', ev => { ev.preventDefault(); $('search').value = name; search(true); });
    const div = document.createElement('div'); div.appendChild(a);
    if (suffix) div.appendChild(document.createTextNode(suffix)); return div;
  }

  function showCrop(row) {
    const own = thumbOf.get(row), p = proteinNames[PROT[row]];
    const parts = [line('protein', p), line('family', familyOf(row)), line('field', meta.fovs[FOV[row]])];
    if (key !== 'family' && key !== 'protein')
      parts.push(line(meta.colour_by[key].title, meta.colour_by[key].names[codes[key][row]]));
    parts.push(thumb(own !== undefined ? own : meta.representative[PROT[row]]));
    parts.push(caption(own !== undefined ? 'this crop' : 'another crop of ' + p + ' (this one has no thumbnail in the file)'));
    if (meta.thumbnail_note) parts.push(caption(meta.thumbnail_note));
    $('crop').replaceChildren(...parts);
  }
  function showProtein(p) {
    const idx = proteinNames.indexOf(p), drawn = PROT.reduce((s, v) => s + (v === idx), 0);
    const parts = [line('protein', p), line('family', meta.protein_family[idx]),
                   line('crops', CROP ? meta.protein_crops[idx] + ' (' + drawn + ' drawn)' : String(drawn)),
                   thumb(meta.representative[idx]), caption('a crop of ' + p)];
    const near = meta.neighbours[p];
    if (near && near.length) {
      const h = document.createElement('div'); h.id = 'nearest';
      h.appendChild(caption('nearest proteins (cosine similarity of mean embeddings):'));
      for (const [n, s] of near) h.appendChild(proteinLink(n, ' ' + s.toFixed(3)));
      parts.push(h);
    }
    $('crop').replaceChildren(...parts);
  }
  function showMatches(names) {
    const parts = [caption(names.length + ' proteins start with this:')];
    for (const n of names.slice(0, 30)) parts.push(proteinLink(n, ''));
    if (names.length > 30) parts.push(caption('and ' + (names.length - 30) + ' more'));
    $('crop').replaceChildren(...parts);
  }

  // Search: case-insensitive prefix; outlines the hits in shown groups; zoom to them when asked (typing).
  function search(zoom) {
    const q = $('search').value.trim().toLowerCase();
    const matched = q ? proteinNames.filter(n => n.toLowerCase().startsWith(q)) : [];
    const wanted = new Set(matched.map(n => proteinNames.indexOf(n)));
    const xs = [], ys = [];
    searchHits = [];
    gd.data.forEach(function (t, ti) {
      if (t.name === meta.search_trace || t.visible === 'legendonly' || !t.customdata) return;
      for (const i of t.customdata) if (wanted.has(PROT[i])) { xs.push(X[i]); ys.push(Y[i]); searchHits.push(i); }
    });
    Plotly.restyle(gd, {x: [xs], y: [ys]}, [searchIndex()]);
    $('search-status').textContent = !q ? '' : (xs.length ? matched.length + ' protein' + (matched.length > 1 ? 's' : '')
      + ', ' + xs.length + ' crops outlined' : 'no shown crop of a protein starting with "' + q + '"');
    if (!matched.length) return;
    const exact = matched.find(n => n.toLowerCase() === q);
    if (exact || matched.length === 1) showProtein(exact || matched[0]); else showMatches(matched);
    if (zoom && xs.length) {
      let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
      const px = Math.max((x1 - x0) * 0.15, (meta.range.x[1] - meta.range.x[0]) * 0.03);
      const py = Math.max((y1 - y0) * 0.15, (meta.range.y[1] - meta.range.y[0]) * 0.03);
      Plotly.relayout(gd, {'xaxis.range': [x0 - px, x1 + px], 'yaxis.range': [y0 - py, y1 + py]});
    }
  }

  // Lasso / box selection: the selected crops listed by protein, saved as CSV from the browser (a Blob).
  function csvField(v) { v = String(v); return /[",\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
  function selectionCsv(rows) {
    const head = ['crop', 'protein', 'family', 'field'].concat(Object.keys(meta.colour_by).filter(k =>
      k !== 'family' && k !== 'protein')).concat(['umap_1', 'umap_2']);
    const lines = [head.join(',')];
    for (const i of rows) {
      const extra = Object.keys(meta.colour_by).filter(k => k !== 'family' && k !== 'protein')
        .map(k => meta.colour_by[k].names[codes[k][i]]);
      lines.push([CROP ? CROP[i] : i, proteinNames[PROT[i]], familyOf(i), meta.fovs[FOV[i]]].concat(extra)
        .concat([X[i], Y[i]]).map(csvField).join(','));
    }
    return lines.join('\n') + '\n';
  }
  function showSelection(rows) {
    selectedRows = rows;
    window.atlasSelection = {rows: rows, csv: selectionCsv(rows)};
    if (!rows.length) { $('selection').replaceChildren(caption('Lasso or box select (toolbar) to list crops.')); return; }
    const count = new Map();
    for (const i of rows) count.set(PROT[i], (count.get(PROT[i]) || 0) + 1);
    const order = [...count.entries()].sort((a, b) => b[1] - a[1] || proteinNames[a[0]].localeCompare(proteinNames[b[0]]));
    const list = document.createElement('div'); list.id = 'selection-list';
    for (const [p, c] of order) list.appendChild(proteinLink(proteinNames[p], ' ' + c + ' crop' + (c > 1 ? 's' : '')));
    const save = document.createElement('button'); save.id = 'save-selection'; save.textContent = 'Save as CSV';
    save.addEventListener('click', function () {
      const url = URL.createObjectURL(new Blob([window.atlasSelection.csv], {type: 'text/csv'}));
      const a = document.createElement('a'); a.href = url; a.download = 'atlas_selection.csv';
      document.body.appendChild(a); a.click(); a.remove(); setTimeout(() => URL.revokeObjectURL(url), 1000);
    });
    const summary = line('selected', rows.length + ' crops of ' + order.length + ' protein' + (order.length > 1 ? 's' : '')); summary.id = 'selection-summary';
    $('selection').replaceChildren(summary, save, list);
  }

  function draw(k) {
    key = k;
    const view = gd._fullLayout ? {x: gd._fullLayout.xaxis.range.slice(), y: gd._fullLayout.yaxis.range.slice()} : null;
    const lay = layout(k);
    if (view) { lay.xaxis.range = view.x; lay.yaxis.range = view.y; }
    return Plotly.react(gd, traces(k), lay, meta.config).then(function () {
      if ($('search').value.trim()) search(false);
    });
  }

  draw('family').then(function () {
    gd.on('plotly_hover', function (ev) {
      const p = ev.points[0];
      if (p.data.name === meta.search_trace) return;
      showCrop(p.customdata);
    });
    gd.on('plotly_restyle', function (update) {  // legend clicks: outlines follow the shown groups
      if (update && update[0] && 'visible' in update[0] && $('search').value.trim()) search(false);
    });
    gd.on('plotly_selected', function (ev) {
      showSelection(ev && ev.points ? ev.points.filter(p => p.data.name !== meta.search_trace).map(p => p.customdata) : []);
    });
    gd.on('plotly_deselect', () => showSelection([]));
    $('search').addEventListener('input', () => search(true));
    $('colour-by').addEventListener('change', ev => draw(ev.target.value));
    // The wheel scrolls the page; with Ctrl or Cmd held it zooms the map around the pointer.
    gd.addEventListener('wheel', function (ev) {
      if (!(ev.ctrlKey || ev.metaKey)) return;
      ev.preventDefault();
      const L = gd._fullLayout, f = ev.deltaY > 0 ? 1.25 : 0.8, r = gd.getBoundingClientRect();
      const cx = L.xaxis.p2l(ev.clientX - r.left - L._size.l), cy = L.yaxis.p2l(ev.clientY - r.top - L._size.t);
      const xr = L.xaxis.range, yr = L.yaxis.range;
      Plotly.relayout(gd, {'xaxis.range': [cx + (xr[0] - cx) * f, cx + (xr[1] - cx) * f],
                           'yaxis.range': [cy + (yr[0] - cy) * f, cy + (yr[1] - cy) * f]});
    }, {passive: false});
    gd.dataset.ready = '1';
  });
})();
"""
