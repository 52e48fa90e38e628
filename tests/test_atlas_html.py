"""The interactive HTML atlas: thumbnails and file contents, then the page in a real headless chromium: no network
request and no cloud control, draw, composite hover thumbnail, case-insensitive search that zooms and lists the
nearest proteins, colour-by, legend hiding, lasso selection saved as CSV."""
import base64
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytoself_jax.analysis import atlas_html, thumbnails
from cytoself_jax.analysis.common import AnalysisInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import html_atlas  # noqa: E402  (bench/html_atlas.py: the chromium driver the bench and this test share)

wait_for = html_atlas.wait_for
GD = "const g = document.getElementById('atlas');"


def small_atlas(n_per_family: int = 6):
    """3 families x n crops on a grid far apart (so a hover hits exactly one point), 2 proteins per family (3 crops
    side by side each), crops of
    protein + nucleus channels; thumbnails as eval makes them."""
    rng = np.random.default_rng(0)
    families = np.repeat(["cytosol", "nucleus", ""], n_per_family)
    proteins = np.array([f"{f or 'orphan'}_P{i // 3 % 2}" for i, f in enumerate(families)])  # 3 neighbours
    xy = np.stack([np.arange(len(families)) % 6 * 10.0, np.arange(len(families)) // 6 * 10.0], 1)
    table = pd.DataFrame({"protein": proteins, "family": families, "fov": [f"field{i % 4}" for i in range(len(xy))],
                          "leiden": [str(i % 3) for i in range(len(xy))], "split": "test"})
    images = rng.random((len(xy), 20, 20, 2)).astype(np.float32)
    rows = atlas_html.protein_subsample(proteins, max_rows=8, seed=0)
    thumbs, note = thumbnails.crop_thumbnails(images, rows, proteins, ("protein", "nucleus"), pixel_size_um=0.5)
    near = {p: [(q, 0.9 - 0.1 * k) for k, q in enumerate(sorted(set(proteins) - {p})[:3])] for p in set(proteins)}
    return xy, table, thumbs, note, near


def png_pixels(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_composite_thumbnails_contrast_and_scale_bar():
    ramp = np.outer(np.arange(40), np.ones(40)).astype(np.float32)
    nucleus = np.zeros((40, 40), np.float32)
    nucleus[10:30, 10:30] = 1
    pixels = png_pixels(thumbnails.composite_png(ramp, (0.0, 39.0), nucleus, (0.0, 1.0)))
    assert pixels.shape == (thumbnails.THUMBNAIL_PIXELS,) * 2 + (3,)
    assert pixels[0, :, 1].mean() < 10 and pixels[-1, :, 1].mean() > 240  # protein ramp in green
    centre = pixels[24, 24]
    assert centre[0] > 240 and centre[2] > 240 and pixels[2, 2, 0] < 10  # nucleus in magenta (red + blue)
    # Fixed contrast: a crop at half the intensity of the window is drawn half as bright, not stretched.
    dim = png_pixels(thumbnails.composite_png(ramp / 2, (0.0, 39.0)))
    assert dim[-1, :, 1].mean() == pytest.approx(pixels[-1, :, 1].mean() / 2, abs=8)
    # Scale bar: 40 px at 0.5 um = 20 um wide crop -> a 5 um bar (a quarter of the width), white, lower right.
    assert thumbnails.scale_bar_um(40, 0.5) == 5 and thumbnails.scale_bar_um(40, 0.0) is None
    barred = png_pixels(thumbnails.composite_png(ramp * 0, (0.0, 1.0), bar_um=5, pixel_size_um=0.5))
    white = np.all(barred == 255, axis=-1)
    assert white.sum() == 2 * 12 and white[40:, 30:].sum() == 24  # 12 px long (a quarter of 48), 2 px high
    # Per-protein windows differ for a dim and a bright protein; the dataset window is one.
    planes = np.concatenate([np.full((2, 4, 4), 1.0), np.full((2, 4, 4), 100.0)])
    planes[:, 0, 0] = 0
    limits = thumbnails.contrast_limits(planes, np.array(["dim", "dim", "bright", "bright"]))
    assert limits["dim"][1] == pytest.approx(1.0) and limits["bright"][1] == pytest.approx(100.0)
    assert set(thumbnails.contrast_limits(planes)) == {""}
    assert thumbnails.counterstain_channel(("protein", "distance")) == "distance"
    assert thumbnails.counterstain_channel(("protein", "distance", "nucleus")) == "nucleus"


def test_protein_subsample():
    proteins = np.array(list("aaabbbbbbc"))
    rows = atlas_html.protein_subsample(proteins, max_rows=5, seed=1)
    assert len(rows) == 5 and {proteins[r] for r in rows} == {"a", "b", "c"} and np.all(np.diff(rows) > 0)
    assert len(atlas_html.protein_subsample(proteins, max_rows=1)) == 3  # one per protein at least
    # Drawn points: the kept rows (the thumbnails') stay; a protein they cover gets no extra representative.
    drawn = atlas_html.protein_subsample(proteins, max_rows=6, seed=2, keep=[1, 5])
    assert len(drawn) == 6 and {1, 5, 9} <= set(drawn)
    assert list(atlas_html.protein_subsample(proteins, max_rows=3, keep=[1, 5])) == [1, 5, 9]
    assert np.array_equal(drawn, atlas_html.protein_subsample(proteins, max_rows=6, seed=2, keep=[1, 5]))


def test_density_layer_counts_every_point_and_is_drawn_top_down():
    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.normal(size=(5000, 2)), [[2.9, 2.9]] * 1000]).astype(np.float32)  # a pile top right
    counts = atlas_html.density_counts(xy, (-3.0, 3.0), (-3.0, 3.0), bins=12)
    inside = np.all(np.abs(xy) <= 3, axis=1)
    cells = np.minimum(((xy[inside] + 3) / 6 * 12).astype(int), 11)  # numpy reference: cell of each point
    reference = np.zeros((12, 12))
    np.add.at(reference, (cells[:, 0], cells[:, 1]), 1)
    assert counts.sum() == inside.sum() and np.array_equal(counts, reference)
    pixels = png_pixels(atlas_html.density_png(counts))  # (rows = y from the top, columns = x, grey + alpha)
    assert pixels.shape == (12, 12, 2)
    assert np.array_equal(pixels[..., 1] > 0, counts.T[::-1] > 0)  # transparent exactly where no point falls
    assert pixels[0, -1, 0] == pixels[..., 0].min()  # the pile is the darkest cell, top right


def capped_atlas(n: int = 3000, max_points: int = 500):
    """n synthetic crops of 40 proteins (bench/html_atlas.py's), 60 of them with a thumbnail, drawn above a cap."""
    xy, table = html_atlas.synthetic_points(n, 40, 5)
    proteins = table["protein"].to_numpy()
    uri = thumbnails.composite_png(np.ones((8, 8)), (0.0, 2.0))
    thumbs = {int(r): uri for r in atlas_html.protein_subsample(proteins, 60, seed=3)}
    return xy, table, thumbs


def page_meta(path: Path) -> dict:
    import json

    text = path.read_text()
    start = text.index('id="atlas-meta">') + len('id="atlas-meta">')
    return json.loads(text[start:text.index("</script>", start)])


def test_capped_atlas_draws_a_subsample_over_the_density_of_all(tmp_path):
    xy, table, thumbs = capped_atlas()
    info = atlas_html.write_atlas_html(tmp_path / "atlas", xy, table, thumbs, max_points=500, seed=1,
                                       provenance={"run": "runs/x"})
    assert info["points"] == 3000 and info["drawn_points"] == 500 and info["thumbnails"] == 60
    meta, page = page_meta(tmp_path / "atlas.html"), (tmp_path / "atlas.html").read_text()
    crops = np.frombuffer(base64.b64decode(meta["crop_rows"]), np.int32)
    assert meta["n"] == 500 and len(crops) == 500 and np.all(np.diff(crops) > 0)
    assert list(crops[meta["thumb_rows"]]) == sorted(thumbs)  # thumbnailed crops are drawn, found by position
    assert np.array_equal(np.frombuffer(base64.b64decode(meta["x"]), np.float32), xy[crops, 0])
    assert sorted(meta["protein_crops"]) == sorted(table["protein"].value_counts())
    assert meta["density"]["x"] == meta["range"]["x"][0] and meta["density"]["y"] == meta["range"]["y"][1]
    assert "<b>500 of 3,000 crops drawn as points</b>" in page and "<dt>atlas_points_drawn</dt><dd>500</dd>" in page
    # Below the cap: every crop drawn, no density layer, no note.
    info = atlas_html.write_atlas_html(tmp_path / "all", xy, table, thumbs, max_points=3000)
    meta = page_meta(tmp_path / "all.html")
    assert info["drawn_points"] == 3000 and meta["n"] == 3000 and meta["thumb_rows"] == sorted(thumbs)
    assert not {"density", "crop_rows", "protein_crops"} & set(meta)
    assert "density-note" not in (tmp_path / "all.html").read_text()


def test_write_atlas_html_is_self_contained_and_private(tmp_path):
    xy, table, thumbs, note, near = small_atlas()
    info = atlas_html.write_atlas_html(tmp_path / "atlas", xy, table, thumbs, title="a <test>", neighbours=near,
                                       provenance={"run": "runs/x", "umap_seed": 0})
    html = (tmp_path / "atlas.html").read_text()
    assert info == {"points": 18, "drawn_points": 18, "thumbnails": len(thumbs),
                    "bytes": (tmp_path / "atlas.html").stat().st_size}
    assert "<script src=" not in html and "a &lt;test&gt;" in html and "<dt>umap_seed</dt>" in html
    assert "connect-src 'none'" in html  # the page's content security policy forbids requests
    assert atlas_html.PLOTLY_CONFIG["showSendToCloud"] is False and atlas_html.PLOTLY_CONFIG["plotlyServerURL"] == ""
    with pytest.raises(AnalysisInputError, match=r"write_atlas_html: thumbnails: expected a thumbnail of every"):
        atlas_html.write_atlas_html(tmp_path / "bad", xy, table, {0: next(iter(thumbs.values()))})
    with pytest.raises(AnalysisInputError, match=r"write_atlas_html: table: expected 18 rows"):
        atlas_html.write_atlas_html(tmp_path / "bad", xy, table.drop(columns="fov"), thumbs)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by selenium (.ci/run installs both)."""
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[test]')")
    driver = html_atlas.headless_chromium(1200, 800)
    if driver is None:
        pytest.skip("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver; .ci/run does)")
    yield driver
    driver.quit()


def test_network_requests_are_seen(tmp_path, browser):
    """The check of the next test can fail: a page that fetches an image from a server is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/pixel.png"></body></html>')
    html_atlas.network_requests(browser)  # drop earlier events
    browser.get(page.as_uri())
    wait_for(browser, "return document.readyState === 'complete';")
    assert html_atlas.network_requests(browser) == ["http://127.0.0.1:9/pixel.png"]
    browser.get_log("browser")  # its failed load is this page's, not the atlas'


def test_atlas_page_in_chromium(tmp_path, browser):
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    xy, table, thumbs, note, near = small_atlas()
    atlas_html.write_atlas_html(tmp_path / "atlas", xy, table, thumbs, neighbours=near, thumbnail_note=note,
                                provenance={"run": "runs/x", "checkpoint_step": 12})
    html_atlas.network_requests(browser)
    browser.get((tmp_path / "atlas.html").as_uri())
    wait_for(browser, html_atlas.PLOTLY_DRAWN)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    # Private: no request left the page, no control offers to share, no link leads off the page.
    assert html_atlas.network_requests(browser) == []
    titles = browser.execute_script("return [...document.querySelectorAll('.modebar-btn')].map(b =>"
                                    " b.getAttribute('data-title') || '');")
    assert titles and "Zoom" in titles and "Lasso Select" in titles
    assert not [t for t in titles if any(w in t.lower() for w in ("share", "cloud", "chart studio", "plotly"))]
    hrefs = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));")
    assert not [h for h in hrefs if h.startswith(("http", "//"))]
    assert "checkpoint_step" in browser.find_element(By.ID, "provenance").text

    # Layout: the plot fills the window's height; the wheel is the page's (no scroll zoom).
    height = browser.execute_script(GD + " return [g.getBoundingClientRect().height, window.innerHeight];")
    assert height[1] - 40 <= height[0] <= height[1]
    assert browser.execute_script(GD + " return g._context.scrollZoom;") is False
    assert browser.execute_script(GD + " return g._fullLayout.images.length;") == 0  # below the cap: no density layer

    # Drawn: the plot area of a screenshot holds the family colours (an empty plot is white and grey only).
    left, top, w, h = browser.execute_script(
        GD + " const s = g._fullLayout._size, r = g.getBoundingClientRect(); return [r.left + s.l, r.top + s.t, s.w, s.h];")
    ratio = browser.execute_script("return window.devicePixelRatio;")
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")).astype(int)
    area = shot[int(top * ratio):int((top + h) * ratio), int(left * ratio):int((left + w) * ratio)]
    assert (area.max(-1) - area.min(-1) > 60).sum() > 12 * 4

    # Hover row 7 with the real mouse: label and panel name its protein; the panel shows its composite thumbnail.
    row = 7
    protein = table["protein"][row]
    assert protein in html_atlas.hover_row(browser, row)
    panel = browser.find_element(By.ID, "crop").text
    assert f"protein: {protein}" in panel and f"field: {table['fov'][row]}" in panel and "magenta: nucleus" in panel
    src = browser.find_element(By.CSS_SELECTOR, "#crop img").get_attribute("src")
    assert src == (thumbs[row] if row in thumbs else thumbs[min(r for r in thumbs if table["protein"][r] == protein)])
    assert png_pixels(src).shape[-1] == 3  # RGB composite

    # Search: case-insensitive prefix, outlines the crops, zooms to them, panel shows the protein and its neighbours.
    view = GD + " return [g._fullLayout.xaxis.range.slice(), g._fullLayout.yaxis.range.slice()];"
    full = browser.execute_script(view)
    box = browser.find_element(By.ID, "search")
    box.send_keys("NUCLEUS_p1")
    wait_for(browser, "return document.getElementById('search-status').textContent.includes('3 crops');")
    outlined = browser.execute_script(GD + " return g._fullData[g._fullData.length - 1].x.length;")
    assert outlined == int(np.sum(table["protein"] == "nucleus_P1"))
    zoomed = browser.execute_script(view)  # the hits lie at x = 30..50, y = 10
    assert zoomed[0][1] - zoomed[0][0] < 0.8 * (full[0][1] - full[0][0])
    assert zoomed[0][0] < 30 and zoomed[0][1] > 50 and zoomed[1][0] < 10 < zoomed[1][1]
    assert "protein: nucleus_P1" in browser.find_element(By.ID, "crop").text
    links = browser.find_elements(By.CSS_SELECTOR, "#nearest a.protein")
    assert [a.text for a in links] == [n for n, _ in near["nucleus_P1"]]
    links[0].click()  # a neighbour's link searches for it
    wait_for(browser, f"return document.getElementById('search').value === '{near['nucleus_P1'][0][0]}';")
    box.clear()
    box.send_keys("cyto")  # prefix of two proteins: both outlined, both listed
    wait_for(browser, "return document.getElementById('search-status').textContent.startsWith('2 proteins');")

    # Hiding a family hides its outlines and keeps the axes.
    before = browser.execute_script(GD + " return [g._fullLayout.xaxis.range.slice(), g._fullLayout.yaxis.range.slice()];")
    browser.execute_script(GD + " const i = g.data.findIndex(t => t.name.startsWith('cytosol'));"
                           " Plotly.restyle(g, {visible: 'legendonly'}, [i]);")
    wait_for(browser, "return document.getElementById('search-status').textContent.startsWith('no shown crop');")
    after = browser.execute_script(GD + " return [g._fullLayout.xaxis.range.slice(), g._fullLayout.yaxis.range.slice()];")
    assert after == before

    # Colour by Leiden community: one trace per community, legend titled so.
    Select(browser.find_element(By.ID, "colour-by")).select_by_value("leiden")
    wait_for(browser, GD + " return g._fullLayout.legend.title.text.startsWith('Leiden');")
    names = browser.execute_script(GD + " return g._fullData.map(t => t.name);")
    assert sorted(n for n in names if n != "search") == ["0 (6)", "1 (6)", "2 (6)"]
    Select(browser.find_element(By.ID, "colour-by")).select_by_value("family")
    wait_for(browser, GD + " return g._fullLayout.legend.title.text.startsWith('family');")

    # Lasso: a real drag around the bottom row of points lists them and builds the CSV.
    browser.find_element(By.ID, "search").clear()
    browser.execute_script(GD + " Plotly.relayout(g, {dragmode: 'lasso', 'xaxis.range': [-5, 55], 'yaxis.range': [-5, 25]});")
    corners = browser.execute_script(
        GD + " const L = g._fullLayout, r = g.getBoundingClientRect();"
        " return [[-3, -3], [53, -3], [53, 3], [-3, 3]].map(([x, y]) =>"
        " [L._size.l + L.xaxis.l2p(x) - r.width / 2, L._size.t + L.yaxis.l2p(y) - r.height / 2]);")
    plot = browser.find_element(By.ID, "atlas")
    chain = ActionChains(browser).move_to_element_with_offset(plot, int(corners[0][0]), int(corners[0][1])).click_and_hold()
    for x, y in corners[1:] + corners[:1]:
        chain = chain.move_to_element_with_offset(plot, int(x), int(y))
    chain.release().perform()
    wait_for(browser, "return !!document.getElementById('selection-summary');")
    assert "6 crops of 2 proteins" in browser.find_element(By.ID, "selection-summary").text
    csv = browser.execute_script("return window.atlasSelection.csv;").splitlines()
    assert csv[0] == "crop,protein,family,field,leiden,split,umap_1,umap_2" and len(csv) == 7
    assert {int(line.split(",")[0]) for line in csv[1:]} == set(range(6))
    assert browser.find_element(By.ID, "save-selection").is_displayed()
    assert html_atlas.network_requests(browser) == []
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_capped_atlas_in_chromium(tmp_path, browser):
    """3,000 crops above a cap of 500: exactly 500 points drawn, every protein among them, the density image of all
    beneath them aligned with the axes (also when zoomed), the note shown, search and CSV on crop rows."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    xy, table, thumbs = capped_atlas()
    atlas_html.write_atlas_html(tmp_path / "atlas", xy, table, thumbs, max_points=500)
    crops = np.frombuffer(base64.b64decode(page_meta(tmp_path / "atlas.html")["crop_rows"]), np.int32)
    html_atlas.network_requests(browser)
    browser.get((tmp_path / "atlas.html").as_uri())
    wait_for(browser, html_atlas.PLOTLY_DRAWN)
    drawn = browser.execute_script(GD + " const t = g.data.filter(t => t.name !== 'search');"
                                   " return [t.reduce((s, t) => s + t.customdata.length, 0), [...new Set(t.flatMap(t => t.text))]];")
    assert drawn[0] == 500 and sorted(drawn[1]) == sorted(set(table["protein"]))
    note = browser.find_element(By.ID, "density-note")
    assert note.is_displayed() and "500 of 3,000 crops drawn as points" in note.text and "all 3,000" in note.text

    # The density image: one layout image in data coordinates over the data range, drawn where the axes say.
    image = browser.execute_script(GD + " return g._fullLayout.images;")
    assert len(image) == 1 and image[0]["source"].startswith("data:image/png;base64,")
    assert {k: image[0][k] for k in ("xref", "yref", "sizing", "layer")} == {"xref": "x", "yref": "y",
                                                                           "sizing": "stretch", "layer": "below"}
    placed = GD + (" const L = g._fullLayout, i = L.images[0], b = g.querySelector('svg image').getBoundingClientRect(),"
                   " r = g.getBoundingClientRect(); return [b.left - r.left - L._size.l - L.xaxis.l2p(i.x),"
                   " b.top - r.top - L._size.t - L.yaxis.l2p(i.y), b.width - L.xaxis.l2p(i.x + i.sizex) + L.xaxis.l2p(i.x),"
                   " b.height - L.yaxis.l2p(i.y - i.sizey) + L.yaxis.l2p(i.y)];")
    assert np.abs(browser.execute_script(placed)).max() < 1.5
    assert image[0]["x"] < xy[:, 0].min() and image[0]["x"] + image[0]["sizex"] > xy[:, 0].max()
    assert image[0]["y"] > xy[:, 1].max() and image[0]["y"] - image[0]["sizey"] < xy[:, 1].min()
    left, top, w, h = browser.execute_script(
        GD + " const s = g._fullLayout._size, r = g.getBoundingClientRect(); return [r.left + s.l, r.top + s.t, s.w, s.h];")
    ratio = browser.execute_script("return window.devicePixelRatio;")
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")).astype(int)
    area = shot[int(top * ratio):int((top + h) * ratio), int(left * ratio):int((left + w) * ratio)]
    grey = (area.max(-1) - area.min(-1) < 4) & (area.mean(-1) < 215)
    assert grey.sum() > 200  # the density layer shows (the points are coloured, the background white)
    browser.execute_script(GD + " Plotly.relayout(g, {'xaxis.range': [-2, 2], 'yaxis.range': [-2, 2]});")
    assert np.abs(browser.execute_script(placed)).max() < 1.5  # zoomed: still aligned

    # Search finds every protein; the panel counts all its crops and the drawn ones; the CSV names crop rows.
    protein = table["protein"][0]
    browser.find_element(By.ID, "search").send_keys(protein)
    wait_for(browser, "return document.getElementById('search-status').textContent.includes('outlined');")
    total = int((table["protein"] == protein).sum())
    assert f"crops: {total} (" in browser.find_element(By.ID, "crop").text
    browser.execute_script(GD + " const t = g.data[0];"
                           " g.emit('plotly_selected', {points: [0, 1, 2].map(j => ({data: t, customdata: t.customdata[j]}))});")
    csv = browser.execute_script("return window.atlasSelection.csv;").splitlines()
    positions = browser.execute_script(GD + " return g.data[0].customdata.slice(0, 3);")
    assert [int(line.split(",")[0]) for line in csv[1:]] == [int(crops[p]) for p in positions]
    assert [line.split(",")[1] for line in csv[1:]] == [table["protein"][crops[p]] for p in positions]
    assert html_atlas.network_requests(browser) == []
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
