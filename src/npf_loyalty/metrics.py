"""Quality metrics for churn scores, in plain numpy.

Scoring, reports and drift checks import this module, so it must not pull in CatBoost or any
other training dependency. Every ranking metric treats tied scores as one threshold (a model
cannot order accounts it scores identically), which is where naive implementations go wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike


def _binary(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(bool), s


def average_ranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they occupy."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.shape[0]
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # start of every run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Probability that a random leaver outranks a random stayer; a tie counts one half."""
    y, s = _binary(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with true/false positives at `score >= threshold`."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tps = np.cumsum(y_sorted)[last_of_run].astype(np.float64)
    fps = np.cumsum(~y_sorted)[last_of_run].astype(np.float64)
    return s_sorted[last_of_run], tps, fps


def pr_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision: precision at each distinct threshold weighted by the recall it adds.

    Ties enter as one step (no interpolation), so the value does not depend on row order.
    """
    y, s = _binary(y_true, y_score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    _, tps, fps = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_at(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> float:
    """F1 of flagging every row with `score >= threshold`; 0 when nothing is flagged or due."""
    y, s = _binary(y_true, y_score)
    pred = s >= threshold
    tp = float(np.sum(pred & y))
    fp = float(np.sum(pred & ~y))
    fn = float(np.sum(~pred & y))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


def precision_recall_at(
    y_true: ArrayLike, y_score: ArrayLike, threshold: float
) -> tuple[float, float]:
    y, s = _binary(y_true, y_score)
    pred = s >= threshold
    tp = float(np.sum(pred & y))
    flagged = float(pred.sum())
    due = float(y.sum())
    return (tp / flagged if flagged else 0.0), (tp / due if due else 0.0)


def best_f1_threshold(y_true: ArrayLike, y_score: ArrayLike) -> tuple[float, float]:
    """The score threshold (`score >= t` flags) with the highest F1, and that F1.

    Candidates are the distinct scores themselves; among equal F1 the highest threshold wins
    (fewer accounts to call). With no positives nothing can be gained: the threshold is set
    just above the top score.
    """
    y, s = _binary(y_true, y_score)
    n_pos = float(y.sum())
    if y.shape[0] == 0:
        return float("nan"), 0.0
    if n_pos == 0:
        return float(np.nextafter(s.max(), np.inf)), 0.0
    thresholds, tps, fps = _curve(y, s)
    f1 = 2 * tps / (tps + fps + n_pos)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    return float(thresholds[best]), float(f1[best])


def brier(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared error of a probability; 0 is perfect, the base rate's p(1−p) is naive."""
    y, p = _binary(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def log_loss(y_true: ArrayLike, y_prob: ArrayLike, eps: float = 1e-12) -> float:
    y, p = _binary(y_true, y_prob)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


@dataclass(frozen=True)
class ReliabilityBin:
    p_low: float
    p_high: float
    mean_predicted: float
    observed_rate: float
    count: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reliability_table(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10
) -> list[ReliabilityBin]:
    """Predicted versus observed rate by decile (quantile bin) of the predicted probability.

    Bin edges are quantiles of the prediction; equal predictions always share a bin, so with
    heavy ties there are fewer than `n_bins` rows (empty bins are dropped).
    """
    y, p = _binary(y_true, y_prob)
    if p.shape[0] == 0:
        return []
    edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
    inner = np.unique(edges[1:-1])
    bins = np.searchsorted(inner, p, side="right")
    rows = []
    for b in range(inner.shape[0] + 1):
        mask = bins == b
        if not mask.any():
            continue
        rows.append(
            ReliabilityBin(
                p_low=float(p[mask].min()),
                p_high=float(p[mask].max()),
                mean_predicted=float(p[mask].mean()),
                observed_rate=float(y[mask].mean()),
                count=int(mask.sum()),
            )
        )
    return rows


def population_stability_index(
    expected: ArrayLike, actual: ArrayLike, n_bins: int = 10, eps: float = 1e-4
) -> float:
    """PSI of `actual` against `expected` on quantile bins of `expected`; NaN is its own bin.

    Rule of thumb: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 a shift worth acting on.
    Empty bins are floored at `eps` so the logarithm stays finite.
    """
    e = np.asarray(expected, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    if e.shape[0] == 0 or a.shape[0] == 0:
        return float("nan")
    e_ok = e[~np.isnan(e)]
    if e_ok.shape[0]:
        inner = np.unique(np.quantile(e_ok, np.linspace(0.0, 1.0, n_bins + 1))[1:-1])
    else:
        inner = np.empty(0)

    def shares(v: np.ndarray) -> np.ndarray:
        nan = np.isnan(v)
        idx = np.searchsorted(inner, v[~nan], side="right")
        counts = np.bincount(idx, minlength=inner.shape[0] + 1).astype(np.float64)
        counts = np.r_[counts, float(nan.sum())]
        return np.maximum(counts / v.shape[0], eps)

    pe, pa = shares(e), shares(a)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def binary_metrics(y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> dict[str, Any]:
    """The card's standard block: ranking quality, F1 at a fixed threshold, probability quality."""
    y, p = _binary(y_true, y_prob)
    precision, recall = precision_recall_at(y, p, threshold)
    return {
        "n": int(y.shape[0]),
        "positives": int(y.sum()),
        "positive_rate": float(y.mean()) if y.shape[0] else float("nan"),
        "roc_auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "f1": f1_at(y, p, threshold),
        "precision": precision,
        "recall": recall,
        "brier": brier(y, p),
        "threshold": float(threshold),
    }


# --- loyalty bands ---------------------------------------------------------------------------

#: (name, lower bound inclusive, upper bound exclusive) on loyalty = 1 − P(leave).
BANDS: tuple[tuple[str, float, float], ...] = (
    ("низкая", 0.0, 0.2),
    ("средняя", 0.2, 0.8),
    ("высокая", 0.8, float("inf")),
)


def loyalty_band(loyalty: float) -> str:
    """The band a manager sees: below 0.2 «низкая», from 0.2 below 0.8 «средняя», else «высокая»."""
    if np.isnan(loyalty):
        raise ValueError("loyalty is NaN")
    for name, low, high in BANDS:
        if low <= loyalty < high:
            return name
    return BANDS[0][0]  # below zero cannot happen for 1 − p; treat as the lowest band


def band_shares(loyalty: ArrayLike) -> dict[str, float]:
    """Share of rows in each band, in band order (sums to 1)."""
    v = np.asarray(loyalty, dtype=np.float64).ravel()
    if v.shape[0] == 0:
        return {name: float("nan") for name, _, _ in BANDS}
    idx = np.searchsorted(np.array([b[1] for b in BANDS[1:]]), v, side="right")
    counts = np.bincount(idx, minlength=len(BANDS))
    return {name: float(counts[i] / v.shape[0]) for i, (name, _, _) in enumerate(BANDS)}
