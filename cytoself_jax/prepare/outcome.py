"""What one field gave, in words: why a field gave no crop (one line, one status each), and warnings when its
crops do not look like the paper's (a nucleus and its cell, the nucleus inside the crop)."""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from cytoself_jax.prepare.crop import REJECT_EDGE, REJECT_LARGE
from cytoself_jax.prepare.scale import (REFERENCE_DIAMETER, SOURCE_GIVEN, SOURCE_METADATA, SOURCE_OFF,
                                        SOURCE_PIXEL_SIZE, FieldScale)
from cytoself_jax.prepare.segment import REJECT_DIM, REJECT_SMALL

STATUS_OK, STATUS_ERROR, STATUS_NO_NUCLEI = "ok", "error", "no_nuclei"
STATUS_SMALL_FIELD, STATUS_EDGE, STATUS_LARGE, STATUS_REJECTED = (
    "field_too_small", "all_at_edge", "nuclei_too_large", "all_rejected")
# The words of each status in summaries, in the order they are listed.
STATUS_TEXT = {STATUS_OK: "ok", STATUS_ERROR: "errors", STATUS_SMALL_FIELD: "too small for one crop",
               STATUS_NO_NUCLEI: "no nucleus found", STATUS_EDGE: "every nucleus at an edge",
               STATUS_LARGE: "nuclei larger than the crop", STATUS_REJECTED: "every nucleus rejected"}
INSIDE_LIMIT = 0.5  # a crop more than half inside its own nucleus shows little of the cell around it
CUT_LIMIT = 0.5     # warn when more than this fraction of a field's crops cut their own nucleus


def _at_scale(scale: FieldScale) -> str:
    if scale.factor == 1.0:
        return ""
    return f" after scaling by {scale.factor:.2f} (nuclei {scale.diameter:.0f} -> {REFERENCE_DIAMETER:.0f} px across)"


def _advice(scale: FieldScale) -> str:
    """What to change when nuclei are too large for the crop, by where the field's scale came from (the option
    the user gave is the one to check: --nucleus-diameter and --pixel-size cannot go with --no-rescale)."""
    if scale.source == SOURCE_OFF:
        return "rescale the fields (leave out --no-rescale) or give a larger --crop-size"
    if scale.source == SOURCE_GIVEN:
        return f"check --nucleus-diameter ({scale.diameter:g} px given) or give a larger --crop-size"
    if scale.source in (SOURCE_PIXEL_SIZE, SOURCE_METADATA):
        where = "--pixel-size" if scale.source == SOURCE_PIXEL_SIZE else "the file's OME PhysicalSizeX"
        return f"check the pixel size ({where}) or give --nucleus-diameter"
    return "give --nucleus-diameter or --pixel-size, or a larger --crop-size"


def field_outcome(shape: tuple[int, int], scaled_shape: tuple[int, int], crop_size: int, scale: FieldScale,
                  nuclei: int, crops: int, rejected: Sequence[tuple[float, float, int, str]]) -> tuple[str, str]:
    """(status, one-line reason) of a field of ``shape`` (H, W px), ``scaled_shape`` after scaling, with ``nuclei``
    kept by segmentation, ``crops`` written and ``rejected`` (row, col, area, reason) regions; reason '' when ok."""
    if crops:
        return STATUS_OK, ""
    if min(scaled_shape) < crop_size:
        size = f"{shape[0]}x{shape[1]} px" + (f", {scaled_shape[0]}x{scaled_shape[1]} px{_at_scale(scale)}"
                                              if scaled_shape != shape else "")
        return STATUS_SMALL_FIELD, (f"field too small for one {crop_size} px crop: {size}; use a smaller "
                                    f"--crop-size or larger fields")
    reasons = Counter(why for *_, why in rejected)
    if nuclei == 0:
        found = ", ".join(f"{reasons[k]} {words}" for k, words in ((REJECT_SMALL, "smaller than --min-nucleus-area"),
                                                                   (REJECT_DIM, "too dim for --min-snr")) if reasons[k])
        return STATUS_NO_NUCLEI, "no nucleus found" + (f" (candidate regions: {found})" if found else "")
    if reasons[REJECT_EDGE] == nuclei:
        found = "the nucleus found lies" if nuclei == 1 else f"the {nuclei} nuclei found lie"
        return STATUS_EDGE, (f"every nucleus at an edge: {found} within {crop_size // 2} px of the field's "
                             f"edge{_at_scale(scale)}, so no {crop_size} px crop fits around one")
    large = reasons[REJECT_LARGE]
    if large:
        wider = "the nucleus found is" if nuclei == 1 else f"{large} of {nuclei} nuclei are"
        others = ", the others at an edge or unusable" if large < nuclei else ""
        return STATUS_LARGE, (f"nuclei larger than the crop: {wider} wider than the {crop_size} px "
                              f"crop{_at_scale(scale)}{others}; {_advice(scale)}")
    counts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()) if why not in (REJECT_SMALL, REJECT_DIM))
    return STATUS_REJECTED, f"every nucleus rejected ({counts}); see rejected.csv"


def crop_warning(inside: np.ndarray, cut: np.ndarray, scale: FieldScale | None = None) -> str:
    """One line when a field's crops look wrong, '' otherwise. ``inside`` (n,): fraction of each crop inside its
    own nucleus (about 0.2 for the paper's crops: a 50 px nucleus in 100 px); ``cut`` (n,) bool: its own nucleus
    crosses the crop border; ``scale``: the field's, which decides the advice."""
    problems = []
    if len(inside) and np.median(inside) > INSIDE_LIMIT:
        problems.append(f"in {int((inside > INSIDE_LIMIT).sum())} of {len(inside)} crops most of the crop lies "
                        f"inside one nucleus (median {np.median(inside):.0%})")
    if len(cut) and cut.mean() > CUT_LIMIT:
        problems.append(f"{int(cut.sum())} of {len(cut)} crops cut their own nucleus at the crop border")
    if not problems:
        return ""
    advice = _advice(scale if scale is not None else FieldScale(1.0, None, ""))
    return "crops look wrong: " + "; ".join(problems) + f"; the nuclei are larger than the crop expects: {advice}"


def describe_counts(counts: Mapping[str, int], skip: Sequence[str] = ()) -> str:
    """'3 ok, 1 too small for one crop, 2 errors': the nonzero statuses of ``counts`` in STATUS_TEXT order."""
    parts = [f"{counts[s]} {words}" for s, words in STATUS_TEXT.items() if counts.get(s) and s not in skip]
    return ", ".join(parts) or "none"
