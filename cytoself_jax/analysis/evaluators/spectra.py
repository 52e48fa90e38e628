"""Feature spectra (paper Fig. 4-5): per-protein mean local code histograms (protein_profiles.csv), the clustered
code correlation (feature_spectrum.png), spectra of chosen proteins and of families, and the interpretation of
one protein's spectrum peaks (interpretation_<protein>.png)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cytoself_jax.analysis import interpret, neighbours, spectrum
from cytoself_jax.analysis.common import group_means
from cytoself_jax.analysis.context import EvalContext, Evaluation, largest
from cytoself_jax.analysis.common import safe_name
from cytoself_jax.data.pipeline import StoreSource

MAX_FAMILY_SPECTRA = 12  # spectra_families.png shows the largest families only


def chosen_proteins(requested: Sequence[str], proteins: np.ndarray, families: np.ndarray) -> list[str]:
    """Proteins whose spectra are drawn: the requested ones, else the most imaged protein of each of the 3 largest
    families (or the 3 most imaged proteins when no family is annotated)."""
    if requested:
        return list(requested)
    fams = largest(families)[:3]
    if not fams:
        return largest(proteins, exclude=())[:3]
    return [largest(proteins[families == f], exclude=())[0] for f in fams]


def evaluate(ctx: EvalContext) -> Evaluation:
    o, out = ctx.options, ctx.out
    proteins, families = ctx.proteins, ctx.families
    result = Evaluation()
    shown = chosen_proteins(o.proteins, proteins, families)
    names, spectra = spectrum.protein_spectra(ctx.outputs.local_histograms, proteins)
    family_of = neighbours.protein_families(proteins, families)
    counts = pd.Series(proteins).value_counts()
    profile_table = pd.DataFrame(spectra, columns=[f"code_{k}" for k in range(spectra.shape[1])])
    profile_table.insert(0, "crops", [int(counts[n]) for n in names])
    profile_table.insert(0, "family", [family_of[n] for n in names])
    profile_table.insert(0, "protein", names)
    profile_table.to_csv(out / "protein_profiles.csv", index=False, float_format="%.6g")
    clusters = None
    if len(names) >= 2:
        corr, used = spectrum.code_correlation(spectra)
        if used.sum() >= 2:
            clusters = spectrum.cluster_codes(corr, used, n_clusters=min(11, int(used.sum())))
            spectrum.plot_code_correlation(corr, clusters, out / "feature_spectrum.png")
            rows_of = {n: i for i, n in enumerate(names)}
            spectrum.plot_spectra(spectra[[rows_of[p] for p in shown]],
                                  [f"{p} ({family_of[p] or 'no family'})" for p in shown], clusters,
                                  out / "spectra_proteins.png", svg=o.svg)
            fams = largest(np.array([family_of[n] for n in names]))
            if len(fams) > MAX_FAMILY_SPECTRA:
                result.notes.append(f"spectra_families.png: the {MAX_FAMILY_SPECTRA} largest of {len(fams)} families")
                fams = fams[:MAX_FAMILY_SPECTRA]
            if fams:
                keep = np.isin([family_of[n] for n in names], fams)
                fam_names, fam_spectra = group_means(spectra[keep], np.array([family_of[n] for n in names])[keep])
                spectrum.plot_spectra(fam_spectra, [f"{f} (mean of proteins)" for f in fam_names], clusters,
                                      out / "spectra_families.png", svg=o.svg)
    if clusters is None:
        result.notes.append("feature spectrum: needs at least 2 proteins and 2 used local codes; pictures skipped")
    target = o.interpret or shown[0]
    _interpretation(ctx, target, spectra[list(names).index(target)], clusters)
    return result


def _interpretation(ctx: EvalContext, target: str, protein_spectrum: np.ndarray, clusters) -> None:
    """Zero the top peaks of the image spectrum of the crop of `target` closest (L1) to its protein spectrum."""
    o, out = ctx.options, ctx.outputs
    candidates = np.flatnonzero(ctx.proteins == target)
    hist = out.local_histograms[candidates].astype(np.float64)
    crop = int(candidates[np.argmin(np.abs(hist - protein_spectrum).sum(axis=1))])
    image_spectrum = out.local_histograms[crop]
    peaks = interpret.top_spectrum_codes(image_spectrum, o.interpret_codes)
    code_sets = [[int(c)] for c in peaks] + ([[int(c) for c in peaks]] if len(peaks) > 1 else [])
    positions = int(image_spectrum.sum())

    def describe(code: int) -> str:
        cluster = f", cluster {spectrum.roman(int(clusters.labels[code]))}" if clusters is not None and \
            clusters.labels[code] > 0 else ""
        return f"code {code}\n{image_spectrum[code]}/{positions} positions{cluster}"

    titles = [describe(c[0]) for c in code_sets[: len(peaks)]]
    if len(peaks) > 1:
        titles.append(f"all {len(peaks)} peaks\n{int(image_spectrum[peaks].sum())}/{positions} positions")
    source = StoreSource(ctx.store, ctx.rows, ctx.channels, ctx.fit)
    result = interpret.interpret_codes(ctx.run.model, ctx.run.variables, source[crop]["image"], code_sets)
    which = f"{len(peaks)} largest spectrum peaks" if len(peaks) > 1 else "largest spectrum peak"
    channel = ctx.channels[0]
    interpret.plot_interpretation(
        result, ctx.out / f"interpretation_{safe_name(target)}.png", titles, channel=0, channel_name=channel,
        title=f"{target}: crop {int(out.index[crop])}, its {which} zeroed ({channel} channel)")
