"""Import a folder of per-cell crops (one 2-D file per channel: TIFF, PNG or NPY) into a crop store.

Files are found recursively under the source folder and their names matched (whole name) against a regular
expression with named groups ``fov``, ``cell`` and ``channel``, and optionally ``protein`` (otherwise the protein
is the name of the file's first-level folder). The files of one cell (same protein, fov and cell) become one crop,
channels stacked in the order the channel mapping lists them.
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

from cytoself_jax.data.store import CropStore, check_pixels, create_store

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


def find_cells(src: Path, pattern: str, channels: Mapping[str, str]) -> list[Cell]:
    """Group the files under ``src`` whose names match ``pattern`` into cells; every cell must have a file for
    each channel token in ``channels``. Cells come sorted by protein, fov, cell (numbers in natural order)."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise CropImportError(f"--pattern: expected a regular expression, found {pattern!r} ({err})") from None
    missing = [g for g in ("fov", "cell", "channel") if g not in regex.groupindex]
    if missing:
        raise CropImportError(f"--pattern: expected named groups fov, cell and channel (protein optional), "
                              f"{pattern!r} lacks {missing}")
    cells: dict[tuple[str, str, str], Cell] = {}
    n_files, n_matched, other_channels = 0, 0, set()
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names):
            n_files += 1
            m = regex.fullmatch(name)
            if m is None:
                continue
            n_matched += 1
            path = Path(root) / name
            if "protein" in regex.groupindex:
                protein = m["protein"]
            else:
                parts = path.relative_to(src).parts
                if len(parts) < 2:
                    raise CropImportError(f"{path}: protein: expected the file inside a per-protein folder of {src} "
                                          f"(or a 'protein' group in --pattern)")
                protein = parts[0]
            token = m["channel"]
            if token not in channels:
                other_channels.add(token)
                continue
            key = (protein, m["fov"], m["cell"])
            cell = cells.setdefault(key, Cell(*key))
            if token in cell.files:
                raise CropImportError(f"{path}: channel: cell {key} already has a {token!r} file: {cell.files[token]}")
            cell.files[token] = path
    if n_matched == 0:
        raise CropImportError(f"{src}: --pattern: no file name matches {pattern!r} (looked at {n_files} files)")
    if not cells:
        raise CropImportError(f"{src}: --channel: no matched file has a channel in {list(channels)}; "
                              f"file names give channels {sorted(other_channels)}")
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


def read_families(path: Path, protein_column: str = "protein", family_column: str = "localization") -> dict[str, str]:
    """Protein -> localization family from a CSV table (ground truth for scoring only)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise CropImportError(f"{path}: file: unreadable ({err})") from None
    for column, option in ((protein_column, "--families-protein-column"), (family_column, "--families-column")):
        if column not in table.columns:
            raise CropImportError(f"{path}: {column}: column missing (set {option}); found columns {list(table.columns)}")
    table = table[[protein_column, family_column]].drop_duplicates()
    dup = table[protein_column].duplicated(keep=False)
    if dup.any():
        protein = table.loc[dup, protein_column].iloc[0]
        raise CropImportError(f"{path}: {family_column}: protein {protein!r} has conflicting families "
                              f"{sorted(table.loc[table[protein_column] == protein, family_column])}")
    return dict(zip(table[protein_column], table[family_column]))


def import_crops(src: str | os.PathLike, out: str | os.PathLike, channels: Mapping[str, str], *,
                 pattern: str = DEFAULT_PATTERN, families: str | os.PathLike | None = None,
                 family_protein_column: str = "protein", family_column: str = "localization",
                 overwrite: bool = False, progress: bool = True) -> CropStore:
    """Import the per-cell channel files under ``src`` into a new crop store at ``out``.

    ``channels`` maps the channel token in file names to the store's channel role, in store order, e.g.
    ``{"gfp": "protein", "rfp": "fiducial"}``. Crops are (H, W, C) with C = len(channels); dtype uint8/uint16 when
    every input is, else float32. fov ids become ``<protein>/<fov>``; ``family`` comes from the ``families`` CSV
    (empty for proteins it lacks); ``source`` is the protein-channel file's path relative to ``src``.
    """
    src = Path(src)
    if not src.is_dir():
        raise CropImportError(f"{src}: SRC: expected a folder of crops, found " + ("a file" if src.exists() else "nothing"))
    if Path(out).exists() and not overwrite:
        raise CropImportError(f"{out}: OUT: already exists; pass overwrite=True (--overwrite) to replace it")
    roles = list(channels.values())
    if roles.count("protein") != 1 or len(set(roles)) != len(roles):
        raise CropImportError(f"--channel: expected distinct roles with exactly one 'protein', found "
                              f"{[f'{t}={r}' for t, r in channels.items()]}")
    family_of = read_families(Path(families), family_protein_column, family_column) if families else {}

    cells = find_cells(src, pattern, channels)
    tokens = list(channels)
    shapes: dict[tuple[int, int], Path] = {}
    dtypes = set()
    for cell in tqdm(cells, desc="scanning crops", unit="cell", disable=not progress):
        for token in tokens:
            shape, dtype = probe_image(cell.files[token])
            shapes.setdefault(shape, cell.files[token])
            dtypes.add(dtype)
            if len(shapes) > 1:
                (first, first_path), = list(shapes.items())[:1]
                raise CropImportError(f"{cell.files[token]}: shape: expected {first[0]}x{first[1]} like {first_path}, "
                                      f"found {shape[0]}x{shape[1]} (crops of mixed sizes)")
    (height, width), = shapes
    dtype = store_dtype(dtypes)

    proteins = [c.protein for c in cells]
    if family_of and not set(proteins) & set(family_of):
        raise CropImportError(f"{families}: {family_protein_column}: no protein of the crops is listed "
                              f"(crops have e.g. {sorted(set(proteins))[:3]})")
    unlisted = sorted(set(proteins) - set(family_of))
    if family_of and unlisted:
        warnings.warn(f"{families}: {len(unlisted)} protein(s) have no family, left empty: {unlisted[:5]}",
                      stacklevel=2)
    protein_token = tokens[roles.index("protein")]
    table = pd.DataFrame({
        "protein": proteins,
        "fov": [f"{c.protein}/{c.fov}" for c in cells],
        "family": [family_of.get(p, "") for p in proteins],
        "source": [c.files[protein_token].relative_to(src).as_posix() for c in cells],
    })

    with create_store(out, len(cells), (height, width, len(tokens)), roles, dtype, overwrite=overwrite) as writer:
        for i, cell in enumerate(tqdm(cells, desc="importing crops", unit="cell", disable=not progress)):
            for c, token in enumerate(tokens):
                image = read_image(cell.files[token])
                if image.shape != (height, width):
                    raise CropImportError(f"{cell.files[token]}: shape: expected {height}x{width}, found "
                                          f"{image.shape[0]}x{image.shape[1]} (crops of mixed sizes)")
                writer.images[i, :, :, c] = image
        bad = check_pixels(writer, progress=progress)
        if bad.size:
            raise _bad_pixels_error(writer.images, bad, cells, tokens, roles.index("protein"))
        return writer.finalize(table)


def _bad_pixels_error(images: np.ndarray, bad: np.ndarray, cells: list[Cell], tokens: list[str],
                      protein: int) -> CropImportError:
    """Name the file behind the first bad crop found by check_pixels."""
    crop = np.asarray(images[bad[0]], dtype=np.float32)
    finite = np.isfinite(crop).reshape(-1, crop.shape[-1]).all(axis=0)
    others = f" ({bad.size - 1} more bad crop(s), e.g. {cells[bad[1]].files[tokens[protein]]})" if bad.size > 1 else ""
    if not finite.all():
        channel = int(np.flatnonzero(~finite)[0])
        return CropImportError(f"{cells[bad[0]].files[tokens[channel]]}: pixels: expected finite values, found NaN "
                               f"or infinity{others}")
    return CropImportError(f"{cells[bad[0]].files[tokens[protein]]}: pixels: expected a protein image, found a "
                           f"constant (blank) crop{others}")
