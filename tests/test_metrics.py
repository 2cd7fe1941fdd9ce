"""Metrics against small cases worked out by hand, with ties where implementations differ."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npf_loyalty import metrics as m

Y = [0, 0, 1, 1]
S = [0.1, 0.4, 0.35, 0.8]


def test_average_ranks_share_ties() -> None:
    assert m.average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_roc_auc_hand_cases() -> None:
    assert m.roc_auc(Y, S) == pytest.approx(0.75)
    # positives {0.5, 0.9} vs negatives {0.5, 0.2}: the tie counts one half → 3.5 / 4
    assert m.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert m.roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert math.isnan(m.roc_auc([1, 1], [0.2, 0.3]))


def test_pr_auc_hand_cases() -> None:
    # steps: (R .5, P 1), (R .5, P .5), (R 1, P 2/3) → .5·1 + .5·2/3
    assert m.pr_auc(Y, S) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a tie at the top is one step: (R .5, P .5), then (R 1, P 2/3)
    assert m.pr_auc([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1]) == pytest.approx(0.25 + 0.5 * 2 / 3)
    # all tied: precision is the base rate
    assert m.pr_auc([1, 0, 1, 0, 0], [0.5] * 5) == pytest.approx(0.4)
    assert math.isnan(m.pr_auc([0, 0], [0.1, 0.2]))


def test_ranking_metrics_do_not_depend_on_row_order_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 5, 200) / 4.0  # heavy ties
    perm = rng.permutation(200)
    assert m.pr_auc(y, s) == pytest.approx(m.pr_auc(y[perm], s[perm]))
    assert m.roc_auc(y, s) == pytest.approx(m.roc_auc(y[perm], s[perm]))
    # ROC AUC equals the pairwise definition
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert m.roc_auc(y, s) == pytest.approx(pairs)


def test_f1_and_best_threshold() -> None:
    assert m.f1_at(Y, S, 0.35) == pytest.approx(0.8)  # tp 2, fp 1, fn 0
    assert m.f1_at(Y, S, 0.8) == pytest.approx(2 / 3)
    assert m.f1_at(Y, S, 0.95) == 0.0
    t, f1 = m.best_f1_threshold(Y, S)
    assert (t, f1) == (pytest.approx(0.35), pytest.approx(0.8))


def test_best_threshold_is_the_brute_force_maximum() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # ties
    t, f1 = m.best_f1_threshold(y, s)
    brute = max(m.f1_at(y, s, c) for c in np.unique(s))
    assert f1 == pytest.approx(brute)
    assert m.f1_at(y, s, t) == pytest.approx(f1)


def test_best_threshold_without_positives_flags_nobody() -> None:
    t, f1 = m.best_f1_threshold([0, 0, 0], [0.1, 0.5, 0.2])
    assert f1 == 0.0 and t > 0.5


def test_brier_and_log_loss() -> None:
    assert m.brier([0, 1], [0.2, 0.6]) == pytest.approx(0.1)
    assert m.log_loss([0, 1], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_reliability_table_keeps_ties_together() -> None:
    p = [0.1] * 5 + [0.9] * 5
    y = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
    rows = m.reliability_table(y, p)
    assert [(r.mean_predicted, r.observed_rate, r.count) for r in rows] == [
        (pytest.approx(0.1), pytest.approx(0.2), 5),
        (pytest.approx(0.9), pytest.approx(0.8), 5),
    ]
    rows = m.reliability_table(np.zeros(100), np.arange(100) / 100)
    assert [r.count for r in rows] == [10] * 10
    assert rows[0].p_high < rows[1].p_low


def test_psi_hand_case_and_stability() -> None:
    # expected bins (edge 2.5): .5 / .5; actual: .75 / .25
    psi = m.population_stability_index([1, 2, 3, 4], [1, 1, 1, 4], n_bins=2)
    assert psi == pytest.approx(0.25 * math.log(1.5) + 0.25 * math.log(2))
    rng = np.random.default_rng(2)
    x = rng.normal(size=5000)
    assert m.population_stability_index(x, x) == pytest.approx(0.0)
    assert m.population_stability_index(x, x + 1.0) > 0.25
    # a column that starts to go missing is drift too
    assert m.population_stability_index(x, np.r_[x[:2500], np.full(2500, np.nan)]) > 0.25


def test_bands() -> None:
    assert m.loyalty_band(0.0) == "низкая"
    assert m.loyalty_band(0.1999) == "низкая"
    assert m.loyalty_band(0.2) == "средняя"
    assert m.loyalty_band(0.7999) == "средняя"
    assert m.loyalty_band(0.8) == "высокая"
    assert m.loyalty_band(1.0) == "высокая"
    values = [0.0, 0.1999, 0.2, 0.5, 0.8, 1.0]
    shares = m.band_shares(values)
    assert list(shares) == [b[0] for b in m.BANDS]
    expected = {b[0]: sum(m.loyalty_band(v) == b[0] for v in values) / 6 for b in m.BANDS}
    assert shares == pytest.approx(expected)


def test_binary_metrics_block() -> None:
    block = m.binary_metrics(Y, S, 0.35)
    assert block["f1"] == pytest.approx(0.8)
    assert block["precision"] == pytest.approx(2 / 3) and block["recall"] == 1.0
    assert {"roc_auc", "pr_auc", "f1", "brier", "n", "positives"} <= set(block)
