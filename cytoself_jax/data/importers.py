"""Import a folder of per-cell crops (one 2-D file per channel: TIFF, PNG or NPY) into a crop store.

Files are found recursively under the source folder (following symlinked folders) and matched against a regular
expression with named groups ``fov``, ``cell`` and ``channel``, and optionally ``protein`` (otherwise the protein
is the name of the file's first-level folder). The pattern must match the whole file name or a whole tail of the
file's path relative to the source (``P1/field3/cell2_dapi.tif``, ``field3/cell2_dapi.tif``, then
``cell2_dapi.tif``: the shortest tail that matches wins), so folder-per-field layouts are matched with a
pattern containing ``/``. Instead of a pattern, a table may list the files (cells_from_table). The files of one
cell (same protein, fov and cell) become one crop, channels stacked in the order the channel mapping lists them.
With derive_distance, the store gets a ``distance`` channel computed from each crop's ``nucleus`` channel
(imaging.nucleus.crop_nucleus_distance), recorded in store.json.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cytoself_jax.data.families import read_families
from cytoself_jax.data.pixels import check_pixels
from cytoself_jax.data.store import CropStore, check_replaceable_store, create_store
from cytoself_jax.imaging.nucleus import crop_nucleus_distance

FORMATS = (".tif", ".tiff", ".png", ".npy")
DEFAULT_PATTERN = r"(?P<fov>[^_]+)_(?P<cell>[^_]+)_(?P<channel>[^_.]+)\.(?:tiff?|png|npy)"


class CropImportError(ValueError):
    """The source folder cannot be imported; the message is one line naming the file and what was expected."""


@dataclass
class Cell:
    """The files of one cell: channel token (as in the file name) -> path."""
    protein: str
    fov: str
    cell: str
    files: dict[str, Path] = field(default_factory=dict)


def _natural_key(text: str) -> tuple:
    """Sort key putting 'f2' before 'f10'."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def walk_folders(src: str | os.PathLike):
    """``os.walk`` of src following symlinked folders, each real folder once (a link back up the tree cannot
    loop), sub-folders in sorted order: yields (folder, dirs, names); callers may prune ``dirs`` in place."""
    seen = set()
    for root, dirs, names in os.walk(src, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield root, dirs, names


def _walk_files(src: Path):
    """(path, path relative to src) of every file under src, sorted, following symlinked folders."""
    for root, dirs, names in walk_folders(src):
        for name in sorted(names):
            path = Path(root) / name
            yield path, path.relative_to(src)


def _match_tail(regex: re.Pattern, relative: Path) -> re.Match | None:
    """The match of the shortest tail of `relative` (file name, then with its folder, ...) the regex matches whole."""
    parts = relative.parts
    for start in range(len(parts) - 1, -1, -1):
        m = regex.fullmatch("/".join(parts[start:]))
        if m is not None:
            return m
    return None


def _compile_pattern(pattern: str) -> re.Pattern:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise CropImportError(f"--pattern: expected a regular expression, found {pattern!r} ({err})") from None
    missing = [g for g in ("fov", "cell", "channel") if g not in regex.groupindex]
    if missing:
        raise CropImportError(f"--pattern: expected named groups fov, cell and channel (protein optional), "
                              f"{pattern!r} lacks {missing}")
    return regex


def find_cells(src: Path, pattern: str, channels: Mapping[str, str]) -> list[Cell]:
    """Group the files under ``src`` matching ``pattern`` (see module doc) into cells; every cell must have a file
    for each channel token in ``channels``. Matched files whose channel token is not in ``channels`` are left out
    with a warning naming the tokens. Cells come sorted by protein, fov, cell (numbers in natural order)."""
    regex = _compile_pattern(pattern)
    entries, n_files = [], 0
    for path, relative in _walk_files(src):
        n_files += 1
        m = _match_tail(regex, relative)
        if m is None:
            continue
        if "protein" in regex.groupindex:
            protein = m["protein"]
        elif len(relative.parts) < 2:
            raise CropImportError(f"{path}: protein: expected the file inside a per-protein folder of {src} "
                                  f"(or a 'protein' group in --pattern)")
        else:
            protein = relative.parts[0]
        entries.append((path, protein, m["fov"], m["cell"], m["channel"]))
    if not entries:
        raise CropImportError(f"{src}: --pattern: no file name matches {pattern!r}, nor any path relative to it "
                              f"(looked at {n_files} files)")
    return _group_cells(entries, channels, where=str(src))


def cells_from_table(table: str | os.PathLike, channels: Mapping[str, str], root: str | os.PathLike | None = None
                     ) -> list[Cell]:
    """Cells from a CSV listing one file per row: columns ``path`` (relative paths are taken from ``root``, else
    from the table's folder), ``protein``, ``fov``, ``cell`` and ``channel`` (a token of ``channels``)."""
    table = Path(table)
    try:
        frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise CropImportError(f"{table}: file: unreadable CSV ({err})") from None
    columns = ("path", "protein", "fov", "cell", "channel")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CropImportError(f"{table}: {missing[0]}: column missing; expected columns {list(columns)}, found "
                              f"{list(frame.columns)}")
    if frame.empty:
        raise CropImportError(f"{table}: rows: expected at least one file, found none")
    base = Path(root) if root is not None else table.parent
    entries = []
    for row, values in enumerate(frame[list(columns)].itertuples(index=False)):
        path, protein, fov, cell, token = (v.strip() for v in values)
        empty = [c for c, v in zip(columns, (path, protein, fov, cell, token)) if not v]
        if empty:
            raise CropImportError(f"{table}: {empty[0]}: row {row + 2} is empty; expected a value in every row")
        full = Path(path) if Path(path).is_absolute() else base / path
        if not full.is_file():
            raise CropImportError(f"{table}: path: row {row + 2}: {full} not found")
        entries.append((full, protein, fov, cell, token))
    return _group_cells(entries, channels, where=str(table))


def _group_cells(entries: list[tuple[Path, str, str, str, str]], channels: Mapping[str, str], where: str
                 ) -> list[Cell]:
    """Cells from (path, protein, fov, cell, channel token) entries, checked complete and unambiguous."""
    cells: dict[tuple[str, str, str], Cell] = {}
    unmapped: dict[str, int] = {}
    for path, protein, fov, cell_id, token in entries:
        if token not in channels:
            unmapped[token] = unmapped.get(token, 0) + 1
            continue
        key = (protein, fov, cell_id)
        cell = cells.setdefault(key, Cell(*key))
        if token in cell.files:
            raise CropImportError(f"{path}: channel: cell {key} already has a {token!r} file: {cell.files[token]}")
        cell.files[token] = path
    if not cells:
        raise CropImportError(f"{where}: --channel: no matched file has a channel in {list(channels)}; "
                              f"file names give channels {sorted(unmapped)}")
    if unmapped:
        listed = ", ".join(f"{t!r} ({n} files)" for t, n in sorted(unmapped.items()))
        warnings.warn(f"{where}: {sum(unmapped.values())} matched files have a channel token with no --channel "
                      f"mapping, left out: {listed}", stacklevel=3)
    for cell in cells.values():
        absent = [t for t in channels if t not in cell.files]
        if absent:
            some = next(iter(cell.files.values()))
            raise CropImportError(f"{some}: channel: the cell's {absent[0]!r} file is missing "
                                  f"(cell protein={cell.protein}, fov={cell.fov}, cell={cell.cell})")
    return sorted(cells.values(), key=lambda c: (_natural_key(c.protein), _natural_key(c.fov), _natural_key(c.cell)))


def _squeeze_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    squeezed = tuple(int(s) for s in shape if s != 1)
    if len(squeezed) != 2:
        raise CropImportError(f"{path}: shape: expected a 2-D single-channel image, found shape {tuple(shape)}")
    return squeezed  # type: ignore[return-value]


def probe_image(path: Path) -> tuple[tuple[int, int], np.dtype]:
    """(H, W) and dtype of an image file, from its header where the format allows."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = series.shape, series.dtype
        elif suffix == ".npy":
            array = np.load(path, mmap_mode="r")
            shape, dtype = array.shape, array.dtype
        else:
            array = read_image(path)
            shape, dtype = array.shape, array.dtype
    except CropImportError:
        raise
    except Exception as err:  # any reader failure is an unreadable file for the user
        raise CropImportError(f"{path}: file: unreadable ({type(err).__name__}: {err})") from None
    return _squeeze_shape(shape, path), np.dtype(dtype)


def read_image(path: Path) -> np.ndarray:
    """The 2-D pixel array of one channel file (.tif/.tiff via tifffile, .png via scikit-image, .npy)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CropImportError(f"{path}: format: expected one of {list(FORMATS)}, found {suffix!r}")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile
            array = tifffile.imread(path)
        elif suffix == ".png":
            import skimage.io
            array = skimage.io.imread(path)
        else:
            array = np.load(path, allow_pickle=False)
    except Exception as err:  # any reader failure is an unreadable file for the user
        raise CropImportError(f"{path}: file: unreadable ({type(err).__name__}: {err})") from None
    return array.reshape(_squeeze_shape(array.shape, path))


def store_dtype(dtypes: set[np.dtype]) -> str:
    """Store dtype for inputs of these dtypes: uint8 or uint16 when every input fits, else float32."""
    if all(d == np.uint8 for d in dtypes):
        return "uint8"
    if all(d in (np.uint8, np.uint16) for d in dtypes):
        return "uint16"
    return "float32"


def _check_paths(src: Path, out: Path, overwrite: bool) -> None:
    """OUT may be neither SRC nor a folder holding it, and only an existing crop store may be overwritten."""
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or out_real in src_real.parents:
        raise CropImportError(f"{out}: OUT: is the source folder {src} or contains it; choose an OUT outside SRC "
                              "(nothing was changed)")
    if out.exists() and not overwrite:
        raise CropImportError(f"{out}: OUT: already exists; pass overwrite=True (--overwrite) to replace it")
    if overwrite:
        check_replaceable_store(out)


def _nucleus_distance(path: Path, sigma: float) -> np.ndarray | None:
    """The derived distance channel of a crop from its nucleus file, None when no usable mask comes out."""
    try:
        return crop_nucleus_distance(read_image(path), sigma)
    except ValueError:  # constant crop, or a mask that is empty or everything
        return None


def import_crops(src: str | os.PathLike, out: str | os.PathLike, channels: Mapping[str, str], *,
                 pattern: str = DEFAULT_PATTERN, table: str | os.PathLike | None = None,
                 families: str | os.PathLike | None = None, family_protein_column: str = "protein",
                 family_column: str = "", derive_distance: bool = False, distance_sigma: float = 1.0,
                 overwrite: bool = False, progress: bool = True) -> CropStore:
    """Import the per-cell channel files under ``src`` (or listed in ``table``, paths relative to ``src``) into a
    new crop store at ``out``.

    ``channels`` maps the channel token in file names to the store's channel role, in store order, e.g.
    ``{"gfp": "protein", "rfp": "fiducial"}``. Crops are (H, W, C) with C = len(channels) (+1 with
    ``derive_distance``: a last ``distance`` channel from the ``nucleus`` one, Gaussian ``distance_sigma`` px;
    crops without a usable nucleus mask are left out with a warning); dtype uint8/uint16 when every input is,
    else float32 (float64 and other inputs converted with a note). fov ids become ``<protein>/<fov>``;
    ``family`` comes from the ``families`` CSV (data/families.py; empty for proteins it lacks); ``source`` is
    the protein-channel file's path relative to ``src``. ``overwrite`` replaces an existing crop store only.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise CropImportError(f"{src}: SRC: expected a folder of crops, found " + ("a file" if src.exists() else "nothing"))
    _check_paths(src, out, overwrite)
    roles = list(channels.values())
    if roles.count("protein") != 1 or len(set(roles)) != len(roles):
        raise CropImportError(f"--channel: expected distinct roles with exactly one 'protein', found "
                              f"{[f'{t}={r}' for t, r in channels.items()]}")
    if derive_distance and ("nucleus" not in roles or "distance" in roles):
        raise CropImportError(f"--derive-distance: expected a channel mapped to 'nucleus' and none to 'distance', "
                              f"found {[f'{t}={r}' for t, r in channels.items()]}")
    family_of = read_families(families, family_protein_column, family_column) if families else {}

    cells = cells_from_table(table, channels, src) if table is not None else find_cells(src, pattern, channels)
    tokens = list(channels)
    nucleus_token = tokens[roles.index("nucleus")] if derive_distance else None
    shapes: dict[tuple[int, int], Path] = {}
    dtypes = set()
    no_mask: list[Cell] = []
    for cell in tqdm(cells, desc="scanning crops", unit="cell", disable=not progress):
        for token in tokens:
            shape, dtype = probe_image(cell.files[token])
            shapes.setdefault(shape, cell.files[token])
            dtypes.add(dtype)
            if len(shapes) > 1:
                (first, first_path), = list(shapes.items())[:1]
                raise CropImportError(f"{cell.files[token]}: shape: expected {first[0]}x{first[1]} like {first_path}, "
                                      f"found {shape[0]}x{shape[1]} (crops of mixed sizes)")
        if nucleus_token and _nucleus_distance(cell.files[nucleus_token], distance_sigma) is None:
            no_mask.append(cell)
    if no_mask:
        if len(no_mask) == len(cells):
            raise CropImportError(f"{no_mask[0].files[nucleus_token]}: nucleus: no crop gave a nucleus mask (the "
                                  f"nucleus channel is constant, or its threshold keeps all or nothing); check the "
                                  f"--channel mapped to 'nucleus' or --distance-sigma")
        warnings.warn(f"{src}: --derive-distance: {len(no_mask)} of {len(cells)} crops have no usable nucleus mask "
                      f"and are left out, e.g. {no_mask[0].files[nucleus_token]}", stacklevel=2)
        dropped = {id(c) for c in no_mask}
        cells = [c for c in cells if id(c) not in dropped]
    (height, width), = shapes
    dtype = store_dtype(dtypes)
    converted = sorted(str(d) for d in dtypes if d.name not in ("uint8", "uint16", "float16", "float32"))
    if converted:
        warnings.warn(f"{src}: dtype: converting {', '.join(converted)} pixels to {dtype}", stacklevel=2)

    proteins = [c.protein for c in cells]
    if family_of and not set(proteins) & set(family_of):
        raise CropImportError(f"{families}: {family_protein_column}: no protein of the crops is listed "
                              f"(crops have e.g. {sorted(set(proteins))[:3]})")
    unlisted = sorted(set(proteins) - set(family_of))
    if family_of and unlisted:
        warnings.warn(f"{families}: {len(unlisted)} protein(s) have no family, left empty: {unlisted[:5]}",
                      stacklevel=2)
    protein_token = tokens[roles.index("protein")]

    def source(path: Path) -> str:
        return (path.relative_to(src) if path.is_relative_to(src) else path).as_posix()

    table_out = pd.DataFrame({
        "protein": proteins,
        "fov": [f"{c.protein}/{c.fov}" for c in cells],
        "family": [family_of.get(p, "") for p in proteins],
        "source": [source(c.files[protein_token]) for c in cells],
    })
    store_channels = roles + (["distance"] if derive_distance else [])
    if derive_distance:
        dtype = "float32"  # signed distances are fractional and negative outside the nucleus
    metadata = {"derived": {"distance": {
        "from": "nucleus", "sigma_px": distance_sigma, "crops_left_out": len(no_mask),
        "method": "Otsu threshold of a Gaussian low-pass of the nucleus channel, holes filled; signed Euclidean "
                  "distance to the mask edge in px, positive inside (cytoself_jax.imaging.nucleus)"}}} \
        if derive_distance else None

    with create_store(out, len(cells), (height, width, len(store_channels)), store_channels, dtype,
                      overwrite=overwrite) as writer:
        for i, cell in enumerate(tqdm(cells, desc="importing crops", unit="cell", disable=not progress)):
            for c, token in enumerate(tokens):
                image = read_image(cell.files[token])
                if image.shape != (height, width):
                    raise CropImportError(f"{cell.files[token]}: shape: expected {height}x{width}, found "
                                          f"{image.shape[0]}x{image.shape[1]} (crops of mixed sizes)")
                writer.images[i, :, :, c] = image
                if token == nucleus_token:  # the scan checked that this crop's mask is usable
                    writer.images[i, :, :, -1] = crop_nucleus_distance(image, distance_sigma)
        bad = check_pixels(writer, progress=progress)
        if bad.size:
            raise _bad_pixels_error(writer.images, bad, cells, tokens, roles.index("protein"))
        return writer.finalize(table_out, metadata)


def _bad_pixels_error(images: np.ndarray, bad: np.ndarray, cells: list[Cell], tokens: list[str],
                      protein: int) -> CropImportError:
    """Name the file behind the first bad crop found by check_pixels."""
    crop = np.asarray(images[bad[0]], dtype=np.float32)
    finite = np.isfinite(crop).reshape(-1, crop.shape[-1]).all(axis=0)
    others = f" ({bad.size - 1} more bad crop(s), e.g. {cells[bad[1]].files[tokens[protein]]})" if bad.size > 1 else ""
    if not finite.all():
        channel = int(np.flatnonzero(~finite)[0])
        # a finite value beyond float32's range (e.g. 1e39 in a float64 file) is infinite once in the store
        return CropImportError(f"{cells[bad[0]].files[tokens[channel]]}: pixels: expected finite values within the "
                               f"float32 range (|x| <= 3.4e38), found NaN, infinity or a larger value; rescale "
                               f"or fix the image{others}")
    return CropImportError(f"{cells[bad[0]].files[tokens[protein]]}: pixels: expected a protein image, found a "
                           f"constant (blank) crop{others}")
