r"""Import a folder of per-cell crops (one TIFF/PNG/NPY file per channel) into a crop store.

The real yeast data (Lu et al. 2019) imports with this one command, run from the repository root::

    python -m cytoself_jax.import_crops ../shared/data/yeast-lu2019/images data/yeast \
        --channel gfp=protein --channel rfp=fiducial \
        --pattern '(?P<protein>[^_]+)_(?P<fov>\d+)_rfp_(?P<cell>\d+)_(?P<channel>gfp|rfp)\.tif' \
        --families ../shared/data/yeast-lu2019/localization.csv

giving 1,642 crops of 64x64x2 (float32), 5 proteins, 20 fields of view, families from the ``localization`` column
(the convention is a ``family`` column; ``localization`` is accepted with a note).

``--pattern`` is matched against the whole file name or a whole tail of the file's path relative to SRC (for one
folder per field, e.g. ``(?P<protein>[^/]+)/(?P<fov>[^/]+)/cell(?P<cell>\d+)_(?P<channel>\w+)\.tif``); named
groups ``fov``, ``cell`` and ``channel`` are required, ``protein`` is optional (default: the file's first-level
folder under SRC). Symlinked folders are followed. ``--table CSV`` lists the files instead (columns path, protein,
fov, cell, channel; paths relative to SRC). ``--channel TOKEN=ROLE`` maps the ``channel`` group's value to a store
channel role (exactly one ``protein``), in store order; matched files of other tokens are counted in a warning.
``--derive-distance`` adds the paper's ``distance`` channel computed from the ``nucleus`` one.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cytoself_jax.command import run_command
from cytoself_jax.data.importers import DEFAULT_PATTERN, import_crops
from cytoself_jax.staging import kept_message


def _channel(text: str) -> tuple[str, str]:
    token, sep, role = text.partition("=")
    if not sep or not token or not role:
        raise argparse.ArgumentTypeError(f"expected TOKEN=ROLE (e.g. gfp=protein), found {text!r}")
    return token, role


def _print_warning(message, *_args, **_kwargs) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with a one-line message on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m cytoself_jax.import_crops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="folder of crop files (searched recursively)")
    parser.add_argument("out", help="crop store directory to create")
    parser.add_argument("--channel", type=_channel, action="append", required=True, metavar="TOKEN=ROLE",
                        help="map a file-name channel token to a store channel role (repeat; order = store order)")
    parser.add_argument("--pattern", default=DEFAULT_PATTERN,
                        help="regex for whole file names with groups fov, cell, channel (and optionally protein); "
                             "default: %(default)s")
    parser.add_argument("--table", help="CSV listing the files (columns path, protein, fov, cell, channel; paths "
                                        "relative to SRC) instead of --pattern")
    parser.add_argument("--derive-distance", action="store_true",
                        help="add a 'distance' channel: signed distance to the edge of the nucleus channel's mask")
    parser.add_argument("--distance-sigma", type=float, default=1.0,
                        help="Gaussian low-pass (px) before the nucleus threshold; default: %(default)s")
    parser.add_argument("--families", help="CSV with a protein column and a family column")
    parser.add_argument("--families-protein-column", default="protein", help="default: %(default)s")
    parser.add_argument("--families-column", default="",
                        help="default: 'family', or 'localization' when the table has no 'family' column")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing crop store at OUT (never any "
                                                                 "other folder)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    tokens = [t for t, _ in args.channel]
    if len(set(tokens)) != len(tokens):
        parser.error(f"--channel: each token once, found {tokens}")
    if args.table and args.pattern != DEFAULT_PATTERN:
        parser.error("--table and --pattern: pass one of them")
    def body() -> int:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.simplefilter("ignore", ResourceWarning)  # off by default: a debugging aid, not for users
                warnings.showwarning = _print_warning
                store = import_crops(args.src, args.out, dict(args.channel), pattern=args.pattern, table=args.table,
                                     families=args.families, family_protein_column=args.families_protein_column,
                                     family_column=args.families_column, derive_distance=args.derive_distance,
                                     distance_sigma=args.distance_sigma, overwrite=args.overwrite,
                                     progress=not args.quiet)
        except ValueError as err:  # CropImportError and StoreError: one line naming file and field
            print(f"error: {err}", file=sys.stderr)
            return 2
        n_fields = store.table["fov"].nunique()
        print(f"wrote {store.path}: {len(store)} crops of {'x'.join(map(str, store.image_shape))} "
              f"({store.images.dtype}), channels {list(store.channels)}, {len(store.proteins)} proteins, {n_fields} "
              "fields of view")
        return 0

    # a failed write (full disk, permission), Ctrl-C or SIGTERM: one line; the store is written whole or not at all
    return run_command(body, kept=lambda: kept_message(Path(args.out), Path(args.out).exists()))


if __name__ == "__main__":
    sys.exit(main())
