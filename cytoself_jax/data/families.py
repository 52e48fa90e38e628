"""Localization families of proteins from a CSV table: ground truth for scoring, never a training input.

One convention for every importer: a ``protein`` column and a ``family`` column. Tables that call it
``localization`` (e.g. the yeast GFP collection's) are accepted with a note.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

FAMILY_COLUMN, ALIASES = "family", ("localization",)


class FamiliesError(ValueError):
    """The families table is unusable; the message is one line naming the file and column."""


def read_families(path: str | os.PathLike, protein_column: str = "protein", family_column: str = "") -> dict[str, str]:
    """Protein -> family from a CSV. ``family_column`` '' means 'family', else 'localization' (with a note).
    Names are stripped of surrounding whitespace; a protein listed twice must have the same family."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise FamiliesError(f"{path}: file: unreadable CSV ({err})") from None
    if not family_column:
        family_column = next((c for c in (FAMILY_COLUMN, *ALIASES) if c in table.columns), FAMILY_COLUMN)
        if family_column != FAMILY_COLUMN:
            warnings.warn(f"{path}: reading families from column {family_column!r} (the convention is "
                          f"{FAMILY_COLUMN!r})", stacklevel=2)
    for column, option in ((protein_column, "--families-protein-column"), (family_column, "--families-column")):
        if column not in table.columns:
            raise FamiliesError(f"{path}: {column}: column missing (set {option}); found columns "
                                f"{list(table.columns)}")
    table = pd.DataFrame({"protein": table[protein_column].str.strip(), "family": table[family_column].str.strip()})
    table = table.drop_duplicates()
    dup = table["protein"].duplicated(keep=False)
    if dup.any():
        protein = table.loc[dup, "protein"].iloc[0]
        raise FamiliesError(f"{path}: {family_column}: protein {protein!r} has conflicting families "
                            f"{sorted(table.loc[table['protein'] == protein, 'family'])}")
    return dict(zip(table["protein"], table["family"]))
