"""The interactive HTML atlas: file contents, then the page in a real headless chromium (load, draw, hover, search)."""
import base64
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytoself_jax.analysis import atlas_html
from cytoself_jax.analysis.common import AnalysisInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import html_atlas  # noqa: E402  (bench/html_atlas.py: the chromium driver the bench and this test share)

wait_for = html_atlas.wait_for


def small_atlas(tmp_path: Path, n_per_family: int = 6):
    """3 families x n points on a grid far apart (so a hover hits exactly one point), 2 proteins per family."""
    rng = np.random.default_rng(0)
    families = np.repeat(["cytosol", "nucleus", ""], n_per_family)
    proteins = np.array([f"{f or 'orphan'}_P{i % 2}" for i, f in enumerate(families)])
    xy = np.stack([np.arange(len(families)) % 6 * 10.0, np.arange(len(families)) // 6 * 10.0], 1)
    table = pd.DataFrame({"protein": proteins, "family": families, "fov": [f"field{i % 4}" for i in range(len(xy))]})
    images = rng.random((len(xy), 20, 20))
    rows = atlas_html.thumbnail_rows(proteins, max_thumbnails=8, seed=0)
    thumbs = {int(r): atlas_html.thumbnail_png(images[r]) for r in rows}
    return xy, table, thumbs


def test_thumbnail_png_and_rows():
    from PIL import Image

    uri = atlas_html.thumbnail_png(np.outer(np.arange(30), np.ones(40)))
    assert uri.startswith("data:image/png;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert picture.size == (atlas_html.THUMBNAIL_PIXELS,) * 2 and picture.mode == "L"
    pixels = np.asarray(picture)
    assert pixels[0].mean() < 10 and pixels[-1].mean() > 245  # a ramp from dark to bright, scaled to 0..255
    proteins = np.array(list("aaabbbbbbc"))
    rows = atlas_html.thumbnail_rows(proteins, max_thumbnails=5, seed=1)
    assert len(rows) == 5 and {proteins[r] for r in rows} == {"a", "b", "c"} and np.all(np.diff(rows) > 0)
    assert len(atlas_html.thumbnail_rows(proteins, max_thumbnails=1)) == 3  # one per protein at least


def test_write_atlas_html_is_self_contained(tmp_path):
    xy, table, thumbs = small_atlas(tmp_path)
    info = atlas_html.write_atlas_html(tmp_path / "atlas", xy, table, thumbs, title="a <test>")
    html = (tmp_path / "atlas.html").read_text()
    assert info == {"points": 18, "thumbnails": len(thumbs), "bytes": (tmp_path / "atlas.html").stat().st_size}
    assert "cdn" not in html.lower().split("<body>")[0]  # plotly.js inlined, nothing to fetch
    assert "<script src=" not in html and "a &lt;test&gt;" in html
    assert html.count("scattergl") >= 4  # 3 families + the search trace
    with pytest.raises(AnalysisInputError, match=r"write_atlas_html: thumbnails: expected a thumbnail of every"):
        atlas_html.write_atlas_html(tmp_path / "bad", xy, table, {0: next(iter(thumbs.values()))})
    with pytest.raises(AnalysisInputError, match=r"write_atlas_html: table: expected 18 rows"):
        atlas_html.write_atlas_html(tmp_path / "bad", xy, table.drop(columns="fov"), thumbs)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by selenium (.ci/run installs both)."""
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[test]')")
    driver = html_atlas.headless_chromium(1200, 900)
    if driver is None:
        pytest.skip("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver; .ci/run does)")
    yield driver
    driver.quit()


def test_atlas_page_in_chromium_draws_hovers_and_searches(tmp_path, browser):
    from PIL import Image
    from selenium.webdriver.common.by import By

    xy, table, thumbs = small_atlas(tmp_path)
    atlas_html.write_atlas_html(tmp_path / "atlas", xy, table, thumbs)
    browser.get((tmp_path / "atlas.html").as_uri())
    wait_for(browser, "const g = document.getElementById('atlas'); return !!(g && g._fullLayout && g.on);")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []

    # Points drawn: the plot area of a screenshot (the WebGL canvas; legend and side panel cut off) holds
    # coloured pixels, i.e. the family colours, where an empty plot is white and grey only.
    left, top, w, h = browser.execute_script(
        "const g = document.getElementById('atlas'), s = g._fullLayout._size, r = g.getBoundingClientRect();"
        "return [r.left + s.l, r.top + s.t, s.w, s.h];")
    ratio = browser.execute_script("return window.devicePixelRatio;")
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")).astype(int)
    area = shot[int(top * ratio):int((top + h) * ratio), int(left * ratio):int((left + w) * ratio)]
    coloured = area.max(-1) - area.min(-1) > 60
    assert coloured.sum() > 12 * 4  # 12 coloured points of at least a few pixels each

    # Hover the point of row 7 with the real mouse: plotly's label and the side panel name its protein.
    row = 7
    protein = table["protein"][row]
    assert protein in html_atlas.hover_row(browser, row)
    panel = browser.find_element(By.ID, "crop").text
    assert f"protein: {protein}" in panel and f"field: {table['fov'][row]}" in panel
    src = browser.find_element(By.CSS_SELECTOR, "#crop img").get_attribute("src")
    own = row in thumbs
    assert src == (thumbs[row] if own else thumbs[min(r for r in thumbs if table["protein"][r] == protein)])

    # Search: the protein's crops fill the outline trace.
    box = browser.find_element(By.ID, "search")
    box.send_keys("nucleus_P1")
    wait_for(browser, "return document.getElementById('search-status').textContent.includes('3 crops');")
    outlined = browser.execute_script("const g = document.getElementById('atlas');"
                                      " return g._fullData[g._fullData.length - 1].x.length;")
    assert outlined == int(np.sum(table["protein"] == "nucleus_P1"))
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
