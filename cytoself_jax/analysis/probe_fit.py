"""Fitting linear probes: logistic regression on standardized features (the pixel side projected on its first
principal components), the regularization C (and the number of components) chosen by macro-F1 on a validation
split. The paths along C of several probes run in one pool of worker processes (fit_checked; in this process
on one core), and the last few fits are remembered by a digest of their inputs, as one evaluation fits the same
probe in several evaluators. Scoring the fitted probes: analysis/probe.py."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import warnings
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from cytoself_jax.analysis.common import as_labels, as_matrix, fail
from cytoself_jax.analysis.parallel import in_processes

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 regularization strengths tried on validation
GRID_MAX_ITER = 300  # L-BFGS iterations per fit of the grid (warm-started along C); validation judges the fit
C_PATIENCE = 2  # along the C path, stop after this many values in a row that do not beat the path's best
PCA_GRID = (16, 32, 64, 128, 256)  # principal components of the pixel side tried on validation
DEFAULT_C, PIXEL_COMPONENTS = 1.0, 50  # the settings used when no validation split is given


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: standardize, (pixels: project on the first `pca_components` principal components),
    logistic regression with inverse regularization C. selected_on: 'val' (C and components chosen by the
    validation macro-F1, val_macro_f1) or 'defaults' (C=1, 50 components: no validation split given)."""

    scaler: Any
    pca: Any
    classifier: Any
    C: float
    pca_components: int | None
    selected_on: str
    val_macro_f1: float

    def features(self, x: np.ndarray) -> np.ndarray:
        z = self.scaler.transform(x)
        return z if self.pca is None else self.pca.transform(z)[:, :self.pca_components]

    def predict(self, x) -> np.ndarray:
        return self.classifier.predict(self.features(np.asarray(x)))

    @property
    def classes(self) -> np.ndarray:
        return self.classifier.classes_


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Macro-F1 over the classes present in `truth` (a predicted class never true is a false positive only): as
    sklearn's f1_score(labels=classes of truth, average='macro'), from counts, as the bootstrap calls it for every
    replicate. Per class F1 = 2 TP / (true count + predicted count)."""
    classes, t = np.unique(np.asarray(truth), return_inverse=True)
    predicted = np.asarray(predicted)
    at = np.clip(np.searchsorted(classes, predicted), 0, len(classes) - 1)
    p = np.where(classes[at] == predicted, at, -1)  # -1: a class never true
    k = len(classes)
    tp = np.bincount(t[p == t], minlength=k)
    return float(np.mean(2 * tp / (np.bincount(t, minlength=k) + np.bincount(p[p >= 0], minlength=k))))


def fit_probe(train_x, train_y, val_x=None, val_y=None, pixels: bool = False, c_grid: Sequence[float] = C_GRID,
              pca_grid: Sequence[int] = PCA_GRID, seed: int = 0) -> LinearProbe:
    """Fit a linear probe on (train_x (N, d), train_y (N,)), its C (and for pixels the number of principal
    components) chosen by macro-F1 on (val_x, val_y) (val rows of classes seen in training); ties go to the smaller
    C and fewer components. Without a validation split: C=1 and 50 components. The components tried are the first k
    of one PCA fitted on train (capped at train rows - 1 and d); C runs from small to large, each fit starting from
    the last (the same optimum: the problem is convex), and a path stops after C_PATIENCE values in a row that do
    not beat its best (weaker regularization past the best overfits more and needs the most iterations)."""
    return fit_checked([check_problem(train_x, train_y, val_x, val_y, pixels, c_grid, pca_grid, seed)])[0]


class CheckedProblem(NamedTuple):
    """fit_probe's arguments, checked: train_x (N, d), train_y (N,) str, val_x (V, d) and val_y (V,) restricted
    to classes seen in training (or None), and the settings."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray | None
    val_y: np.ndarray | None
    pixels: bool
    c_grid: tuple
    pca_grid: tuple
    seed: int


def fit_checked(problems: Sequence[CheckedProblem]) -> list[LinearProbe]:
    """Fit checked problems at once: the paths along C of all of them (one per number of components on the pixel
    side) run in one pool of worker processes, the costliest first, so that no worker is left with a long path at
    the end; a problem given twice, or fitted recently, is fitted once. Each probe is the one fit_probe gives
    alone."""
    keys = [_digest(("fit_probe", *problem)) for problem in problems]
    fitted = {key: _recall(key) for key in keys}
    todo = {key: problem for key, problem in zip(keys, problems) if fitted[key] is None}
    tasks, projections, spans = [], {}, {}
    for key, problem in todo.items():
        projections[key], paths = _paths(problem)
        spans[key] = range(len(tasks), len(tasks) + len(paths))
        tasks += paths
    # n x width x classes: the cost of one L-BFGS iteration of a path
    order = sorted(range(len(tasks)), key=lambda t: -_path_cost(tasks[t]))
    found = dict(zip(order, in_processes(_c_path, [tasks[t] for t in order])))
    for key, problem in todo.items():
        # the first of equal scores wins: a problem's paths are in increasing number of components
        score, c, k, classifier = max((found[t] for t in spans[key]), key=lambda f: f[0])
        scaler, pca = projections[key]
        fitted[key] = _remember(key, LinearProbe(
            scaler=scaler, pca=pca, classifier=classifier, C=c, pca_components=k,
            selected_on="val" if problem.val_x is not None else "defaults", val_macro_f1=score))
    return [fitted[key] for key in keys]


def check_problem(train_x, train_y, val_x=None, val_y=None, pixels: bool = False,
                  c_grid: Sequence[float] = C_GRID, pca_grid: Sequence[int] = PCA_GRID, seed: int = 0,
                  where: str = "fit_probe") -> CheckedProblem:
    """fit_probe's arguments checked (otherwise a one-line AnalysisInputError naming `where` and the field), the
    validation rows restricted to classes seen in training."""
    train_x = as_matrix(train_x, where, "train_x", flatten=True)
    train_y = as_labels(train_y, len(train_x), where, "train_y")
    if len(np.unique(train_y)) < 2:
        raise fail(where, "train_y", f"expected at least 2 classes to train on, got {list(np.unique(train_y))}")
    for field, grid in (("c_grid", c_grid), ("pca_grid", pca_grid if pixels else (0,))):
        if not len(grid):
            raise fail(where, field, "expected at least one value to try")
    if val_x is not None:
        val_x = as_matrix(val_x, where, "val_x", flatten=True)
        if val_x.shape[1] != train_x.shape[1]:
            raise fail(where, "val_x", f"expected {train_x.shape[1]} features like train_x, got {val_x.shape[1]}")
        val_y = as_labels(val_y, len(val_x), where, "val_y")
        seen = np.isin(val_y, train_y)
        if not seen.any():
            raise fail(where, "val_y", "expected validation rows of a class seen in training, found none")
        val_x, val_y = rows_kept(val_x, seen), val_y[seen]
    return CheckedProblem(train_x, train_y, val_x, val_y, pixels, tuple(c_grid), tuple(pca_grid), seed)


def rows_kept(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """x[keep], without a copy when every row is kept (the pixel matrices are the largest arrays of an eval)."""
    return x if keep.all() else x[keep]


def _paths(problem: CheckedProblem) -> tuple[tuple[Any, Any], list[tuple]]:
    """((fitted scaler, fitted PCA or None), the _c_path arguments of each number of components in increasing
    order, or of the embedding's one path) of a checked problem."""
    train_x, train_y, val_x, val_y, pixels, c_grid, pca_grid, seed = problem
    has_val = val_x is not None
    cap = max(1, min(len(train_x) - 1, train_x.shape[1]))
    grid_k = sorted({min(k, cap) for k in (pca_grid if has_val else (PIXEL_COMPONENTS,))}) if pixels else [None]
    grid_c = sorted(c_grid) if has_val else [DEFAULT_C]
    components = max(grid_k) if pixels else 0
    scaler, pca, p_train = _remembered(("projection", train_x, pixels, components, seed),
                                       lambda: _projection(train_x, components, seed))
    p_val = (pca.transform(scaler.transform(val_x)) if pixels else scaler.transform(val_x)) if has_val else None
    return (scaler, pca), [(p_train[:, :k], train_y, p_val[:, :k] if has_val else None, val_y, grid_c, k)
                           for k in grid_k]


def _path_cost(path: tuple) -> int:
    """Work of one L-BFGS iteration of a _c_path: train rows x features x classes."""
    train_x, train_y = path[0], path[1]
    return train_x.shape[0] * train_x.shape[1] * len(np.unique(train_y))


def _projection(train_x: np.ndarray, components: int, seed: int) -> tuple[Any, Any, np.ndarray]:
    """(fitted StandardScaler, fitted PCA of `components` components or None for 0, train_x projected)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    z_train = scaler.transform(train_x)
    if not components:
        return scaler, None, z_train
    pca = PCA(components, random_state=seed).fit(z_train)
    return scaler, pca, pca.transform(z_train)


# The last few fits (probes and pixel projections) by a digest of their inputs: one evaluation fits the same ones in
# several evaluators (linear_probe and unseen_proteins train on the same crops; a family and a protein probe
# project the same pixels), and a fit is a deterministic function of its inputs, so the copy is what a refit gives.
_FITS: OrderedDict[str, Any] = OrderedDict()
_FITS_KEPT = 8


def _digest(parts: tuple) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.shape}{part.dtype.str}".encode())
            h.update("\0".join(map(str, part.ravel())).encode() if part.dtype == object else
                     np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


def _recall(key: str) -> Any:
    """The fit remembered under `key` (a _digest), or None."""
    if key in _FITS:
        _FITS.move_to_end(key)
        return _FITS[key]
    return None


def _remember(key: str, value: Any) -> Any:
    """Keep `value` as the fit of `key`, forgetting the oldest beyond _FITS_KEPT; returns value."""
    _FITS[key] = value
    while len(_FITS) > _FITS_KEPT:
        _FITS.popitem(last=False)
    return value


def _remembered(parts: tuple, compute: Callable[[], Any]) -> Any:
    """compute(), or its result for the same inputs `parts` if one of the last _FITS_KEPT fits had them."""
    key = _digest(parts)
    found = _recall(key)
    return _remember(key, compute()) if found is None else found


def _c_path(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None, val_y: np.ndarray | None,
            grid_c: Sequence[float], k: int | None) -> tuple[float, float, int | None, Any]:
    """(validation macro-F1, C, k, fitted classifier) of the best C along one path of fit_probe: C from small to
    large, each fit starting from the last, stopping after C_PATIENCE values in a row that do not beat the path's
    best; ties go to the smaller C. Without validation data the one C is fitted and scored NaN. One BLAS thread:
    a fit stopped at max_iter ends where its floating-point sums led it, and their order depends on the thread
    count, so a path fits the same in a worker process as in this process (the parallelism is the paths'; the
    PCA that pixel paths start from is fitted in this process, with every thread)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    classifier = LogisticRegression(max_iter=GRID_MAX_ITER, warm_start=True)
    best, worse = None, 0
    with threadpool_limits(limits=1):
        for c in grid_c:
            with warnings.catch_warnings():  # a large C may stop at max_iter; the validation score judges it
                warnings.simplefilter("ignore", ConvergenceWarning)
                classifier.set_params(C=c).fit(train_x, train_y)
            score = macro_f1(val_y, classifier.predict(val_x)) if val_x is not None else math.nan
            if best is None or score > best[0]:
                best, worse = (score, c, k, copy.deepcopy(classifier)), 0
            else:  # weaker regularization past the path's best only overfits more, and costs the most iterations
                worse += 1
                if worse >= C_PATIENCE:
                    break
    return best
