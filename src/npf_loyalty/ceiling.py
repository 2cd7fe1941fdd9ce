"""The dump ceiling: the best churn score that the dump's features can support.

The simulator's truth includes hidden causes (dissatisfaction, financial stress, competitor
campaigns, noise) that no dump shows, so the truth's PR-AUC is out of reach for any model of
the dump. To know how far the product really is from "as good as the data allows", a strong
learner is fitted on a *separate* simulation with the true probability as a soft target: it
learns E[p_leave | dump features] from far more rows and without label noise, which is the
best any model of these features can estimate. Scored on the evaluation fund's out-of-time test
rows, it gives the second ceiling the product's card is compared with.

Training-side only (imports CatBoost). Soft target: CatBoost ``CrossEntropy`` with labels in
[0, 1] (the log-loss of the true probability, so the output is a calibrated probability).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

from npf_loyalty import metrics as mt
from npf_loyalty.model import HORIZONS, MODEL_INPUTS, out_of_time_split, prepare_inputs
from npf_loyalty.synth import SynthConfig, generate, write_fund

KEYS = ["npo_account_id", "quarter"]
DUMP_TABLES = ("clnts_fin_prtrt", "trnsctns", "cntrbtrs")


def _horizon(name: str) -> tuple[str, int]:
    for h in HORIZONS:
        if h.name == name:
            return h.label, h.quarters
    raise ValueError(f"unknown horizon {name!r}; known: {[h.name for h in HORIZONS]}")


def truth_for(frame: pd.DataFrame, truth: pd.DataFrame, column: str) -> np.ndarray:
    """The truth column aligned to `frame`'s rows (NaN where the truth has no row)."""
    right = truth[[*KEYS, column]].drop_duplicates(KEYS).copy()
    left = frame[KEYS].copy()
    for k in KEYS:
        left[k] = left[k].astype(str)
        right[k] = right[k].astype(str)
    merged = left.merge(right, on=KEYS, how="left", validate="many_to_one")
    return merged[column].to_numpy(dtype=np.float64, na_value=np.nan)


def _block(y_va: np.ndarray, p_va: np.ndarray, y_te: np.ndarray, p_te: np.ndarray) -> dict:
    """As the product's card: threshold = best F1 on validation, metrics on the test rows."""
    threshold, _ = mt.best_f1_threshold(y_va, p_va)
    return mt.binary_metrics(y_te, p_te, threshold)


def dump_ceiling(
    eval_features: pd.DataFrame,
    eval_truth: pd.DataFrame,
    sim_features: pd.DataFrame,
    sim_truth: pd.DataFrame,
    horizon: str = "next_q",
    iterations: int = 1500,
    depth: int = 6,
    learning_rate: float = 0.05,
    holdout_share: float = 0.1,
    thread_count: int = 2,
    seed: int = 17,
) -> dict[str, Any]:
    """Fit on the simulation's true probabilities; measure on the evaluation fund's test rows.

    Uses every labelled row of the simulation (all quarters: the ceiling may know the
    feature → probability map of every period, which the product cannot). A share of the
    simulation's accounts is held out for early stopping on the soft log-loss. The evaluation
    split is the product's (`out_of_time_split` with the horizon's quarters), so the metrics sit
    next to the card's. Returns {"ceiling", "truth", "sim", "split", "loss", ...}.
    """
    label, quarters = _horizon(horizon)
    column = f"p_leave_{horizon}"
    started = time.perf_counter()

    sim = sim_features.reset_index(drop=True)
    p_sim = truth_for(sim, sim_truth, column)
    keep = ~np.isnan(sim[label].to_numpy(dtype=np.float64, na_value=np.nan)) & ~np.isnan(p_sim)
    if not keep.any():
        raise ValueError("the simulation has no labelled rows with a true probability")
    sim = sim.loc[keep].reset_index(drop=True)
    p_sim = p_sim[keep]
    x_sim = prepare_inputs(sim)
    accounts = sim["npo_account_id"].astype(str).to_numpy()
    unique = np.unique(accounts)
    rng = np.random.default_rng(seed)
    held = np.isin(accounts, rng.choice(unique, max(1, int(len(unique) * holdout_share)), False))

    names = list(MODEL_INPUTS)
    booster = CatBoostClassifier(
        loss_function="CrossEntropy",
        eval_metric="CrossEntropy",
        iterations=iterations,
        depth=depth,
        learning_rate=learning_rate,
        l2_leaf_reg=3.0,
        early_stopping_rounds=60,
        thread_count=thread_count,
        random_seed=seed,
        verbose=False,
        allow_writing_files=False,
    )
    booster.fit(
        Pool(x_sim[~held], p_sim[~held], feature_names=names),
        eval_set=Pool(x_sim[held], p_sim[held], feature_names=names),
        use_best_model=True,
    )
    fit_seconds = time.perf_counter() - started

    ev = eval_features.reset_index(drop=True)
    y = ev[label].to_numpy(dtype=np.float64, na_value=np.nan)
    q = ev["quarter_idx"].to_numpy(dtype=np.int64)
    split = out_of_time_split(q, ~np.isnan(y), quarters)
    x_ev = prepare_inputs(ev)
    p_va = booster.predict_proba(Pool(x_ev[split.valid], feature_names=names))[:, 1]
    p_te = booster.predict_proba(Pool(x_ev[split.test], feature_names=names))[:, 1]
    ceiling = _block(y[split.valid], p_va, y[split.test], p_te)

    t_va = truth_for(ev.loc[split.valid], eval_truth, column)
    t_te = truth_for(ev.loc[split.test], eval_truth, column)
    ok_va, ok_te = ~np.isnan(t_va), ~np.isnan(t_te)
    truth_block = _block(y[split.valid][ok_va], t_va[ok_va], y[split.test][ok_te], t_te[ok_te])
    truth_block["coverage"] = float(ok_te.mean())
    # how close the ceiling's probabilities are to the truth itself on the test rows
    ceiling["rmse_vs_truth"] = float(np.sqrt(np.nanmean((p_te - t_te) ** 2)))

    return {
        "horizon": horizon,
        "target": "soft: simulation's true probability, CatBoost CrossEntropy",
        "ceiling": ceiling,
        "truth": truth_block,
        "sim": {
            "rows": len(sim),
            "train_rows": int((~held).sum()),
            "holdout_rows": int(held.sum()),
            "accounts": len(unique),
            "mean_p": float(p_sim.mean()),
        },
        "booster": {
            "trees": int(booster.tree_count_ or 0),
            "depth": depth,
            "learning_rate": learning_rate,
            "iterations_cap": iterations,
        },
        "split": split.describe(),
        "fit_seconds": fit_seconds,
    }


def synthetic_features(
    config: SynthConfig, work_dir: Path, threads: int | None = 2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate a fund and build its feature table the product's way (upload → ingest).

    Returns (features ordered by quarter_idx, npo_account_id; the truth table).
    """
    from npf_loyalty.engine import connect
    from npf_loyalty.ingest import ingest_object
    from npf_loyalty.settings import Settings
    from npf_loyalty.storage import Keys, LocalStore

    work_dir.mkdir(parents=True, exist_ok=True)
    fund = generate(config)
    truth = fund.truth.to_pandas()
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="fund-") as tmp:
        root = Path(tmp)
        paths = write_fund(fund, root / "dumps")
        del fund
        store = LocalStore(root / "bucket")
        settings = Settings(store=str(root / "bucket"), work_dir=root, duckdb_threads=threads)
        for name in DUMP_TABLES:
            key = f"{Keys.uploads}synth/{paths[name].name}"
            store.put_file(key, paths[name])
            outcome = ingest_object(store, key, settings)
            if not outcome.ok:
                raise RuntimeError(f"ingest of {name} failed: {outcome.report}")
        pointer = store.current(Keys.features)
        if pointer is None:
            raise RuntimeError("ingest published no feature table")
        folder = store.local_path(Keys.version_dir(Keys.features, pointer["version"]))
        con = connect(settings)
        try:
            features = con.sql(
                f"SELECT * FROM read_parquet('{folder.as_posix()}/*/*.parquet', "
                "hive_partitioning = true) ORDER BY quarter_idx, npo_account_id"
            ).df()
        finally:
            con.close()
    return features, truth
