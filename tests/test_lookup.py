"""FundView over a small lookup written in scoring's layout (local folder and moto's S3)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from npf_loyalty.lookup import FundView, MatchKind, NoLookupError, normalize_id
from npf_loyalty.storage import Keys, LocalStore, Store

QUARTER = "2023Q1"
QUARTERS = ("2021Q2", "2021Q3", "2021Q4", "2022Q1", "2022Q2", "2022Q3", "2022Q4", "2023Q1")


def hex_id(head: str, fill: str) -> str:
    return "0x" + head + fill * (32 - len(head))


# hand-made ids: two clients share the prefix ab12cd35, an account starts with ab12cd36
C_TWO_ACCOUNTS = hex_id("ab12cd34", "e")
A_RISKY = hex_id("5a", "1")
A_CALM = hex_id("c3", "2")
C_TWIN_1 = hex_id("ab12cd35", "f")
C_TWIN_2 = hex_id("ab12cd35", "0")
C_BY_ACCOUNT = hex_id("10", "4")
A_PREFIXED = hex_id("ab12cd36", "5")
UNKNOWN = hex_id("ab12cd99", "9")

REGIONS = (
    ("Самарская обл", "Приволжский"),
    ("Татарстан Респ", "Приволжский"),
    ("Москва", "Центральный"),
    ("Новосибирская обл", "Сибирский"),
)
REASONS = ("нет взносов 3 квартала", "есть личный кабинет", "перестал платить взносы")


def make_fund(n_random: int = 60, seed: int = 3) -> dict[str, np.ndarray]:
    """One row per account: the hand-made clients above plus random ones."""
    rng = np.random.default_rng(seed)
    fixed = [
        (C_TWO_ACCOUNTS, A_RISKY, 0.62, 0.93),
        (C_TWO_ACCOUNTS, A_CALM, 0.01, 0.05),
        (C_TWIN_1, hex_id("77", "3"), 0.05, 0.3),
        (C_TWIN_2, hex_id("78", "3"), 0.04, 0.25),
        (C_BY_ACCOUNT, A_PREFIXED, 0.2, 0.6),
    ]
    clients = [f[0] for f in fixed]
    accounts = [f[1] for f in fixed]
    p_q = [f[2] for f in fixed]
    p_4q = [f[3] for f in fixed]
    heads = ("3e", "9d", "e0")  # few shards: few files to write and upload
    for _ in range(n_random):
        clients.append("0x" + str(rng.choice(heads)) + rng.bytes(15).hex())
        accounts.append("0x" + str(rng.choice(heads)) + rng.bytes(15).hex())
        q = float(rng.beta(1, 12))
        p_q.append(q)
        p_4q.append(min(0.99, q * 3))
    n = len(clients)
    pq, p4 = np.array(p_q), np.array(p_4q)
    order = np.argsort(-pq, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    region = np.array([REGIONS[i % len(REGIONS)][0] for i in range(n)], dtype=object)
    district = np.array([REGIONS[i % len(REGIONS)][1] for i in range(n)], dtype=object)
    balance = np.round(rng.uniform(10_000, 2_000_000, n), 2)
    balance[0] = 1_234_567.0
    contrib = np.round(rng.uniform(0, 60_000, n), 2)
    contrib[0] = 12_000.0
    bands = np.where(1 - p4 < 0.2, "низкая", np.where(1 - p4 < 0.8, "средняя", "высокая"))
    bands_q = np.where(1 - pq < 0.2, "низкая", np.where(1 - pq < 0.8, "средняя", "высокая"))
    return {
        "npo_account_id": np.array(accounts, dtype=object),
        "client_id": np.array(clients, dtype=object),
        "quarter": np.full(n, QUARTER, dtype=object),
        "p_leave_next_q": pq,
        "p_leave_next_4q": p4,
        "loyalty_next_q": 1 - pq,
        "loyalty_next_4q": 1 - p4,
        "band": bands.astype(object),
        "band_next_q": bands_q.astype(object),
        "relative_risk": pq / pq.mean(),
        "risk_rank": rank,
        "risk_top_pct": 100.0 * rank / n,
        "model_version": np.full(n, "m1", dtype=object),
        "reason_1": np.full(n, REASONS[0], dtype=object),
        "reason_2": np.full(n, REASONS[1], dtype=object),
        "reason_3": np.full(n, REASONS[2], dtype=object),
        "reason_1_contribution": np.full(n, 0.8),
        "reason_2_contribution": np.full(n, -0.3),
        "reason_3_contribution": np.full(n, 0.1),
        "features_version": np.full(n, "f1", dtype=object),
        "region": region,
        "federal_district": district,
        "balance": balance,
        "contrib_q": contrib,
        "income_q": np.round(balance * 0.02, 2),
        "days_since_contrib": np.full(n, 45.0),
        "quarters_without_contrib": np.zeros(n, dtype=np.int64),
        "age": np.full(n, 47, dtype=np.int64),
        "gender": np.where(np.arange(n) % 2 == 0, -1, 1).astype(np.int64),
        "pmnts_type": np.full(n, 2, dtype=np.int64),
        "tenure_years": np.full(n, 6.5),
        "lk": np.ones(n, dtype=np.int64),
        "appl_mrkr": np.zeros(n, dtype=np.int64),
        "balance_at_risk": pq * balance,
    }


def make_history(fund: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The last 8 quarters of every account (contributions fade as the risk grows)."""
    n, k = len(fund["npo_account_id"]), len(QUARTERS)
    fade = np.linspace(1.0, 0.2, k)
    p_q = np.outer(fund["p_leave_next_q"], np.linspace(0.3, 1.0, k))
    return {
        "npo_account_id": np.repeat(fund["npo_account_id"], k),
        "client_id": np.repeat(fund["client_id"], k),
        "quarter": np.tile(np.array(QUARTERS, dtype=object), n),
        "contrib_q": np.outer(fund["contrib_q"] + 1000.0, fade).ravel(),
        "income_q": np.outer(fund["income_q"], np.ones(k)).ravel(),
        "contrib_count_q": np.full(n * k, 3, dtype=np.int64),
        "balance": np.outer(fund["balance"], np.linspace(0.8, 1.0, k)).ravel(),
        "p_leave_next_q": p_q.ravel(),
        "p_leave_next_4q": np.minimum(p_q * 3, 0.99).ravel(),
    }


def fund_stats(fund: dict[str, np.ndarray]) -> dict[str, Any]:
    by_quarter: list[dict[str, Any]] = [
        {"quarter": q, "accounts": 1000 + 10 * i, "left": 20 + i} for i, q in enumerate(QUARTERS)
    ]
    by_year: dict[str, dict[str, int]] = {}
    for row in by_quarter:
        year = by_year.setdefault(row["quarter"][:4], {"accounts": 0, "left": 0, "quarters": 0})
        year["left"] += row["left"]
        year["quarters"] += 1
        year["accounts"] = max(year["accounts"], row["accounts"])
    bands, counts = np.unique(fund["band"].astype(str), return_counts=True)
    return {
        "accounts_scored": len(fund["npo_account_id"]),
        "expected_leavers_next_q": float(fund["p_leave_next_q"].sum()),
        "expected_leavers_next_4q": float(fund["p_leave_next_4q"].sum()),
        "balance_at_risk_next_q": float(fund["balance_at_risk"].sum()),
        "bands": {str(b): int(c) for b, c in zip(bands, counts, strict=True)},
        "bands_next_q": {},
        "by_quarter": by_quarter,
        "by_year": by_year,
    }


def write_lookup(
    store: Store,
    fund: dict[str, np.ndarray] | None = None,
    *,
    version: str = "v1",
    report: bool = False,
) -> dict[str, np.ndarray]:
    """Write `lookup/<version>/` the way scoring does (DuckDB COPY), then publish it."""
    fund = fund if fund is not None else make_fund()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        con = duckdb.connect()
        con.register("fund", fund)
        con.register("history", make_history(fund))
        part = "(FORMAT parquet, PARTITION_BY (shard), OVERWRITE_OR_IGNORE)"
        con.sql(
            "COPY (SELECT *, substr(client_id, 3, 2) AS shard FROM fund "
            f"ORDER BY client_id, npo_account_id) TO '{out / 'client'}' {part}"
        )
        con.sql(
            "COPY (SELECT npo_account_id, client_id, substr(npo_account_id, 3, 2) AS shard "
            f"FROM fund) TO '{out / 'account'}' {part}"
        )
        con.sql(
            "COPY (SELECT *, substr(client_id, 3, 2) AS shard FROM history "
            f"ORDER BY client_id, npo_account_id, quarter) TO '{out / 'history'}' {part}"
        )
        con.sql(
            "COPY (SELECT * FROM fund ORDER BY p_leave_next_q DESC, npo_account_id) "
            f"TO '{out / 'top.parquet'}' (FORMAT parquet)"
        )
        con.close()
        (out / "stats.json").write_text(json.dumps(fund_stats(fund), ensure_ascii=False))
        store.put_dir(Keys.version_dir(Keys.lookup, version), out)
    store.publish(
        Keys.lookup,
        version,
        {"model_version": "m1", "features_version": "f1", "quarter": QUARTER,
         "accounts": len(fund["npo_account_id"]), "scored_at": "2023-04-02T06:00:00+00:00"},
    )  # fmt: skip
    if report:
        store.put_bytes(f"reports/{QUARTER}/report.html", b"<html>report</html>")
        store.put_bytes(f"reports/{QUARTER}/report.xlsx", b"PK-xlsx")
        store.put_json("reports/_current.json", {"version": QUARTER})
    return fund


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Spy(LocalStore):
    """A local store that remembers which files were handed to a reader."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read: list[str] = []

    def local_path(self, key: str) -> Path:
        self.read.append(key)
        return super().local_path(key)


@pytest.fixture
def view(store: Store, tmp_path: Path) -> FundView:
    write_lookup(store)
    return FundView(store, work_dir=tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0xAB12CD34", "ab12cd34"),
        ("  ab12cd34ef  ", "ab12cd34ef"),
        ("«0xab12cd34…»", "ab12cd34"),
        (C_TWO_ACCOUNTS.upper().replace("0X", "0x"), C_TWO_ACCOUNTS[2:]),
        ("ab12cd3", None),  # 7 digits: too short
        ("0xab12cd3g", None),
        ("0x" + "a" * 33, None),
        ("", None),
    ],
)
def test_normalize_id(text: str, expected: str | None) -> None:
    assert normalize_id(text) == expected


def test_find_client_by_full_id_any_case(view: FundView) -> None:
    for query in (C_TWO_ACCOUNTS, C_TWO_ACCOUNTS[2:].upper(), " " + C_TWO_ACCOUNTS + " "):
        match = view.find(query)
        assert match.kind is MatchKind.FOUND
        assert match.client is not None
        assert match.client.client_id == C_TWO_ACCOUNTS
        assert [a.npo_account_id for a in match.client.accounts] == [A_RISKY, A_CALM]
        assert match.selected is None
    client = view.find(C_TWO_ACCOUNTS).client
    assert client is not None
    account = client.accounts[0]
    assert account.band == "низкая" and account.reasons[0] == (REASONS[0], 0.8)
    assert account.balance == 1_234_567.0 and account.quarter == QUARTER


def test_find_by_account_selects_it(view: FundView) -> None:
    match = view.find(A_CALM)
    assert match.kind is MatchKind.FOUND
    assert match.client is not None and match.client.client_id == C_TWO_ACCOUNTS
    assert match.selected == A_CALM
    assert match.client.account(match.selected).npo_account_id == A_CALM


def test_unique_prefix_finds_client_or_account(view: FundView) -> None:
    match = view.find("ab12cd34")
    assert match.kind is MatchKind.FOUND and match.client is not None
    assert match.client.client_id == C_TWO_ACCOUNTS
    by_account = view.find("0xAB12CD36")
    assert by_account.kind is MatchKind.FOUND and by_account.client is not None
    assert by_account.client.client_id == C_BY_ACCOUNT
    assert by_account.selected == A_PREFIXED


def test_ambiguous_unknown_and_invalid(view: FundView) -> None:
    ambiguous = view.find("ab12cd35")
    assert ambiguous.kind is MatchKind.AMBIGUOUS
    assert {c.id for c in ambiguous.candidates} == {C_TWIN_1, C_TWIN_2}
    assert all(c.kind == "client" for c in ambiguous.candidates)
    assert view.find(UNKNOWN).kind is MatchKind.NOT_FOUND
    assert view.find("ab12cd3").kind is MatchKind.INVALID
    assert view.find("клиент").kind is MatchKind.INVALID


def test_prefix_reads_only_its_shards(tmp_path: Path) -> None:
    store = Spy(tmp_path / "bucket")
    write_lookup(store)
    view = FundView(store, work_dir=tmp_path)
    store.read.clear()
    view.find("ab12cd35")
    assert sorted(store.read) == [
        "lookup/v1/account/shard=ab/data_0.parquet",
        "lookup/v1/client/shard=ab/data_0.parquet",
    ]
    store.read.clear()
    view.find("ab12cd35ff")  # the same shards again: served from the cache
    assert store.read == []


def test_history_of_a_client(view: FundView) -> None:
    rows = view.history(C_TWO_ACCOUNTS)
    assert len(rows) == 2 * len(QUARTERS)
    assert [r.quarter for r in rows[: len(QUARTERS)]] == list(QUARTERS)
    assert {r.npo_account_id for r in rows} == {A_RISKY, A_CALM}
    assert view.history(UNKNOWN) == []
    assert view.history("nonsense") == []


def test_top_overall_and_by_area(view: FundView) -> None:
    top = view.top(5)
    assert len(top.accounts) == 5
    p = [a.p_leave_next_q for a in top.accounts]
    assert p == sorted(p, reverse=True) and top.accounts[0].npo_account_id == A_RISKY
    assert len(view.top(500).accounts) == 50  # at most 50
    samara = view.top(50, "самарская")
    assert samara.accounts and {a.region for a in samara.accounts} == {"Самарская обл"}
    assert samara.areas == ("Самарская обл",)
    volga = view.top(50, "ПРИВОЛЖСКИЙ")
    assert {a.federal_district for a in volga.accounts} == {"Приволжский"}
    assert {a.region for a in volga.accounts} == {"Самарская обл", "Татарстан Респ"}
    assert view.top(10, "атлантида").accounts == ()


def test_stats_and_report(store: Store, tmp_path: Path) -> None:
    fund = write_lookup(store)
    view = FundView(store, work_dir=tmp_path)
    stats = view.stats()
    assert stats.accounts_scored == len(fund["npo_account_id"])
    assert stats.quarter == QUARTER
    assert sum(stats.bands.values()) == stats.accounts_scored
    assert [q.quarter for q in stats.by_quarter] == list(QUARTERS)
    assert list(stats.by_year) == ["2021", "2022", "2023"]
    assert view.latest_report() is None
    store.put_bytes("reports/2022Q4/report.xlsx", b"old")
    assert view.latest_report() == ("npf-report-2022Q4.xlsx", b"old")  # no pointer: newest
    write_lookup(store, fund, report=True)
    assert view.latest_report() == ("npf-report-2023Q1.html", b"<html>report</html>")
    # the report's own layout: runs under reports/<q>/<run>/, pointers name the files
    for run, html in (("20230402-0600", b"first"), ("20230402-0600-2", b"second")):
        store.put_bytes(f"reports/2023Q2/{run}/report.html", html)
        store.put_bytes(f"reports/2023Q2/{run}/report.xlsx", b"xlsx")
    store.publish("reports/2023Q2/", "20230402-0600", {})
    assert view.latest_report() == ("npf-report-2023Q1.html", b"<html>report</html>")  # pointer
    store.publish(Keys.reports, "2023Q2", {})
    assert view.latest_report() == ("npf-report-2023Q2.html", b"first")  # the quarter's run
    store.publish(
        Keys.reports,
        "2023Q2",
        {"html": "reports/2023Q2/20230402-0600-2/report.html", "xlsx": "unused"},
    )
    assert view.latest_report() == ("npf-report-2023Q2.html", b"second")


def test_pointer_is_reread_after_ttl(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    with pytest.raises(NoLookupError):
        FundView(store, work_dir=tmp_path).find(C_TWO_ACCOUNTS)
    fund = write_lookup(store)
    clock = Clock()
    view = FundView(store, work_dir=tmp_path, clock=clock, pointer_ttl=60)
    assert view.version == "v1"
    fewer = {k: v[1:] for k, v in fund.items()}  # v2 drops the riskiest account
    write_lookup(store, fewer, version="v2")
    clock.now = 30
    assert view.version == "v1"
    assert view.find(A_RISKY).kind is MatchKind.FOUND
    clock.now = 61
    assert view.version == "v2"
    assert view.find(A_RISKY).kind is MatchKind.NOT_FOUND
    assert all(key[0] == "v2" for key in view._files)


def test_s3_shards_are_fetched_once_and_evicted(s3_store: Store, tmp_path: Path) -> None:
    write_lookup(s3_store)
    view = FundView(s3_store, work_dir=tmp_path, cache_size=3)
    fetched: list[str] = []
    get_bytes = s3_store.get_bytes

    def counting(key: str) -> bytes:
        fetched.append(key)
        return get_bytes(key)

    s3_store.get_bytes = counting
    assert view.find(C_TWO_ACCOUNTS).kind is MatchKind.FOUND
    assert view.find(C_TWO_ACCOUNTS).kind is MatchKind.FOUND
    assert view.history(C_TWO_ACCOUNTS)
    shards = sorted(k for k in fetched if k.endswith(".parquet"))
    assert shards == [  # what a card needs, fetched together, once
        "lookup/v1/account/shard=ab/data_0.parquet",
        "lookup/v1/client/shard=ab/data_0.parquet",
        "lookup/v1/history/shard=ab/data_0.parquet",
    ]
    fetched.clear()
    assert view.find(C_BY_ACCOUNT).kind is MatchKind.FOUND  # shard 10: the ab shards go
    assert len([k for k in fetched if k.endswith(".parquet")]) == 2  # no account starts 0x10
    local = sorted(p.relative_to(view._work).as_posix() for p in view._work.rglob("*.parquet"))
    assert local == [
        "lookup/v1/client/shard=10/data_0.parquet",
        "lookup/v1/history/shard=10/data_0.parquet",
    ]
    assert view.top(3).accounts[0].npo_account_id == A_RISKY
    view.close()
    assert not view._work.exists()
