"""A score is a record, not a string: its value, its uncertainty, its chance level and what it was computed on.

Every evaluator returns Score records; the console summary, metrics.md, metrics.json and the comparison tables
of bench/ are all rendered from them (render_rows), so a score's interval and chance level travel with it
everywhere and a new score needs no formatting code of its own.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class Score:
    """One number an evaluation reports.

    key: stable dotted name ('knn.protein_top1'), the column name in comparison tables; label: the words shown
    to a reader; value: the estimate (None: undefined here, with a note saying why); low/high: its 95% interval
    (a bootstrap over fields of view unless `interval` says otherwise); sd: a spread over repeats (the UMAP
    seeds of the clustering score); chance: the value a random embedding is expected to score; n: rows it was
    computed on (crops or proteins); groups: independent units behind the interval (fields of view); basis:
    what it measures and on which embedding; digits: decimals shown.
    """

    key: str
    label: str
    value: float | None
    basis: str = ""
    low: float | None = None
    high: float | None = None
    interval: str = "95% CI, bootstrap over fields of view"
    sd: float | None = None
    chance: float | None = None
    n: int | None = None
    groups: int | None = None
    digits: int = 3

    def to_json(self) -> dict[str, Any]:
        """A plain dict (None for undefined values, NaN never written)."""
        out = dataclasses.asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    @classmethod
    def from_interval(cls, key: str, label: str, interval, *, unit: str = "fields of view", **fields: Any
                      ) -> "Score":
        """A score from a bootstrap Interval (analysis/uncertainty.py): its value, bounds (None where not finite)
        and number of groups; `unit` names what was resampled; other fields (basis, chance, n) as given."""
        def finite(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return cls(key, label, finite(interval.value), low=finite(interval.low), high=finite(interval.high),
                   groups=interval.n_groups, interval=f"{interval.level:.0%} CI, bootstrap over {unit}", **fields)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "Score":
        """The record of metrics.json; unknown keys (a newer writer) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def value_text(self) -> str:
        """'0.412 [0.371, 0.455]', '4.72 +- 1.50' or 'n/a'."""
        if self.value is None:
            return "n/a"
        text = f"{self.value:.{self.digits}f}"
        if self.sd is not None:
            text += f" +- {self.sd:.{self.digits}f}"
        if self.low is not None and self.high is not None:
            text += f" [{self.low:.{self.digits}f}, {self.high:.{self.digits}f}]"
        return text

    def meaning_text(self) -> str:
        """The basis with the chance level and the sample size, for the 'meaning' column."""
        parts = [self.basis] if self.basis else []
        if self.chance is not None:
            parts.append(f"chance {self.chance:.{self.digits}f}")
        if self.n is not None:
            in_fields = self.groups and "fields of view" in self.interval  # not when proteins were resampled
            parts.append(f"n = {self.n}" + (f" in {self.groups} fields" if in_fields else ""))
        if self.low is not None and self.high is not None:
            parts.append(f"[{self.interval}]")
        return "; ".join(parts)


def scores_from_metrics(metrics: Mapping[str, Any]) -> list[Score]:
    """The Score records of a metrics.json dict, in the order they were written."""
    return [Score.from_json(r) for r in (metrics.get("scores") or {}).values()]


def render_rows(scores: Iterable[Score]) -> list[tuple[str, str, str]]:
    """(label, value with interval, meaning with chance and n) per score: metrics.md's table and the console."""
    return [(s.label, s.value_text(), s.meaning_text()) for s in scores]


def markdown_table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A Markdown table of string rows."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
