"""Training: the out-of-time split, calibration, threshold, autoencoder, promotion and the card.

Everything runs on a tiny generated feature table with the schema's columns and the labels
defined as `features` defines them, with few trees (config), so the file stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from npf_loyalty import metrics as mt
from npf_loyalty import model as md
from npf_loyalty.schema import FEATURES, LABELS, MODEL_INPUTS, Role
from npf_loyalty.storage import Keys, LocalStore

# --- a tiny fund -------------------------------------------------------------------------------

FIRST_QUARTER = 2016 * 4  # 2016Q1


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_features(
    n_accounts: int = 500, n_quarters: int = 18, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature rows with the schema's columns, labels as `features` defines them, and truth.

    Each account has a hidden thrift u; paying lapses with low u, and the hazard of leaving
    next quarter rises with quarters without contributions and low u (truth = that hazard).
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=n_accounts)
    start = rng.integers(0, 4, n_accounts)  # some accounts join later
    balance = rng.lognormal(11, 1, n_accounts)
    last_paid = np.full(n_accounts, -1)
    last_paid_day = np.full(n_accounts, np.nan)
    alive = np.ones(n_accounts, dtype=bool)
    contrib_hist = np.zeros((n_accounts, n_quarters))
    income_hist = np.zeros((n_accounts, n_quarters))
    count_hist = np.zeros((n_accounts, n_quarters))
    prev_balance = np.full(n_accounts, np.nan)
    rows = []
    hazard_next = np.zeros(n_accounts)
    for t in range(n_quarters):
        active = alive & (start <= t)
        # leaving at t is decided by the state at t−1 (hazard_next)
        leaves = active & (start < t) & (rng.random(n_accounts) < hazard_next)
        pays = active & ~leaves & (rng.random(n_accounts) < _sigmoid(1.0 + 1.5 * u))
        amount = np.where(pays, rng.lognormal(9, 0.8, n_accounts), 0.0)
        count = np.where(pays, rng.integers(1, 4, n_accounts), 0)
        income = balance * 0.015 * rng.normal(1, 0.3, n_accounts)
        balance = balance + amount + income
        contrib_hist[:, t], income_hist[:, t], count_hist[:, t] = amount, income, count
        last_paid = np.where(pays, t, last_paid)
        day = rng.integers(0, 90, n_accounts)
        last_paid_day = np.where(pays, day, last_paid_day + 91)
        qwc = np.where(last_paid >= 0, t - last_paid, t - start + 1)
        hazard_next = _sigmoid(-3.6 + 0.55 * np.minimum(qwc, 6) - 0.9 * u)
        for i in np.flatnonzero(active):
            row = {
                "i": i,
                "t": t,
                "churn": int(leaves[i]),
                "contrib_q": amount[i],
                **{
                    f"contrib_lag{k}": contrib_hist[i, t - k] if t >= k else 0.0
                    for k in range(1, 5)
                },
                "contrib_4q": contrib_hist[i, max(0, t - 3) : t + 1].sum(),
                "contrib_8q": contrib_hist[i, max(0, t - 7) : t + 1].sum(),
                "contrib_count_q": count[i],
                "contrib_count_4q": count_hist[i, max(0, t - 3) : t + 1].sum(),
                "income_q": income[i],
                **{f"income_lag{k}": income_hist[i, t - k] if t >= k else 0.0 for k in range(1, 5)},
                "income_4q": income_hist[i, max(0, t - 3) : t + 1].sum(),
                "days_since_contrib": last_paid_day[i],
                "quarters_without_contrib": qwc[i],
                "balance": balance[i],
                "balance_change_q": balance[i] - prev_balance[i],
                "p_leave_next_q": hazard_next[i],
            }
            rows.append(row)
        prev_balance = np.where(active, balance, np.nan)
        alive &= ~leaves
    df = pd.DataFrame(rows)
    n = len(df)
    df["quarter_idx"] = FIRST_QUARTER + df["t"]
    df["quarter"] = [f"{q // 4}Q{q % 4 + 1}" for q in df["quarter_idx"]]
    df["npo_account_id"] = [f"0x{i:032x}" for i in df["i"]]
    df["client_id"] = [f"0x{i + 10**6:032x}" for i in df["i"]]

    # labels exactly as features.py: NULL on exit rows; 1 if exit at t+1 (t+1..t+4);
    # 0 if a churn = 0 row exists at t+1 (t+4); else NULL
    exit_q = df[df["churn"] == 1].set_index("i")["t"]
    ex = df["i"].map(exit_q).to_numpy(dtype=np.float64, na_value=np.nan)
    present = set(zip(df["i"], df["t"], strict=True))
    stay = {(i, t) for i, t, c in zip(df["i"], df["t"], df["churn"], strict=True) if c == 0}
    t_arr = df["t"].to_numpy()
    churn = df["churn"].to_numpy()

    def label(h: int) -> pd.Series:
        out = np.full(n, np.nan)
        for r, (i, t) in enumerate(zip(df["i"], t_arr, strict=True)):
            if churn[r] == 1:
                continue
            if not np.isnan(ex[r]) and t + 1 <= ex[r] <= t + h:
                out[r] = 1
            elif (i, t + h) in stay:
                out[r] = 0
        return pd.Series(out).astype("Int64")

    assert present
    df["label_next_q"] = label(1)
    df["label_next_4q"] = label(4)
    last_row = df.groupby("i")["t"].transform("max") == df["t"]
    df["is_scoring_row"] = last_row & (df["t"] == n_quarters - 1) & (df["churn"] == 0)
    df["churn"] = df["churn"].astype("Int64")

    # everything else the schema has: plausible noise (the model must cope with it)
    for f in FEATURES:
        if f.name in df.columns:
            continue
        if f.role is Role.INPUT:
            if f.categorical:
                df[f.name] = rng.integers(-1, 4, n).astype(np.float64)
            else:
                v = rng.normal(size=n)
                v[rng.random(n) < 0.05] = np.nan
                df[f.name] = v
        elif f.duckdb_type == "DATE":
            df[f.name] = pd.Timestamp("2016-03-31")
        elif f.duckdb_type == "INTEGER":
            df[f.name] = 0
        else:
            df[f.name] = "unknown"
    truth = df[["npo_account_id", "quarter", "p_leave_next_q"]].copy()
    truth["p_leave_next_4q"] = 1 - (1 - truth["p_leave_next_q"]) ** 4
    return df[[f.name for f in FEATURES]], truth


FAST = md.TrainConfig(
    depths=(4,),
    learning_rates=(0.1,),
    iterations=60,
    early_stopping_rounds=20,
    recipe_iterations=40,
    ae=md.AEConfig(epochs=15, patience=3),
)


@pytest.fixture(scope="module")
def fund() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_features()


@pytest.fixture(scope="module")
def trained(fund: tuple[pd.DataFrame, pd.DataFrame]) -> md.TrainedModel:
    features, truth = fund
    return md.train(features, truth, dataclasses.replace(FAST, embeddings="always"))


@pytest.fixture(scope="module")
def weak(fund: tuple[pd.DataFrame, pd.DataFrame]) -> md.TrainedModel:
    """A deliberately poor model on the same data: one split per tree, two trees."""
    features, _ = fund
    config = dataclasses.replace(
        FAST, depths=(1,), iterations=2, embeddings="never", recipe_iterations=5
    )
    return md.train(features, None, config)


# --- the split ---------------------------------------------------------------------------------


def test_generated_table_has_the_schema_columns(fund: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    features, _ = fund
    assert list(features.columns) == [f.name for f in FEATURES]
    assert set(LABELS) <= set(features.columns)


@pytest.mark.parametrize("horizon", [1, 4])
def test_split_never_lets_a_training_label_see_the_future(
    fund: tuple[pd.DataFrame, pd.DataFrame], horizon: int
) -> None:
    features, _ = fund
    label = {1: "label_next_q", 4: "label_next_4q"}[horizon]
    q = features["quarter_idx"].to_numpy()
    labelled = features[label].notna().to_numpy()
    s = md.out_of_time_split(q, labelled, horizon)
    tr, va, te = q[s.train], q[s.valid], q[s.test]
    # disjoint, ordered in time, only labelled rows
    assert not (s.train & s.valid).any() and not (s.valid & s.test).any()
    assert tr.max() < va.min() and va.max() < te.min()
    assert labelled[s.train | s.valid | s.test].all()
    # a label at q is decided in q+1..q+h: every training label is known when validation
    # starts and every validation label when the test starts, so no label window used to fit
    # overlaps a window it is judged on
    assert (tr + horizon).max() <= s.valid_start <= va.min()
    assert (va + horizon).max() <= s.test_start <= te.min()
    assert (tr + horizon).max() < (va + 1).min() and (va + horizon).max() < (te + 1).min()
    # four test quarters ending at the last fully observed window
    assert np.unique(te).tolist() == list(range(s.last_labelled - 3, s.last_labelled + 1))
    assert s.last_labelled == q.max() - horizon
    assert set(np.unique(va)) <= set(range(s.valid_start, s.test_start))


def test_four_quarter_test_excludes_censored_windows(
    fund: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    """Rows near the table's end carry 4q labels only when the account left: never used."""
    features, _ = fund
    q = features["quarter_idx"].to_numpy()
    y = features["label_next_4q"]
    late = q > q.max() - 4
    assert y[late].dropna().eq(1).all() and y[late].notna().any()
    s = md.out_of_time_split(q, y.notna().to_numpy(), 4)
    assert not (s.test & late).any()


def test_split_refuses_too_short_a_history() -> None:
    q = np.repeat(np.arange(8), 10)
    with pytest.raises(ValueError, match="empty"):
        md.out_of_time_split(q, np.ones_like(q, dtype=bool), 1)


# --- calibration and threshold -----------------------------------------------------------------


def test_platt_improves_brier_of_a_miscalibrated_score() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(-2.0, 1.5, 20_000)
    y = (rng.random(z.shape[0]) < _sigmoid(z)).astype(float)
    raw = 3.0 * z + 2.0  # over-confident and shifted
    cal = md.fit_platt(raw, y)
    before = mt.brier(y, _sigmoid(raw))
    after = mt.brier(y, md.apply_calibration(cal, raw))
    assert after < before
    assert cal.a == pytest.approx(1 / 3, abs=0.03) and cal.b == pytest.approx(-2 / 3, abs=0.1)
    # a perfectly separable validation set still gives finite parameters
    sep = md.fit_platt(np.r_[np.zeros(50), np.ones(50)], np.r_[np.zeros(50), np.ones(50)])
    assert np.isfinite([sep.a, sep.b]).all()


def test_threshold_maximises_f1_on_validation(
    fund: tuple[pd.DataFrame, pd.DataFrame], trained: md.TrainedModel
) -> None:
    features, _ = fund
    x = md.prepare_inputs(features)
    if trained.encoder is not None:
        x = np.hstack([x, md.encode(trained.encoder, x)])
    names = trained.meta["tree_columns"]
    for i, h in enumerate(md.HORIZONS):
        y = features[h.label].to_numpy(dtype=float, na_value=np.nan)
        s = md.out_of_time_split(features["quarter_idx"].to_numpy(), ~np.isnan(y), h.quarters)
        p = md.apply_calibration(
            trained.calibrations[i], md.raw_scores(trained.boosters[i], x[s.valid], names)
        )
        threshold = trained.meta["thresholds"][h.name]
        best = max(mt.f1_at(y[s.valid], p, c) for c in np.unique(p))
        assert mt.f1_at(y[s.valid], p, threshold) == pytest.approx(best)
        assert trained.card["horizons"][h.name]["metrics"]["valid"]["f1"] == pytest.approx(best)


# --- the autoencoder ---------------------------------------------------------------------------


def test_autoencoder_learns_and_its_encoder_is_the_graph_encoder(
    fund: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    features, _ = fund
    x = md.prepare_inputs(features)
    q = features["quarter_idx"].to_numpy()
    cut = np.quantile(q, 0.7)
    encoder, report = md.fit_autoencoder(x[q <= cut], x[q > cut], md.AEConfig(epochs=10))
    assert report.valid_loss[report.best_epoch] < report.valid_loss[0]
    assert report.train_loss[-1] < report.train_loss[0]
    assert [w.shape for w in encoder.weights] == [(len(md.AE_COLUMNS), 32), (32, 8)]
    assert [MODEL_INPUTS[i] for i in encoder.input_columns] == list(md.AE_COLUMNS)
    # the reference transform = the documented network (NaN → centre, linear standardise)
    v = x[:, encoder.input_columns].astype(np.float64)
    v = np.where(np.isnan(v), encoder.mean, v)
    h = np.maximum(((v - encoder.mean) / encoder.scale) @ encoder.weights[0] + encoder.biases[0], 0)
    manual = h @ encoder.weights[1] + encoder.biases[1]
    np.testing.assert_allclose(md.encode(encoder, x), manual, rtol=1e-4, atol=1e-4)


def test_onnx_graph_with_encoder_matches_catboost(trained: md.TrainedModel) -> None:
    """The trees split on embeddings, so agreement here means the graph's encoder is ours."""
    assert trained.meta["encoder"]["used"] is True
    assert trained.meta["tree_columns"][-8:] == [f"emb_{i}" for i in range(8)]
    assert trained.card["onnx_max_abs_diff"] < 1e-4
    importance = trained.card["horizons"]["next_q"]["feature_importance"]
    assert any(f["feature"].startswith("emb_") for f in importance)


def test_graph_embeddings_are_the_encoder_transform(
    fund: tuple[pd.DataFrame, pd.DataFrame], trained: md.TrainedModel
) -> None:
    """Read the graph's intermediate embedding tensor and compare it with Encoder.transform."""
    import onnx

    from npf_loyalty.onnx_runtime import make_session, run_in_batches

    assert trained.encoder is not None
    graph_model = onnx.ModelProto()
    graph_model.CopyFrom(trained.onnx_model)
    produced = {name for node in graph_model.graph.node for name in node.output}
    if "embedding" not in produced:
        pytest.skip("the scoring graph names its embedding tensor differently")
    graph_model.graph.output.append(
        onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, None)
    )
    x = md.prepare_inputs(fund[0])
    session = make_session(graph_model.SerializeToString())
    got = run_in_batches(session, x, outputs=["embedding"])["embedding"]
    np.testing.assert_allclose(got, md.encode(trained.encoder, x), rtol=1e-6, atol=1e-6)


# --- the card ----------------------------------------------------------------------------------


def test_card_has_the_required_keys(trained: md.TrainedModel) -> None:
    card = json.loads(json.dumps(trained.card))  # JSON-clean: no NaN, numpy or tuples
    block = {"roc_auc", "pr_auc", "f1", "brier"}
    for h in md.HORIZONS:
        c = card["horizons"][h.name]
        assert block <= set(c["metrics"]["test"])
        assert block <= set(c["metrics"]["truth"])
        assert block <= set(c["baselines"]["recency"])
        assert block <= set(c["baselines"]["original_recipe"])
        assert {"value", "with", "without"} <= set(c["embeddings_help"])
        assert isinstance(c["threshold"], float)
        assert sum(r["share"] for r in c["bands"]["rows"]) == pytest.approx(1.0)
        assert sum(r["count"] for r in c["reliability"]) == c["metrics"]["test"]["n"]
    assert block <= set(card["metrics"]["test"])  # the headline horizon at the top level
    assert block <= set(card["baselines"]["original_recipe"])
    assert card["threshold"] == card["horizons"]["next_q"]["threshold"]
    test = card["horizons"]["next_q"]["metrics"]["test"]
    truth = card["horizons"]["next_q"]["metrics"]["truth"]
    assert truth["coverage"] == 1.0 and truth["n"] == test["n"]
    assert test["roc_auc"] > 0.6  # the generated fund is learnable
    meta = trained.meta
    assert meta["input_columns"] == list(MODEL_INPUTS)
    assert meta["horizons"] == ["next_q", "next_4q"]
    assert set(meta["thresholds"]) == set(meta["calibrations"]) == {"next_q", "next_4q"}
    assert meta["categorical_columns"] == ["pmnts_type", "pension_scheme", "federal_district_code"]


# --- saving and promotion ----------------------------------------------------------------------


def _as_version(model: md.TrainedModel, version: str) -> md.TrainedModel:
    return dataclasses.replace(model, version=version, meta={**model.meta, "version": version})


def test_promotion_keeps_the_better_model_current(
    tmp_path: Path, trained: md.TrainedModel, weak: md.TrainedModel
) -> None:
    store = LocalStore(tmp_path / "bucket")
    good = _as_version(trained, "v1-good")
    first = md.save_version(store, good)
    assert first.promoted and store.current(Keys.models)["version"] == "v1-good"
    for name in ("model.onnx", "shap.npz", "meta.json", "card.json", "card.md"):
        assert store.exists(f"models/v1-good/{name}")
    assert "Модель оттока" in store.get_bytes("models/v1-good/card.md").decode()

    worse = md.save_version(store, _as_version(weak, "v2-weak"))
    assert not worse.promoted and worse.current_version == "v1-good"
    assert worse.current_pr_auc is not None and worse.current_pr_auc > worse.new_pr_auc
    assert store.current(Keys.models)["version"] == "v1-good"
    card = store.get_json("models/v2-weak/card.json")
    assert card["promotion"]["promoted"] is False and "хуже" in card["promotion"]["reason"]

    forced = md.save_version(store, _as_version(weak, "v3-forced"), force=True)
    assert forced.promoted and forced.forced
    assert store.current(Keys.models)["version"] == "v3-forced"

    better = md.save_version(store, _as_version(trained, "v4-good"))
    assert better.promoted and better.current_version == "v3-forced"
    assert store.current(Keys.models)["version"] == "v4-good"
    # the current model was re-scored on the same rows: its PR-AUC is what it had
    assert better.current_pr_auc == pytest.approx(forced.new_pr_auc, abs=1e-6)

    with pytest.raises(FileExistsError):
        md.save_version(store, _as_version(trained, "v4-good"))
