"""Import a folder of per-cell crops (one TIFF/PNG/NPY file per channel) into a crop store.

The real yeast data (Lu et al. 2019) imports with this one command, run from the repository root::

    python -m cytoself_jax.import_crops ../shared/data/yeast-lu2019/images data/yeast \\
        --channel gfp=protein --channel rfp=fiducial \\
        --pattern '(?P<protein>[^_]+)_(?P<fov>\\d+)_rfp_(?P<cell>\\d+)_(?P<channel>gfp|rfp)\\.tif' \\
        --families ../shared/data/yeast-lu2019/localization.csv

giving 1,642 crops of 64x64x2 (float32), 5 proteins, 20 fields of view, families from the ``localization`` column.

``--pattern`` is matched against whole file names; named groups ``fov``, ``cell`` and ``channel`` are required,
``protein`` is optional (default: the file's first-level folder under SRC). ``--channel TOKEN=ROLE`` maps the
``channel`` group's value to a store channel role (exactly one ``protein``), in store order.
"""
from __future__ import annotations

import argparse
import sys

from cytoself_jax.data.importers import DEFAULT_PATTERN, import_crops


def _channel(text: str) -> tuple[str, str]:
    token, sep, role = text.partition("=")
    if not sep or not token or not role:
        raise argparse.ArgumentTypeError(f"expected TOKEN=ROLE (e.g. gfp=protein), found {text!r}")
    return token, role


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
    parser.add_argument("--families", help="CSV with a protein column and a localization family column")
    parser.add_argument("--families-protein-column", default="protein", help="default: %(default)s")
    parser.add_argument("--families-column", default="localization", help="default: %(default)s")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    tokens = [t for t, _ in args.channel]
    if len(set(tokens)) != len(tokens):
        parser.error(f"--channel: each token once, found {tokens}")
    try:
        store = import_crops(args.src, args.out, dict(args.channel), pattern=args.pattern, families=args.families,
                             family_protein_column=args.families_protein_column, family_column=args.families_column,
                             overwrite=args.overwrite, progress=not args.quiet)
    except ValueError as err:  # CropImportError and StoreError: one line naming file and field
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_fields = store.table["fov"].nunique()
    print(f"wrote {store.path}: {len(store)} crops of {'x'.join(map(str, store.image_shape))} ({store.images.dtype}), "
          f"channels {list(store.channels)}, {len(store.proteins)} proteins, {n_fields} fields of view")
    return 0


if __name__ == "__main__":
    sys.exit(main())
