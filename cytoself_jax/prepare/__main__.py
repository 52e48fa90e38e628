"""``python -m cytoself_jax.prepare INPUT OUT --protein-channel P --nucleus-channel N [options]``.

INPUT is a folder of fields of view (TIFF/OME-TIFF, NPY, or zarr if the zarr package is installed), each 2D or 3D
with several channels. By default the protein is the file's folder and the fov its name (INPUT/<protein>/<fov>.tif);
--pattern gives a regular expression with named groups 'protein' and 'fov' searched in each path relative to INPUT,
or --table a CSV with columns path, protein, fov. Writes OUT/store (the crop store), OUT/qc (QC report) and OUT/work
(per-field results: rerunning the same command resumes).
"""
from __future__ import annotations

import argparse
import os
import sys

from cytoself_jax.command import run_command
from cytoself_jax.data.store import StoreError
from cytoself_jax.prepare.io import DEFAULT_PATTERN, InputError, fields_from_pattern, fields_from_table
from cytoself_jax.prepare.run import PrepareSettings, load_families, prepare
from cytoself_jax.prepare.segment import SegmentParams


def build_parser() -> argparse.ArgumentParser:
    defaults = SegmentParams()
    p = argparse.ArgumentParser(prog="python -m cytoself_jax.prepare", description=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="folder of fields of view")
    p.add_argument("out", help="output folder (store/, qc/, work/)")
    p.add_argument("--protein-channel", type=int, required=True, help="index of the tagged-protein channel")
    p.add_argument("--nucleus-channel", type=int, required=True, help="index of the nuclear-stain channel")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pattern", default=DEFAULT_PATTERN, help="regex with groups 'protein' and 'fov'")
    source.add_argument("--table", help="CSV with columns path (relative to INPUT or absolute), protein, fov")
    p.add_argument("--axes", help="axis order of every field, e.g. ZCYX, CYX, YXC (default: the file's metadata, "
                                  "else CYX for 3 dims and ZCYX for 4)")
    p.add_argument("--crop-size", type=int, default=100, help="side of the square crops (px)")
    p.add_argument("--families", help="CSV with columns protein, family (ground truth for scoring only)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    seg = p.add_argument_group("nucleus segmentation (px)")
    seg.add_argument("--sigma", type=float, default=defaults.sigma, help="Gaussian low-pass before Li's threshold")
    seg.add_argument("--laplace-sigma", type=float, default=defaults.laplace_sigma,
                     help="Gaussian before the Laplace transform")
    seg.add_argument("--closing-radius", type=int, default=defaults.closing_radius, help="closing disk, >= 4")
    seg.add_argument("--max-hole-area", type=int, default=defaults.max_hole_area, help="largest hole filled")
    seg.add_argument("--minima-percentile", type=float, default=defaults.minima_percentile,
                     help="Laplace-transform percentile of the local-minima mask")
    seg.add_argument("--min-nucleus-area", type=int, default=defaults.min_nucleus_area, help="smaller: rejected")
    seg.add_argument("--min-snr", type=float, default=defaults.min_snr,
                     help="nuclei dimmer than background + this many noise sd are rejected (0: off)")
    p.add_argument("--montage-crops", type=int, default=16, help="random crops per protein in the QC montages")
    p.add_argument("--seed", type=int, default=0, help="seed of the montages' crop choice")
    p.add_argument("--remove-work", action="store_true", help="delete OUT/work's per-field files once the store "
                                                              "is written (saves disk; a rerun then starts over)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status: 2 with one line on bad input, 1 when a write fails (full disk,
    permission), 130/143 on Ctrl-C/SIGTERM, each line saying what was kept (finished fields stay in OUT/work)."""
    args = build_parser().parse_args(argv)
    work = os.path.join(args.out, "work")
    return run_command(lambda: _prepare(args), kept=lambda: "",
                       note=lambda: (f"finished fields are kept in {work}; rerun the same command to resume"
                                     if os.path.isdir(work) else ""))


def _prepare(args: argparse.Namespace) -> int:
    try:
        segment = SegmentParams(sigma=args.sigma, laplace_sigma=args.laplace_sigma, closing_radius=args.closing_radius,
                                max_hole_area=args.max_hole_area, minima_percentile=args.minima_percentile,
                                min_nucleus_area=args.min_nucleus_area, min_snr=args.min_snr)
        settings = PrepareSettings(protein_channel=args.protein_channel, nucleus_channel=args.nucleus_channel,
                                   crop_size=args.crop_size, axes=args.axes, segment=segment)
        if args.table:
            specs, problems = fields_from_table(args.table, args.input), []
        else:
            specs, problems = fields_from_pattern(args.input, args.pattern)
        families = load_families(args.families) if args.families else {}
        result = prepare(specs, args.out, settings, families=families, problems=problems, workers=args.workers,
                         montage_crops=args.montage_crops, seed=args.seed, keep_work=not args.remove_work)
    except (InputError, StoreError) as err:  # one-line errors about the input, the settings or the store
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = result.counts
    print(f"{len(result.store)} crops of {len(result.store.proteins)} proteins in {result.store.path}; "
          f"fields: {counts.get('ok', 0)} ok, {counts.get('no_nuclei', 0) + counts.get('no_crops', 0)} without crops, "
          f"{counts.get('error', 0)} errors ({counts['resumed']} resumed); QC report in {result.qc_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
