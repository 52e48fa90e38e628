"""Size and opening time of the interactive atlas (atlas.html) at many points, in headless chromium.

Draws N synthetic points (families, proteins, fields, random crops as thumbnails), writes the atlas with
cytoself_jax.analysis.atlas_html (above --max-points, eval's default cap, a subsample drawn as points over a density
image of all), opens it `--repeats` times in headless chromium and records the time from
navigation to the plot being drawn. With --bokeh, the same points as a bokeh WebGL scatter (per-family legend
toggles, hover tool, BokehJS inlined) for the library comparison. Prints a table and writes JSON.

python bench/html_atlas.py --points 100000 --bokeh --out bench/results/html_atlas.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import benchlib
from cytoself_jax.analysis import atlas_html, thumbnails
from cytoself_jax.analysis.options import EvalOptions

PLOTLY_DRAWN = ("const g = document.getElementById('atlas');"
                " return !!(g && g.dataset.ready && g._fullLayout && g._fullData && g._fullData.length);")
BOKEH_DRAWN = "return !!(window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].is_idle);"


def headless_chromium(width: int = 1300, height: int = 900):
    """A selenium driver of Debian's headless chromium (None when chromium or its driver is not installed).
    Software WebGL (SwiftShader) stands in for a GPU; the browser console is kept for get_log('browser') and the
    DevTools network events for network_requests()."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver_path))  # no selenium-manager download


def wait_for(driver, script: str, timeout: float = 300.0):
    """Poll a JavaScript predicate until it is truthy; returns its value."""
    start = time.time()
    while time.time() - start < timeout:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for: {script}")


LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")


def network_requests(driver) -> list[str]:
    """URLs of the requests the page sent since the last call (DevTools Network.requestWillBeSent events from
    the performance log), those to the page's own file, data: and blob: URLs left out: what reached for a
    network."""
    import json as _json

    urls = []
    for entry in driver.get_log("performance"):
        message = _json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith(LOCAL_SCHEMES):
                urls.append(url)
    return urls


def hover_row(driver, row: int, timeout: float = 30.0) -> str:
    """Move the real mouse onto the atlas point of crop `row` (its position in the eval table); returns the text
    of plotly's hover label once it shows."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    trace, point = driver.execute_script(
        "const g = document.getElementById('atlas'); for (let i = 0; i < g._fullData.length; i++) {"
        " const c = g._fullData[i].customdata; if (c) for (let j = 0; j < c.length; j++) if (c[j] === arguments[0])"
        " return [i, j]; } return null;", row)
    px, py, width, height = driver.execute_script(
        "const g = document.getElementById('atlas'), L = g._fullLayout, t = g._fullData[arguments[0]];"
        "const r = g.getBoundingClientRect();"
        "return [L._size.l + L.xaxis.l2p(t.x[arguments[1]]), L._size.t + L.yaxis.l2p(t.y[arguments[1]]),"
        " r.width, r.height];", trace, point)
    plot = driver.find_element(By.ID, "atlas")
    ActionChains(driver).move_to_element_with_offset(plot, int(px - width / 2), int(py - height / 2)).perform()
    return wait_for(driver, "const h = document.querySelector('.hoverlayer .hovertext');"
                            " return h ? h.textContent : '';", timeout)


def screenshot(html: Path, png: Path, row: int | None = None) -> str:
    """Open an atlas.html, hover crop `row` (default: the first crop with its own thumbnail), save a PNG."""
    driver = headless_chromium(1400, 900)
    if driver is None:
        raise benchlib.BenchError("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)")
    try:
        driver.get(Path(html).resolve().as_uri())
        wait_for(driver, PLOTLY_DRAWN)
        if row is None:
            row = int(driver.execute_script("return JSON.parse(document.getElementById("
                                            "'atlas-meta').textContent).thumb_rows[0];"))
        label = hover_row(driver, row)
        time.sleep(0.5)
        driver.save_screenshot(str(png))
        return label
    finally:
        driver.quit()


def synthetic_points(n: int, proteins: int, families: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    protein = rng.integers(0, proteins, n)
    family = protein % families
    xy = rng.normal(size=(n, 2)) + 6 * np.stack([np.cos(family), np.sin(family)], 1) + rng.normal(size=(proteins, 2))[
        protein]
    table = pd.DataFrame({"protein": [f"PROT{p:04d}" for p in protein], "family": [f"family{f}" for f in family],
                          "fov": [f"plate{p % 7}/field{p % 23}" for p in protein]})
    return xy.astype(np.float32), table


def write_bokeh(path: Path, xy: np.ndarray, table: pd.DataFrame) -> None:
    from bokeh.io import output_file, save
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    p = figure(output_backend="webgl", tools="pan,wheel_zoom,box_zoom,reset", width=1000, height=760)
    for name in sorted(table["family"].unique()):
        sel = (table["family"] == name).to_numpy()
        source = ColumnDataSource({"x": xy[sel, 0], "y": xy[sel, 1], "protein": table["protein"][sel].to_numpy()})
        p.scatter("x", "y", source=source, size=3, legend_label=name)
    p.add_tools(HoverTool(tooltips=[("protein", "@protein")]))
    p.legend.click_policy = "hide"
    output_file(path, title="atlas")
    save(p, resources=INLINE)


def open_times(driver, path: Path, drawn: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        driver.get(path.as_uri())
        wait_for(driver, drawn)
        times.append(time.perf_counter() - start)
        driver.get("about:blank")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--proteins", type=int, default=1300)
    parser.add_argument("--families", type=int, default=12)
    parser.add_argument("--thumbnails", type=int, default=2000, help="crops with their own thumbnail")
    parser.add_argument("--max-points", type=int, default=EvalOptions().atlas_max_points,
                        help="crops drawn as points (eval's --atlas_max_points); above, a density image of all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bokeh", action="store_true", help="also measure the bokeh equivalent")
    parser.add_argument("--out", default=None)
    parser.add_argument("--screenshot", nargs=2, metavar=("HTML", "PNG"),
                        help="instead: open an atlas.html, hover a crop (--row) and save a screenshot")
    parser.add_argument("--row", type=int, default=None, help="crop hovered in the screenshot")
    args = parser.parse_args()
    if args.screenshot:
        print("hovered:", screenshot(Path(args.screenshot[0]), Path(args.screenshot[1]), args.row))
        return
    xy, table = synthetic_points(args.points, args.proteins, args.families)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    thumbs = {int(r): thumbnails.composite_png(rng.gamma(2.0, size=(64, 64)), (0.0, 8.0), rng.gamma(2.0, size=(64, 64)),
                                               (0.0, 8.0), bar_um=5, pixel_size_um=0.2)
              for r in atlas_html.protein_subsample(table["protein"].to_numpy(), args.thumbnails)}
    folder = Path(tempfile.mkdtemp(prefix="html_atlas-"))
    info = atlas_html.write_atlas_html(folder / "atlas.html", xy, table, thumbs, max_points=args.max_points)
    write_s = time.perf_counter() - start
    driver = headless_chromium()
    if driver is None:
        raise benchlib.BenchError("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)")
    try:
        rows = [{"library": "plotly (ours)", "points": args.points, "drawn_points": info["drawn_points"],
                 "thumbnails": info["thumbnails"],
                 "mb": info["bytes"] / 1e6, "write_s": write_s,
                 "open_s": open_times(driver, folder / "atlas.html", PLOTLY_DRAWN, args.repeats)}]
        if args.bokeh:
            start = time.perf_counter()
            write_bokeh(folder / "bokeh.html", xy, table)
            rows.append({"library": "bokeh (no thumbnails)", "points": args.points, "drawn_points": args.points,
                         "thumbnails": 0,
                         "mb": (folder / "bokeh.html").stat().st_size / 1e6, "write_s": time.perf_counter() - start,
                         "open_s": open_times(driver, folder / "bokeh.html", BOKEH_DRAWN, args.repeats)})
    finally:
        driver.quit()
        shutil.rmtree(folder, ignore_errors=True)
    for r in rows:
        r["open_s_median"] = statistics.median(r["open_s"])
    benchlib.print_table(f"Interactive atlas at {args.points} points (headless chromium, software WebGL)",
                         ["library", "drawn points", "thumbnails", "file MB", "write s", "open s (median)"],
                         [[r["library"], r["drawn_points"], r["thumbnails"], r["mb"], r["write_s"], r["open_s_median"]]
                          for r in rows])
    benchlib.write_json({"rows": rows, "load_average": list(os.getloadavg()),
                         "command": "python bench/html_atlas.py " + " ".join(sys.argv[1:])}, args.out)


if __name__ == "__main__":
    benchlib.run_cli(main)
