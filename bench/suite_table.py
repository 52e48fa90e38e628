"""Combine the records of bench/gpu_suite.sh into one JSON and one Markdown table.

python bench/suite_table.py RECORDS_DIR --json suite.json --md suite.md

Each record file is named <row>.json (train_step.py, embed.py or input_pipeline.py output); a row whose command
failed has no record and is listed as failed, with the last line of its log (<row>.log) when there is one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import benchlib

COLUMNS = ["row", "what", "dtype", "batch", "result", "unit", "GFLOP/image", "fraction of peak",
           "fraction of roofline", "peak memory GiB", "compile s", "device"]


def _row(name: str, r: dict[str, Any]) -> list[Any]:
    device = (r.get("device") or {}).get("kind", "host CPU")
    if r.get("benchmark") == "input_pipeline":
        best = max(r["results"], key=lambda x: x["crops_per_s"])
        what = f"input pipeline, {best['num_workers']} workers, augmentation, from disk"
        return [name, what, r["store"]["dtype"], r["batch"], best["crops_per_s"], "crops/s", None, None, None,
                benchlib.gib(r.get("peak_memory_bytes")), None, device]
    config = r.get("config", {})
    model = config.get("model", {})
    what = f"{r['benchmark']} {r.get('label', '')}"
    if r["benchmark"] == "train_step":
        what += f" decoder={model.get('decoder', '?')}" + (" remat" if model.get("remat_decoders") else "")
    if r.get("error"):
        return [name, what, config.get("dtype"), config.get("batch"), r["error"], "", None, None, None, None, None,
                device]
    return [name, what, config.get("dtype"), config.get("batch"), r["images_per_s"], "images/s",
            r["flops_per_image"] / 1e9 if r.get("flops_per_image") else None, r.get("fraction_of_peak"),
            r.get("fraction_of_roofline"), benchlib.gib(r.get("peak_memory_bytes")), r.get("compile_s"), device]


def combine(folder: Path, rows: Sequence[str]) -> tuple[dict[str, Any], str]:
    """(JSON record, Markdown table) of the rows' records in folder, in the order of `rows`."""
    records, table = {}, []
    for name in rows:
        path = folder / f"{name}.json"
        if path.is_file():
            records[name] = json.loads(path.read_text())
            table.append(_row(name, records[name]))
        else:
            log = folder / f"{name}.log"
            last = (log.read_text().strip().splitlines() or ["no output"])[-1] if log.is_file() else "not run"
            records[name] = {"error": "failed", "detail": last[-300:]}
            table.append([name, "FAILED: " + last[-120:], *[None] * (len(COLUMNS) - 2)])
    text = benchlib.print_table("GPU suite", COLUMNS, table)
    return {"benchmark": "gpu_suite", "rows": records, **benchlib.environment([])}, text


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="folder of <row>.json records")
    p.add_argument("--rows", nargs="+", required=True, help="row names, in table order")
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    args = p.parse_args(argv)
    record, text = combine(Path(args.folder), args.rows)
    benchlib.write_json(record, args.json)
    Path(args.md).write_text(text.strip() + "\n")


if __name__ == "__main__":
    benchlib.run_cli(main)
