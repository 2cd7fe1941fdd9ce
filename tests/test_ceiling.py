"""The dump ceiling: a soft-target learner on one simulation must rank another fund's leavers."""

from __future__ import annotations

import pandas as pd
import pytest

from npf_loyalty.ceiling import dump_ceiling, synthetic_features
from npf_loyalty.synth import SynthConfig

METRIC_KEYS = {"roc_auc", "pr_auc", "f1", "brier", "n", "positives", "threshold"}


@pytest.fixture(scope="module")
def funds(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    work = tmp_path_factory.mktemp("ceiling")
    ev_features, ev_truth = synthetic_features(SynthConfig(accounts=400, seed=3, quarters=16), work)
    sim_features, sim_truth = synthetic_features(
        SynthConfig(accounts=1500, seed=4, quarters=16), work
    )
    return ev_features, ev_truth, sim_features, sim_truth


def test_ceiling_reports_the_card_metrics_for_itself_and_the_truth(
    funds: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    result = dump_ceiling(*funds, iterations=150)
    assert result["ceiling"].keys() >= METRIC_KEYS
    assert result["truth"].keys() >= METRIC_KEYS
    assert result["truth"]["coverage"] == 1.0
    assert result["ceiling"]["n"] == result["truth"]["n"] == result["split"]["test"]["rows"]
    assert result["sim"]["rows"] > result["ceiling"]["n"]
    # ranks the evaluation fund's leavers from features alone, trained on another fund
    assert result["ceiling"]["roc_auc"] > 0.55
    assert 0.0 <= result["ceiling"]["brier"] < 0.25


def test_ceiling_rejects_an_unknown_horizon(
    funds: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    with pytest.raises(ValueError, match="unknown horizon"):
        dump_ceiling(*funds, horizon="next_year")
