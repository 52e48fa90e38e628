"""Reading raw fields of view: TIFF/OME-TIFF (tifffile), NPY, and zarr where the ``zarr`` package is installed.

Axis convention. Every field is brought to ``(Z, C, Y, X)`` and max-projected over Z. Axes come from, in order:
1. ``axes`` given by the user (``--axes``), e.g. ``"ZCYX"``, ``"CYX"``, ``"YXC"``, ``"TCZYX"``;
2. the file's own metadata: OME-TIFF, ImageJ hyperstacks and OME-Zarr name their axes (TIFF ``S``, the samples
   of an RGB-like image, counts as ``C``);
3. otherwise by the number of dimensions: 3 -> ``"CYX"``, 4 -> ``"ZCYX"`` (ImageJ's order; a channels-last
   array needs ``--axes YXC`` / ``ZYXC``).
Letters other than Z, C, Y, X (e.g. T) must have length 1. A 2D field has no Z and is taken as is.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
KNOWN_AXES = frozenset("TZCYX")
DEFAULT_AXES = {3: "CYX", 4: "ZCYX"}


class FieldError(ValueError):
    """One field of view cannot be used; the message is one line naming the file and what was expected."""


@dataclass(frozen=True)
class Field:
    """The two channels of one field after z max-projection: ``protein`` and ``nucleus`` are (H, W) raw intensities."""
    protein: np.ndarray
    nucleus: np.ndarray
    axes: str


def is_field_file(path: Path) -> bool:
    """True for the file kinds ``read_field`` understands (``.zarr`` is a directory)."""
    return path.name.lower().endswith(SUFFIXES)


def _read_tiff(path: Path) -> tuple[np.ndarray, str | None]:
    import tifffile

    # tifffile logs (rather than raises) some damage, e.g. a bad first-page offset; the error we raise says it all.
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes.replace("S", "C")
            # tifffile names axes it cannot identify Q (shaped files) or I (plain page sequences): no real metadata.
            return series.asarray(), (None if set(axes) & set("QI") else axes)
    finally:
        logger.setLevel(level)


def _read_zarr(path: Path) -> tuple[np.ndarray, str | None]:
    try:
        import zarr
    except ImportError:
        raise FieldError(f"{path}: zarr: reading .zarr needs the 'zarr' package, which is not installed") from None
    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return np.asarray(node), None
    # An OME-Zarr image: the first multiscale's first (full resolution) dataset, axes from its metadata.
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise FieldError(f"{path}: zarr: expected an array or an OME-Zarr image group with 'multiscales'")
    scale = multiscales[0]
    array = np.asarray(node[scale["datasets"][0]["path"]])
    names = [a["name"] if isinstance(a, dict) else a for a in scale.get("axes", [])]
    axes = "".join(n[0].upper() for n in names) if names else None
    return array, (axes if axes and len(axes) == array.ndim else None)


def load_array(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """The raw array of a field file and the axes its metadata names (None when it names none).

    Raises FieldError (one line) for a missing, truncated or otherwise unreadable file."""
    path = Path(path)
    name = path.name.lower()
    readers = {(".tif", ".tiff"): _read_tiff, (".npy",): lambda p: (np.load(p, mmap_mode="r"), None),
               (".zarr",): _read_zarr}
    for suffixes, reader in readers.items():
        if name.endswith(suffixes):
            if not path.exists():
                raise FieldError(f"{path}: file: not found")
            try:
                array, axes = reader(path)
                if array.size == 0:
                    raise FieldError(f"{path}: shape: empty array {array.shape}")
                return array, axes
            except FieldError:
                raise
            except Exception as err:  # noqa: BLE001 - readers of damaged files raise anything from IndexError to EOF
                detail = " ".join(str(err).split())[:200] or "no detail"
                raise FieldError(f"{path}: file: unreadable {suffixes[0][1:].upper()} ({type(err).__name__}: "
                                 f"{detail})") from None
    raise FieldError(f"{path}: file: expected one of {', '.join(SUFFIXES)}")


def _resolve_axes(path: Path, shape: tuple[int, ...], axes: str | None, meta_axes: str | None) -> str:
    chosen = (axes or meta_axes or DEFAULT_AXES.get(len(shape), "")).upper()
    source = "--axes" if axes else ("the file's metadata" if meta_axes else "the default for its dimensions")
    if not chosen:
        raise FieldError(f"{path}: axes: a field of shape {shape} needs --axes (e.g. ZCYX); "
                         f"defaults exist only for 3 (CYX) or 4 (ZCYX) dimensions")
    if len(chosen) != len(shape) or len(set(chosen)) != len(chosen) or not set(chosen) <= KNOWN_AXES:
        raise FieldError(f"{path}: axes: {chosen!r} (from {source}) does not fit shape {shape}; expected one distinct "
                         f"letter of T, Z, C, Y, X per dimension")
    if not {"C", "Y", "X"} <= set(chosen):
        raise FieldError(f"{path}: axes: {chosen!r} (from {source}) must name C, Y and X (a multi-channel field)")
    for letter, size in zip(chosen, shape):
        if letter not in "ZCYX" and size != 1:
            raise FieldError(f"{path}: axes: axis {letter} has length {size} in shape {shape} (axes {chosen!r}); "
                             f"expected one time point per field")
    return chosen


def project_field(array: np.ndarray, axes: str, protein_channel: int, nucleus_channel: int,
                  where: str = "field") -> Field:
    """Select the two channels of ``array`` (axes as named by ``axes``) and max-project over Z.

    Returns (H, W) arrays in the input dtype. Raises FieldError for a channel index out of range or an empty field.
    """
    order = [axes.index(a) for a in "ZCYX" if a in axes]
    extra = [i for i, a in enumerate(axes) if a not in "ZCYX"]
    data = np.transpose(array, extra + order).reshape([array.shape[i] for i in order])
    if "Z" not in axes:
        data = data[None]
    num_channels = data.shape[1]
    for role, index in (("protein", protein_channel), ("nucleus", nucleus_channel)):
        if not 0 <= index < num_channels:
            raise FieldError(f"{where}: {role} channel: index {index} but the field has {num_channels} channel(s) "
                             f"(axes {axes}, shape {tuple(array.shape)})")
    if data.shape[2] == 0 or data.shape[3] == 0 or data.shape[0] == 0:
        raise FieldError(f"{where}: shape: empty field {tuple(array.shape)} (axes {axes})")
    # Project only the two channels used: a 1024x1024x22 stack with many channels never sits in RAM twice.
    protein = np.asarray(data[:, protein_channel]).max(axis=0)
    nucleus = np.asarray(data[:, nucleus_channel]).max(axis=0)
    return Field(protein=protein, nucleus=nucleus, axes=axes)


def read_field(path: str | os.PathLike, protein_channel: int, nucleus_channel: int,
               axes: str | None = None) -> Field:
    """Read one field of view and return its protein and nucleus channels, z max-projected, as (H, W) arrays."""
    path = Path(path)
    array, meta_axes = load_array(path)
    chosen = _resolve_axes(path, tuple(array.shape), axes, meta_axes)
    return project_field(array, chosen, protein_channel, nucleus_channel, where=str(path))


# ---------------------------------------------------------------------------------------------------------
# Finding the fields of a dataset
# ---------------------------------------------------------------------------------------------------------
DEFAULT_PATTERN = r"(?P<protein>[^/]+)/(?P<fov>[^/]+?)(?:\.ome)?\.(?:tiff?|npy|zarr)$"


class InputError(ValueError):
    """The dataset or the settings are unusable (bad pattern, table, duplicate ids, parameters); one-line message."""


@dataclass(frozen=True)
class FieldSpec:
    """One field of view to prepare: its file, protein and field id (``fov_id`` = ``protein/fov``, unique)."""
    path: str
    protein: str
    fov: str

    @property
    def fov_id(self) -> str:
        return f"{self.protein}/{self.fov}"


def _field_files(root: Path) -> list[Path]:
    """Field files under ``root`` (recursive, sorted); a ``.zarr`` directory counts as one file."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        found += [Path(folder) / d for d in dirs if is_field_file(Path(d))]
        dirs[:] = [d for d in dirs if not is_field_file(Path(d))]
        found += [Path(folder) / n for n in sorted(names) if is_field_file(Path(n))]
    return sorted(found)


def _check_unique(specs: list[FieldSpec]) -> list[FieldSpec]:
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.fov_id in seen:
            raise InputError(f"{spec.path}: fov: id {spec.fov_id!r} already used by {seen[spec.fov_id]}; "
                             f"expected one file per protein/fov")
        seen[spec.fov_id] = spec.path
    return sorted(specs, key=lambda s: (s.protein, s.fov))


def fields_from_pattern(root: str | os.PathLike, pattern: str = DEFAULT_PATTERN
                        ) -> tuple[list[FieldSpec], list[tuple[str, str]]]:
    """Field files under ``root`` whose path relative to it (``/``-separated) contains a match of ``pattern`` (named
    groups ``protein`` and ``fov``). Returns the fields sorted by (protein, fov) and (path, problem) for each field
    file that does not match."""
    root = Path(root)
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise InputError(f"--pattern: expected a regular expression, found {pattern!r} ({err})") from None
    if not {"protein", "fov"} <= set(regex.groupindex):
        raise InputError(f"--pattern: expected named groups 'protein' and 'fov', {pattern!r} has "
                         f"{sorted(regex.groupindex) or 'none'}")
    if not root.is_dir():
        raise InputError(f"{root}: input: expected a folder of fields of view, found "
                         f"{'a file' if root.exists() else 'nothing'}")
    specs, problems = [], []
    for path in _field_files(root):
        match = regex.search(path.relative_to(root).as_posix())
        if match is None or not match["protein"] or not match["fov"]:
            problems.append((str(path), f"path does not match --pattern {pattern!r}"))
        else:
            specs.append(FieldSpec(str(path), match["protein"], match["fov"]))
    if not specs:
        raise InputError(f"{root}: input: no field file ({', '.join(SUFFIXES)}) matches --pattern {pattern!r} "
                         f"({len(problems)} field files found)")
    return _check_unique(specs), problems


def fields_from_table(table: str | os.PathLike, root: str | os.PathLike | None = None) -> list[FieldSpec]:
    """Fields listed in a CSV with columns ``path`` (relative paths are taken from ``root``), ``protein``, ``fov``."""
    import pandas as pd

    try:
        frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{table}: table: unreadable CSV ({err})") from None
    missing = [c for c in ("path", "protein", "fov") if c not in frame.columns]
    if missing:
        raise InputError(f"{table}: table: expected columns path, protein, fov; missing {missing}")
    specs = []
    for row, (path, protein, fov) in enumerate(zip(frame["path"], frame["protein"], frame["fov"])):
        if not (path.strip() and protein.strip() and fov.strip()):
            raise InputError(f"{table}: row {row}: expected non-empty path, protein and fov")
        full = Path(path) if Path(path).is_absolute() or root is None else Path(root) / path
        specs.append(FieldSpec(str(full), protein.strip(), fov.strip()))
    if not specs:
        raise InputError(f"{table}: table: expected at least one row")
    return _check_unique(specs)
