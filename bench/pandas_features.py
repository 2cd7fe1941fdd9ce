"""The same account-history features in plain pandas: the baseline that bench/ingest.py times.

What a data scientist would write first: aggregate operations per account and quarter, lay out
a dense account × quarter grid (so a shift is a calendar lag), then ``groupby().shift()`` and
``groupby().rolling()``. It computes every column of ``npf_loyalty.features`` that comes from
``trnsctns`` and from the panel's own history (lags, windows, labels); the reference joins
(region, macro series, pension scheme) are left out, as they are a few small merges. The
definitions are those of the ``npf_loyalty.features`` docstring, and a test checks that the two
agree on generated data, so a timing compares equal work.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ACCOUNT = "npo_account_id"
PENSION_AGE = {-1: 60, 1: 65}

#: The columns this module computes, in the order it returns them.
COLUMNS = [
    "npo_account_id",
    "quarter",
    "quarter_idx",
    "quarter_end",
    "churn",
    "label_next_q",
    "label_next_4q",
    "is_scoring_row",
    "contrib_q",
    *(f"contrib_lag{k}" for k in range(1, 5)),
    "contrib_4q",
    "contrib_8q",
    "contrib_trend",
    "contrib_count_q",
    "contrib_count_4q",
    "income_q",
    *(f"income_lag{k}" for k in range(1, 5)),
    "income_4q",
    "days_since_contrib",
    "quarters_without_contrib",
    "stopped_paying",
    "balance",
    "balance_change_q",
    "balance_change_4q_pct",
    "return_4q_pct",
    "tenure_years",
    "years_to_pension",
    "complaints_4q",
]


def _ops_by_quarter(transactions: pd.DataFrame) -> pd.DataFrame:
    tx = transactions
    date = pd.to_datetime(tx["npo_oprtn_date"])
    is_contrib = tx["npo_oprtn_grp"] == 1
    # whole kopecks, rounded half away from zero, as the SQL does
    cents = tx["npo_sum"] * 100
    amount = np.sign(cents) * np.floor(np.abs(cents) + 0.5) / 100
    ops = pd.DataFrame(
        {
            ACCOUNT: tx[ACCOUNT],
            "quarter_idx": date.dt.year * 4 + date.dt.quarter - 1,
            "contrib": amount.where(is_contrib, 0.0),
            "is_contrib": is_contrib.astype("int64"),
            "income": amount.where(~is_contrib, 0.0),
            "contrib_date": date.where(is_contrib),
        }
    )
    return ops.groupby([ACCOUNT, "quarter_idx"], as_index=False).agg(
        contrib_q=("contrib", "sum"),
        contrib_count_q=("is_contrib", "sum"),
        income_q=("income", "sum"),
        last_contrib_date=("contrib_date", "max"),
    )


def _rolling_sum(grid: pd.DataFrame, column: str, quarters: int) -> pd.Series:
    rolled = grid.groupby(ACCOUNT, sort=False)[column].rolling(quarters, min_periods=1).sum()
    return rolled.reset_index(level=0, drop=True)


def pandas_features(clients: pd.DataFrame, transactions: pd.DataFrame) -> pd.DataFrame:
    """One row per panel row (account, quarter), sorted by account and quarter."""
    panel = clients.copy()
    if "churn" not in panel:
        panel["churn"] = np.nan
    panel["quarter_idx"] = (
        panel["quarter"].str[:4].astype("int64") * 4 + panel["quarter"].str[5].astype("int64") - 1
    )
    ops = _ops_by_quarter(transactions)

    # dense grid: every quarter from the account's first activity to its last panel row
    first = pd.concat(
        [panel.groupby(ACCOUNT)["quarter_idx"].min(), ops.groupby(ACCOUNT)["quarter_idx"].min()],
        axis=1,
    ).min(axis=1)
    last = panel.groupby(ACCOUNT)["quarter_idx"].max()
    first = first.reindex(last.index)
    lengths = (last - first + 1).astype("int64").to_numpy()
    starts = np.repeat(first.to_numpy().astype("int64"), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    grid = pd.DataFrame({ACCOUNT: np.repeat(last.index.to_numpy(), lengths)})
    grid["quarter_idx"] = starts + offsets
    grid = grid.merge(ops, on=[ACCOUNT, "quarter_idx"], how="left")
    grid = grid.merge(
        panel[[ACCOUNT, "quarter_idx", "balance", "appl_mrkr", "churn"]].assign(in_panel=True),
        on=[ACCOUNT, "quarter_idx"],
        how="left",
    )
    grid = grid.sort_values([ACCOUNT, "quarter_idx"], ignore_index=True)
    for column in ("contrib_q", "contrib_count_q", "income_q"):
        grid[column] = grid[column].fillna(0.0)

    g = grid.groupby(ACCOUNT, sort=False)
    for k in range(1, 5):
        grid[f"contrib_lag{k}"] = g["contrib_q"].shift(k, fill_value=0.0)
        grid[f"income_lag{k}"] = g["income_q"].shift(k, fill_value=0.0)
    grid["contrib_4q"] = _rolling_sum(grid, "contrib_q", 4)
    grid["contrib_8q"] = _rolling_sum(grid, "contrib_q", 8)
    grid["contrib_count_4q"] = _rolling_sum(grid, "contrib_count_q", 4)
    grid["income_4q"] = _rolling_sum(grid, "income_q", 4)
    grid["contrib_shift2"] = g["contrib_q"].shift(2, fill_value=0.0)
    grid["contrib_shift4"] = g["contrib_q"].shift(4, fill_value=0.0)
    grid["contrib_t5_t2"] = _rolling_sum(grid, "contrib_shift2", 4)
    grid["contrib_prev_4q"] = _rolling_sum(grid, "contrib_shift4", 4)
    grid["contrib_count_t1_t"] = _rolling_sum(grid, "contrib_count_q", 2)
    grid["last_contrib_date"] = g["last_contrib_date"].ffill()
    grid["contrib_quarter"] = grid["quarter_idx"].where(grid["contrib_count_q"] > 0)
    grid["last_contrib_quarter"] = grid.groupby(ACCOUNT, sort=False)["contrib_quarter"].ffill()
    grid["first_quarter"] = g["quarter_idx"].transform("min")
    grid["balance_lag1"] = g["balance"].shift(1)
    grid["balance_lag4"] = g["balance"].shift(4)
    grid["complaints_4q"] = _rolling_sum(grid, "appl_mrkr", 4)
    grid["churn_next_q"] = g["churn"].shift(-1)
    grid["churn_in_4q"] = g["churn"].shift(-4)

    rows = grid[grid["in_panel"].eq(True)].drop(columns=["balance", "appl_mrkr", "churn"])
    out = panel.merge(rows, on=[ACCOUNT, "quarter_idx"], how="left")
    exit_quarter = out[out["churn"] == 1].groupby(ACCOUNT)["quarter_idx"].min()
    out["exit_quarter"] = out[ACCOUNT].map(exit_quarter)
    out["last_panel_quarter"] = out[ACCOUNT].map(last)

    q = out["quarter_idx"]
    churned = out["churn"] == 1
    out["label_next_q"] = np.select(
        [churned, out["exit_quarter"] == q + 1, out["churn_next_q"] == 0],
        [np.nan, 1.0, 0.0],
        default=np.nan,
    )
    out["label_next_4q"] = np.select(
        [churned, out["exit_quarter"].between(q + 1, q + 4), out["churn_in_4q"] == 0],
        [np.nan, 1.0, 0.0],
        default=np.nan,
    )
    out["is_scoring_row"] = (q == out["last_panel_quarter"]) & (q == q.max()) & ~churned
    out["quarter_end"] = pd.PeriodIndex.from_fields(
        year=(q // 4).to_numpy(), quarter=(q % 4 + 1).to_numpy(), freq="Q"
    ).end_time.normalize()
    out["contrib_trend"] = np.log(
        (1 + out["contrib_4q"].clip(lower=0)) / (1 + out["contrib_prev_4q"].clip(lower=0))
    )
    out["days_since_contrib"] = (out["quarter_end"] - out["last_contrib_date"]).dt.days
    out["quarters_without_contrib"] = q - out["last_contrib_quarter"].fillna(
        out["first_quarter"] - 1
    )
    out["stopped_paying"] = ((out["contrib_t5_t2"] > 0) & (out["contrib_count_t1_t"] == 0)).astype(
        "int64"
    )
    out["balance_change_q"] = out["balance"] - out["balance_lag1"]
    out["balance_change_4q_pct"] = (
        100 * (out["balance"] - out["balance_lag4"]) / np.maximum(out["balance_lag4"], 1)
    )
    out["return_4q_pct"] = 100 * out["income_4q"] / np.maximum(out["balance"], 1)
    out["tenure_years"] = out["clnt_cprtn_time_d"] / 365.25
    out["years_to_pension"] = out["gender"].map(PENSION_AGE) - out["age"]
    return out.sort_values([ACCOUNT, "quarter_idx"], ignore_index=True)[COLUMNS]
