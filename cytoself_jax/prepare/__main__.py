"""``python -m cytoself_jax.prepare INPUT OUT (--protein-channel P --nucleus-channel N | --rgb ...) [options]``.

INPUT is a folder of fields of view (TIFF/OME-TIFF, PNG/JPEG, NPY, or zarr if the zarr package is installed; symlinked
folders are followed), each 2D or 3D with several channels, or RGB(A) composites with --rgb. By default the protein is
the file's folder and the fov its name (INPUT/<protein>/<fov>.tif); --pattern gives a regular expression with named
groups 'protein' and 'fov' searched in each path relative to INPUT, or --table a CSV with columns path, protein, fov.
Each field is rescaled so that its nuclei are 50 px across, as in the paper's 1024x1024 OpenCell fields (the
nucleus diameter is estimated per field unless --nucleus-diameter or a pixel size says it); sizes below are px at
that scale. Writes OUT/store (the crop store), OUT/qc (QC report) and OUT/work (per-field results: rerunning the same
command resumes).
"""
from __future__ import annotations

import argparse
import os
import sys

from cytoself_jax.command import run_command
from cytoself_jax.data.store import StoreError
from cytoself_jax.prepare.io import DEFAULT_PATTERN, InputError, colour_channels, fields_from_pattern, fields_from_table
from cytoself_jax.prepare.outcome import STATUS_ERROR, STATUS_OK, describe_counts
from cytoself_jax.prepare.run import PrepareSettings, load_families, prepare
from cytoself_jax.prepare.scale import ScaleSettings
from cytoself_jax.prepare.segment import SegmentParams


def build_parser() -> argparse.ArgumentParser:
    defaults = SegmentParams()
    p = argparse.ArgumentParser(prog="python -m cytoself_jax.prepare", description=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="folder of fields of view")
    p.add_argument("out", help="output folder (store/, qc/, work/)")
    p.add_argument("--protein-channel", type=int, help="index of the tagged-protein channel")
    p.add_argument("--nucleus-channel", type=int, help="index of the nuclear-stain channel")
    p.add_argument("--rgb", metavar="COLOUR=ROLE,...", help="fields are RGB(A) composites (PNG, JPEG, TIFF); which "
                                                            "colour is the protein and which the nucleus, e.g. "
                                                            "green=protein,blue=nucleus (instead of the indices)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pattern", default=DEFAULT_PATTERN, help="regex with groups 'protein' and 'fov'")
    source.add_argument("--table", help="CSV with columns path (relative to INPUT or absolute), protein, fov")
    p.add_argument("--axes", help="axis order of every field, e.g. ZCYX, CYX, YXC (default: the file's metadata, "
                                  "else CYX for 3 dims and ZCYX for 4)")
    p.add_argument("--crop-size", type=int, default=100, help="side of the square crops (px at the reference scale)")
    scale = p.add_argument_group("scale (default: each field's nucleus diameter estimated, the field rescaled to "
                                 "nuclei of 50 px; no rescale for 42-60 px)")
    scale.add_argument("--nucleus-diameter", type=float, help="nucleus diameter in the input fields (px): no estimate")
    scale.add_argument("--pixel-size", type=float, help="µm per px of the input fields (default: an OME-TIFF's "
                                                        "PhysicalSizeX): nuclei taken as 10 µm across")
    scale.add_argument("--no-rescale", action="store_true", help="use the fields at their own pixel size (sizes are "
                                                                  "then px of the fields)")
    p.add_argument("--families", help="CSV with columns protein, family (ground truth for scoring only)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    seg = p.add_argument_group("nucleus segmentation (px at the reference scale, nuclei 50 px across)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-field lines (all are in "
                                                        "OUT/qc/fields.csv); the final summary still prints")
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
        protein, nucleus = _channels(args)
        scale = ScaleSettings(rescale=not args.no_rescale, nucleus_diameter=args.nucleus_diameter,
                              pixel_size=args.pixel_size)
        settings = PrepareSettings(protein_channel=protein, nucleus_channel=nucleus, crop_size=args.crop_size,
                                   axes=args.axes, segment=segment, scale=scale, rgb=bool(args.rgb))
        if args.table:
            specs, problems = fields_from_table(args.table, args.input), []
        else:
            specs, problems = fields_from_pattern(args.input, args.pattern)
        families = load_families(args.families) if args.families else {}
        result = prepare(specs, args.out, settings, families=families, problems=problems, workers=args.workers,
                         montage_crops=args.montage_crops, seed=args.seed, keep_work=not args.remove_work,
                         progress=not args.quiet, quiet=args.quiet)
    except (InputError, StoreError) as err:  # one-line errors about the input, the settings or the store
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = result.counts
    empty = describe_counts(counts, skip=(STATUS_OK, STATUS_ERROR))
    warned = f", {counts['warned']} with crops that look wrong" if counts["warned"] else ""
    print(f"{len(result.store)} crops of {len(result.store.proteins)} proteins in {result.store.path}; "
          f"fields: {counts.get(STATUS_OK, 0)} ok{warned}, without crops: {empty}, {counts.get(STATUS_ERROR, 0)} "
          f"errors ({counts['resumed']} resumed); QC report in {result.qc_dir}")
    return 0


def _channels(args: argparse.Namespace) -> tuple[int, int]:
    """(protein, nucleus) channel indices from --rgb or from the two index options; InputError otherwise."""
    indices = (args.protein_channel, args.nucleus_channel)
    if args.rgb:
        if indices != (None, None):
            raise InputError("--rgb: names the channels by colour; expected no --protein-channel/--nucleus-channel "
                             "with it")
        return colour_channels(args.rgb)
    if None in indices:
        raise InputError("--protein-channel/--nucleus-channel: expected both channel indices (or --rgb "
                         "green=protein,blue=nucleus for colour composites)")
    return indices[0], indices[1]


if __name__ == "__main__":
    sys.exit(main())
