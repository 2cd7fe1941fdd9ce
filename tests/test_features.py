"""Feature definitions checked on tiny hand-made accounts (see the table in npf_loyalty.features).

The main scenario, quarters 2020Q1 (8080) … 2022Q2 (8089), the dump's last quarter:

- A pays 1000 a quarter 2020Q1–2021Q1 (twice 500 in 2020Q2), also in 2020Q3 when it has no
  panel row (a gap), then stops; 100 income every quarter; a complaint in 2021Q2; churns in
  2022Q1 (its last row).
- B has one old contribution (2019Q1, older than the 7-quarter look-back of its first panel
  row 2021Q1), income every quarter, gender unknown, and is active at the end: the scoring row.
- C has panel rows 2020Q1–2020Q4 only and no operations at all: it vanished (censored).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import random
import sys
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from npf_loyalty import reference
from npf_loyalty.features import FeatureSources, feature_query, write_features
from npf_loyalty.schema import (
    CLIENTS_QUARTERLY,
    CONTRIBUTORS,
    FEATURES,
    FEDERAL_DISTRICTS,
    MODEL_INPUTS,
    TRANSACTIONS,
    Kind,
    Table,
)

A = "0x" + "a" * 32
B = "0x" + "b" * 32
C = "0x" + "c" * 32

ARROW_TYPES = {
    Kind.ID: pa.string(),
    Kind.INT: pa.int64(),
    Kind.FLOAT: pa.float64(),
    Kind.DATE: pa.date32(),
    Kind.QUARTER: pa.string(),
    Kind.POSTAL: pa.string(),
    Kind.TEXT: pa.string(),
}

CLIENT_DEFAULTS: dict[str, Any] = {
    "slctn_nmbr": 1,
    "npo_accnts_nmbr": 1,
    "pmnts_type": 2,
    "gender": 1,
    "age": 40,
    "clnt_cprtn_time_d": 730.5,
    "balance": 1000.0,
    "mgd_accum_period": 10.0,
    "mgd_payment_period": 5.0,
    "churn": 0,
    "phone_number": 1,
    "email": 0,
    "lk": 1,
    "assignee_npo": 0,
    "assignee_ops": 0,
    "citizen": 1,
    "fact_addrss": 1,
    "appl_mrkr": 0,
    "evry_qrtr_pmnt": 0,
}


# --- building clean inputs --------------------------------------------------------------------


def qidx(quarter: str) -> int:
    year, q = quarter.split("Q")
    return int(year) * 4 + int(q) - 1


def qname(quarter_idx: int) -> str:
    return f"{quarter_idx // 4}Q{quarter_idx % 4 + 1}"


def quarter_end(quarter_idx: int) -> dt.date:
    year, q = divmod(quarter_idx, 4)
    first_of_next = dt.date(year + (q == 3), 1 if q == 3 else 3 * q + 4, 1)
    return first_of_next - dt.timedelta(days=1)


def client(account: str, quarter_idx: int, **values: Any) -> dict[str, Any]:
    row = {c.name: CLIENT_DEFAULTS.get(c.name) for c in CLIENTS_QUARTERLY.columns}
    row.update(
        client_id="0x" + "e" * 31 + account[-1],
        npo_account_id=account,
        year=quarter_idx // 4,
        quarter=qname(quarter_idx),
    )
    row.update(values)
    return row


def operation(account: str, date: dt.date, amount: float, grp: int) -> dict[str, Any]:
    quarter = (date.month - 1) // 3 + 1
    return {
        "slctn_nmbr": 1,
        "npo_account_id": account,
        "npo_sum": amount,
        "npo_oprtn_date": date,
        "npo_oprtn_grp": grp,
        "year": date.year,
        "quarter": f"{date.year}Q{quarter}",
    }


def write_table(
    table: Table, rows: list[dict[str, Any]], path: Path, drop: tuple[str, ...] = ()
) -> str:
    schema = pa.schema([(c.name, ARROW_TYPES[c.kind]) for c in table.columns if c.name not in drop])
    data = {name: [r.get(name) for r in rows] for name in schema.names}
    pq.write_table(pa.table(data, schema=schema), path)
    return str(path)


def sources(
    folder: Path,
    clients: list[dict[str, Any]],
    ops: list[dict[str, Any]],
    contributors: dict[str, int] | None = None,
    *,
    with_churn: bool = True,
) -> FeatureSources:
    folder.mkdir(parents=True, exist_ok=True)
    contributor_rows = [
        {"slctn_nmbr": 1, "npo_accnt_id": k, "accnt_pnsn_schm": v}
        for k, v in (contributors or {}).items()
    ]
    return FeatureSources(
        clients=write_table(
            CLIENTS_QUARTERLY,
            clients,
            folder / "clients.parquet",
            drop=() if with_churn else ("churn",),
        ),
        transactions=write_table(TRANSACTIONS, ops, folder / "transactions.parquet"),
        contributors=(
            write_table(CONTRIBUTORS, contributor_rows, folder / "contributors.parquet")
            if contributors is not None
            else None
        ),
    )


def scenario_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    balances_a = {8080: 10000.0, 8081: 11000.0, 8083: 13000.0, 8084: 14000.0}
    balances_a |= {8085: 14100.0, 8086: 14200.0, 8087: 14300.0, 8088: 0.0}
    clients = [
        client(
            A,
            q,
            balance=b,
            appl_mrkr=int(q == 8085),
            churn=int(q == 8088),
            region="САМАРСКАЯ ОБЛАСТЬ",
            postal_code="445000",
        )
        for q, b in balances_a.items()
    ]
    clients += [
        client(B, q, balance=5000.0, gender=None, age=50, region=None, postal_code="443001")
        for q in range(8084, 8090)
    ]
    clients += [
        client(C, q, gender=-1, age=30, region="ХЗ", postal_code="999999")
        for q in range(8080, 8084)
    ]
    ops = [
        operation(A, dt.date(2020, 2, 10), 1000.0, 1),
        operation(A, dt.date(2020, 4, 10), 500.0, 1),
        operation(A, dt.date(2020, 6, 10), 500.0, 1),
        operation(A, dt.date(2020, 8, 10), 1000.0, 1),  # 2020Q3: no panel row that quarter
        operation(A, dt.date(2020, 11, 10), 1000.0, 1),
        operation(A, dt.date(2021, 1, 15), 1000.0, 1),  # the last contribution
        *(operation(A, quarter_end(q), 100.0, 0) for q in range(8080, 8089)),
        operation(B, dt.date(2019, 2, 10), 2000.0, 1),  # 2019Q1, before B's grid
        *(operation(B, quarter_end(q), 50.0, 0) for q in range(8084, 8090)),
    ]
    return clients, ops


def build(src: FeatureSources) -> dict[tuple[str, int], dict[str, Any]]:
    con = duckdb.connect()
    rows = feature_query(con, src).to_dicts()
    return {(r["npo_account_id"], r["quarter_idx"]): r for r in rows}


@pytest.fixture(scope="module")
def scenario_sources(tmp_path_factory: pytest.TempPathFactory) -> FeatureSources:
    clients, ops = scenario_rows()
    return sources(tmp_path_factory.mktemp("scenario"), clients, ops, {A: 7, C: 3})


@pytest.fixture(scope="module")
def feats(scenario_sources: FeatureSources) -> dict[tuple[str, int], dict[str, Any]]:
    return build(scenario_sources)


# --- shape -----------------------------------------------------------------------------------


def test_the_panel_must_be_one_file(scenario_sources: FeatureSources) -> None:
    folder = Path(scenario_sources.clients).parent
    glob = FeatureSources(str(folder / "*.parquet"), scenario_sources.transactions)
    with pytest.raises(ValueError, match="one parquet file"):
        feature_query(duckdb.connect(), glob)


def test_written_columns_and_types_are_exactly_the_schema(
    scenario_sources: FeatureSources, tmp_path: Path
) -> None:
    rel = feature_query(duckdb.connect(), scenario_sources)
    assert rel.columns == [f.name for f in FEATURES]
    write_features(rel, tmp_path / "out")
    written = duckdb.connect().sql(
        f"SELECT * FROM read_parquet('{tmp_path}/out/*/*.parquet', hive_partitioning = true)"
    )
    types = dict(zip(written.columns, (str(t) for t in written.types), strict=True))
    assert types == {f.name: f.duckdb_type for f in FEATURES}


def test_one_row_per_panel_row(feats: dict) -> None:
    clients, _ = scenario_rows()
    assert set(feats) == {(r["npo_account_id"], qidx(r["quarter"])) for r in clients}


def test_quarter_index_and_quarter_end(feats: dict) -> None:
    row = feats[A, 8087]
    assert (row["quarter"], row["quarter_idx"]) == ("2021Q4", 2021 * 4 + 3)
    assert row["quarter_end"] == dt.date(2021, 12, 31)
    assert feats[A, 8080]["quarter_end"] == dt.date(2020, 3, 31)


# --- operations ------------------------------------------------------------------------------


def test_contributions_of_the_quarter_are_summed_and_counted(feats: dict) -> None:
    row = feats[A, 8081]
    assert (row["contrib_q"], row["contrib_count_q"]) == (1000.0, 2.0)


def test_income_of_the_quarter_is_summed_apart_from_contributions(feats: dict) -> None:
    assert feats[A, 8081]["income_q"] == 100.0
    assert feats[B, 8084]["income_q"] == 50.0


def test_lags_are_calendar_lags_through_a_quarter_without_a_panel_row(feats: dict) -> None:
    row = feats[A, 8083]  # 2020Q3 has an operation but no panel row
    assert [row[f"contrib_lag{k}"] for k in range(1, 5)] == [1000.0, 1000.0, 1000.0, 0.0]
    assert [row[f"income_lag{k}"] for k in range(1, 5)] == [100.0, 100.0, 100.0, 0.0]


def test_lags_are_zero_when_the_account_had_no_operation(feats: dict) -> None:
    row = feats[C, 8083]
    assert [row[f"contrib_lag{k}"] for k in range(1, 5)] == [0.0] * 4
    assert (row["contrib_q"], row["income_q"], row["contrib_4q"]) == (0.0, 0.0, 0.0)


def test_rolling_windows_cover_calendar_quarters(feats: dict) -> None:
    row = feats[A, 8087]  # 2021Q4: contributions in 8080..8084 only
    assert row["contrib_4q"] == 1000.0  # 8084..8087
    assert row["contrib_8q"] == 5000.0  # 8080..8087
    assert row["contrib_count_4q"] == 1.0
    assert row["income_4q"] == 400.0


def test_contrib_trend_compares_the_last_four_quarters_with_the_four_before(feats: dict) -> None:
    assert feats[A, 8087]["contrib_trend"] == pytest.approx(math.log(1001 / 4001))
    assert feats[B, 8084]["contrib_trend"] == 0.0


def test_days_since_contrib_counts_to_quarter_end(feats: dict) -> None:
    last_paid = dt.date(2021, 1, 15)
    assert feats[A, 8087]["days_since_contrib"] == (dt.date(2021, 12, 31) - last_paid).days
    assert feats[A, 8084]["days_since_contrib"] == (dt.date(2021, 3, 31) - last_paid).days


def test_days_since_contrib_reaches_back_before_the_look_back(feats: dict) -> None:
    days = (dt.date(2021, 3, 31) - dt.date(2019, 2, 10)).days
    assert feats[B, 8084]["days_since_contrib"] == days


def test_days_since_contrib_is_null_without_any_contribution(feats: dict) -> None:
    assert feats[C, 8083]["days_since_contrib"] is None


def test_quarters_without_contrib_since_the_last_contribution(feats: dict) -> None:
    assert feats[A, 8084]["quarters_without_contrib"] == 0.0
    assert feats[A, 8087]["quarters_without_contrib"] == 3.0
    assert feats[B, 8084]["quarters_without_contrib"] == 8.0  # last paid 2019Q1 = 8076


def test_quarters_without_contrib_counts_from_the_first_quarter_if_never_paid(feats: dict) -> None:
    assert feats[C, 8080]["quarters_without_contrib"] == 1.0
    assert feats[C, 8083]["quarters_without_contrib"] == 4.0


def test_contributions_that_cancel_out_are_not_a_payment_to_stop(tmp_path: Path) -> None:
    quarters = list(range(8080, 8087))
    ops = [  # t−4..t−2 of 8086 sum to exactly 0: in floating point 0.1 + 0.2 − 0.3 is 2.8e-17
        operation(A, quarter_end(8082), 0.1, 1),
        operation(A, quarter_end(8083), 0.2, 1),
        operation(A, quarter_end(8084), -0.3, 1),
    ]
    rows = build(sources(tmp_path, [client(A, q) for q in quarters], ops))
    assert rows[A, 8086]["contrib_8q"] == 0.0
    assert rows[A, 8086]["stopped_paying"] == 0


def test_stopped_paying_after_two_quarters_without_contribution(feats: dict) -> None:
    assert feats[A, 8085]["stopped_paying"] == 0.0  # paid in t−1
    assert feats[A, 8086]["stopped_paying"] == 1.0
    assert feats[A, 8088]["stopped_paying"] == 1.0  # t−5..t−2 = 8083..8086 still has 2000
    assert feats[C, 8083]["stopped_paying"] == 0.0  # never paid: nothing to stop


# --- panel history ---------------------------------------------------------------------------


def test_balance_change_q_is_null_after_a_missing_panel_row(feats: dict) -> None:
    assert feats[A, 8083]["balance_change_q"] is None
    assert feats[A, 8084]["balance_change_q"] == 1000.0
    assert feats[A, 8080]["balance_change_q"] is None


def test_balance_change_4q_pct(feats: dict) -> None:
    assert feats[A, 8084]["balance_change_4q_pct"] == pytest.approx(40.0)  # vs 10000 at 8080
    assert feats[A, 8087]["balance_change_4q_pct"] == pytest.approx(10.0)  # vs 13000 at 8083
    assert feats[A, 8086]["balance_change_4q_pct"] is None  # no row at 8082


def test_return_and_rate_spread(feats: dict) -> None:
    row = feats[A, 8087]
    assert row["return_4q_pct"] == pytest.approx(100 * 400 / 14300)
    assert row["rate_spread_pp"] == pytest.approx(row["key_rate"] - 100 * 400 / 14300)
    assert feats[A, 8088]["return_4q_pct"] == pytest.approx(100 * 400 / 1)  # balance 0 → 1


def test_tenure_age_and_years_to_pension(feats: dict) -> None:
    row = feats[A, 8087]
    assert (row["tenure_years"], row["age"], row["years_to_pension"]) == (2.0, 40.0, 25.0)
    assert feats[C, 8080]["years_to_pension"] == 30.0  # woman: 60 − 30
    assert feats[B, 8084]["years_to_pension"] is None  # gender unknown
    assert feats[B, 8084]["gender"] is None


def test_complaints_4q_sums_the_last_four_quarters(feats: dict) -> None:
    assert feats[A, 8084]["complaints_4q"] == 0.0
    assert feats[A, 8085]["complaints_4q"] == 1.0
    assert feats[A, 8088]["complaints_4q"] == 1.0  # 8085..8088
    assert feats[A, 8085]["appl_mrkr"] == 1.0


def test_panel_flags_pass_through(feats: dict) -> None:
    row = feats[A, 8087]
    expected = {k: float(v) for k, v in CLIENT_DEFAULTS.items() if k in MODEL_INPUTS}
    expected |= {"age": 40.0, "gender": 1.0, "balance": 14300.0, "appl_mrkr": 0.0}
    assert {k: row[k] for k in expected} == expected


def test_pension_scheme_from_contributors_else_minus_one(feats: dict, tmp_path: Path) -> None:
    assert feats[A, 8080]["pension_scheme"] == 7.0
    assert feats[B, 8084]["pension_scheme"] == -1.0
    clients, ops = scenario_rows()
    without = build(sources(tmp_path, clients, ops, None))
    assert {r["pension_scheme"] for r in without.values()} == {-1.0}


# --- labels ----------------------------------------------------------------------------------


def test_label_next_q(feats: dict) -> None:
    assert feats[A, 8087]["label_next_q"] == 1  # exits in 8088
    assert feats[A, 8086]["label_next_q"] == 0  # active in 8087
    assert feats[A, 8081]["label_next_q"] is None  # no panel row in 8082
    assert feats[A, 8088]["label_next_q"] is None  # the exit row itself
    assert feats[B, 8089]["label_next_q"] is None  # the dump ends
    assert feats[C, 8083]["label_next_q"] is None  # vanished


def test_label_next_4q(feats: dict) -> None:
    assert feats[A, 8084]["label_next_4q"] == 1  # exit at t+4
    assert feats[A, 8083]["label_next_4q"] == 0  # exit at t+5; active at t+4
    assert feats[A, 8088]["label_next_4q"] is None
    assert feats[B, 8085]["label_next_4q"] == 0  # active at 8089
    assert feats[B, 8086]["label_next_4q"] is None  # t+4 is after the dump
    assert feats[C, 8080]["label_next_4q"] is None  # not observed at t+4


def test_churn_is_the_panels(feats: dict) -> None:
    assert feats[A, 8088]["churn"] == 1
    assert feats[A, 8087]["churn"] == 0


def test_only_the_latest_active_row_in_the_last_quarter_is_scored(feats: dict) -> None:
    assert [k for k, r in feats.items() if r["is_scoring_row"]] == [(B, 8089)]


def test_scoring_dump_without_churn_column(tmp_path: Path) -> None:
    clients, ops = scenario_rows()
    rows = build(sources(tmp_path, clients, ops, {}, with_churn=False))
    assert {r["churn"] for r in rows.values()} == {None}
    assert {r["label_next_q"] for r in rows.values()} == {None}
    assert {r["label_next_4q"] for r in rows.values()} == {None}
    assert [k for k, r in rows.items() if r["is_scoring_row"]] == [(B, 8089)]


# --- geography -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "САМАРСКАЯ ОБЛ",
        "Самарская область",
        "ОБЛ САМАРСКАЯ",
        "обл. Самарская",
        "  самарская   ОБЛАСТЬ ",
        "Область Самарская",
    ],
)
def test_region_text_variants_match(text: str) -> None:
    assert reference.match_region(text) == "Самарская обл"


@pytest.mark.parametrize(
    ("text", "region"),
    [
        ("Г. МОСКВА", "г Москва"),
        ("город Москва", "г Москва"),
        ("Республика Саха (Якутия)", "Саха /Якутия/ Респ"),
        ("ХАНТЫ-МАНСИЙСКИЙ АВТОНОМНЫЙ ОКРУГ - ЮГРА", "Ханты-Мансийский Автономный округ - Югра АО"),
        ("Кемеровская область - Кузбасс", "Кемеровская область - Кузбасс обл"),
        ("Республика Северная Осетия-Алания", "Северная Осетия - Алания Респ"),
        ("Орловская обл", "Орловская обл"),
        ("Еврейская автономная область", "Еврейская Аобл"),
    ],
)
def test_region_full_names_match(text: str, region: str) -> None:
    assert reference.match_region(text) == region


@pytest.mark.parametrize("text", ["САМАРСКАЯ", "ХЗ", "", "Орёл", None])
def test_region_text_without_a_match_is_not_guessed(text: str | None) -> None:
    assert reference.match_region(text) is None


def test_region_list_and_districts() -> None:
    regions = reference.regions()
    assert len(regions) == 85
    assert {r.federal_district for r in regions} == set(FEDERAL_DISTRICTS)
    assert all(FEDERAL_DISTRICTS[r.federal_district_code] == r.federal_district for r in regions)
    assert reference.federal_districts() == FEDERAL_DISTRICTS


def test_region_resolution_text_then_postal_then_unknown(tmp_path: Path) -> None:
    accounts = {
        "0x" + "1" * 32: ("Самарская область", "445000"),  # text; postal city in the region
        "0x" + "2" * 32: ("ОБЛ ПЕНЗЕНСКАЯ", "445000"),  # text wins over another region's postal
        "0x" + "3" * 32: (None, "445123"),  # postal fallback
        "0x" + "4" * 32: ("ХЗ", "999999"),  # neither
        "0x" + "5" * 32: ("САМАРСКАЯ ОБЛ", None),  # text, no postal: the capital
    }
    clients = [
        client(acc, 8088, region=text, postal_code=postal)
        for acc, (text, postal) in accounts.items()
    ]
    shown = ("region", "region_source", "federal_district", "federal_district_code", "lat")
    got = {
        account: tuple(r[k] for k in shown)
        for (account, _), r in build(sources(tmp_path, clients, [])).items()
    }
    tolyatti, samara, penza = 53.5205348, 53.1950306, 53.1753314
    volga = float(FEDERAL_DISTRICTS.index("Приволжский"))
    assert got == {
        "0x" + "1" * 32: ("Самарская обл", "region", "Приволжский", volga, tolyatti),
        "0x" + "2" * 32: ("Пензенская обл", "region", "Приволжский", volga, penza),
        "0x" + "3" * 32: ("Самарская обл", "postal", "Приволжский", volga, tolyatti),
        "0x" + "4" * 32: ("unknown", "unknown", "unknown", -1.0, None),
        "0x" + "5" * 32: ("Самарская обл", "region", "Приволжский", volga, samara),
    }


# --- macro series ----------------------------------------------------------------------------


def test_macro_values_at_quarter_end(feats: dict) -> None:
    row = feats[A, 8088]  # 2022Q1
    assert row["key_rate"] == 20.0
    assert row["key_rate_change_4q"] == pytest.approx(20.0 - 4.5)  # vs 2021Q1
    assert row["usd_rub"] == 86.2843
    assert row["usd_rub_change_4q_pct"] == pytest.approx(100 * (86.2843 / 75.8287 - 1))
    assert row["life_expectancy"] == 67.57  # male, 2022
    assert row["macro_carried_forward"] == 0
    assert feats[C, 8080]["life_expectancy"] == 76.43  # female, 2020
    assert feats[B, 8084]["life_expectancy"] is None  # gender unknown


def test_macro_carried_forward_past_the_series_end(tmp_path: Path) -> None:
    quarters = [qidx(q) for q in ("2022Q4", "2023Q2", "2024Q1")]
    rows = build(sources(tmp_path, [client(A, q) for q in quarters], []))
    q4_2022, q2_2023, q1_2024 = (rows[A, q] for q in quarters)
    assert (q4_2022["key_rate"], q4_2022["macro_carried_forward"]) == (7.5, 0)
    assert (q2_2023["key_rate"], q2_2023["usd_rub"]) == (7.5, 76.9781)  # 2023Q1's values
    assert q2_2023["macro_carried_forward"] == 1
    assert q2_2023["key_rate_change_4q"] == pytest.approx(7.5 - 9.5)  # vs 2022Q2
    assert q2_2023["usd_rub_change_4q_pct"] == pytest.approx(100 * (76.9781 / 52.9699 - 1))
    assert (q1_2024["key_rate_change_4q"], q1_2024["usd_rub_change_4q_pct"]) == (0.0, 0.0)
    assert q1_2024["macro_carried_forward"] == 1


def test_life_expectancy_of_2023_is_carried_from_2022(tmp_path: Path) -> None:
    quarters = [qidx("2022Q4"), qidx("2023Q1")]
    clients = [client(A, q, gender=1) for q in quarters]
    clients += [client(B, q, gender=-1) for q in quarters]
    rows = build(sources(tmp_path, clients, []))
    assert rows[A, qidx("2023Q1")]["life_expectancy"] == 67.57  # not 66.0
    assert rows[B, qidx("2023Q1")]["life_expectancy"] == 77.77  # not 73.46
    assert rows[A, qidx("2023Q1")]["macro_carried_forward"] == 1
    assert rows[A, qidx("2022Q4")]["macro_carried_forward"] == 0


# --- writing ---------------------------------------------------------------------------------


def test_write_features_layout_order_and_summary(
    scenario_sources: FeatureSources, tmp_path: Path
) -> None:
    con = duckdb.connect()
    summary = write_features(feature_query(con, scenario_sources), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"quarter={qname(q)}" for q in range(8080, 8090)
    ]
    (file,) = (tmp_path / "out" / "quarter=2021Q1").glob("*.parquet")
    part = pq.read_table(file)
    assert sorted(part.column("npo_account_id").to_pylist()) == [A, B]
    assert part.schema.names == [f.name for f in FEATURES if f.name != "quarter"]
    assert summary.rows == 18
    assert summary.accounts == 3
    assert summary.quarters == ("2020Q1", "2022Q2")
    assert summary.scoring_rows == 1
    assert summary.labelled == {"label_next_q": 14, "label_next_4q": 9}
    assert summary.positives == {"label_next_q": 1, "label_next_4q": 4}
    assert summary.by_region_source == {"postal": 6, "region": 8, "unknown": 4}


def written_rows(folder: Path) -> list[tuple[Any, ...]]:
    """Every written row with its partition, in one canonical order."""
    rel = duckdb.connect().sql(
        f"SELECT * FROM read_parquet('{folder}/*/*.parquet', hive_partitioning = true) "
        "ORDER BY quarter_idx, npo_account_id"
    )
    return rel.fetchall()


def test_same_input_gives_the_same_rows(scenario_sources: FeatureSources, tmp_path: Path) -> None:
    for name in ("one", "two"):
        write_features(feature_query(duckdb.connect(), scenario_sources), tmp_path / name)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(
        p.name for p in (tmp_path / "two").iterdir()
    )
    assert written_rows(tmp_path / "one") == written_rows(tmp_path / "two")


def test_a_relation_in_another_order_gives_the_same_files_content(
    scenario_sources: FeatureSources, tmp_path: Path
) -> None:
    rel = feature_query(duckdb.connect(), scenario_sources)
    write_features(rel, tmp_path / "ordered")
    shuffled = rel.query("f", "SELECT * FROM f ORDER BY npo_account_id DESC, quarter_idx DESC")
    assert shuffled is not None
    summary = write_features(shuffled, tmp_path / "shuffled")
    assert summary.rows == 18
    assert written_rows(tmp_path / "ordered") == written_rows(tmp_path / "shuffled")


def test_an_empty_dump_gives_an_empty_table(tmp_path: Path) -> None:
    src = sources(tmp_path / "in", [], [])
    summary = write_features(feature_query(duckdb.connect(), src), tmp_path / "out")
    assert (summary.rows, summary.quarters, summary.scoring_rows) == (0, None, 0)
    assert list((tmp_path / "out").iterdir()) == []


# --- leakage ---------------------------------------------------------------------------------


def test_later_data_never_changes_inputs(feats: dict, tmp_path: Path) -> None:
    cutoff = 8085
    clients, ops = scenario_rows()
    later_ops = [
        *ops,
        operation(A, dt.date(2021, 8, 1), 9999.0, 1),  # a contribution after the cut-off
        operation(B, dt.date(2022, 5, 5), -70.0, 0),
    ]
    later_clients = [
        (
            r
            | ({"churn": 1} if (r["npo_account_id"], r["quarter"]) == (B, "2022Q2") else {})
            | ({"balance": 1.0, "appl_mrkr": 1} if r["quarter"] > qname(cutoff) else {})
        )
        for r in clients
    ]
    later_clients.append(client(C, 8086))  # C comes back after the cut-off
    changed = build(sources(tmp_path, later_clients, later_ops, {A: 7, C: 3}))
    inputs = [f.name for f in FEATURES if f.name in MODEL_INPUTS]
    for key, row in feats.items():
        if key[1] <= cutoff:
            assert {k: row[k] for k in inputs} == {k: changed[key][k] for k in inputs}, key
    assert changed[B, 8085]["label_next_4q"] == 1 != feats[B, 8085]["label_next_4q"]  # it bites


# --- the pandas benchmark computes the same -----------------------------------------------------


def _load_pandas_features() -> Any:
    path = Path(__file__).resolve().parents[1] / "bench" / "pandas_features.py"
    spec = importlib.util.spec_from_file_location("pandas_features", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pandas_features"] = module
    spec.loader.exec_module(module)
    return module


def generated_rows(seed: int = 7, accounts: int = 60) -> tuple[list[dict], list[dict]]:
    """Random accounts 2016–2023 with gaps, churns, early history and odd values."""
    rnd = random.Random(seed)
    clients, ops = [], []
    first_panel, last_panel = qidx("2018Q1"), qidx("2023Q1")
    for n in range(accounts):
        account = f"0x{n:032x}"
        start = rnd.randint(first_panel, last_panel)
        stop = min(last_panel, start + rnd.randint(0, 20))
        churn_at = stop if rnd.random() < 0.4 else None
        for q in range(start, stop + 1):
            if rnd.random() < 0.12 and q not in (start, stop):
                continue  # a gap in the panel
            clients.append(
                client(
                    account,
                    q,
                    balance=None if rnd.random() < 0.05 else round(rnd.uniform(0, 5e5), 2),
                    appl_mrkr=None if rnd.random() < 0.05 else int(rnd.random() < 0.1),
                    churn=int(q == churn_at),
                    gender=rnd.choice([-1, 1, None]),
                    age=rnd.randint(20, 70),
                )
            )
        for q in range(start - rnd.randint(0, 14), stop + 2):
            year, quarter = divmod(q, 4)
            for _ in range(rnd.choice([0, 0, 1, 2, 3])):
                date = dt.date(year, 3 * quarter + 1, 1) + dt.timedelta(days=rnd.randint(0, 89))
                grp = int(rnd.random() < 0.6)
                amount = round(rnd.uniform(-50, 2000) if grp else rnd.uniform(-20, 300), 2)
                ops.append(operation(account, date, amount, grp))
    return clients, ops


def test_pandas_benchmark_computes_the_same_features(tmp_path: Path) -> None:
    pandas_features = _load_pandas_features()
    clients, ops = generated_rows()
    src = sources(tmp_path, clients, ops)
    columns = pandas_features.COLUMNS
    duck = (
        feature_query(duckdb.connect(), src)
        .query("f", f"SELECT {', '.join(columns)} FROM f ORDER BY npo_account_id, quarter_idx")
        .df()
    )
    expected = pandas_features.pandas_features(
        pd.read_parquet(src.clients), pd.read_parquet(src.transactions)
    )
    assert len(duck) == len(expected) == len(clients)
    for column in columns:
        got, want = duck[column], expected[column]
        if column in ("npo_account_id", "quarter"):
            assert got.astype(str).tolist() == want.astype(str).tolist()
        elif column == "quarter_end":
            assert pd.to_datetime(got).tolist() == pd.to_datetime(want).tolist()
        else:
            np.testing.assert_allclose(
                pd.to_numeric(got).astype("float64"),
                pd.to_numeric(want).astype("float64"),
                rtol=1e-9,
                atol=1e-6,
                err_msg=column,
            )
