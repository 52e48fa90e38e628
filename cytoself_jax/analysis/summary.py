"""What a reader sees of an evaluation: metrics.md and the console summary, both rendered from the Score records
of metrics.json (analysis/records.py), so they can never disagree with it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from cytoself_jax.analysis.records import markdown_table, render_rows, scores_from_metrics

if TYPE_CHECKING:
    from cytoself_jax.analysis.report import EvalResult

HEADER = ("metric", "value [95% CI]", "meaning")


def metrics_markdown(m: dict) -> str:
    """metrics.md: the run, a table of scores with their intervals, chance levels and meaning, and the notes."""
    r = m["run"]
    model = "untrained (random init) model" if r["random_init"] else f"checkpoint '{r['checkpoint']}' (step {r['step']})"
    lines = [f"# Evaluation of {r['run_dir']}", "",
             f"{model}; split **{r['split']}** of {r['store']}: {r['crops']} crops, {r['proteins']} proteins, "
             f"{r['families']} annotated families.", ""]
    if r.get("heldout_proteins"):
        lines += [f"Proteins held out of training ({len(r['heldout_proteins'])}): "
                  + ", ".join(r["heldout_proteins"]) + ".", ""]
    lines.append(markdown_table(render_rows(scores_from_metrics(m)), HEADER))
    lines += ["", "Intervals: 95%, from a bootstrap that resamples fields of view (the unit of independence) unless "
              "the row says otherwise; '+- sd' is the spread over UMAP seeds; 'chance' is the expected value of a "
              "random ranking or guess."]
    if m["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in m["notes"]]
    code = r.get("code") or {}
    if code:
        lines += ["", f"Written by cytoself-jax {code['versions'].get('cytoself-jax', '')} (source sha256 "
                  f"{code['source_sha256'][:12]})."]
    return "\n".join(lines) + "\n"


def summary_table(m: dict) -> str:
    """The short table printed at the end of eval.py and the embed command: label, value and interval."""
    rows = [(s.label, s.value_text() + (f"  (chance {s.chance:.{s.digits}f})" if s.chance is not None else ""))
            for s in scores_from_metrics(m)]
    if not rows:
        return "  (no scores: only pictures and tables were asked for)"
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{width}}  {b}" for a, b in rows)


def result_text(result: "EvalResult") -> str:
    """What eval.py and the embed command print at the end: crops, summary table, notes, where the outputs are."""
    m, out = result.metrics, result.out_dir
    r = m["run"]
    lines = [f"\n{r['split']} {'split' if r['split'] != 'all' else 'crops'}: {r['crops']} crops, {r['proteins']} "
             f"proteins ({'random init' if r['random_init'] else 'step ' + str(r['step'])})", summary_table(m),
             "  (value [95% CI, bootstrap over fields of view]; what each score means: metrics.md)"]
    lines += [f"  note: {note}" for note in m["notes"]]
    lines.append(f"outputs: {out} (atlas: {out / 'atlas.png'}; table: {out / 'metrics.md'})")
    if result.reused:
        lines.append("  (already evaluated: same code, checkpoint, store and options, so nothing was recomputed; "
                     "--force recomputes)")
    return "\n".join(lines)
