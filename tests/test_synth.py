"""The synthetic fund: what the rest of the product relies on it to be."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from npf_loyalty import schema
from npf_loyalty.synth import SynthConfig, SyntheticFund, generate, write_fund

SMALL = SynthConfig(accounts=800, seed=11, quarters=24)


@pytest.fixture(scope="module")
def fund() -> SyntheticFund:
    return generate(SMALL)


@pytest.fixture(scope="module")
def rows(fund: SyntheticFund) -> pd.DataFrame:
    """Clients rows with the truth beside them and the labels built from the dump."""
    c = fund.clients.to_pandas()
    t = fund.truth.to_pandas()
    assert (c["npo_account_id"] == t["npo_account_id"]).all()
    assert (c["quarter"] == t["quarter"]).all()
    d = pd.concat([c, t.drop(columns=["npo_account_id", "quarter"])], axis=1)
    d["qi"] = d["year"] * 4 + d["quarter"].str[5].astype(int) - 1
    d = d.sort_values(["npo_account_id", "qi"]).reset_index(drop=True)
    nxt = d.groupby("npo_account_id")[["qi", "churn"]].shift(-1)
    d["label_next_q"] = ((nxt["qi"] == d["qi"] + 1) & (nxt["churn"] == 1)).astype(int)
    return d


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann–Whitney AUC with average ranks for ties."""
    ranks = pd.Series(score).rank().to_numpy()
    pos = label.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_same_config_gives_byte_identical_tables() -> None:
    config = SynthConfig(accounts=300, seed=3, quarters=12)
    a, b = generate(config), generate(config)
    for name in ("clients", "transactions", "contributors", "truth"):
        assert _ipc_bytes(getattr(a, name)) == _ipc_bytes(getattr(b, name)), name


def test_different_seeds_give_different_data() -> None:
    a = generate(SynthConfig(accounts=300, seed=1, quarters=12))
    b = generate(SynthConfig(accounts=300, seed=2, quarters=12))
    assert a.contributors.column("npo_accnt_id") != b.contributors.column("npo_accnt_id")
    assert a.transactions.column("npo_sum") != b.transactions.column("npo_sum")


def test_columns_and_types_match_the_contract(fund: SyntheticFund) -> None:
    expected = {
        schema.Kind.INT: pa.int64(),
        schema.Kind.FLOAT: pa.float64(),
        schema.Kind.DATE: pa.date32(),
    }
    for table, spec in (
        (fund.clients, schema.CLIENTS_QUARTERLY),
        (fund.transactions, schema.TRANSACTIONS),
        (fund.contributors, schema.CONTRIBUTORS),
    ):
        assert tuple(table.column_names) == spec.names
        for col in spec.columns:
            assert table.schema.field(col.name).type == expected.get(col.kind, pa.string())
            if not col.nullable:
                assert table.column(col.name).null_count == 0, col.name


def test_every_account_has_rows_and_one_contributor_row(fund: SyntheticFund) -> None:
    accounts = set(fund.contributors.column("npo_accnt_id").to_pylist())
    assert len(accounts) == SMALL.accounts == fund.contributors.num_rows
    assert set(fund.clients.column("npo_account_id").to_pylist()) == accounts


def test_churn_rate_per_quarter_is_between_1_and_3_percent_on_average(rows: pd.DataFrame) -> None:
    rate = rows.groupby("qi")["churn"].mean()
    assert 0.01 <= rate.mean() <= 0.03


def test_no_rows_after_churn(rows: pd.DataFrame) -> None:
    churned = rows[rows["churn"] == 1]
    assert churned["npo_account_id"].is_unique
    last = rows.groupby("npo_account_id")["qi"].max()
    assert (churned.set_index("npo_account_id")["qi"] == last[churned["npo_account_id"]]).all()


def test_rows_of_an_account_are_consecutive_quarters(rows: pd.DataFrame) -> None:
    g = rows.groupby("npo_account_id")["qi"]
    assert ((g.max() - g.min() + 1) == g.size()).all()


def test_some_accounts_opened_before_the_window(rows: pd.DataFrame) -> None:
    first = rows[rows["qi"] == rows["qi"].min()]
    assert (first["clnt_cprtn_time_d"] > 92).mean() > 0.2


def test_age_never_decreases_and_year_matches_quarter(rows: pd.DataFrame) -> None:
    assert (rows.groupby("npo_account_id")["age"].diff().dropna() >= 0).all()
    assert (rows["quarter"].str[:4].astype(int) == rows["year"]).all()


def test_operation_year_and_quarter_match_its_date(fund: SyntheticFund) -> None:
    t = fund.transactions.to_pandas()
    date = pd.to_datetime(t["npo_oprtn_date"])
    assert (date.dt.year == t["year"]).all()
    assert (date.dt.year.astype(str) + "Q" + date.dt.quarter.astype(str) == t["quarter"]).all()


def test_some_accounts_end_without_churn_for_other_reasons(rows: pd.DataFrame) -> None:
    ended = rows[rows["other_end_after"] == 1]
    assert len(ended) > 0
    assert (ended["churn"] == 0).all()
    last = rows.groupby("npo_account_id")["qi"].max()
    assert (ended["qi"].to_numpy() == last[ended["npo_account_id"]].to_numpy()).all()


def test_quarterly_aggregates_equal_the_transactions(
    fund: SyntheticFund, rows: pd.DataFrame
) -> None:
    t = fund.transactions.to_pandas()
    t["contrib"] = t["npo_sum"].where(t["npo_oprtn_grp"] == schema.OPERATION_CONTRIBUTION, 0.0)
    t["income"] = t["npo_sum"].where(t["npo_oprtn_grp"] == schema.OPERATION_INCOME, 0.0)
    t["n"] = (t["npo_oprtn_grp"] == schema.OPERATION_CONTRIBUTION).astype(int)
    agg = t.groupby(["npo_account_id", "quarter"])[["contrib", "income", "n"]].sum()
    j = rows.join(agg, on=["npo_account_id", "quarter"]).fillna({"contrib": 0, "income": 0, "n": 0})
    assert np.allclose(j["contrib"], j["pmnts_sum_per_qrtr"], atol=0.005)
    assert np.allclose(j["income"], j["incm_per_qrtr"], atol=0.005)
    assert (j["n"] == j["pmnts_nmbr_per_qrtr"]).all()
    assert np.allclose(j["contrib"] + j["income"], j["oprtn_sum_per_qrtr"], atol=0.005)


def test_last_payment_date_in_quarter_equals_the_transactions(
    fund: SyntheticFund, rows: pd.DataFrame
) -> None:
    t = fund.transactions.to_pandas()
    t = t[t["npo_oprtn_grp"] == schema.OPERATION_CONTRIBUTION]
    last = t.groupby(["npo_account_id", "quarter"])["npo_oprtn_date"].max().rename("last")
    j = rows.join(last, on=["npo_account_id", "quarter"])
    assert (j["last"].isna() == j["lst_pmnt_date_per_qrtr"].isna()).all()
    both = j["last"].notna()
    assert (j.loc[both, "last"] == j.loc[both, "lst_pmnt_date_per_qrtr"]).all()


def test_balance_and_cumulative_sums_equal_all_transactions_so_far(
    fund: SyntheticFund, rows: pd.DataFrame
) -> None:
    t = fund.transactions.to_pandas()
    t["contrib"] = t["npo_sum"].where(t["npo_oprtn_grp"] == schema.OPERATION_CONTRIBUTION, 0.0)
    t["qi"] = t["year"] * 4 + t["quarter"].str[5].astype(int) - 1
    q = t.groupby(["npo_account_id", "qi"])[["contrib", "npo_sum"]].sum().reset_index()
    q[["cum_contrib", "cum_all"]] = q.groupby("npo_account_id")[["contrib", "npo_sum"]].cumsum()
    j = pd.merge_asof(rows.sort_values("qi"), q.sort_values("qi"), on="qi", by="npo_account_id")
    assert np.allclose(j["cum_contrib"], j["pmnts_sum"], atol=0.01)
    assert np.allclose(j["cum_all"], j["balance"], atol=0.01)


def test_income_is_accrued_and_sometimes_negative(fund: SyntheticFund) -> None:
    big = generate(SynthConfig(accounts=1500, seed=5, quarters=60))
    income = big.transactions.filter(
        pc.equal(big.transactions.column("npo_oprtn_grp"), schema.OPERATION_INCOME)
    )
    sums = income.column("npo_sum").to_numpy()
    assert (sums > 0).mean() > 0.8
    assert (sums < 0).any()


def test_truth_probabilities_are_strictly_between_0_and_1(fund: SyntheticFund) -> None:
    for name in ("p_leave_next_q", "p_leave_next_4q"):
        p = fund.truth.column(name).to_numpy()
        assert ((p > 0) & (p < 1)).all(), name
    assert (
        fund.truth.column("p_leave_next_4q").to_numpy()
        >= fund.truth.column("p_leave_next_q").to_numpy()
    ).all()


def test_truth_ranks_accounts_that_leave_next_quarter_high(rows: pd.DataFrame) -> None:
    scored = rows[(rows["churn"] == 0) & (rows["qi"] < rows["qi"].max())]
    y = scored["label_next_q"].to_numpy()
    assert y.sum() > 50
    assert _auc(scored["p_leave_next_q"].to_numpy(), y) > 0.7
    assert scored.loc[y == 1, "p_leave_next_q"].mean() > 2 * scored["p_leave_next_q"].mean()


def test_hidden_causes_carry_real_but_minor_signal(rows: pd.DataFrame) -> None:
    scored = rows[(rows["churn"] == 0) & (rows["qi"] < rows["qi"].max())]
    y = scored["label_next_q"].to_numpy()
    observable = _auc(scored["logit_observable_next_q"].to_numpy(), y)
    hidden = _auc(scored["logit_hidden_next_q"].to_numpy(), y)
    assert 0.55 < hidden < observable


def test_employer_accounts_pay_more_regularly_than_bank_accounts(rows: pd.DataFrame) -> None:
    paid = (rows["pmnts_nmbr_per_qrtr"] > 0).groupby(rows["pmnts_type"]).mean()
    every = rows.groupby("pmnts_type")["evry_qrtr_pmnt"].mean()
    assert paid[3] > paid[2] + 0.15
    assert every[3] > every[2] + 0.3


def test_ids_are_0x_and_32_lowercase_hex(fund: SyntheticFund) -> None:
    pattern = re.compile(r"^0x[0-9a-f]{32}$")
    ids = (
        fund.clients.column("client_id").unique().to_pylist()
        + fund.contributors.column("npo_accnt_id").to_pylist()
    )
    assert all(pattern.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_postal_codes_are_six_digits_and_regions_upper_case_mostly(fund: SyntheticFund) -> None:
    postal = fund.clients.column("postal_code").drop_null().to_pylist()
    assert all(re.fullmatch(r"\d{6}", p) for p in postal)
    region = fund.clients.column("region").drop_null().to_pylist()
    assert np.mean([r == r.upper() for r in region]) > 0.9
    assert fund.clients.column("region").null_count > 0


def test_utf8_csv_uses_the_funds_separators_and_float_postal_codes(
    fund: SyntheticFund, tmp_path: Path
) -> None:
    paths = write_fund(fund, tmp_path, "csv")
    assert set(paths) == {"clnts_fin_prtrt", "trnsctns", "cntrbtrs", "truth"}
    assert paths["truth"].suffix == ".parquet"
    assert paths["clnts_fin_prtrt"].read_text("utf-8").splitlines()[0].startswith("slctn_nmbr,")
    assert paths["trnsctns"].read_text("utf-8").splitlines()[0].startswith("slctn_nmbr;")
    back = pacsv.read_csv(
        paths["clnts_fin_prtrt"],
        convert_options=pacsv.ConvertOptions(column_types={"postal_code": pa.string()}),
    )
    assert back.num_rows == fund.clients.num_rows
    postal = back.column("postal_code").drop_null().to_pylist()
    share_float = np.mean([p.endswith(".0") for p in postal])
    assert 0.04 < share_float < 0.2


def test_cp1251_csv_round_trips(fund: SyntheticFund, tmp_path: Path) -> None:
    paths = write_fund(fund, tmp_path, "csv", encoding="cp1251")
    raw = paths["clnts_fin_prtrt"].read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    back = pacsv.read_csv(
        paths["clnts_fin_prtrt"],
        read_options=pacsv.ReadOptions(encoding="cp1251"),
        convert_options=pacsv.ConvertOptions(
            column_types={"region": pa.string()}, strings_can_be_null=True
        ),
    )
    assert back.column("region").to_pylist() == fund.clients.column("region").to_pylist()
    assert back.column("balance").to_pylist() == fund.clients.column("balance").to_pylist()


def test_decimal_comma_csv_uses_semicolons_and_comma_decimals(
    fund: SyntheticFund, tmp_path: Path
) -> None:
    paths = write_fund(fund, tmp_path, "csv", decimal_comma=True)
    for name in ("clnts_fin_prtrt", "trnsctns", "cntrbtrs"):
        assert paths[name].read_text("utf-8").splitlines()[0].count(";") >= 2, name
    back = pd.read_csv(paths["trnsctns"], sep=";", decimal=",")
    assert re.search(r"\d,\d", paths["trnsctns"].read_text("utf-8"))
    assert np.allclose(back["npo_sum"], fund.transactions.column("npo_sum").to_numpy())


def test_parquet_and_xlsx_hold_the_same_rows(tmp_path: Path) -> None:
    tiny = generate(SynthConfig(accounts=15, seed=2, quarters=4))
    pq_paths = write_fund(tiny, tmp_path / "pq", "parquet")
    assert pq.read_table(pq_paths["clnts_fin_prtrt"]).equals(tiny.clients)
    xl_paths = write_fund(tiny, tmp_path / "xl", "xlsx")
    back = pd.read_excel(xl_paths["trnsctns"])
    assert len(back) == tiny.transactions.num_rows
    assert list(back.columns) == list(schema.TRANSACTIONS.names)


def test_xlsx_refuses_more_than_a_million_rows(fund: SyntheticFund, tmp_path: Path) -> None:
    huge = pa.table({"x": pa.array(np.zeros(1_000_001, np.int64))})
    too_big = SyntheticFund(fund.clients, huge, fund.contributors, fund.truth)
    with pytest.raises(ValueError, match="XLSX"):
        write_fund(too_big, tmp_path, "xlsx")
    assert not any(tmp_path.iterdir())


def test_progress_reports_stages() -> None:
    stages: list[str] = []
    generate(SynthConfig(accounts=50, seed=1, quarters=4), progress=stages.append)
    assert stages[0] == "accounts"
    assert "simulate 2023Q1" in stages
    assert stages[-1] == "tables"
