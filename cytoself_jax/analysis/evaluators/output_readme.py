"""README.md: what each file of the output folder is and every CSV column (analysis/output_readme.py). Runs last,
so it describes what the other evaluators wrote."""
from __future__ import annotations

from cytoself_jax.analysis.context import EvalContext, Evaluation
from cytoself_jax.analysis.output_readme import describe_folder


def evaluate(ctx: EvalContext) -> Evaluation:
    text, undescribed = describe_folder(ctx.out)
    (ctx.out / "README.md").write_text(text, encoding="utf-8")
    notes = [f"README.md: columns without a description: {', '.join(undescribed)}"] if undescribed else []
    return Evaluation(notes=notes)
