"""The quarterly report for the fund's management and managers: HTML, XLSX and parquet tables.

For a quarter Q (default: the quarter of the current scores) it answers, in Russian:
how many clients are expected to leave and how much money that is (with an interval), how the
loyalty bands moved since Q−1, which segments and which accounts carry the risk, whether last
quarter's predictions came true (backtest of the Q−1 scores against the exits seen in Q), how
clean the data was, and whether the inputs drifted away from what the model was trained on.

Why this shape:
- Lambda path: DuckDB + numpy + openpyxl + matplotlib only (no pandas or pyarrow), so the
  function fits its size limit.
- Every figure is computed once into plain dataclasses; HTML, XLSX and the parquet tables are
  renderings of the same `Table`s, so the three outputs cannot disagree.
- Outputs go to a fresh run folder `reports/<Q>/<run>/`; the per-quarter pointer and then
  `reports/_current.json` are written last, so readers (the bot's /report) switch atomically and
  an interrupted run leaves the previous one current and intact.
- Delivery to Telegram is a core function over a `send` the bot layer provides; nothing here
  imports aiogram.
"""

from __future__ import annotations

import base64
import html
import inspect
import io
import json
import logging
import math
import re
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from npf_loyalty import metrics as mt
from npf_loyalty.engine import connect
from npf_loyalty.observability import fields
from npf_loyalty.schema import FEATURE_BY_NAME
from npf_loyalty.settings import Settings
from npf_loyalty.storage import Keys, LocalStore, Store

log = logging.getLogger(__name__)

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
TOP_N = 100
TOP_SHOWN = 25  # on screen; the rest of the hundred folds away (all of it is in the XLSX)
REFERENCE_SAMPLE = 200_000  # drift reference rows: enough for stable deciles, bounded memory
PR_AUC_DROP = 0.2  # backtest PR-AUC this far below the card's test PR-AUC = drifting
CALIBRATION_OFF = 0.5  # |expected − actual| above this share of actual = drifting
BAND_NAMES: tuple[str, ...] = tuple(name for name, _, _ in mt.BANDS)
LEFT, UNSCORED, NEW = "ушли", "без оценки", "новые"
DRIFT_FEATURES: tuple[str, ...] = (
    "contrib_4q",
    "days_since_contrib",
    "balance",
    "age",
    "key_rate",
    "return_4q_pct",
    "complaints_4q",
    "quarters_without_contrib",
    "tenure_years",
    "income_4q",
)
MACRO_FEATURES = frozenset({"key_rate"})  # one value per quarter: its PSI flags any new quarter
SEGMENT_COLUMNS: dict[str, str] = {  # feature column → SQL type when absent
    "balance": "DOUBLE",
    "region": "VARCHAR",
    "federal_district": "VARCHAR",
    "age": "DOUBLE",
    "gender": "DOUBLE",
    "pmnts_type": "DOUBLE",
    "tenure_years": "DOUBLE",
    "churn": "INTEGER",
}
UNKNOWN = "не указан"
_QUARTER = re.compile(r"^\s*(\d{4})\s*[Qq]\s*([1-4])\s*$")


class NoScoresError(RuntimeError):
    """The quarter has no scores: nothing to report on."""


# --- quarters ---------------------------------------------------------------------------------


def parse_quarter(text: str) -> str:
    """'2023q1' or ' 2023Q1 ' → '2023Q1'; anything else is refused before it reaches a key."""
    match = _QUARTER.match(text)
    if match is None:
        raise ValueError(f"not a quarter: {text!r} (expected e.g. 2023Q1)")
    return f"{match.group(1)}Q{match.group(2)}"


def previous_quarter(quarter: str) -> str:
    year, q = int(quarter[:4]), int(quarter[-1])
    return f"{year - 1}Q4" if q == 1 else f"{year}Q{q - 1}"


def quarter_of(day: date) -> str:
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"


def quarter_title(quarter: str) -> str:
    """'2023Q1' → '1 кв. 2023' — how the fund writes it."""
    return f"{quarter[-1]} кв. {quarter[:4]}"


def _quarter_span(quarter: str) -> tuple[date, date]:
    year, q = int(quarter[:4]), int(quarter[-1])
    start = date(year, 3 * q - 2, 1)
    end = date(year + 1, 1, 1) if q == 4 else date(year, 3 * q + 1, 1)
    return start, end  # end exclusive


# --- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Expected count of leavers Σp with a 95 % interval.

    Leaving is one Bernoulli per account, so the count is Poisson-binomial: variance Σp(1−p),
    and with thousands of accounts the normal approximation is good.
    """

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, p: np.ndarray) -> Estimate:
        total = float(p.sum()) if p.size else 0.0
        sd = float(np.sqrt(np.sum(p * (1.0 - p)))) if p.size else 0.0
        return cls(total, max(0.0, total - Z95 * sd), total + Z95 * sd)


@dataclass(frozen=True)
class Headline:
    quarter: str
    accounts: int
    leavers_next_q: Estimate
    leavers_next_4q: Estimate
    balance_total: float
    balance_at_risk_next_q: float  # Σ P(leave next quarter) · balance
    balance_at_risk_next_4q: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "quarter": self.quarter,
            "accounts": self.accounts,
            "expected_leavers_next_q": self.leavers_next_q.value,
            "expected_leavers_next_q_low": self.leavers_next_q.low,
            "expected_leavers_next_q_high": self.leavers_next_q.high,
            "expected_leavers_next_4q": self.leavers_next_4q.value,
            "expected_leavers_next_4q_low": self.leavers_next_4q.low,
            "expected_leavers_next_4q_high": self.leavers_next_4q.high,
            "balance_total": self.balance_total,
            "balance_at_risk_next_q": self.balance_at_risk_next_q,
            "balance_at_risk_next_4q": self.balance_at_risk_next_4q,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Headline | None:
        """A published headline back; None if it lacks what the comparison needs."""
        try:
            return cls(
                quarter=str(d["quarter"]),
                accounts=int(d["accounts"]),
                leavers_next_q=_estimate(d, "expected_leavers_next_q"),
                leavers_next_4q=_estimate(d, "expected_leavers_next_4q"),
                balance_total=float(d.get("balance_total", math.nan)),
                balance_at_risk_next_q=float(d["balance_at_risk_next_q"]),
                balance_at_risk_next_4q=float(d.get("balance_at_risk_next_4q", math.nan)),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _estimate(d: dict[str, Any], key: str) -> Estimate:
    value = float(d[key])
    return Estimate(value, float(d.get(f"{key}_low", value)), float(d.get(f"{key}_high", value)))


@dataclass(frozen=True)
class BandRow:
    band: str
    accounts: int
    share: float
    accounts_prev: int | None
    leavers_next_q: float
    balance_at_risk_next_q: float


@dataclass(frozen=True)
class Transitions:
    """Accounts by band at Q−1 (rows, plus new accounts) and at Q (columns, plus exits)."""

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]

    def count(self, before: str, after: str) -> int:
        return self.counts[self.rows.index(before)][self.cols.index(after)]


@dataclass(frozen=True)
class SegmentRow:
    dimension: str
    segment: str
    accounts: int
    leavers_next_q: float
    rate_next_q: float
    leavers_next_4q: float
    rate_next_4q: float
    balance: float
    balance_at_risk_next_q: float


@dataclass(frozen=True)
class TopRow:
    rank: int
    npo_account_id: str
    p_next_q: float
    p_next_4q: float
    band: str
    balance: float
    balance_at_risk_next_q: float
    reasons: tuple[str, ...]  # "↑ …" raises the risk, "↓ …" holds the client


@dataclass
class Backtest:
    """Q−1's next-quarter predictions against what happened in Q."""

    predicted_in: str
    outcome_in: str
    available: bool
    note: str
    model_version: str = ""
    accounts_predicted: int = 0
    evaluated: int = 0
    excluded: int = 0
    left: int = 0
    expected: float = math.nan
    roc_auc: float = math.nan
    pr_auc: float = math.nan
    f1: float = math.nan
    precision: float = math.nan
    recall: float = math.nan
    brier: float = math.nan
    threshold: float | None = None
    card_roc_auc: float | None = None
    card_pr_auc: float | None = None
    deciles: list[mt.ReliabilityBin] = field(default_factory=list)
    drift_signals: list[str] = field(default_factory=list)

    @property
    def drifting(self) -> bool:
        return bool(self.drift_signals)


@dataclass(frozen=True)
class DumpRow:
    table: str
    digest: str
    source: str
    ingested_at: str
    rows_total: int
    rows_clean: int
    rows_rejected: int
    in_features: bool


@dataclass(frozen=True)
class RejectedFile:
    digest: str
    source: str
    reason: str
    details: str


@dataclass
class DataQuality:
    features_version: str
    scope: str  # which dumps are listed, in words
    dumps: list[DumpRow]
    reasons: list[tuple[str, str, int]]  # (table, reason, rows), most rows first
    rejected: list[RejectedFile]


@dataclass(frozen=True)
class DriftRow:
    feature: str
    meaning: str
    psi: float
    reading: str
    reference_median: float
    current_median: float


@dataclass
class Report:
    quarter: str
    run: str
    prefix: str
    created_at: str
    scores_version: str
    model_version: str
    features_version: str
    headline: Headline
    previous: Headline | None
    previous_source: str
    bands: list[BandRow]
    transitions: Transitions | None
    segments: list[SegmentRow]
    top: list[TopRow]
    backtest: Backtest
    quality: DataQuality
    drift: list[DriftRow]
    drift_reference: str
    html_key: str = ""
    xlsx_key: str = ""
    table_keys: list[str] = field(default_factory=list)
    html: bytes = field(default=b"", repr=False)
    xlsx: bytes = field(default=b"", repr=False)
    # the scored probabilities, for the distribution chart only
    p_next_q: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    p_next_4q: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def headline_text(self) -> str:
        return headline_text(self.quarter, self.headline, self.previous, self.backtest, self.drift)

    def documents(self) -> list[tuple[str, bytes]]:
        return [
            (f"npf-report-{self.quarter}.html", self.html),
            (f"npf-report-{self.quarter}.xlsx", self.xlsx),
        ]


# --- building ---------------------------------------------------------------------------------


def build_report(
    store: Store,
    settings: Settings,
    quarter: str | None = None,
    *,
    run: str | None = None,
    now: datetime | None = None,
) -> Report:
    """Compute, render, write and publish the report of one quarter (a new run every call)."""
    now = now or datetime.now(UTC)
    if quarter is None:
        current = store.current(Keys.scores)
        if current is None or not current.get("quarter"):
            raise NoScoresError("no current scores: score the fund first")
        quarter = str(current["quarter"])
    quarter = parse_quarter(quarter)
    pointer_key = Keys.scores_of_quarter(quarter)
    if not store.exists(pointer_key):
        raise NoScoresError(f"no scores for {quarter}")
    scores_now: dict[str, Any] = store.get_json(pointer_key)
    prev_q = previous_quarter(quarter)
    prev_key = Keys.scores_of_quarter(prev_q)
    scores_prev: dict[str, Any] | None = (
        store.get_json(prev_key) if store.exists(prev_key) else None
    )
    features = store.current(Keys.features) or {}
    run = _fresh_run(store, quarter, run or now.strftime("%Y%m%dT%H%M%SZ"))
    prefix = Keys.report_dir(quarter, run)

    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="report-") as tmp:
        work = Path(tmp)
        files = _Files(store, work / "in")
        con = connect(settings)
        try:
            report = _compute(
                con, store, files, quarter, scores_now, scores_prev, features, now, run, prefix
            )
        finally:
            con.close()
        out = work / "out"
        (out / "tables").mkdir(parents=True)
        tables = report_tables(report)
        report.html = render_html(report, tables).encode()
        report.xlsx = render_xlsx(report, tables)
        (out / "report.html").write_bytes(report.html)
        (out / "report.xlsx").write_bytes(report.xlsx)
        write_parquet_tables(tables, out / "tables", settings)
        keys = store.put_dir(prefix, out)
    report.html_key = prefix + "report.html"
    report.xlsx_key = prefix + "report.xlsx"
    report.table_keys = [k for k in keys if k.startswith(prefix + "tables/")]
    _publish(store, report)
    log.info(
        "report published",
        extra=fields(quarter=quarter, run=run, accounts=report.headline.accounts),
    )
    return report


def _fresh_run(store: Store, quarter: str, run: str) -> str:
    """A run folder nobody has written yet (two runs in one second must not mix)."""
    candidate, n = run, 1
    while store.list(Keys.report_dir(quarter, candidate)):
        n += 1
        candidate = f"{run}-{n}"
    return candidate


def _publish(store: Store, report: Report) -> None:
    """Pointers last: the quarter's run, then the fund-wide latest report (never moved back)."""
    headline = report.headline.as_dict()
    meta = {
        "quarter": report.quarter,
        "run": report.run,
        "html": report.html_key,
        "xlsx": report.xlsx_key,
        "tables": report.table_keys,
        "headline": headline,
        "created_at": report.created_at,
        "scores_version": report.scores_version,
        "model_version": report.model_version,
        "features_version": report.features_version,
    }
    store.publish(f"{Keys.reports}{report.quarter}/", report.run, meta)
    latest = store.current(Keys.reports)
    if latest is None or str(latest.get("version", "")) <= report.quarter:
        store.publish(
            Keys.reports,
            report.quarter,
            {
                "run": report.run,
                "html": report.html_key,
                "xlsx": report.xlsx_key,
                "headline": headline,
                "created_at": report.created_at,
            },
        )


class _Files:
    """Local paths of store objects: the object itself for a local store, a download for S3."""

    def __init__(self, store: Store, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self._fetched: dict[str, str] = {}

    def local(self, key: str) -> str:
        if isinstance(self.store, LocalStore):
            return self.store.local_path(key).as_posix()
        if key not in self._fetched:
            self._fetched[key] = self.store.get_file(key, self.folder / key).as_posix()
        return self._fetched[key]

    def partitions(self, version: str) -> dict[str, list[str]]:
        """Feature partition keys of one version, by quarter."""
        folder = Keys.version_dir(Keys.features, version)
        by_quarter: dict[str, list[str]] = {}
        for key in self.store.list(folder):
            part = key[len(folder) :].split("/")[0]
            if key.endswith(".parquet") and part.startswith("quarter="):
                by_quarter.setdefault(part.removeprefix("quarter="), []).append(key)
        return by_quarter


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _read(paths: Sequence[str]) -> str:
    listed = ", ".join(_sql_text(p) for p in paths)
    return f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true)"


def _columns_of(con: Any, paths: Sequence[str]) -> set[str]:
    return set(con.sql(f"SELECT * FROM {_read(paths)} LIMIT 0").columns)


def _select_features(con: Any, paths: Sequence[str], wanted: dict[str, str]) -> str:
    """A SELECT of the key and the wanted columns, NULL for any the files lack."""
    have = _columns_of(con, paths)
    cols = ", ".join(
        f'"{c}"' if c in have else f'CAST(NULL AS {t}) AS "{c}"' for c, t in wanted.items()
    )
    return f"SELECT npo_account_id, quarter, {cols} FROM {_read(paths)}"


def _floats(values: Any) -> np.ndarray:
    if np.ma.isMaskedArray(values):
        return np.asarray(np.ma.filled(values.astype(np.float64), np.nan))
    return np.asarray(values, dtype=np.float64)


def _compute(
    con: Any,
    store: Store,
    files: _Files,
    quarter: str,
    scores_now: dict[str, Any],
    scores_prev: dict[str, Any] | None,
    features: dict[str, Any],
    now: datetime,
    run: str,
    prefix: str,
) -> Report:
    prev_q = previous_quarter(quarter)
    features_version = str(features.get("version", ""))
    current_parts = files.partitions(features_version) if features_version else {}
    # Segment attributes: the current features at Q, else the features the scores came from.
    attr_parts = current_parts
    if quarter not in attr_parts and scores_now.get("features_version"):
        attr_parts = files.partitions(str(scores_now["features_version"]))
    all_features = {**SEGMENT_COLUMNS, **dict.fromkeys(DRIFT_FEATURES, "DOUBLE")}

    _table(con, "s_now", f"SELECT * FROM {_read([_scores_file(files, scores_now)])}")
    _features_table(con, "f_now", files, attr_parts.get(quarter), all_features)
    # What happened in Q is only in the current features (later dumps fill in the exits).
    _features_table(con, "outcome", files, current_parts.get(quarter), {"churn": "INTEGER"})
    if scores_prev is not None:
        _table(con, "s_prev", f"SELECT * FROM {_read([_scores_file(files, scores_prev)])}")
    else:
        _table(con, "s_prev", "SELECT * FROM s_now LIMIT 0")
    _build_current(con)

    headline, p_q, p_4q = _headline(con, quarter, "cur")
    previous, previous_source = _previous_headline(
        con, store, files, prev_q, scores_prev, current_parts
    )
    bands = _bands(con, scores_prev is not None, headline.accounts)
    transitions = _transitions(con) if scores_prev is not None else None
    segments = _segments(con)
    top = _top(con)
    backtest = _backtest(con, store, prev_q, quarter, scores_prev, quarter in current_parts)
    quality = data_quality(store, features, now)
    model_meta = _model_json(store, str(scores_now.get("model_version", "")), "meta.json")
    drift, drift_reference = _drift(
        con, files, quarter, current_parts, model_meta, str(scores_now.get("model_version", ""))
    )
    return Report(
        quarter=quarter,
        run=run,
        prefix=prefix,
        created_at=now.isoformat(timespec="seconds"),
        scores_version=str(scores_now.get("version", "")),
        model_version=str(scores_now.get("model_version", "")),
        features_version=features_version,
        headline=headline,
        previous=previous,
        previous_source=previous_source,
        bands=bands,
        transitions=transitions,
        segments=segments,
        top=top,
        backtest=backtest,
        quality=quality,
        drift=drift,
        drift_reference=drift_reference,
        p_next_q=p_q,
        p_next_4q=p_4q,
    )


def _scores_file(files: _Files, pointer: dict[str, Any]) -> str:
    return files.local(Keys.version_dir(Keys.scores, str(pointer["version"])) + "scores.parquet")


def _table(con: Any, name: str, select: str) -> None:
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {select}")


def _features_table(
    con: Any, name: str, files: _Files, keys: list[str] | None, wanted: dict[str, str]
) -> None:
    if keys:
        _table(con, name, _select_features(con, [files.local(k) for k in keys], wanted))
    else:
        cols = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in wanted.items())
        _table(
            con,
            name,
            f"SELECT CAST(NULL AS VARCHAR) AS npo_account_id, CAST(NULL AS VARCHAR) AS quarter, "
            f"{cols} WHERE false",
        )


AGE_GROUPS = ("<30", "30–44", "45–54", "55–59", "60+", UNKNOWN)
SEXES = ("женский", "мужской", UNKNOWN)
PAYMENT_TYPES = ("работодатель", "через банк", "смешанный", "не определён")
TENURES = ("<1 года", "1–3 года", "3–5 лет", "5–10 лет", "10+ лет", UNKNOWN)
DIMENSIONS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("Федеральный округ", "district", None),
    ("Регион", "region", None),
    ("Возраст", "age_group", AGE_GROUPS),
    ("Пол", "sex", SEXES),
    ("Тип взносов", "payment", PAYMENT_TYPES),
    ("Срок в фонде", "tenure", TENURES),
)


def _build_current(con: Any) -> None:
    have = set(con.sql("SELECT * FROM s_now LIMIT 0").columns)
    reasons = ", ".join(
        (f"s.{c}" if c in have else f"CAST(NULL AS {t}) AS {c}")
        for k in (1, 2, 3)
        for c, t in ((f"reason_{k}", "VARCHAR"), (f"reason_{k}_contribution", "DOUBLE"))
    )
    _table(
        con,
        "cur",
        f"""
        SELECT s.npo_account_id, s.p_leave_next_q AS p_q, s.p_leave_next_4q AS p_4q, s.band,
               {reasons},
               coalesce(f.balance, 0) AS balance,
               CASE WHEN f.federal_district IS NULL OR f.federal_district = 'unknown'
                    THEN '{UNKNOWN}' ELSE f.federal_district END AS district,
               CASE WHEN f.region IS NULL OR f.region = 'unknown'
                    THEN '{UNKNOWN}' ELSE f.region END AS region,
               CASE WHEN f.age IS NULL THEN '{UNKNOWN}' WHEN f.age < 30 THEN '<30'
                    WHEN f.age < 45 THEN '30–44' WHEN f.age < 55 THEN '45–54'
                    WHEN f.age < 60 THEN '55–59' ELSE '60+' END AS age_group,
               CASE f.gender WHEN -1 THEN 'женский' WHEN 1 THEN 'мужской'
                    ELSE '{UNKNOWN}' END AS sex,
               CASE f.pmnts_type WHEN 3 THEN 'работодатель' WHEN 2 THEN 'через банк'
                    WHEN 1 THEN 'смешанный' ELSE 'не определён' END AS payment,
               CASE WHEN f.tenure_years IS NULL THEN '{UNKNOWN}'
                    WHEN f.tenure_years < 1 THEN '<1 года' WHEN f.tenure_years < 3 THEN '1–3 года'
                    WHEN f.tenure_years < 5 THEN '3–5 лет' WHEN f.tenure_years < 10 THEN '5–10 лет'
                    ELSE '10+ лет' END AS tenure
        FROM s_now s LEFT JOIN f_now f USING (npo_account_id)
        """,
    )


def _headline(con: Any, quarter: str, table: str) -> tuple[Headline, np.ndarray, np.ndarray]:
    arrays = con.sql(f"SELECT p_q, p_4q, balance FROM {table}").fetchnumpy()
    p_q, p_4q, balance = (_floats(arrays[c]) for c in ("p_q", "p_4q", "balance"))
    balance = np.nan_to_num(balance)
    headline = Headline(
        quarter=quarter,
        accounts=int(p_q.size),
        leavers_next_q=Estimate.of(p_q),
        leavers_next_4q=Estimate.of(p_4q),
        balance_total=float(balance.sum()),
        balance_at_risk_next_q=float(np.sum(p_q * balance)),
        balance_at_risk_next_4q=float(np.sum(p_4q * balance)),
    )
    return headline, p_q, p_4q


def _previous_headline(
    con: Any,
    store: Store,
    files: _Files,
    prev_q: str,
    scores_prev: dict[str, Any] | None,
    current_parts: dict[str, list[str]],
) -> tuple[Headline | None, str]:
    """Q−1's published headline; else recomputed from its scores; else nothing."""
    pointer = store.current(f"{Keys.reports}{prev_q}/")
    if pointer is not None and isinstance(pointer.get("headline"), dict):
        published = Headline.from_dict(pointer["headline"])
        if published is not None:
            return published, f"отчёт за {quarter_title(prev_q)} (запуск {pointer['version']})"
    if scores_prev is None:
        return None, f"за {quarter_title(prev_q)} нет ни отчёта, ни скоров"
    parts = current_parts if prev_q in current_parts else {}
    if not parts and scores_prev.get("features_version"):
        parts = files.partitions(str(scores_prev["features_version"]))
    _features_table(con, "f_prev", files, parts.get(prev_q), {"balance": "DOUBLE"})
    _table(
        con,
        "prev_cur",
        """SELECT s.p_leave_next_q AS p_q, s.p_leave_next_4q AS p_4q,
                  coalesce(f.balance, 0) AS balance
           FROM s_prev s LEFT JOIN f_prev f USING (npo_account_id)""",
    )
    previous, _, _ = _headline(con, prev_q, "prev_cur")
    return previous, f"скоры {quarter_title(prev_q)} (отчёт за тот квартал не строился)"


def _bands(con: Any, has_prev: bool, accounts: int) -> list[BandRow]:
    now = {
        str(b): (int(n), float(e or 0), float(r or 0))
        for b, n, e, r in con.sql(
            "SELECT band, count(*), sum(p_q), sum(p_q * balance) FROM cur GROUP BY band"
        ).fetchall()
    }
    prev = dict(con.sql("SELECT band, count(*) FROM s_prev GROUP BY band").fetchall())
    rows = []
    for band in BAND_NAMES:
        n, e, r = now.get(band, (0, 0.0, 0.0))
        rows.append(
            BandRow(
                band=band,
                accounts=n,
                share=n / accounts if accounts else math.nan,
                accounts_prev=int(prev.get(band, 0)) if has_prev else None,
                leavers_next_q=e,
                balance_at_risk_next_q=r,
            )
        )
    return rows


def _transitions(con: Any) -> Transitions:
    found = con.sql(
        f"""
        SELECT coalesce(p.band, '{NEW}') AS before,
               CASE WHEN c.npo_account_id IS NOT NULL THEN c.band
                    WHEN o.churn = 1 THEN '{LEFT}' ELSE '{UNSCORED}' END AS after,
               count(*)
        FROM s_prev p
        FULL OUTER JOIN s_now c ON p.npo_account_id = c.npo_account_id
        LEFT JOIN outcome o ON o.npo_account_id = p.npo_account_id
        GROUP BY ALL
        """
    ).fetchall()
    rows = (*BAND_NAMES, NEW)
    cols = (*BAND_NAMES, LEFT, UNSCORED)
    counts = [[0] * len(cols) for _ in rows]
    for before, after, n in found:
        if before in rows and after in cols:
            counts[rows.index(before)][cols.index(after)] += int(n)
    return Transitions(rows, cols, tuple(tuple(r) for r in counts))


def _segments(con: Any) -> list[SegmentRow]:
    out: list[SegmentRow] = []
    for title, column, order in DIMENSIONS:
        found = con.sql(
            f"""SELECT {column}, count(*), sum(p_q), sum(p_4q), sum(balance),
                       sum(p_q * balance)
                FROM cur GROUP BY 1 ORDER BY sum(p_q * balance) DESC, 1"""
        ).fetchall()
        rows = [
            SegmentRow(
                dimension=title,
                segment=str(seg),
                accounts=int(n),
                leavers_next_q=float(e),
                rate_next_q=float(e) / n,
                leavers_next_4q=float(e4),
                rate_next_4q=float(e4) / n,
                balance=float(b),
                balance_at_risk_next_q=float(r),
            )
            for seg, n, e, e4, b, r in found
        ]
        if order is not None:
            rank = {s: i for i, s in enumerate(order)}
            rows.sort(key=lambda row: rank.get(row.segment, len(rank)))
        else:  # named areas by money at risk; the unknown last
            rows.sort(key=lambda row: (row.segment == UNKNOWN, -row.balance_at_risk_next_q))
        out.extend(rows)
    return out


def _arrow(text: Any, contribution: Any) -> str:
    if text is None:
        return ""
    if contribution is None or (isinstance(contribution, float) and math.isnan(contribution)):
        return str(text)
    return f"{'↑' if contribution > 0 else '↓'} {text}"


def _top(con: Any) -> list[TopRow]:
    found = con.sql(
        f"""SELECT npo_account_id, p_q, p_4q, band, balance, p_q * balance AS at_risk,
                   reason_1, reason_1_contribution, reason_2, reason_2_contribution,
                   reason_3, reason_3_contribution
            FROM cur ORDER BY at_risk DESC, p_q DESC, npo_account_id LIMIT {TOP_N}"""
    ).fetchall()
    return [
        TopRow(
            rank=i,
            npo_account_id=str(r[0]),
            p_next_q=float(r[1]),
            p_next_4q=float(r[2]),
            band=str(r[3]),
            balance=float(r[4]),
            balance_at_risk_next_q=float(r[5]),
            reasons=tuple(_arrow(r[6 + 2 * k], r[7 + 2 * k]) for k in range(3)),
        )
        for i, r in enumerate(found, start=1)
    ]


# --- backtest ---------------------------------------------------------------------------------


def _model_json(store: Store, version: str, name: str) -> dict[str, Any]:
    key = Keys.version_dir(Keys.models, version) + name
    if not version or not store.exists(key):
        return {}
    try:
        loaded = store.get_json(key)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _dig(obj: Any, *path: str) -> Any:
    for step in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(step)
    return obj


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def model_threshold(card: dict[str, Any], meta: dict[str, Any]) -> float | None:
    """The next-quarter F1 threshold, wherever this model's card or meta keeps it."""
    for candidate in (
        _dig(card, "horizons", "next_q", "threshold"),
        _dig(card, "thresholds", "next_q"),
        _dig(card, "threshold", "next_q"),
        _dig(card, "threshold"),
        _dig(meta, "thresholds", "next_q"),
        _dig(meta, "threshold"),
    ):
        if (value := _number(candidate)) is not None:
            return value
    return None


def card_test_metric(card: dict[str, Any], name: str) -> float | None:
    for candidate in (
        _dig(card, "horizons", "next_q", "metrics", "test", name),
        _dig(card, "metrics", "test", name),
        _dig(card, "test", name),
    ):
        if (value := _number(candidate)) is not None:
            return value
    return None


def _backtest(
    con: Any,
    store: Store,
    prev_q: str,
    quarter: str,
    scores_prev: dict[str, Any] | None,
    outcome_known: bool,
) -> Backtest:
    bt = Backtest(predicted_in=prev_q, outcome_in=quarter, available=False, note="")
    if scores_prev is None:
        bt.note = (
            f"За {quarter_title(prev_q)} скоров нет — проверить прошлый прогноз не на чем. "
            "Бэктест появится в отчёте за следующий квартал."
        )
        return bt
    if not outcome_known:
        bt.note = f"В текущих признаках нет квартала {quarter}: исход прогноза ещё неизвестен."
        return bt
    arrays = con.sql(
        """SELECT p.p_leave_next_q AS p, o.churn AS churn
           FROM s_prev p LEFT JOIN outcome o USING (npo_account_id)"""
    ).fetchnumpy()
    p = _floats(arrays["p"])
    churn = _floats(arrays["churn"])
    known = np.isin(churn, (0.0, 1.0))
    bt.model_version = str(scores_prev.get("model_version", ""))
    bt.accounts_predicted = int(p.size)
    bt.evaluated = int(known.sum())
    bt.excluded = int(p.size - known.sum())
    if not bt.evaluated:
        bt.note = (
            f"Ни для одного счёта из прогноза {quarter_title(prev_q)} в данных за "
            f"{quarter_title(quarter)} нет исхода (churn пуст): проверить нечем."
        )
        return bt
    y, s = churn[known].astype(np.int64), p[known]
    card = _model_json(store, bt.model_version, "card.json")
    meta = _model_json(store, bt.model_version, "meta.json")
    bt.threshold = model_threshold(card, meta)
    bt.card_pr_auc = card_test_metric(card, "pr_auc")
    bt.card_roc_auc = card_test_metric(card, "roc_auc")
    bt.available = True
    bt.left = int(y.sum())
    bt.expected = float(s.sum())
    bt.roc_auc = mt.roc_auc(y, s)
    bt.pr_auc = mt.pr_auc(y, s)
    bt.brier = mt.brier(y, s)
    if bt.threshold is not None:
        bt.f1 = mt.f1_at(y, s, bt.threshold)
        bt.precision, bt.recall = mt.precision_recall_at(y, s, bt.threshold)
    bt.deciles = mt.reliability_table(y, s, 10)
    bt.note = (
        f"Прогноз «уйдёт в следующем квартале», сделанный по данным {quarter_title(prev_q)}, "
        f"сверен с фактом {quarter_title(quarter)}: ушёл — churn = 1 в {quarter}; остался — "
        f"есть строка {quarter} с churn = 0; прочие ({_int(bt.excluded)}) исключены."
    )
    bt.drift_signals = _drift_signals(bt)
    return bt


def _drift_signals(bt: Backtest) -> list[str]:
    signals = []
    if (
        bt.card_pr_auc
        and not math.isnan(bt.pr_auc)
        and bt.pr_auc < (1 - PR_AUC_DROP) * (bt.card_pr_auc)
    ):
        drop = 1 - bt.pr_auc / bt.card_pr_auc
        signals.append(
            f"PR-AUC {_num(bt.pr_auc, 3)} на {_pct(drop, 0)} ниже, чем на тесте модели "
            f"({_num(bt.card_pr_auc, 3)})"
        )
    if bt.left > 0:
        off = (bt.expected - bt.left) / bt.left
        if abs(off) > CALIBRATION_OFF:
            way = "больше" if off > 0 else "меньше"
            signals.append(
                f"ожидали {_num(bt.expected, 1)} уходов, ушло {_int(bt.left)}: прогноз на "
                f"{_pct(abs(off), 0)} {way} факта"
            )
    elif bt.expected >= 5:
        signals.append(f"ожидали {_num(bt.expected, 1)} уходов, не ушёл никто")
    return signals


# --- data quality ---------------------------------------------------------------------------


def data_quality(store: Store, features: dict[str, Any], now: datetime) -> DataQuality:
    """The dumps behind the current features, plus every dump loaded this calendar quarter.

    The features' inputs are what every figure of the report rests on, so they are always
    listed; dumps loaded in the run's calendar quarter but superseded are shown too. Whole-file
    rejections carry no date in their report, so all of them are listed.
    """
    inputs = features.get("inputs") if isinstance(features.get("inputs"), dict) else {}
    feeding = {str(d) for d in (inputs or {}).values()}
    start, end = _quarter_span(quarter_of(now.date()))
    dumps: list[DumpRow] = []
    reasons: dict[tuple[str, str], int] = {}
    for key in store.list(Keys.clean):
        if not key.endswith(".json") or key.endswith("_current.json"):
            continue
        try:
            m = store.get_json(key)
        except ValueError:
            continue
        if not isinstance(m, dict) or "digest" not in m:
            continue
        ingested = str(m.get("ingested_at", ""))
        day = _date_of(ingested)
        in_features = str(m["digest"]) in feeding
        if not in_features and not (day is not None and start <= day < end):
            continue
        table = str(m.get("table", key.split("/")[1]))
        dumps.append(
            DumpRow(
                table=table,
                digest=str(m["digest"]),
                source=str(m.get("source", "")),
                ingested_at=ingested.replace("T", " ")[:16],
                rows_total=int(m.get("rows_total", 0)),
                rows_clean=int(m.get("rows_clean", 0)),
                rows_rejected=int(m.get("rows_rejected", 0)),
                in_features=in_features,
            )
        )
        for reason, n in (m.get("reasons") or {}).items():
            reasons[(table, str(reason))] = reasons.get((table, str(reason)), 0) + int(n)
    dumps.sort(key=lambda d: (not d.in_features, d.ingested_at))
    rejected = []
    prefix = f"{Keys.quarantine}rejected/"  # = Keys.quarantine_dir("rejected", <digest>)
    for key in store.list(prefix):
        if not key.endswith("/report.json"):
            continue
        try:
            r = store.get_json(key)
        except ValueError:
            continue
        details = r.get("details") or ""
        rejected.append(
            RejectedFile(
                digest=str(r.get("digest", key[len(prefix) :].split("/")[0])),
                source=str(r.get("source", "")),
                reason=str(r.get("reason", "")),
                details=details
                if isinstance(details, str)
                else _short(json.dumps(details, ensure_ascii=False)),
            )
        )
    scope = (
        f"Выгрузки, из которых построены текущие признаки (версия {features.get('version', '—')}"
        f"): на них стоят все цифры отчёта; а также все выгрузки, загруженные в календарном "
        f"квартале запуска ({start:%d.%m.%Y}–{date.fromordinal(end.toordinal() - 1):%d.%m.%Y})."
        " Отклонённые целиком файлы — "
        "все, что есть в хранилище: дата отклонения не сохраняется."
    )
    return DataQuality(
        features_version=str(features.get("version", "")),
        scope=scope,
        dumps=dumps,
        reasons=sorted(((t, r, n) for (t, r), n in reasons.items()), key=lambda x: -x[2]),
        rejected=rejected,
    )


def _date_of(text: str) -> date | None:
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        return None


def _short(obj: Any, limit: int = 300) -> str:
    text = str(obj)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- drift ------------------------------------------------------------------------------------


def reference_quarters(
    meta: dict[str, Any], available: Sequence[str], quarter: str
) -> tuple[list[str], str]:
    """The model's training quarters among the available ones, and how they were chosen."""
    earlier = [q for q in sorted(available) if q < quarter]
    trained = meta.get("trained_on")
    span = None
    if isinstance(trained, list):
        listed = {str(q) for q in trained}
        picked = [q for q in earlier if q in listed]
        if picked:
            return picked, "обучающие кварталы модели"
    elif isinstance(trained, dict):
        for candidate in (_dig(trained, "next_q", "train"), trained.get("train"), trained):
            if isinstance(candidate, dict) and candidate.get("last"):
                span = (candidate.get("first"), str(candidate["last"]))
                break
        if isinstance(trained.get("quarters"), list):
            listed = {str(q) for q in trained["quarters"]}
            picked = [q for q in earlier if q in listed]
            if picked:
                return picked, "обучающие кварталы модели"
    if span is not None:
        first, last = span
        picked = [q for q in earlier if (first is None or q >= str(first)) and q <= last]
        if picked:
            return picked, "обучающие кварталы модели"
    return earlier, "все кварталы до отчётного (в описании модели нет обучающих кварталов)"


def psi_reading(psi: float) -> str:
    if math.isnan(psi):
        return "нет данных"
    if psi < 0.1:
        return "стабильно"
    if psi <= 0.25:
        return "умеренный сдвиг"
    return "значительный сдвиг"


def _drift(
    con: Any,
    files: _Files,
    quarter: str,
    parts: dict[str, list[str]],
    meta: dict[str, Any],
    model_version: str,
) -> tuple[list[DriftRow], str]:
    quarters, how = reference_quarters(meta, list(parts), quarter)
    if not quarters:
        return [], "нет кварталов до отчётного: сравнивать не с чем"
    paths = [files.local(k) for q in quarters for k in parts[q]]
    have = _columns_of(con, paths)
    wanted = [c for c in DRIFT_FEATURES if c in have]
    if not wanted:
        return [], "в признаках нет ни одного из контролируемых столбцов"
    cols = ", ".join(f'"{c}"' for c in wanted)
    churn = "WHERE churn IS DISTINCT FROM 1" if "churn" in have else ""
    reference = con.sql(
        f"""SELECT * FROM (SELECT {cols} FROM {_read(paths)} {churn}) AS r
            USING SAMPLE reservoir({REFERENCE_SAMPLE} ROWS) REPEATABLE (7)"""
    ).fetchnumpy()
    current = con.sql(
        f"SELECT {', '.join(f'f.{c}' for c in wanted)} FROM f_now f "
        "SEMI JOIN s_now s ON f.npo_account_id = s.npo_account_id"
    ).fetchnumpy()
    rows = []
    for c in wanted:
        e, a = _floats(reference[c]), _floats(current[c])
        psi = mt.population_stability_index(e, a)
        reading = psi_reading(psi)
        if c in MACRO_FEATURES:  # quantile bins of a per-quarter constant say little
            reading = "макропоказатель: сравните медианы"
        rows.append(
            DriftRow(
                feature=c,
                meaning=FEATURE_BY_NAME[c].meaning if c in FEATURE_BY_NAME else c,
                psi=psi,
                reading=reading,
                reference_median=_median(e),
                current_median=_median(a),
            )
        )
    n_ref = len(reference[wanted[0]])
    span = quarters[0] if len(quarters) == 1 else f"{quarters[0]}–{quarters[-1]}"
    text = (
        f"Оценённые счета {quarter} против строк активных счетов за {span} — {how}"
        f"{' ' + model_version if model_version and 'модели' in how else ''}; "
        f"в сравнении {_int(n_ref)} строк (случайная выборка, если их больше "
        f"{_int(REFERENCE_SAMPLE)})."
    )
    return rows, text


def _median(v: np.ndarray) -> float:
    ok = v[~np.isnan(v)]
    return float(np.median(ok)) if ok.size else math.nan


# --- formatting (Russian: space thousands, decimal comma) -------------------------------------

NBSP = "\u00a0"


def _bad(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _int(value: Any) -> str:
    return "—" if _bad(value) else f"{float(value):,.0f}".replace(",", NBSP)


def _num(value: Any, digits: int = 2) -> str:
    if _bad(value):
        return "—"
    return f"{float(value):,.{digits}f}".replace(",", NBSP).replace(".", ",")


def _pct(share: Any, digits: int = 1) -> str:
    return "—" if _bad(share) else f"{_num(100 * float(share), digits)}{NBSP}%"


def _rub(value: Any) -> str:
    """Compact rubles for headlines: 12,3 млн ₽."""
    if _bad(value):
        return "—"
    v = float(value)
    for limit, unit in ((1e9, "млрд"), (1e6, "млн"), (1e3, "тыс.")):
        if abs(v) >= limit:
            return f"{_num(v / limit, 1)}{NBSP}{unit}{NBSP}₽"
    return f"{_int(v)}{NBSP}₽"


def _signed(value: float, fmt: Callable[[Any], str]) -> str:
    if _bad(value):
        return "—"
    return ("+" if value > 0 else "−" if value < 0 else "±") + fmt(abs(value))


# --- tables: one definition, three renderings -------------------------------------------------

Kind = Literal["text", "int", "num", "prob", "pct", "rub", "psi", "auto", "metric"]


@dataclass(frozen=True)
class Col:
    key: str  # parquet column name
    title: str  # Russian header
    kind: Kind = "text"


@dataclass
class Table:
    name: str  # parquet file stem
    title: str
    cols: list[Col]
    rows: list[tuple[Any, ...]]

    def column(self, key: str) -> list[Any]:
        i = [c.key for c in self.cols].index(key)
        return [r[i] for r in self.rows]


def _cell_text(value: Any, kind: Kind) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    match kind:
        case "int" | "rub":
            return _int(value)
        case "num":
            return _num(value, 2)
        case "prob" | "pct":
            return _pct(value, 1)
        case "psi":
            return _num(value, 3)
        case "auto":
            return _int(value) if isinstance(value, int) else _num(value, 1)
        case "metric":
            return _int(value) if isinstance(value, int) else _num(value, 3)
        case _:
            return str(value)


def report_tables(report: Report) -> dict[str, Table]:
    """Every table of the report, keyed by name; the HTML, XLSX and parquet all read these."""
    h, p = report.headline, report.previous
    tables: dict[str, Table] = {}

    def line(
        key: str, title: str, now: float | int, est: Estimate | None, before: float | None
    ) -> tuple[Any, ...]:
        change = None if before is None or _bad(before) else now - before
        return (
            key,
            title,
            now,
            est.low if est else None,
            est.high if est else None,
            before,
            change,
        )

    tables["headline"] = Table(
        "headline",
        "Главное",
        [
            Col("metric", "Код"),
            Col("title", "Показатель"),
            Col("value", "Значение", "auto"),
            Col("low", "95 % — от", "num"),
            Col("high", "95 % — до", "num"),
            Col("previous", "Кварталом ранее", "auto"),
            Col("change", "Изменение", "auto"),
        ],
        [
            line("accounts", "Счетов оценено", h.accounts, None, p.accounts if p else None),
            line(
                "expected_leavers_next_q",
                "Ожидаемые уходы в следующем квартале",
                h.leavers_next_q.value,
                h.leavers_next_q,
                p.leavers_next_q.value if p else None,
            ),
            line(
                "expected_leavers_next_4q",
                "Ожидаемые уходы в течение года",
                h.leavers_next_4q.value,
                h.leavers_next_4q,
                p.leavers_next_4q.value if p else None,
            ),
            line(
                "balance_total",
                "Баланс оценённых счетов, руб.",
                round(h.balance_total),
                None,
                round(p.balance_total) if p and not _bad(p.balance_total) else None,
            ),
            line(
                "balance_at_risk_next_q",
                "Баланс под риском в следующем квартале, руб.",
                round(h.balance_at_risk_next_q),
                None,
                round(p.balance_at_risk_next_q) if p else None,
            ),
            line(
                "balance_at_risk_next_4q",
                "Баланс под риском в течение года, руб.",
                round(h.balance_at_risk_next_4q),
                None,
                round(p.balance_at_risk_next_4q)
                if p and not _bad(p.balance_at_risk_next_4q)
                else None,
            ),
        ],
    )
    tables["bands"] = Table(
        "bands",
        "Полосы лояльности (горизонт — год)",
        [
            Col("band", "Лояльность"),
            Col("accounts", "Счетов", "int"),
            Col("share", "Доля", "pct"),
            Col("accounts_prev", "Кварталом ранее", "int"),
            Col("leavers_next_q", "Ожид. уходов в след. кв.", "num"),
            Col("balance_at_risk_next_q", "Баланс под риском, руб.", "rub"),
        ],
        [
            (
                b.band,
                b.accounts,
                b.share,
                b.accounts_prev,
                b.leavers_next_q,
                round(b.balance_at_risk_next_q),
            )
            for b in report.bands
        ],
    )
    t = report.transitions
    if t is not None:
        tables["transitions"] = Table(
            "transitions",
            f"Переходы: {quarter_title(previous_quarter(report.quarter))} → "
            f"{quarter_title(report.quarter)}",
            [
                Col("before", "Кварталом ранее"),
                *(Col(f"to_{i}", c, "int") for i, c in enumerate(t.cols)),
                Col("total", "Всего", "int"),
            ],
            [(r, *t.counts[i], sum(t.counts[i])) for i, r in enumerate(t.rows)],
        )
    tables["segments"] = Table(
        "segments",
        "Сегменты",
        [
            Col("dimension", "Разрез"),
            Col("segment", "Сегмент"),
            Col("accounts", "Счетов", "int"),
            Col("leavers_next_q", "Ожид. уходов (кв.)", "num"),
            Col("rate_next_q", "Доля (кв.)", "pct"),
            Col("leavers_next_4q", "Ожид. уходов (год)", "num"),
            Col("rate_next_4q", "Доля (год)", "pct"),
            Col("balance", "Баланс, руб.", "rub"),
            Col("balance_at_risk_next_q", "Под риском (кв.), руб.", "rub"),
        ],
        [
            (
                s.dimension,
                s.segment,
                s.accounts,
                s.leavers_next_q,
                s.rate_next_q,
                s.leavers_next_4q,
                s.rate_next_4q,
                round(s.balance),
                round(s.balance_at_risk_next_q),
            )
            for s in report.segments
        ],
    )
    tables["top100"] = Table(
        "top100",
        f"Топ-{TOP_N} счетов по балансу под риском",
        [
            Col("rank", "№", "int"),
            Col("npo_account_id", "Счёт НПО"),
            Col("p_leave_next_q", "P(уход), кв.", "prob"),
            Col("p_leave_next_4q", "P(уход), год", "prob"),
            Col("band", "Лояльность"),
            Col("balance", "Баланс, руб.", "rub"),
            Col("balance_at_risk_next_q", "Под риском, руб.", "rub"),
            Col("reason_1", "Причина 1"),
            Col("reason_2", "Причина 2"),
            Col("reason_3", "Причина 3"),
        ],
        [
            (
                r.rank,
                r.npo_account_id,
                r.p_next_q,
                r.p_next_4q,
                r.band,
                round(r.balance),
                round(r.balance_at_risk_next_q),
                *r.reasons,
            )
            for r in report.top
        ],
    )
    bt = report.backtest
    tables["backtest"] = Table(
        "backtest",
        "Бэктест: качество прогноза прошлого квартала",
        [
            Col("metric", "Код"),
            Col("title", "Показатель"),
            Col("value", "Значение", "metric"),
            Col("model_test", "На тесте модели", "metric"),
        ],
        [
            ("accounts_predicted", "Счетов в прогнозе", bt.accounts_predicted, None),
            ("evaluated", "С известным исходом", bt.evaluated, None),
            ("excluded", "Исключено (исход неизвестен)", bt.excluded, None),
            ("left", "Ушли фактически", bt.left, None),
            ("expected", "Ожидалось уходов (Σp)", bt.expected, None),
            ("roc_auc", "ROC-AUC", _r(bt.roc_auc), _r(bt.card_roc_auc)),
            ("pr_auc", "PR-AUC", _r(bt.pr_auc), _r(bt.card_pr_auc)),
            ("threshold", "Порог модели (макс. F1 на валидации)", _r(bt.threshold), None),
            ("f1", "F1 при пороге", _r(bt.f1), None),
            ("precision", "Точность при пороге", _r(bt.precision), None),
            ("recall", "Полнота при пороге", _r(bt.recall), None),
            ("brier", "Brier", _r(bt.brier), None),
        ]
        if bt.available
        else [],
    )
    tables["backtest_deciles"] = Table(
        "backtest_deciles",
        "Калибровка по децилям прогноза",
        [
            Col("decile", "Дециль", "int"),
            Col("p_low", "P от", "prob"),
            Col("p_high", "P до", "prob"),
            Col("count", "Счетов", "int"),
            Col("mean_predicted", "Прогноз (средняя P)", "prob"),
            Col("observed_rate", "Факт (доля ушедших)", "prob"),
            Col("expected", "Ожидалось уходов", "num"),
            Col("observed", "Ушло", "int"),
        ],
        [
            (
                i,
                b.p_low,
                b.p_high,
                b.count,
                b.mean_predicted,
                b.observed_rate,
                b.mean_predicted * b.count,
                round(b.observed_rate * b.count),
            )
            for i, b in enumerate(bt.deciles, start=1)
        ],
    )
    q = report.quality
    tables["dumps"] = Table(
        "dumps",
        "Выгрузки",
        [
            Col("table", "Таблица"),
            Col("source", "Файл"),
            Col("ingested_at", "Загружен, UTC"),
            Col("in_features", "В текущих признаках"),
            Col("rows_total", "Строк", "int"),
            Col("rows_clean", "Принято", "int"),
            Col("rows_rejected", "В карантине", "int"),
            Col("rejected_share", "Доля карантина", "pct"),
            Col("digest", "SHA-256"),
        ],
        [
            (
                d.table,
                d.source,
                d.ingested_at,
                "да" if d.in_features else "нет",
                d.rows_total,
                d.rows_clean,
                d.rows_rejected,
                d.rows_rejected / d.rows_total if d.rows_total else None,
                d.digest,
            )
            for d in q.dumps
        ],
    )
    tables["quarantine_reasons"] = Table(
        "quarantine_reasons",
        "Строки в карантине по причинам",
        [Col("table", "Таблица"), Col("reason", "Причина"), Col("rows", "Строк", "int")],
        list(q.reasons),
    )
    tables["rejected_files"] = Table(
        "rejected_files",
        "Отклонённые целиком файлы",
        [
            Col("source", "Файл"),
            Col("reason", "Причина"),
            Col("details", "Подробности"),
            Col("digest", "SHA-256"),
        ],
        [(r.source, r.reason, r.details, r.digest) for r in q.rejected],
    )
    tables["drift"] = Table(
        "drift",
        "Дрейф признаков (PSI)",
        [
            Col("feature", "Признак"),
            Col("meaning", "Что это"),
            Col("psi", "PSI", "psi"),
            Col("reading", "Оценка"),
            Col("reference_median", "Медиана при обучении", "num"),
            Col("current_median", "Медиана сейчас", "num"),
        ],
        [
            (d.feature, d.meaning, d.psi, d.reading, d.reference_median, d.current_median)
            for d in report.drift
        ],
    )
    return tables


def _r(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


# --- parquet ----------------------------------------------------------------------------------

_SQL_TYPES: dict[str, str] = {"text": "VARCHAR", "int": "BIGINT", "rub": "DOUBLE"}


def write_parquet_tables(tables: dict[str, Table], folder: Path, settings: Settings) -> None:
    """Each table as `<name>.parquet`, written by DuckDB COPY (no pyarrow on this path)."""
    con = connect(settings)
    try:
        for table in tables.values():
            decl = ", ".join(f'"{c.key}" {_SQL_TYPES.get(c.kind, "DOUBLE")}' for c in table.cols)
            con.execute(f"CREATE OR REPLACE TEMP TABLE t ({decl})")
            if table.rows:
                marks = ", ".join("?" for _ in table.cols)
                con.executemany(
                    f"INSERT INTO t VALUES ({marks})",
                    [[_plain(v) for v in row] for row in table.rows],
                )
            target = (folder / f"{table.name}.parquet").as_posix()
            con.execute(f"COPY t TO {_sql_text(target)} (FORMAT parquet)")
    finally:
        con.close()


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --- XLSX -------------------------------------------------------------------------------------

_XLSX_FORMATS: dict[str, str] = {
    "int": "#,##0",
    "rub": "#,##0",
    "num": "#,##0.00",
    "prob": "0.0%",
    "pct": "0.0%",
    "psi": "0.000",
}
SHEETS: dict[str, tuple[str, ...]] = {
    "Сводка": ("headline", "bands", "transitions"),
    "Сегменты": ("segments",),
    "Топ-100": ("top100",),
    "Бэктест": ("backtest", "backtest_deciles"),
    "Качество данных": ("dumps", "quarantine_reasons", "rejected_files"),
    "Дрейф": ("drift",),
}


def render_xlsx(report: Report, tables: dict[str, Table]) -> bytes:
    """A workbook that opens cleanly: styled headers, fixed widths, numbers stored as numbers."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter

    header_font = Font(bold=True, color="FFFFFF")
    header_fill = PatternFill("solid", fgColor="2F5D8A")
    title_font = Font(bold=True, size=12)
    notes: dict[str, list[str]] = {
        "Сводка": [
            f"Отчёт о лояльности клиентов НПО за {quarter_title(report.quarter)}",
            f"Сформирован {_when(report.created_at)}; модель {report.model_version}; "
            f"скоры {report.scores_version}; признаки {report.features_version}.",
            f"Сравнение с прошлым кварталом: {report.previous_source}.",
        ],
        "Бэктест": [report.backtest.note, *report.backtest.drift_signals],
        "Качество данных": [report.quality.scope],
        "Дрейф": [
            report.drift_reference,
            "PSI < 0,1 — стабильно; 0,1–0,25 — умеренный сдвиг; > 0,25 — значительный.",
        ],
    }
    wb = Workbook()
    wb.remove(wb.active)
    for sheet_name, names in SHEETS.items():
        ws = wb.create_sheet(sheet_name)
        widths: dict[int, int] = {}
        row = 1
        for note in notes.get(sheet_name, []):
            ws.cell(row=row, column=1, value=note).font = (
                title_font if row == 1 and sheet_name == "Сводка" else Font(italic=True)
            )
            row += 1
        if row > 1:
            row += 1
        first_header = 0
        for name in names:
            table = tables.get(name)
            if table is None:
                continue
            ws.cell(row=row, column=1, value=table.title).font = title_font
            row += 1
            first_header = first_header or row
            for j, col in enumerate(table.cols, start=1):
                cell = ws.cell(row=row, column=j, value=col.title)
                cell.font, cell.fill = header_font, header_fill
                cell.alignment = Alignment(wrap_text=True, vertical="center")
                widths[j] = max(widths.get(j, 0), min(len(col.title), 24))
            row += 1
            if not table.rows:
                ws.cell(row=row, column=1, value="нет данных").font = Font(italic=True)
                row += 1
            for values in table.rows:
                for j, (col, value) in enumerate(zip(table.cols, values, strict=True), start=1):
                    cell = ws.cell(row=row, column=j, value=_plain(value))
                    if col.kind in ("auto", "metric"):
                        if isinstance(value, int):
                            cell.number_format = "#,##0"
                        elif isinstance(value, float):
                            cell.number_format = "#,##0.00" if col.kind == "auto" else "0.000"
                    elif col.kind in _XLSX_FORMATS and value is not None:
                        cell.number_format = _XLSX_FORMATS[col.kind]
                    shown = len(str(value)) if col.kind == "text" else 14
                    widths[j] = max(widths.get(j, 0), min(shown, 60))
                row += 1
            row += 1
        for j, width in widths.items():
            ws.column_dimensions[get_column_letter(j)].width = width + 2
        if len(names) == 1 and first_header:
            ws.freeze_panes = ws.cell(row=first_header + 1, column=1)
    buffer = io.BytesIO()
    wb.save(buffer)
    return buffer.getvalue()


# --- HTML -------------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f9;color:#1d2733;font:14px/1.45 "Segoe UI",Roboto,"DejaVu Sans",
Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
header{border-bottom:3px solid #2f5d8a;margin-bottom:18px;padding-bottom:10px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:0 0 12px;color:#2f5d8a}
h3{font-size:15px;margin:18px 0 8px}
section{background:#fff;border-radius:8px;padding:18px 22px;margin:0 0 18px;
box-shadow:0 1px 3px rgba(20,40,60,.08)}
.meta,.note{color:#5b6b7c;font-size:12.5px}
.note{margin:8px 0 0}
.kpis{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.kpi{border:1px solid #e1e6ec;border-radius:8px;padding:12px 14px;background:#fafbfd}
.kpi .label{font-size:12.5px;color:#5b6b7c}
.kpi .value{font-size:26px;font-weight:700;margin:4px 0 2px;white-space:nowrap}
.kpi .sub{font-size:12px;color:#5b6b7c}
.up{color:#b83232}.down{color:#2e7d4f}
.grid2{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:18px;
align-items:start}
.grid2.wide{grid-template-columns:minmax(0,2fr) minmax(0,3fr)}
img{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin:6px 0}
th{background:#2f5d8a;color:#fff;font-weight:600;text-align:left;padding:6px 8px;
vertical-align:bottom}
td{padding:5px 8px;border-bottom:1px solid #e8ecf1;vertical-align:top}
tr:nth-child(even) td{background:#f8fafc}
td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
th.n{text-align:right}
tr.group td{background:#e9eff6;font-weight:700;color:#2f5d8a}
td.lines{font-size:12px;line-height:1.35}
td.id{font-family:"DejaVu Sans Mono",Consolas,monospace;font-size:11.5px;white-space:nowrap}
.alert{border-radius:6px;padding:10px 14px;margin:10px 0 0;border-left:5px solid}
.alert.ok{background:#eef8f1;border-color:#3c9d5d}
.alert.warn{background:#fff6e6;border-color:#e8a33d}
.alert.bad{background:#fdeeee;border-color:#d64545}
.alert b{display:block;margin-bottom:2px}
.band{display:inline-block;padding:1px 8px;border-radius:10px;font-size:11.5px;color:#fff}
.band-низкая{background:#d64545}.band-средняя{background:#e8a33d}.band-высокая{background:#3c9d5d}
details summary{cursor:pointer;color:#2f5d8a;font-weight:600;margin:10px 0}
.scroll{overflow-x:auto}
footer{color:#5b6b7c;font-size:12px;padding:0 4px}
@media (max-width:900px){.kpis{grid-template-columns:1fr 1fr}
.grid2,.grid2.wide{grid-template-columns:1fr}}
@media print{body{background:#fff}section{box-shadow:none;break-inside:avoid}}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _html_table(
    table: Table,
    *,
    skip: Sequence[str] = (),
    group_by: str | None = None,
    rows: Sequence[tuple[Any, ...]] | None = None,
) -> str:
    cols = [(i, c) for i, c in enumerate(table.cols) if c.key not in skip and c.key != group_by]
    head = "".join(
        f'<th class="{"" if c.kind == "text" else "n"}">{_e(c.title)}</th>' for _, c in cols
    )
    body: list[str] = []
    group_index = [c.key for c in table.cols].index(group_by) if group_by else -1
    last_group = None
    data = table.rows if rows is None else rows
    for row in data:
        if group_by and row[group_index] != last_group:
            last_group = row[group_index]
            body.append(f'<tr class="group"><td colspan="{len(cols)}">{_e(last_group)}</td></tr>')
        cells = []
        for i, c in cols:
            value = row[i]
            if c.key == "band" and value in BAND_NAMES:
                cells.append(f'<td><span class="band band-{value}">{_e(value)}</span></td>')
            elif c.key in ("npo_account_id", "digest"):
                cells.append(f'<td class="id">{_e(value)}</td>')
            elif c.kind == "text" and isinstance(value, str) and "\n" in value:
                lines = "<br>".join(_e(x) for x in value.split("\n") if x)
                cells.append(f'<td class="lines">{lines}</td>')
            elif c.kind == "text":
                cells.append(f"<td>{_e('—' if value is None else value)}</td>")
            else:
                cells.append(f'<td class="n">{_e(_cell_text(value, c.kind))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not data:
        body.append(f'<tr><td colspan="{len(cols)}" class="note">нет данных</td></tr>')
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _reasons_in_one_cell(table: Table) -> Table:
    """On screen the three reasons read best as one cell, one reason a line."""
    keys = [c.key for c in table.cols]
    first = keys.index("reason_1")
    cols = [*table.cols[:first], Col("reasons", "Причины (↑ повышает риск, ↓ удерживает)")]
    rows = [(*r[:first], "\n".join(str(x) for x in r[first:] if x)) for r in table.rows]
    return Table(table.name, table.title, cols, rows)


def _kpi(label: str, value: str, sub: str, change: str = "") -> str:
    return (
        f'<div class="kpi"><div class="label">{_e(label)}</div>'
        f'<div class="value">{_e(value)}</div><div class="sub">{sub}</div>'
        f"{f'<div class=sub>{change}</div>' if change else ''}</div>"
    )


def _change(now: float, before: float | None, fmt: Callable[[Any], str], risk: bool) -> str:
    """'+12 к прошлому кварталу', red when the risk grew."""
    if before is None or _bad(before):
        return ""
    delta = now - before
    css = "" if delta == 0 else ("up" if (delta > 0) == risk else "down")
    return f'<span class="{css}">{_e(_signed(delta, fmt))}</span> к прошлому кварталу'


def render_html(report: Report, tables: dict[str, Table]) -> str:
    """One self-contained page: inline CSS, charts as embedded PNG, no external requests."""
    from npf_loyalty import charts_report as charts

    h, p, bt = report.headline, report.previous, report.backtest
    q = report.quarter
    qt = quarter_title(q)
    prev_t = quarter_title(previous_quarter(q))
    parts: list[str] = []

    # headline
    kpis = "".join(
        (
            _kpi(
                "Счетов оценено",
                _int(h.accounts),
                f"баланс {_e(_rub(h.balance_total))}",
                _change(h.accounts, p.accounts if p else None, _int, risk=False),
            ),
            _kpi(
                "Уйдут в следующем квартале (ожидание)",
                _num(h.leavers_next_q.value, 0),
                f"95 %: {_num(h.leavers_next_q.low, 0)}–{_num(h.leavers_next_q.high, 0)} · "
                f"{_pct(h.leavers_next_q.value / h.accounts if h.accounts else math.nan)} счетов",
                _change(
                    h.leavers_next_q.value,
                    p.leavers_next_q.value if p else None,
                    lambda v: _num(v, 0),
                    risk=True,
                ),
            ),
            _kpi(
                "Уйдут в течение года (ожидание)",
                _num(h.leavers_next_4q.value, 0),
                f"95 %: {_num(h.leavers_next_4q.low, 0)}–{_num(h.leavers_next_4q.high, 0)} · "
                f"{_pct(h.leavers_next_4q.value / h.accounts if h.accounts else math.nan)} счетов",
                _change(
                    h.leavers_next_4q.value,
                    p.leavers_next_4q.value if p else None,
                    lambda v: _num(v, 0),
                    risk=True,
                ),
            ),
            _kpi(
                "Баланс под риском в следующем квартале",
                _rub(h.balance_at_risk_next_q),
                f"в течение года: {_e(_rub(h.balance_at_risk_next_4q))}",
                _change(
                    h.balance_at_risk_next_q,
                    p.balance_at_risk_next_q if p else None,
                    _rub,
                    risk=True,
                ),
            ),
        )
    )
    status = _status_alerts(report)
    parts.append(
        f"""<section id="headline"><h2>Главное</h2><div class="kpis">{kpis}</div>
        <p class="note">Ожидаемое число уходов — сумма вероятностей по счетам; интервал 95 % —
        нормальное приближение (±1,96·√Σp(1−p)). Баланс под риском — Σ P(уход)·остаток.
        Сравнение: {_e(report.previous_source)}.</p>{status}</section>"""
    )

    # bands and transitions
    band_rows = report.bands
    band_chart = charts.bands_chart(
        [b.band for b in band_rows],
        [b.accounts for b in band_rows],
        [b.accounts_prev or 0 for b in band_rows] if report.transitions is not None else None,
    )
    trans_html = f'<p class="note">За {prev_t} скоров нет — переходы покажет следующий отчёт.</p>'
    if report.transitions is not None:
        t = report.transitions
        trans_png = charts.transitions_chart(t.counts, t.rows, t.cols)
        trans_img = _img(trans_png, "Переходы между полосами")
        trans_html = f"""<div class="grid2"><div>{trans_img}</div>
        <div>{_html_table(tables["transitions"])}<p class="note">Строки — полоса в {prev_t}
        («новые» — счета без оценки тогда), столбцы — полоса в {qt}; «ушли» — расторгли договор
        в {qt} (churn = 1), «без оценки» — нет в скоринге {qt} по другой причине.</p></div></div>"""
    hist = charts.risk_histogram(report.p_next_q, report.p_next_4q)
    parts.append(
        f"""<section id="bands"><h2>Полосы лояльности и переходы</h2>
        <div class="grid2 wide"><div>{_img(band_chart, "Счета по полосам")}</div>
        <div>{_html_table(tables["bands"])}<p class="note">Лояльность на год = 1 − P(уход в
        течение года): низкая — ниже 0,2 (высокий риск), средняя — 0,2–0,8, высокая — от 0,8.
        </p></div></div>
        <h3>Переходы между полосами</h3>{trans_html}
        <h3>Распределение риска</h3>{_img(hist, "Распределение вероятности ухода")}</section>"""
    )

    # segments
    seg = report.segments
    panels = []
    for title, _, _ in DIMENSIONS:
        if title == "Регион":
            continue
        rows = [s for s in seg if s.dimension == title]
        if rows:
            panels.append((title, [s.segment for s in rows], [s.rate_next_q for s in rows]))
    overall = h.leavers_next_q.value / h.accounts if h.accounts else 0.0
    seg_png = charts.segments_chart(panels, overall) if panels else b""
    seg_table = tables["segments"]
    main_rows = [r for r in seg_table.rows if r[0] != "Регион"]
    region_rows = [r for r in seg_table.rows if r[0] == "Регион"]
    parts.append(
        f"""<section id="segments"><h2>Сегменты</h2>
        {_img(seg_png, "Доля ожидаемых уходов по сегментам") if seg_png else ""}
        {_html_table(seg_table, group_by="dimension", rows=main_rows)}
        <details><summary>Регионы ({len(region_rows)}) — по балансу под риском</summary>
        {_html_table(seg_table, group_by="dimension", rows=region_rows)}</details>
        <p class="note">Атрибуты сегментов — из признаков за {_e(q)} (счёт НПО → строка
        квартала). «Доля» — ожидаемые уходы / счета сегмента.</p></section>"""
    )

    # top
    top = _reasons_in_one_cell(tables["top100"])
    parts.append(
        f"""<section id="top"><h2>Топ-{TOP_N} счетов по балансу под риском</h2>
        <p class="note">Под риском = P(уход в следующем квартале) × остаток. Только номера счетов:
        других персональных данных в выгрузках нет. ↑ — причина повышает риск, ↓ — удерживает.
        </p>{_html_table(top, rows=top.rows[:TOP_SHOWN])}
        {
            f"<details><summary>Ещё {len(top.rows) - TOP_SHOWN} счетов</summary>"
            f"{_html_table(top, rows=top.rows[TOP_SHOWN:])}</details>"
            if len(top.rows) > TOP_SHOWN
            else ""
        }</section>"""
    )

    # backtest
    bt_body = f'<p class="note">{_e(bt.note)}</p>'
    if bt.available:
        cal = ""
        if bt.deciles:
            cal_png = charts.calibration_chart(
                [b.mean_predicted for b in bt.deciles],
                [b.observed_rate for b in bt.deciles],
                [b.count for b in bt.deciles],
            )
            cal = _img(cal_png, "Калибровка")
        bt_body += f"""{_backtest_alert(bt)}<div class="grid2"><div>
        {_html_table(tables["backtest"], skip=("metric",))}</div><div>{cal}</div></div>
        <h3>По децилям прогноза</h3>{_html_table(tables["backtest_deciles"])}
        <p class="note">Сигнал дрейфа: PR-AUC ниже теста модели более чем на
        {_pct(PR_AUC_DROP, 0)} или сумма прогноза расходится с фактом более чем на
        {_pct(CALIBRATION_OFF, 0)}. PR-AUC зависит и от доли ушедших: при заметно другой доле
        сравнивайте осторожно.</p>"""
    parts.append(
        f"""<section id="backtest"><h2>Бэктест: прогноз {_e(prev_t)} против факта
        {_e(qt)}</h2>{bt_body}</section>"""
    )

    # data quality
    dq = report.quality
    total_rejected = sum(d.rows_rejected for d in dq.dumps)
    total_rows = sum(d.rows_total for d in dq.dumps)
    parts.append(
        f"""<section id="quality"><h2>Качество данных</h2><p class="note">{_e(dq.scope)}</p>
        <p>В карантине {_int(total_rejected)} из {_int(total_rows)} строк
        ({_pct(total_rejected / total_rows if total_rows else math.nan, 2)}); отклонено
        целиком файлов: {_int(len(dq.rejected))}.</p>
        {_html_table(tables["dumps"], skip=("digest",))}
        <h3>Почему строки попали в карантин</h3>
        {_html_table(tables["quarantine_reasons"], rows=tables["quarantine_reasons"].rows[:15])}
        <h3>Отклонённые целиком файлы</h3>{_html_table(tables["rejected_files"])}</section>"""
    )

    # drift
    drift_note = (
        "PSI: &lt; 0,1 — стабильно; 0,1–0,25 — умеренный сдвиг; &gt; 0,25 — значительный. "
        "Ключевая ставка одна на квартал: её PSI по квантилям обучения мало что говорит, "
        "сравнивайте медианы."
    )
    parts.append(
        f"""<section id="drift"><h2>Дрейф признаков</h2>
        <p class="note">{_e(report.drift_reference)}</p>{_drift_alert(report.drift)}
        {_html_table(tables["drift"])}<p class="note">{drift_note}</p></section>"""
    )

    next_t = quarter_title(_next_quarter(q))
    footer = (
        f"Запуск {_e(report.run)} · модель {_e(report.model_version)} · скоры "
        f"{_e(report.scores_version)} · признаки {_e(report.features_version)}"
    )
    return f"""<!doctype html>
<html lang="ru"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Лояльность НПО — отчёт за {_e(qt)}</title><style>{CSS}</style></head>
<body><main>
<header><h1>Лояльность клиентов НПО — отчёт за {_e(qt)}</h1>
<div class="meta">Сформирован {_e(_when(report.created_at))} · прогноз на {_e(next_t)}
и на год вперёд</div></header>
{"".join(parts)}
<footer>{footer}</footer>
</main></body></html>
"""


def _when(iso: str) -> str:
    try:
        return f"{datetime.fromisoformat(iso):%d.%m.%Y %H:%M} UTC"
    except ValueError:
        return iso


def _next_quarter(quarter: str) -> str:
    year, q = int(quarter[:4]), int(quarter[-1])
    return f"{year + 1}Q1" if q == 4 else f"{year}Q{q + 1}"


def _backtest_alert(bt: Backtest) -> str:
    if not bt.available:
        return ""
    if bt.drifting:
        items = "".join(f"<li>{_e(s)}</li>" for s in bt.drift_signals)
        return (
            '<div class="alert bad"><b>Модель дрейфует: прогноз прошлого квартала '
            f"заметно разошёлся с фактом.</b><ul>{items}</ul>Стоит переобучить модель "
            "на свежих кварталах.</div>"
        )
    return (
        '<div class="alert ok"><b>Модель в норме.</b>Прогноз прошлого квартала подтвердился: '
        f"ожидали {_e(_num(bt.expected, 1))} уходов, ушло {_e(_int(bt.left))}; "
        f"PR-AUC {_e(_num(bt.pr_auc, 3))}.</div>"
    )


def _drift_alert(drift: list[DriftRow]) -> str:
    big = [d.feature for d in drift if d.psi > 0.25 and d.feature not in MACRO_FEATURES]
    mid = [d.feature for d in drift if 0.1 <= d.psi <= 0.25 and d.feature not in MACRO_FEATURES]
    if big:
        return (
            f'<div class="alert bad"><b>Значительный сдвиг: {_e(", ".join(big))}.</b>'
            "Клиенты этого квартала заметно отличаются от тех, на ком училась модель.</div>"
        )
    if mid:
        return (
            f'<div class="alert warn"><b>Умеренный сдвиг: {_e(", ".join(mid))}.</b>'
            "Стоит следить в следующих кварталах.</div>"
        )
    return '<div class="alert ok"><b>Признаки стабильны.</b></div>' if drift else ""


def _status_alerts(report: Report) -> str:
    bt = report.backtest
    if not bt.available:
        return f'<div class="alert warn"><b>Бэктест недоступен.</b>{_e(bt.note)}</div>'
    return _backtest_alert(bt)


# --- the headline as text (Telegram) ----------------------------------------------------------


def headline_text(
    quarter: str,
    h: Headline,
    p: Headline | None,
    bt: Backtest,
    drift: Sequence[DriftRow],
) -> str:
    """The message a manager reads first; plain text, so any parse mode shows it."""

    def vs(now: float, before: float | None, fmt: Callable[[Any], str]) -> str:
        return "" if before is None or _bad(before) else f" ({_signed(now - before, fmt)})"

    rub0 = _rub
    lines = [
        f"Отчёт о лояльности НПО за {quarter_title(quarter)}",
        "",
        f"Счетов оценено: {_int(h.accounts)}{vs(h.accounts, p.accounts if p else None, _int)}",
        f"Уйдут в следующем квартале: ≈{_num(h.leavers_next_q.value, 0)} "
        f"(95 %: {_num(h.leavers_next_q.low, 0)}–{_num(h.leavers_next_q.high, 0)})"
        + vs(h.leavers_next_q.value, p.leavers_next_q.value if p else None, lambda v: _num(v, 0)),
        f"Уйдут в течение года: ≈{_num(h.leavers_next_4q.value, 0)} "
        f"(95 %: {_num(h.leavers_next_4q.low, 0)}–{_num(h.leavers_next_4q.high, 0)})"
        + vs(h.leavers_next_4q.value, p.leavers_next_4q.value if p else None, lambda v: _num(v, 0)),
        f"Баланс под риском (квартал): {rub0(h.balance_at_risk_next_q)}"
        + vs(h.balance_at_risk_next_q, p.balance_at_risk_next_q if p else None, rub0),
    ]
    if bt.available:
        verdict = "модель дрейфует: " + "; ".join(bt.drift_signals) if bt.drifting else "в норме"
        lines.append(
            f"Бэктест {bt.predicted_in}→{bt.outcome_in}: ROC-AUC {_num(bt.roc_auc, 3)}, "
            f"PR-AUC {_num(bt.pr_auc, 3)}, ожидали {_num(bt.expected, 0)}, ушло "
            f"{_int(bt.left)} — {verdict}"
        )
    else:
        lines.append(f"Бэктест: нет данных ({bt.predicted_in} без скоров или исхода)")
    big = [d.feature for d in drift if d.psi > 0.25 and d.feature not in MACRO_FEATURES]
    if big:
        lines.append(f"Значительный дрейф признаков: {', '.join(big)}")
    lines += ["", "Полный отчёт — в файлах ниже (HTML для чтения, XLSX для работы)."]
    return "\n".join(lines)


# --- published reports and delivery -----------------------------------------------------------


@dataclass
class PublishedReport:
    """A report read back from its pointer (what the bot's /report sends)."""

    quarter: str
    run: str
    headline: dict[str, Any]
    html: bytes = field(repr=False)
    xlsx: bytes = field(repr=False)
    text: str = ""

    def headline_text(self) -> str:
        return self.text or _published_text(self.quarter, self.headline)

    def documents(self) -> list[tuple[str, bytes]]:
        return [
            (f"npf-report-{self.quarter}.html", self.html),
            (f"npf-report-{self.quarter}.xlsx", self.xlsx),
        ]


def _published_text(quarter: str, d: dict[str, Any]) -> str:
    h = Headline.from_dict(d)
    if h is None:
        return f"Отчёт о лояльности НПО за {quarter_title(quarter)}"
    return "\n".join(
        [
            f"Отчёт о лояльности НПО за {quarter_title(quarter)}",
            f"Счетов оценено: {_int(h.accounts)}",
            f"Уйдут в следующем квартале: ≈{_num(h.leavers_next_q.value, 0)} "
            f"(95 %: {_num(h.leavers_next_q.low, 0)}–{_num(h.leavers_next_q.high, 0)})",
            f"Уйдут в течение года: ≈{_num(h.leavers_next_4q.value, 0)}",
            f"Баланс под риском (квартал): {_rub(h.balance_at_risk_next_q)}",
        ]
    )


def load_published(store: Store, quarter: str | None = None) -> PublishedReport | None:
    """The current report of a quarter (default: the latest quarter), or None if none yet."""
    if quarter is None:
        latest = store.current(Keys.reports)
        if latest is None:
            return None
        quarter = str(latest["version"])
    quarter = parse_quarter(quarter)
    pointer = store.current(f"{Keys.reports}{quarter}/")
    if pointer is None:
        return None
    return PublishedReport(
        quarter=quarter,
        run=str(pointer["version"]),
        headline=dict(pointer.get("headline") or {}),
        html=store.get_bytes(str(pointer["html"])),
        xlsx=store.get_bytes(str(pointer["xlsx"])),
    )


class Deliverable(Protocol):
    def headline_text(self) -> str: ...

    def documents(self) -> list[tuple[str, bytes]]: ...


@dataclass(frozen=True)
class Outgoing:
    """One thing posted to the chat: the headline message or a file."""

    kind: Literal["message", "document"]
    text: str = ""  # the message, or the document's caption
    filename: str = ""
    data: bytes = field(default=b"", repr=False)


@runtime_checkable
class ReportSender(Protocol):
    """What the bot layer implements over its chat (aiogram stays out of the core)."""

    async def send_message(self, text: str) -> Any: ...

    async def send_document(self, filename: str, data: bytes, caption: str = "") -> Any: ...


SendFn = Callable[[Outgoing], Awaitable[Any]]

TELEGRAM_TEXT_LIMIT = 4096
TELEGRAM_CAPTION_LIMIT = 1024


async def deliver(report: Deliverable, send: SendFn | ReportSender) -> list[Outgoing]:
    """Post the headline, then the HTML and the XLSX as documents; returns what was sent."""
    text = report.headline_text()[:TELEGRAM_TEXT_LIMIT]
    outgoing = [Outgoing("message", text)]
    for filename, data in report.documents():
        kind = "HTML — открыть в браузере" if filename.endswith(".html") else "XLSX — таблицы"
        outgoing.append(Outgoing("document", kind[:TELEGRAM_CAPTION_LIMIT], filename, data))
    for item in outgoing:
        result: Any
        if isinstance(send, ReportSender):
            if item.kind == "message":
                result = send.send_message(item.text)
            else:
                result = send.send_document(item.filename, item.data, item.text)
        else:
            result = send(item)
        if inspect.isawaitable(result):
            await result
    return outgoing


def report_as_dict(report: Report) -> dict[str, Any]:
    """A JSON-able summary (the handler's and CLI's return value)."""
    return {
        "quarter": report.quarter,
        "run": report.run,
        "html": report.html_key,
        "xlsx": report.xlsx_key,
        "tables": report.table_keys,
        "headline": report.headline.as_dict(),
        "backtest": {
            "available": report.backtest.available,
            "drifting": report.backtest.drifting,
            "roc_auc": _r(report.backtest.roc_auc),
            "pr_auc": _r(report.backtest.pr_auc),
            "signals": report.backtest.drift_signals,
        },
        "drift": [asdict(d) for d in report.drift],
    }
