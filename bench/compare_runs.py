"""Compare groups of evaluated trainings (e.g. two settings, 5 trainings each): one record per training and, per
group and score, n, mean, the between-training sd and a 95% CI of the mean; for two groups, the difference with
Welch's and an exact permutation test's p-values, and the ratio of their sds with the F-test's and the
Brown-Forsythe test's p-values of equal spread. Prints Markdown and writes:

    OUT_trainings.csv / .json   one row per training: run, seed, fold, held-out proteins, epochs run, chosen epoch,
                                the code that evaluated it, every score with its 95% interval
    OUT.md / OUT.csv            the group table (and the differences, for two groups)
    OUT_paired.csv              with --paired A B: per group, score A minus score B within each training (mean,
                                sd, 95% CI, paired t-test and exact sign-flip p-values), e.g. embedding vs pixels

python bench/compare_runs.py --eval-dir test \\
    --group paper runs/paper/demo/full/seed* --group reference runs/reference/demo/full/seed* \\
    --out docs/evaluation/demo_decoders

A group can also be read back from committed per-training records (an earlier OUT_trainings.json), so a new
setting is compared with trainings whose run folders are gone:

python bench/compare_runs.py --records default docs/evaluation/yeast_early_stop_kmeans_trainings.json \\
    loss_without_vq --group ema runs/issue27/ema/yeast/full/seed* --out docs/evaluation/yeast_early_stop_ema
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Sequence

import pandas as pd

from cytoself_jax.analysis.compare import (difference_table, format_cell, group_table, paired_table, score_keys,
                                          training_record)
from cytoself_jax.analysis.records import markdown_table


def git_commit() -> str:
    """The repository's commit (with '+dirty' when it has uncommitted changes), '' outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def _fmt(v) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{v:.3g}"


def read_records(path: Path, group: str, eval_dir: str | None) -> list[dict]:
    """The per-training rows of `group` in a committed OUT_trainings.json (each keeps the commit it was compared
    at as 'compared_at_commit'); a one-line error when the file, the group or its eval folder (unless eval_dir is
    None: any) does not fit."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: expected a per-training records file (OUT_trainings.json): {e}")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SystemExit(f"error: {path}: expected a list of per-training records (OUT_trainings.json)")
    found = [dict(r) for r in rows if r.get("group") == group]
    if not found:
        names = sorted({str(r.get("group")) for r in rows})
        raise SystemExit(f"error: {path}: field 'group': no training of group {group!r} (groups there: {names})")
    other = sorted({str(r.get("eval_dir")) for r in found} - {eval_dir})
    if other and eval_dir is not None:
        raise SystemExit(f"error: {path}: field 'eval_dir': group {group!r} was evaluated in {other}, not "
                         f"{eval_dir!r} (--eval-dir; --any-eval-dir compares them anyway)")
    return found


def compare(groups: dict[str, list[Path | dict]], eval_dir: str, keys: Sequence[str] | None = None,
            pairs: Sequence[tuple[str, str]] = ()
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None, str]:
    """(training rows, group table (long), differences of two groups or None, paired differences of two scores
    within each group's trainings or None, Markdown text). A group is run directories (read now) or per-training
    records read back with read_records (kept as they were, but for the group's name)."""
    commit = git_commit()
    rows = {name: [dict(r) if isinstance(r, dict) else {**training_record(r, eval_dir), "compared_at_commit": commit}
                   for r in runs] for name, runs in groups.items()}
    for name, group_rows in rows.items():
        for r in group_rows:
            r["group"] = name
    keys = list(keys or score_keys(r for g in rows.values() for r in g))
    summary = group_table(rows, keys)
    wide = summary.assign(cell=[format_cell(r) for r in summary.to_dict("records")]) \
        .pivot(index="score", columns="group", values="cell").reindex(index=keys, columns=list(groups))
    folders = {name: sorted({str(r.get("eval_dir")) for r in group_rows}) for name, group_rows in rows.items()}
    mixed = len({tuple(f) for f in folders.values()}) > 1
    text = ("Per group: mean +- between-training sd [95% CI of the mean] (n trainings); one record per training in "
            "the _trainings files."
            + (" Evaluated in different folders: " + "; ".join(f"{n}: {', '.join(f)}" for n, f in folders.items())
               + "." if mixed else "")
            + "\n\n" + markdown_table([(k, *wide.loc[k].tolist()) for k in keys], ("score", *groups)))
    diff = None
    if len(groups) == 2:
        first, second = list(groups)
        diff = difference_table(rows, first, second, keys)
        text += (f"\n\nDifference {first} - {second} (Welch's t-test and exact permutation test, two-sided), and "
                 "their spreads: the between-training sds, their ratio and the p-values of equal spread (F-test; "
                 "Brown-Forsythe, robust to one outlying training):\n\n"
                 + markdown_table([(d["score"], _fmt(d["difference"]), _fmt(d["welch_p"]), _fmt(d["permutation_p"]),
                                    f"{_fmt(d[f'{first} sd'])} / {_fmt(d[f'{second} sd'])}", _fmt(d["sd_ratio"]),
                                    _fmt(d["f_test_p"]), _fmt(d["brown_forsythe_p"]))
                                   for d in diff.to_dict("records")],
                                  ("score", "difference of means", "Welch p", "permutation p",
                                   f"sd {first} / {second}", "sd ratio", "F-test p", "Brown-Forsythe p")))
    paired = None
    if pairs:
        paired = pd.concat([paired_table(group_rows, pairs).assign(group=name) for name, group_rows in rows.items()],
                           ignore_index=True)
        text += ("\n\nPaired within each training (first - second; 95% t-interval of the mean difference; paired "
                 "t-test and exact sign-flip test, two-sided):\n\n"
                 + markdown_table([(d["group"], d["first"], d["second"], str(d["n"]), _fmt(d["first_mean"]),
                                    _fmt(d["second_mean"]),
                                    f"{_fmt(d['difference'])} [{_fmt(d['difference_low'])}, {_fmt(d['difference_high'])}]",
                                    _fmt(d["paired_t_p"]), _fmt(d["sign_flip_p"])) for d in paired.to_dict("records")],
                                  ("group", "first", "second", "n", "first mean", "second mean", "difference [95% CI]",
                                   "paired t p", "sign-flip p")))
    table = pd.DataFrame([r for g in rows.values() for r in g])
    return table, summary, diff, paired, text


class _InOrder(argparse.Action):
    """--group and --records append (option, values) to one list, so groups keep the order they were given in."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, self.dest).append((option_string, values))


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", nargs="+", action=_InOrder, dest="groups", default=[], metavar=("NAME", "RUN"),
                        help="a name and its run directories; repeat for each group")
    parser.add_argument("--records", nargs="+", action=_InOrder, dest="groups", default=[],
                        metavar=("NAME", "FILE [GROUP]"),
                        help="NAME FILE [GROUP]: a group read from committed per-training records (an earlier "
                        "OUT_trainings.json), its trainings of GROUP there (default: NAME); repeatable")
    parser.add_argument("--eval-dir", default="test", help="the eval folder under RUN/eval/ (test, test-latest)")
    parser.add_argument("--any-eval-dir", action="store_true",
                        help="a group read with --records keeps the eval folder its trainings were evaluated in (e.g. "
                        "the last epoch of a fixed budget, test-latest, against the best epoch of trainings to early "
                        "stop, test); the table names each group's")
    parser.add_argument("--scores", nargs="*", default=None, help="score keys to show (default: all)")
    parser.add_argument("--out", default=None, help="path prefix for the tables and the per-training records")
    parser.add_argument("--paired", nargs=2, action="append", default=[], metavar=("FIRST", "SECOND"),
                        help="two score keys compared within each training, e.g. probe.family_embedding_macro_f1 "
                        "probe.family_pixels_macro_f1; repeatable")
    args = parser.parse_args(argv)
    names = [name for _, (name, *_) in args.groups]
    if not names:
        parser.error("expected at least one --group or --records")
    if len(set(names)) < len(names):
        parser.error(f"group names given twice: {sorted({n for n in names if names.count(n) > 1})}")
    groups: dict[str, list] = {}  # in the order given: the difference is first - second
    for option, (name, *rest) in args.groups:
        if option == "--records":
            if len(rest) not in (1, 2):
                parser.error(f"--records {name} {' '.join(rest)}: expected NAME FILE [GROUP]")
            groups[name] = read_records(Path(rest[0]), rest[1] if len(rest) == 2 else name,
                                        None if args.any_eval_dir else args.eval_dir)
            continue
        found = [Path(r) for r in rest if (Path(r) / "eval" / args.eval_dir / "metrics.json").exists()]
        if found:
            groups[name] = found
    if not groups:
        raise SystemExit(f"error: no run of any group has eval/{args.eval_dir}/metrics.json")
    table, summary, diff, paired, text = compare(groups, args.eval_dir, args.scores, [tuple(p) for p in args.paired])
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(f"{out}_trainings.csv", index=False)
        Path(f"{out}_trainings.json").write_text(json.dumps(table.to_dict("records"), indent=2, default=str) + "\n")
        summary.to_csv(out.with_suffix(".csv"), index=False)
        if diff is not None:
            diff.to_csv(f"{out}_difference.csv", index=False)
        if paired is not None:
            paired.to_csv(f"{out}_paired.csv", index=False)
        out.with_suffix(".md").write_text(text + "\n")
    return table


if __name__ == "__main__":
    main()
