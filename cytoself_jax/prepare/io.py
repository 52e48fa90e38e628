"""Reading raw fields of view: TIFF/OME-TIFF (tifffile), PNG/JPEG (scikit-image), NPY, and zarr where the ``zarr``
package is installed.

Axis convention. Every field is brought to ``(Z, C, Y, X)`` and max-projected over Z. Axes come from, in order:
1. ``axes`` given by the user (``--axes``), e.g. ``"ZCYX"``, ``"CYX"``, ``"YXC"``, ``"TCZYX"``;
2. the file's own metadata: OME-TIFF, ImageJ hyperstacks and OME-Zarr name their axes (TIFF ``S``, the samples
   of an RGB-like image, counts as ``C``); a colour PNG or JPEG is ``YXC``;
3. otherwise by the number of dimensions: 3 -> ``"CYX"``, 4 -> ``"ZCYX"`` (ImageJ's order; a channels-last
   array needs ``--axes YXC`` / ``ZYXC``).
Letters other than Z, C, Y, X (e.g. T) must have length 1. A 2D field has no Z and is taken as is.

Pixel size. An OME-TIFF's ``PhysicalSizeX``/``PhysicalSizeY`` (any of pm, nm, µm, mm, m) is read as µm per px;
prepare uses it to bring fields to the reference scale (prepare/scale.py).

Colour composites. Atlases publish RGB(A) images (e.g. green: protein, blue: nucleus, red: microtubules);
``colour_channels("green=protein,blue=nucleus")`` gives the channel indices of the two roles, and ``read_field``
with ``colour=True`` checks that the field has 3 or 4 (RGBA) channels.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cytoself_jax.data.importers import walk_folders

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".zarr")
KNOWN_AXES = frozenset("TZCYX")
DEFAULT_AXES = {3: "CYX", 4: "ZCYX"}
COLOURS = ("red", "green", "blue")  # channel order of RGB(A) images
# OME length units -> µm (the OME default unit is µm)
UNITS_UM = {"pm": 1e-6, "nm": 1e-3, "µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "mm": 1e3, "m": 1e6}


class FieldError(ValueError):
    """One field of view cannot be used; the message is one line naming the file and what was expected."""


@dataclass(frozen=True)
class Field:
    """The two channels of one field after z max-projection: ``protein`` and ``nucleus`` are (H, W) raw intensities;
    ``pixel_size``: µm per px from the file's metadata, None when it states none."""
    protein: np.ndarray
    nucleus: np.ndarray
    axes: str
    pixel_size: float | None = None


def is_field_file(path: Path) -> bool:
    """True for the file kinds ``read_field`` understands (``.zarr`` is a directory)."""
    return path.name.lower().endswith(SUFFIXES)


def _ome_pixel_size(ome_xml: str | None) -> float | None:
    """µm per px from OME-XML's first ``Pixels`` element (the mean of X and Y); None when absent or not usable."""
    import xml.etree.ElementTree as ElementTree

    if not ome_xml:
        return None
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    sizes = []
    for axis in "XY":
        value, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm")
        try:
            size = float(value) * UNITS_UM[unit] if value is not None else None
        except (ValueError, KeyError):
            return None
        if size is not None:
            sizes.append(size)
    mean = float(np.mean(sizes))
    return mean if np.isfinite(mean) and mean > 0 else None


def _read_tiff(path: Path) -> tuple[np.ndarray, str | None, float | None]:
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
            return (series.asarray(), (None if set(axes) & set("QI") else axes),
                    _ome_pixel_size(tif.ome_metadata if tif.is_ome else None))
    finally:
        logger.setLevel(level)


def _read_picture(path: Path) -> tuple[np.ndarray, str | None, None]:
    """A PNG or JPEG: (H, W) grey or (H, W, 3|4) colour, channels last."""
    import skimage.io

    array = skimage.io.imread(path)
    return array, ("YXC" if array.ndim == 3 else None), None


def _read_zarr(path: Path) -> tuple[np.ndarray, str | None, None]:
    try:
        import zarr
    except ImportError:
        raise FieldError(f"{path}: zarr: reading .zarr needs the 'zarr' package, which is not installed") from None
    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return np.asarray(node), None, None
    # An OME-Zarr image: the first multiscale's first (full resolution) dataset, axes from its metadata.
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise FieldError(f"{path}: zarr: expected an array or an OME-Zarr image group with 'multiscales'")
    scale = multiscales[0]
    array = np.asarray(node[scale["datasets"][0]["path"]])
    names = [a["name"] if isinstance(a, dict) else a for a in scale.get("axes", [])]
    axes = "".join(n[0].upper() for n in names) if names else None
    return array, (axes if axes and len(axes) == array.ndim else None), None


def load_array(path: str | os.PathLike) -> tuple[np.ndarray, str | None, float | None]:
    """The raw array of a field file, the axes its metadata names and its pixel size in µm (None when the file
    names none).

    Raises FieldError (one line) for a missing, truncated or otherwise unreadable file."""
    path = Path(path)
    name = path.name.lower()
    readers = {(".tif", ".tiff"): _read_tiff, (".png", ".jpg", ".jpeg"): _read_picture,
               (".npy",): lambda p: (np.load(p, mmap_mode="r"), None, None), (".zarr",): _read_zarr}
    for suffixes, reader in readers.items():
        if name.endswith(suffixes):
            if not path.exists():
                raise FieldError(f"{path}: file: not found")
            try:
                array, axes, pixel_size = reader(path)
                if array.size == 0:
                    raise FieldError(f"{path}: shape: empty array {array.shape}")
                return array, axes, pixel_size
            except FieldError:
                raise
            except Exception:  # noqa: BLE001 - readers of damaged files raise anything from IndexError to EOF
                # the library's own words (offsets, byte strings) help nobody: say what the file should be
                kind = suffixes[0][1:].upper()
                raise FieldError(f"{path}: file: unreadable {kind}: damaged, truncated or not a {kind} file") \
                    from None
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


def colour_channels(mapping: str) -> tuple[int, int]:
    """(protein, nucleus) channel indices of an RGB(A) image from ``"green=protein,blue=nucleus"``; colours other
    than the two roles (``red=microtubules``) are allowed and unused. Raises InputError (one line) otherwise."""
    roles: dict[str, int] = {}
    for item in (part.strip() for part in mapping.split(",") if part.strip()):
        colour, _, role = (t.strip().lower() for t in item.partition("="))
        if colour not in COLOURS or not role:
            raise InputError(f"--rgb: expected COLOUR=ROLE items with COLOUR one of {', '.join(COLOURS)}, "
                             f"found {item!r} in {mapping!r}")
        if role in roles:
            raise InputError(f"--rgb: role {role!r} given twice in {mapping!r}")
        roles[role] = COLOURS.index(colour)
    missing = [r for r in ("protein", "nucleus") if r not in roles]
    if missing:
        raise InputError(f"--rgb: expected a colour for {' and '.join(missing)}, e.g. green=protein,blue=nucleus; "
                         f"found {mapping!r}")
    if roles["protein"] == roles["nucleus"]:
        raise InputError(f"--rgb: protein and nucleus need two different colours, found {mapping!r}")
    return roles["protein"], roles["nucleus"]


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
               axes: str | None = None, colour: bool = False) -> Field:
    """Read one field of view and return its protein and nucleus channels, z max-projected, as (H, W) arrays, with
    the pixel size (µm) its metadata states. ``colour``: the field must be an RGB(A) composite (3 or 4 channels)."""
    path = Path(path)
    array, meta_axes, pixel_size = load_array(path)
    chosen = _resolve_axes(path, tuple(array.shape), axes, meta_axes)
    channels = array.shape[chosen.index("C")]
    if colour and channels not in (3, 4):
        raise FieldError(f"{path}: --rgb: expected an RGB or RGBA image (3 or 4 channels), found {channels} "
                         f"channel(s) (axes {chosen}, shape {tuple(array.shape)})")
    field = project_field(array, chosen, protein_channel, nucleus_channel, where=str(path))
    return dataclasses.replace(field, pixel_size=pixel_size)


# ---------------------------------------------------------------------------------------------------------
# Finding the fields of a dataset
# ---------------------------------------------------------------------------------------------------------
DEFAULT_PATTERN = r"(?P<protein>[^/]+)/(?P<fov>[^/]+?)(?:\.ome)?\.(?:tiff?|png|jpe?g|npy|zarr)$"


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
    """Field files under ``root`` (recursive, following symlinked folders, sorted); a ``.zarr`` directory counts as
    one file."""
    found = []
    for folder, dirs, names in walk_folders(root):
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
