"""One colour per localization family, shared by every output that draws families: atlas.png, the interactive
atlas.html and `uns['family_colors']` of embeddings.h5ad and proteins.h5ad (which scanpy's plots read).

The palette starts with Okabe and Ito's eight colours for colour-blind readers (less black, which marks searched
crops), then colours of Paul Tol's schemes picked greedily to stay apart under simulated deuteranopia,
protanopia and tritanopia (Machado et al. 2009): the first 12 stay at least 14 CIELAB units apart from each other,
from the grey and from white in all three simulations and in normal vision (tests/test_atlas.py measures it).
Grey means one thing only: a crop or protein without a family annotation ('unannotated'); `others` and `mixed`
are annotations and get colours of their own. Beyond 20 names, colours repeat (a warning says so).

Order: annotated families by name, then `others` and `mixed`, then `unannotated`; legends list them in this
order and colours follow it, so a family keeps its colour wherever the same set of families is drawn.
"""
from __future__ import annotations

import warnings
from typing import Iterable

UNANNOTATED = "unannotated"  # the label of crops and proteins without a family ('' in crops.csv)
UNANNOTATED_GREY = "#BBBBBB"
NON_FAMILIES = ("others", "mixed")  # annotations that are no localization class: listed after the classes
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",  # Okabe-Ito
           "#332288", "#882255", "#99DDFF", "#8C564B", "#80BA5A",  # 12: colour-blind safe (see above)
           "#663333", "#7F3C8D", "#999933", "#AA3377", "#EECC66", "#EE6677", "#228833", "#BBCC33")
COLOUR_BLIND_SAFE = 12  # how many of PALETTE keep their distance under every simulated colour blindness


def family_label(name: str | None) -> str:
    """The shown label of a family: '' and None become 'unannotated'."""
    return str(name) if name not in (None, "") else UNANNOTATED


def legend_order(names: Iterable[str]) -> list[str]:
    """Distinct family labels (family_label applied) in legend order: classes by name, then others/mixed, then
    unannotated."""
    labels = {family_label(n) for n in names}
    classes = sorted(labels - set(NON_FAMILIES) - {UNANNOTATED})
    return classes + [n for n in NON_FAMILIES if n in labels] + ([UNANNOTATED] if UNANNOTATED in labels else [])


def family_colours(names: Iterable[str]) -> dict[str, str]:
    """label -> '#RRGGBB' for the family labels of `names` (all families of the data drawn, so a family's colour
    does not depend on which subset a picture shows), in legend order; unannotated is grey."""
    order = legend_order(names)
    return category_colours([n for n in order if n != UNANNOTATED]) | (
        {UNANNOTATED: UNANNOTATED_GREY} if UNANNOTATED in order else {})


def category_colours(names: Iterable[str], repeat_ok: bool = False) -> dict[str, str]:
    """name -> '#RRGGBB' from PALETTE in the given order (Leiden communities, splits, ...). More names than
    colours repeat colours, with a warning unless repeat_ok (e.g. one colour per protein, told by hover)."""
    names = list(dict.fromkeys(names))
    if len(names) > len(PALETTE) and not repeat_ok:
        warnings.warn(f"{len(names)} categories but {len(PALETTE)} distinct colours: colours repeat", stacklevel=2)
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def rgb(colour: str) -> tuple[float, float, float]:
    """'#RRGGBB' -> (r, g, b) in 0..1 (matplotlib's form)."""
    return tuple(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
