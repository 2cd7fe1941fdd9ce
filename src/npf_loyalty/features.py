"""The feature table: one row per account and quarter of ``clnts_fin_prtrt``, as SQL in DuckDB.

Everything is set-based: operations are aggregated once to (account, calendar quarter); each
account gets a dense grid of calendar quarters, so a quarter without a panel row or an operation
is still a quarter and ``lag``/ROWS frames over the grid are exact calendar lags and windows.
Inputs at quarter t read only grid rows at or before t; only the labels look forward.

Definitions (t = the row's quarter_idx; "ops" = ``trnsctns``, grp 1 = contribution, 0 = income;
an operation belongs to the calendar quarter of its npo_oprtn_date; amounts are summed in whole
kopecks; sums over quarters without operations are 0; "panel" = ``clnts_fin_prtrt``):

=========================  ========================================================================
feature                    definition
=========================  ========================================================================
quarter_idx                year·4 + q − 1 of the panel's ``quarter`` ("2017Q4" → 8071)
quarter_end                last day of the quarter
churn                      the panel's churn (NULL when the dump has no churn column)
label_next_q               NULL if churn = 1; 1 if the account's exit quarter (first quarter with
                           churn = 1) is t+1; 0 if the panel has a row at t+1 with churn = 0; else
                           NULL (censored: the dump ends or the account vanished)
label_next_4q              NULL if churn = 1; 1 if the exit quarter is in t+1..t+4; 0 if the panel
                           has a row at t+4 with churn = 0; else NULL
is_scoring_row             the account's latest panel row, in the dump's latest quarter, churn ≠ 1
region                     reference region of the dump's region text, else of the postal code's
                           3-digit prefix, else "unknown" (see :mod:`npf_loyalty.reference`)
federal_district           the region's federal district, or "unknown"
region_source              "region", "postal" or "unknown": which of the two resolved it
macro_carried_forward      1 if key rate, USD/RUB or life expectancy at t is carried past the end
                           of its series (life expectancy of 2023 counts as missing), else 0
contrib_q                  sum of contributions with a date in quarter t
contrib_lag1..4            contrib_q at t−1..t−4 (0 if no operation then, panel row or not)
contrib_4q / contrib_8q    contributions in t−3..t / t−7..t
contrib_trend              ln((1 + contrib_4q) / (1 + contributions in t−7..t−4)), sums below 0
                           taken as 0
contrib_count_q / _4q      number of contributions in t / in t−3..t
income_q, income_lag1..4   sum of income accruals in t, in t−1..t−4
income_4q                  income accruals in t−3..t
days_since_contrib         quarter_end − date of the last contribution on or before it (NULL: none)
quarters_without_contrib   t − quarter of the last contribution up to t; t − first + 1 if none yet
                           (first = the account's first panel row or operation, whichever is first)
stopped_paying             1 if contributions in t−5..t−2 sum above 0 and there is no contribution
                           in t−1..t, else 0
balance                    panel balance at t
balance_change_q           balance − balance at t−1 (NULL if no panel row at t−1)
balance_change_4q_pct      100·(balance − b) / greatest(b, 1), b = balance at t−4 (NULL if no row)
return_4q_pct              100·income_4q / greatest(balance, 1) (NULL if balance is NULL)
tenure_years               clnt_cprtn_time_d / 365.25
age, gender, pmnts_type,   as in the panel at t
npo_accnts_nmbr, flags     (phone_number, email, lk, assignee_npo, assignee_ops, citizen,
                           fact_addrss, appl_mrkr, evry_qrtr_pmnt, mgd_accum_period,
                           mgd_payment_period)
years_to_pension           schema.PENSION_AGE[gender] − age (NULL if gender unknown)
complaints_4q              sum of appl_mrkr over panel rows in t−3..t
pension_scheme             cntrbtrs.accnt_pnsn_schm of the account, −1 if unknown or no cntrbtrs
federal_district_code      index in schema.FEDERAL_DISTRICTS, −1 if unknown
lat, lon                   the postal prefix's city if the prefix is in the resolved region, else
                           the region's capital; NULL if the region is unknown
key_rate                   Bank of Russia key (refinancing) rate at quarter end, %
key_rate_change_4q         key_rate − key rate at t−4, p.p.
rate_spread_pp             key_rate − return_4q_pct
usd_rub                    USD/RUB of the quarter
usd_rub_change_4q_pct      100·(usd_rub / USD/RUB at t−4 − 1)
life_expectancy            life expectancy at birth for the client's sex in the quarter's year
                           (2023 and later: 2022's value); NULL if gender unknown
=========================  ========================================================================
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from npf_loyalty import reference
from npf_loyalty.engine import PARQUET_WRITE_OPTIONS, QUARTER_TYPE, create_quarter_type
from npf_loyalty.schema import FEATURES, FEDERAL_DISTRICTS, LABELS, PENSION_AGE

#: An operation's amount in whole kopecks (half away from zero). Summing doubles in parallel
#: depends on the order, so the same input could differ in the last bits from run to run.
KOPECKS = "CAST(round(o.npo_sum * 100) AS BIGINT)"

#: The deepest calendar look-back of any window: contrib_8q and contrib_trend reach t−7.
LOOKBACK_QUARTERS = 7

#: Panel columns copied into the feature table unchanged (cast to the feature's type).
PASSTHROUGH = (
    *("balance", "age", "gender", "pmnts_type", "npo_accnts_nmbr", "phone_number", "email"),
    *("lk", "assignee_npo", "assignee_ops", "citizen", "fact_addrss", "appl_mrkr"),
    *("evry_qrtr_pmnt", "mgd_accum_period", "mgd_payment_period"),
)

# Small lookup tables filled eagerly by feature_query. They only grow (rows are keyed by what
# they resolve), so a relation built earlier on the same connection stays valid.
REGION_TEXT_TABLE = "npf_region_text"  # dump's region text → reference region
GEO_TABLE = "npf_geo"  # (region text, postal prefix) → region, district, source, lat, lon
MACRO_TABLE = "npf_macro"  # quarter_idx → quarter, macro values at t and t−4, carried forward

# Text columns the relation carries as ENUMs: a byte or two per row instead of a string
# through the join and the partitioned write, which buffers and sorts whole rows. Parquet
# stores an ENUM as a string column, so the written table has exactly schema.FEATURES' types.
REGION_ENUM = "npf_region"  # the reference regions and "unknown"
DISTRICT_ENUM = "npf_federal_district"
SOURCE_ENUM = "npf_region_source"
ENUM_COLUMNS = {
    "quarter": QUARTER_TYPE,
    "region": REGION_ENUM,
    "federal_district": DISTRICT_ENUM,
    "region_source": SOURCE_ENUM,
}

ROW_GROUP_SIZE = 100_000


@dataclass(frozen=True)
class FeatureSources:
    """Where the clean (validated) parquet inputs are."""

    clients: str  # clnts_fin_prtrt: one file, unchanged while its relation is read (its row
    #               numbers key the windows to the rows)
    transactions: str  # trnsctns: a path or a glob
    contributors: str | None = None  # cntrbtrs; None: pension_scheme is −1 everywhere


@dataclass(frozen=True)
class FeatureSummary:
    """What a written feature table holds, for the run's manifest and the operator's report."""

    rows: int
    accounts: int
    quarters: tuple[str, str] | None  # first and last quarter; None if there are no rows
    scoring_rows: int
    labelled: dict[str, int] = field(default_factory=dict)  # rows with a non-NULL label
    positives: dict[str, int] = field(default_factory=dict)  # rows where the label is 1
    by_region_source: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- small helpers ---------------------------------------------------------------------------


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _read(path: str) -> str:
    return f"read_parquet({_sql_text(path)}, union_by_name = true)"


def _read_numbered(path: str) -> str:
    """One parquet file with each row's number in it: the panel's row key within this call."""
    return f"read_parquet({_sql_text(path)}, file_row_number = true)"


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    """Run one statement to its end (DuckDB 2 keeps a result open until it is fetched)."""
    return con.execute(sql).fetchall()


def _quarter_idx_sql(quarter: str) -> str:
    """SQL for quarter_idx of a "2017Q4" text column: year·4 + q − 1."""
    year, q = f"substr({quarter}, 1, 4)", f"substr({quarter}, 6, 1)"
    return f"(CAST({year} AS INTEGER) * 4 + CAST({q} AS INTEGER) - 1)"


def _rows(first: int, last: int = 0) -> str:
    """A ROWS frame over calendar quarters t−first..t−last of the dense grid."""
    end = "CURRENT ROW" if last == 0 else f"{last} PRECEDING"
    return f"w ROWS BETWEEN {first} PRECEDING AND {end}"


# --- eager lookups: few distinct keys per dump ------------------------------------------------


def _create_enums(con: duckdb.DuckDBPyConnection) -> None:
    """The ENUM types of ENUM_COLUMNS (once per connection: their values never change)."""
    create_quarter_type(con)
    regions = [
        r for (r,) in con.sql("SELECT DISTINCT region FROM ref_regions ORDER BY 1").fetchall()
    ]
    labels = {
        REGION_ENUM: [*regions, reference.UNKNOWN],
        DISTRICT_ENUM: [*FEDERAL_DISTRICTS, reference.UNKNOWN],
        SOURCE_ENUM: ["region", "postal", reference.UNKNOWN],
    }
    for name, values in labels.items():
        listed = ", ".join(_sql_text(v) for v in values)
        _run(con, f"CREATE TYPE IF NOT EXISTS {name} AS ENUM ({listed})")


DUMP_KEYS_TABLE = "npf_dump_keys"  # this call's distinct (region text, postal prefix, quarter)


def _scan_dump_keys(con: duckdb.DuckDBPyConnection, clients: str) -> None:
    """One scan of the panel for the few distinct values the lookups need."""
    _run(
        con,
        f"""CREATE OR REPLACE TEMP TABLE {DUMP_KEYS_TABLE} AS
            SELECT DISTINCT coalesce(region, '') AS region_text,
                            coalesce(substr(postal_code, 1, 3), '') AS postal_prefix,
                            {_quarter_idx_sql("quarter")} AS quarter_idx
            FROM {_read(clients)}""",
    )


def _prepare_geo(con: duckdb.DuckDBPyConnection) -> None:
    """Resolve every distinct (region text, postal prefix) of the dump once.

    Region text is matched in Python (:func:`reference.match_region`), the postal prefix by
    the reference table; the text wins, then the prefix, else "unknown" (never guessed).
    Missing values are keyed as '' so the final join is a plain equality join.
    """
    _run(
        con,
        f"CREATE TEMP TABLE IF NOT EXISTS {REGION_TEXT_TABLE} "
        "(region_text VARCHAR PRIMARY KEY, region VARCHAR)",
    )
    texts = con.sql(
        f"SELECT DISTINCT region_text FROM {DUMP_KEYS_TABLE} WHERE region_text <> '' "
        f"AND region_text NOT IN (SELECT region_text FROM {REGION_TEXT_TABLE})"
    ).fetchall()
    if texts:
        con.executemany(
            f"INSERT INTO {REGION_TEXT_TABLE} VALUES (?, ?)",
            [(t, reference.match_region(t)) for (t,) in texts],
        )
    districts = ", ".join(_sql_text(d) for d in FEDERAL_DISTRICTS)
    unknown = _sql_text(reference.UNKNOWN)
    _run(
        con,
        f"""CREATE TEMP TABLE IF NOT EXISTS {GEO_TABLE} (
                region_text VARCHAR, postal_prefix VARCHAR, region {REGION_ENUM},
                federal_district {DISTRICT_ENUM}, federal_district_code INTEGER,
                region_source {SOURCE_ENUM},
                lat DOUBLE, lon DOUBLE, PRIMARY KEY (region_text, postal_prefix))""",
    )
    _run(
        con,
        f"""INSERT INTO {GEO_TABLE}
            WITH dump_keys AS (
                SELECT DISTINCT region_text, postal_prefix FROM {DUMP_KEYS_TABLE}
            ),
            new_keys AS (
                SELECT * FROM dump_keys ANTI JOIN {GEO_TABLE} USING (region_text, postal_prefix)
            )
            SELECT k.region_text, k.postal_prefix,
                   coalesce(rr.region, {unknown}),
                   coalesce(rr.federal_district, {unknown}),
                   coalesce(list_position([{districts}], rr.federal_district) - 1, -1),
                   CASE WHEN rt.region IS NOT NULL THEN 'region'
                        WHEN pp.region IS NOT NULL THEN 'postal' ELSE {unknown} END,
                   CASE WHEN pp.region = rr.region THEN pp.lat ELSE rr.lat END,
                   CASE WHEN pp.region = rr.region THEN pp.lon ELSE rr.lon END
            FROM new_keys AS k
            LEFT JOIN {REGION_TEXT_TABLE} AS rt ON rt.region_text = k.region_text
            LEFT JOIN ref_postal_prefixes AS pp ON pp.postal_prefix = k.postal_prefix
            LEFT JOIN ref_regions AS rr ON rr.region = coalesce(rt.region, pp.region)""",
    )


def _prepare_macro(con: duckdb.DuckDBPyConnection) -> int | None:
    """Fill the macro values of the dump's quarters; return its latest quarter_idx.

    A value is the series' last one at or before the quarter (ASOF join), so a quarter after
    the series ends carries the last value forward and is flagged. Life expectancy stops at
    2022 in ``ref_life_expectancy`` (2023 is treated as missing, see :mod:`reference`).
    """
    _run(
        con,
        f"""CREATE TEMP TABLE IF NOT EXISTS {MACRO_TABLE} (
                quarter_idx INTEGER PRIMARY KEY, quarter {QUARTER_TYPE},
                key_rate DOUBLE, key_rate_change_4q DOUBLE,
                usd_rub DOUBLE, usd_rub_change_4q_pct DOUBLE, life_expectancy_male DOUBLE,
                life_expectancy_female DOUBLE, carried_forward INTEGER)""",
    )
    _run(
        con,
        f"""INSERT OR IGNORE INTO {MACRO_TABLE}
WITH
dump_quarters AS (
    SELECT DISTINCT quarter_idx FROM {DUMP_KEYS_TABLE}
),
needed_quarters AS (  -- t and t−4
    SELECT quarter_idx FROM dump_quarters UNION SELECT quarter_idx - 4 FROM dump_quarters
),
rate_at AS (
    SELECT q.quarter_idx, r.key_rate,
           q.quarter_idx > (SELECT max(quarter_idx) FROM ref_policy_rate) AS carried
    FROM needed_quarters AS q
    ASOF LEFT JOIN ref_policy_rate AS r ON q.quarter_idx >= r.quarter_idx
),
usd_at AS (
    SELECT q.quarter_idx, u.usd_rub,
           q.quarter_idx > (SELECT max(quarter_idx) FROM ref_usd_rub) AS carried
    FROM needed_quarters AS q
    ASOF LEFT JOIN ref_usd_rub AS u ON q.quarter_idx >= u.quarter_idx
),
life_at AS (
    SELECT q.quarter_idx, q.gender, l.life_expectancy,
           q.quarter_idx // 4 > (SELECT max(year) FROM ref_life_expectancy) AS carried
    FROM (SELECT quarter_idx, gender FROM dump_quarters, (VALUES (-1), (1)) AS s(gender)) AS q
    ASOF LEFT JOIN ref_life_expectancy AS l
      ON q.gender = l.gender AND q.quarter_idx // 4 >= l.year
)
SELECT q.quarter_idx,
       printf('%dQ%d', q.quarter_idx // 4, q.quarter_idx % 4 + 1),
       r.key_rate,
       r.key_rate - r4.key_rate,
       u.usd_rub,
       100 * (u.usd_rub / u4.usd_rub - 1),
       lm.life_expectancy,
       lf.life_expectancy,
       CASE WHEN r.carried OR u.carried OR lm.carried THEN 1 ELSE 0 END
FROM dump_quarters AS q
JOIN rate_at AS r ON r.quarter_idx = q.quarter_idx
JOIN rate_at AS r4 ON r4.quarter_idx = q.quarter_idx - 4
JOIN usd_at AS u ON u.quarter_idx = q.quarter_idx
JOIN usd_at AS u4 ON u4.quarter_idx = q.quarter_idx - 4
JOIN life_at AS lm ON lm.quarter_idx = q.quarter_idx AND lm.gender = 1
JOIN life_at AS lf ON lf.quarter_idx = q.quarter_idx AND lf.gender = -1""",
    )
    ((last,),) = _run(con, f"SELECT max(quarter_idx) FROM {DUMP_KEYS_TABLE}")
    return None if last is None else int(last)


# --- the feature query ------------------------------------------------------------------------


def _at_least(value: str, floor: int) -> str:
    """greatest(value, floor) that stays NULL for NULL (DuckDB's greatest skips NULLs)."""
    return f"CASE WHEN {value} < {floor} THEN {floor} ELSE {value} END"


def _quarter_end(alias: str) -> str:
    """SQL for the last day of the quarter of ``alias``.quarter_idx."""
    q = f"{alias}.quarter_idx"
    return f"last_day(make_date({q} // 4, {q} % 4 * 3 + 3, 1))"


def _feature_expressions() -> dict[str, str]:
    """Each feature's SQL over the final join.

    Aliases: p = panel row with its calendar windows, m = macro of the quarter, g = geography,
    s = contributors.
    """
    pension_age = " ".join(f"WHEN {g} THEN {a}" for g, a in PENSION_AGE.items())
    exprs = {
        "npo_account_id": "p.npo_account_id",
        "client_id": "p.client_id",
        "quarter": "m.quarter",
        "quarter_idx": "p.quarter_idx",
        "quarter_end": _quarter_end("p"),
        "churn": "p.churn",
        "label_next_q": "p.label_next_q",
        "label_next_4q": "p.label_next_4q",
        "is_scoring_row": "p.is_scoring_row",
        "region": "g.region",
        "federal_district": "g.federal_district",
        "region_source": "g.region_source",
        "macro_carried_forward": "m.carried_forward",
        "contrib_q": "p.contrib_q",
        **{f"contrib_lag{k}": f"p.contrib_lag{k}" for k in range(1, 5)},
        "contrib_4q": "p.contrib_4q",
        "contrib_8q": "p.contrib_8q",
        "contrib_trend": "p.contrib_trend",
        "contrib_count_q": "p.contrib_count_q",
        "contrib_count_4q": "p.contrib_count_4q",
        "income_q": "p.income_q",
        **{f"income_lag{k}": f"p.income_lag{k}" for k in range(1, 5)},
        "income_4q": "p.income_4q",
        "days_since_contrib": "p.days_since_contrib",
        "quarters_without_contrib": "p.quarters_without_contrib",
        "stopped_paying": "p.stopped_paying",
        "balance_change_q": "p.balance - p.balance_lag1",
        "balance_change_4q_pct": f"""100 * (p.balance - p.balance_lag4)
                                         / {_at_least("p.balance_lag4", 1)}""",
        "return_4q_pct": f"100 * p.income_4q / {_at_least('p.balance', 1)}",
        "tenure_years": "p.clnt_cprtn_time_d / 365.25",
        "years_to_pension": f"CASE p.gender {pension_age} END - p.age",
        "complaints_4q": "p.complaints_4q",
        "pension_scheme": "coalesce(s.pension_scheme, -1)",
        "federal_district_code": "g.federal_district_code",
        "lat": "g.lat",
        "lon": "g.lon",
        "key_rate": "m.key_rate",
        "key_rate_change_4q": "m.key_rate_change_4q",
        "rate_spread_pp": f"m.key_rate - 100 * p.income_4q / {_at_least('p.balance', 1)}",
        "usd_rub": "m.usd_rub",
        "usd_rub_change_4q_pct": "m.usd_rub_change_4q_pct",
        "life_expectancy": """CASE p.gender WHEN 1 THEN m.life_expectancy_male
                                            WHEN -1 THEN m.life_expectancy_female END""",
        **{name: f"p.{name}" for name in PASSTHROUGH},
    }
    mismatch = {f.name for f in FEATURES} ^ set(exprs)
    if mismatch:
        raise AssertionError(f"features without a definition or not in schema: {mismatch}")
    return exprs


def feature_query(
    con: duckdb.DuckDBPyConnection, sources: FeatureSources
) -> duckdb.DuckDBPyRelation:
    """The feature table as a relation: the columns of schema.FEATURES, in its types except
    ENUM_COLUMNS, which stay ENUMs until parquet writes them as the schema's strings.

    Two stages. Eagerly, at this call: the reference tables, the dump's few distinct regions,
    postal prefixes and quarters, and the narrow table of every panel row's calendar windows
    (:func:`_build_windows`). Lazily, when the relation is read or written: the wide panel
    rows joined to their windows, geography, macro series and pension scheme. The window
    never carries the ~40 panel columns it does not read: sorting and copying them was most
    of its cost. Rows come in no particular order.
    """
    if any(wildcard in sources.clients for wildcard in "*?["):
        raise ValueError(f"clients must be one parquet file, not a glob: {sources.clients}")
    reference.register(con)
    _create_enums(con)
    _scan_dump_keys(con, sources.clients)
    _prepare_geo(con)
    dump_last_quarter = _prepare_macro(con)
    clients_columns = con.sql(f"SELECT * FROM {_read(sources.clients)} LIMIT 0").columns
    churn = "churn" if "churn" in clients_columns else "CAST(NULL AS BIGINT)"
    excluded = "file_row_number, quarter" + (", churn" if "churn" in clients_columns else "")
    windows = _build_windows(con, sources, churn, dump_last_quarter)
    contributors = (
        f"""SELECT npo_accnt_id AS npo_account_id, min(accnt_pnsn_schm) AS pension_scheme
            FROM {_read(sources.contributors)} GROUP BY npo_accnt_id"""
        if sources.contributors
        else "SELECT NULL::VARCHAR AS npo_account_id, NULL::BIGINT AS pension_scheme LIMIT 0"
    )
    exprs = _feature_expressions()
    select_list = ",\n       ".join(
        f"CAST({exprs[f.name]} AS {ENUM_COLUMNS.get(f.name, f.duckdb_type)}) AS {f.name}"
        for f in FEATURES
    )
    sql = f"""
WITH
panel_rows AS (  -- the whole panel row with its windows, matched by its row number
    SELECT p.* EXCLUDE ({excluded}), {churn} AS churn, w.* EXCLUDE (panel_row)
    FROM {_read_numbered(sources.clients)} AS p
    JOIN {windows} AS w ON w.panel_row = p.file_row_number
),
contributors AS (
    {contributors}
)
SELECT {select_list}
FROM panel_rows AS p
JOIN {MACRO_TABLE} AS m USING (quarter_idx)
JOIN {GEO_TABLE} AS g
  ON g.region_text = coalesce(p.region, '')
 AND g.postal_prefix = coalesce(substr(p.postal_code, 1, 3), '')
LEFT JOIN contributors AS s USING (npo_account_id)
"""
    return con.sql(sql)


def _build_windows(
    con: duckdb.DuckDBPyConnection,
    sources: FeatureSources,
    churn: str,
    dump_last_quarter: int | None,
) -> str:
    """Materialise every panel row's calendar lags, windows and labels; return the table's name.

    Operations are aggregated once per (account, calendar quarter); each account gets a dense
    grid of quarters from its first activity (at most LOOKBACK_QUARTERS before its first panel
    row: older quarters reach no window) to its last panel row, so ``lag`` and ROWS frames are
    exact calendar lags and windows. Contributions older than the grid only matter to the
    cumulative features (last contribution, first quarter) and are carried per account.
    Accounts are numbered in id order so the grid, joins and the window work on integers.
    The table's name is unique to this call, so a relation built earlier keeps its own.
    """
    name = f"npf_windows_{uuid.uuid4().hex[:12]}"
    depth = {"contrib": LOOKBACK_QUARTERS, "income": 4, "contrib_count": 3}
    lags = ",\n           ".join(
        f"lag({c}_q, {k}, 0) OVER w AS {c}_lag{k}"
        for c, n in depth.items()
        for k in range(1, n + 1)
    )

    def total(column: str, first: int, last: int) -> str:
        """Sum over quarters t−last..t−first from the lags (0 is the quarter itself)."""
        terms = [f"{column}_q" if k == 0 else f"{column}_lag{k}" for k in range(first, last + 1)]
        return " + ".join(terms)

    sums = {  # in kopecks or counts, until the outputs below
        "contrib_4q": total("contrib", 0, 3),
        "contrib_8q": total("contrib", 0, 7),
        "contrib_prev_4q": total("contrib", 4, 7),
        "contrib_count_4q": total("contrib_count", 0, 3),
        "income_4q": total("income", 0, 3),
        "contrib_t5_t2": total("contrib", 2, 5),
        "contrib_count_t1_t": total("contrib_count", 0, 1),
    }
    last = "NULL" if dump_last_quarter is None else str(dump_last_quarter)
    # Money stays in whole kopecks (BIGINT) up to here: sums of integers are exact in any
    # order, and "contributions above 0" is never a rounding residue of +x and −x. Only what
    # the final join needs leaves this table: the narrower it is, the less the write buffers.
    outputs = {
        "panel_row": "w.panel_row",
        "quarter_idx": "w.quarter_idx",
        **{c: f"w.{c} / 100" for c in ("contrib_q", "income_q")},
        **{
            f"{c}_lag{k}": f"w.{c}_lag{k} / 100" for c in ("contrib", "income") for k in range(1, 5)
        },
        **{c: f"({sums[c]}) / 100" for c in ("contrib_4q", "contrib_8q", "income_4q")},
        "contrib_count_q": "w.contrib_count_q",
        "contrib_count_4q": sums["contrib_count_4q"],
        "contrib_trend": f"""ln((1 + {_at_least(f"({sums['contrib_4q']}) / 100", 0)})
                                / (1 + {_at_least(f"({sums['contrib_prev_4q']}) / 100", 0)}))""",
        "stopped_paying": f"""CASE WHEN ({sums["contrib_t5_t2"]}) > 0
                                    AND ({sums["contrib_count_t1_t"]}) = 0 THEN 1 ELSE 0 END""",
        "days_since_contrib": f"""{_quarter_end("w")}
                                  - coalesce(w.last_contrib_date, h.last_contrib_date)""",
        "quarters_without_contrib": """w.quarter_idx - coalesce(w.last_contrib_quarter,
                                                                h.last_contrib_quarter,
                                                                s.first_quarter - 1)""",
        "balance_lag1": "w.balance_lag1",
        "balance_lag4": "w.balance_lag4",
        "complaints_4q": "CAST(w.complaints_4q AS INTEGER)",
        # labels: forward-looking by design, never inputs
        "label_next_q": """CASE WHEN w.churn = 1 THEN NULL
                                WHEN s.exit_quarter = w.quarter_idx + 1 THEN 1
                                WHEN w.churn_next_q = 0 THEN 0 END""",
        "label_next_4q": """CASE WHEN w.churn = 1 THEN NULL
                                 WHEN s.exit_quarter BETWEEN w.quarter_idx + 1
                                                         AND w.quarter_idx + 4 THEN 1
                                 WHEN w.churn_in_4q = 0 THEN 0 END""",
        "is_scoring_row": f"""w.quarter_idx = s.last_panel_quarter
                              AND w.quarter_idx = {last}
                              AND w.churn IS DISTINCT FROM 1""",
    }
    selected = ",\n       ".join(f"{sql} AS {column}" for column, sql in outputs.items())
    _run(
        con,
        f"""CREATE TEMP TABLE {name} AS
WITH
panel_keys AS MATERIALIZED (  -- the few panel values the windows read, and the row's number
    SELECT file_row_number AS panel_row, npo_account_id,
           {_quarter_idx_sql("quarter")} AS quarter_idx, {churn} AS churn, balance, appl_mrkr
    FROM {_read_numbered(sources.clients)}
),
accounts AS MATERIALIZED (  -- a number per account in id order: integer keys
    SELECT npo_account_id,
           CAST(row_number() OVER (ORDER BY npo_account_id) AS INTEGER) AS account_no
    FROM (SELECT DISTINCT npo_account_id FROM panel_keys)
),
ops_by_quarter AS MATERIALIZED (  -- operations per account and calendar quarter of their date
    SELECT a.account_no, o.*
    FROM (SELECT npo_account_id,
                 CAST(year(npo_oprtn_date) * 4 + quarter(npo_oprtn_date) - 1 AS INTEGER)
                     AS quarter_idx,
                 -- in whole kopecks: integer sums are exact, so every run gives the same bits
                 sum(CASE WHEN npo_oprtn_grp = 1 THEN {KOPECKS} ELSE 0 END) AS contrib_q,
                 CAST(count_if(npo_oprtn_grp = 1) AS INTEGER) AS contrib_count_q,
                 sum(CASE WHEN npo_oprtn_grp = 0 THEN {KOPECKS} ELSE 0 END) AS income_q,
                 max(CASE WHEN npo_oprtn_grp = 1 THEN npo_oprtn_date END) AS last_contrib_date
          FROM {_read(sources.transactions)} AS o
          GROUP BY ALL) AS o
    JOIN accounts AS a USING (npo_account_id)  -- accounts without a panel row are dropped
),
keyed_panel AS (
    SELECT a.account_no, k.* EXCLUDE (npo_account_id)
    FROM panel_keys AS k JOIN accounts AS a USING (npo_account_id)
),
account_spans AS MATERIALIZED (  -- per account: panel span, exit quarter, first activity, grid
    SELECT s.*,
           least(s.first_panel_quarter, o.first_op_quarter) AS first_quarter,
           greatest(least(s.first_panel_quarter, o.first_op_quarter),
                    s.first_panel_quarter - {LOOKBACK_QUARTERS}) AS grid_start
    FROM (SELECT account_no,
                 min(quarter_idx) AS first_panel_quarter,
                 max(quarter_idx) AS last_panel_quarter,
                 min(quarter_idx) FILTER (WHERE churn = 1) AS exit_quarter
          FROM keyed_panel GROUP BY ALL) AS s
    LEFT JOIN (SELECT account_no, min(quarter_idx) AS first_op_quarter
               FROM ops_by_quarter GROUP BY ALL) AS o USING (account_no)
),
contributions_before_grid AS (  -- what the grid leaves out, for the cumulative features
    SELECT o.account_no,
           max(o.last_contrib_date) AS last_contrib_date,
           max(o.quarter_idx) FILTER (WHERE o.contrib_count_q > 0) AS last_contrib_quarter
    FROM ops_by_quarter AS o JOIN account_spans AS s USING (account_no)
    WHERE o.quarter_idx < s.grid_start
    GROUP BY ALL
),
grid AS (  -- every calendar quarter of every account, from grid_start to its last panel row
    SELECT account_no,
           CAST(unnest(range(grid_start, last_panel_quarter + 1)) AS INTEGER) AS quarter_idx
    FROM account_spans
),
timeline AS (  -- the grid with the quarter's operations and, where there is one, its panel row
    SELECT g.account_no, g.quarter_idx,
           k.panel_row, k.churn, k.balance, k.appl_mrkr,
           coalesce(o.contrib_q, 0) AS contrib_q,
           coalesce(o.contrib_count_q, 0) AS contrib_count_q,
           coalesce(o.income_q, 0) AS income_q,
           o.last_contrib_date,
           CASE WHEN o.contrib_count_q > 0 THEN g.quarter_idx END AS contrib_quarter
    FROM grid AS g
    LEFT JOIN ops_by_quarter AS o USING (account_no, quarter_idx)
    LEFT JOIN keyed_panel AS k USING (account_no, quarter_idx)
),
panel_windows AS (  -- calendar lags and windows at the panel rows; only labels look forward
    SELECT panel_row, account_no, quarter_idx, churn, contrib_q, contrib_count_q, income_q,
           -- window sums as sums of lags: a lag is a copy, a framed sum a segment tree
           {lags},
           max(last_contrib_date) OVER (w ROWS UNBOUNDED PRECEDING) AS last_contrib_date,
           max(contrib_quarter) OVER (w ROWS UNBOUNDED PRECEDING) AS last_contrib_quarter,
           lag(balance, 1) OVER w AS balance_lag1,
           lag(balance, 4) OVER w AS balance_lag4,
           sum(appl_mrkr) OVER ({_rows(3)}) AS complaints_4q,
           -- labels: forward-looking by design, never inputs
           lead(churn, 1) OVER w AS churn_next_q,
           lead(churn, 4) OVER w AS churn_in_4q
    FROM timeline
    WINDOW w AS (PARTITION BY account_no ORDER BY quarter_idx)
    QUALIFY panel_row IS NOT NULL
)
SELECT {selected}
FROM panel_windows AS w
JOIN account_spans AS s USING (account_no)
LEFT JOIN contributions_before_grid AS h USING (account_no)""",
    )
    return name


# --- writing ----------------------------------------------------------------------------------


def write_features(rel: duckdb.DuckDBPyRelation, out_dir: Path) -> FeatureSummary:
    """Write ``rel`` as parquet partitioned by quarter (``out_dir/quarter=2017Q4/*.parquet``).

    One partitioned COPY, in parallel: the rows of a quarter are in no particular order (every
    reader sorts what it needs), and the same input gives the same rows, not the same bytes —
    sorting the whole table first to get identical bytes cost more than the rest of the write.
    The quarter is in the path, not in the file (hive style). ``out_dir`` is replaced: stale
    partitions of an earlier run must not survive. DuckDB writes the files itself, so ingest
    needs no pyarrow (it would not fit its Lambda).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    _statement(
        rel,
        f"COPY feature_rows TO {_sql_text(str(out_dir))} ({PARQUET_WRITE_OPTIONS}, "
        f"PARTITION_BY (quarter), OVERWRITE_OR_IGNORE, ROW_GROUP_SIZE {ROW_GROUP_SIZE})",
    )
    if not any(out_dir.iterdir()):
        return FeatureSummary(0, 0, None, 0, dict.fromkeys(LABELS, 0), dict.fromkeys(LABELS, 0))
    written = _query(  # the relation's own text is not run again: only the files are read
        rel,
        f"SELECT * FROM read_parquet({_sql_text(str(out_dir / '*' / '*.parquet'))}, "
        "hive_partitioning = true)",
    )
    return summarize(written)


def _statement(rel: duckdb.DuckDBPyRelation, sql: str) -> list[Any]:
    """Run one statement on the relation's connection (the relation named feature_rows)."""
    result = rel.query("feature_rows", sql)
    return [] if result is None else result.fetchall()


def _query(rel: duckdb.DuckDBPyRelation, sql: str) -> duckdb.DuckDBPyRelation:
    """``rel.query`` under the name feature_rows, for a statement that only reads."""
    result = rel.query("feature_rows", sql)
    assert result is not None, "a reading statement always gives a relation"
    return result


def summarize(rel: duckdb.DuckDBPyRelation) -> FeatureSummary:
    """Counts over a feature table (a relation with the schema.FEATURES columns)."""
    label_counts = ", ".join(
        f"count({lb}) AS n_{lb}, coalesce(sum({lb}), 0) AS pos_{lb}" for lb in LABELS
    )
    ((rows, accounts, first, last, scoring, *counts),) = _query(
        rel,
        f"""SELECT count(*), count(DISTINCT npo_account_id), min(quarter), max(quarter),
                   count(*) FILTER (WHERE is_scoring_row), {label_counts}
            FROM feature_rows""",
    ).fetchall()
    by_source = _query(
        rel,
        "SELECT region_source, count(*) FROM feature_rows GROUP BY ALL ORDER BY ALL",
    ).fetchall()
    return FeatureSummary(
        rows=int(rows),
        accounts=int(accounts),
        quarters=(str(first), str(last)) if rows else None,
        scoring_rows=int(scoring),
        labelled={lb: int(counts[2 * i]) for i, lb in enumerate(LABELS)},
        positives={lb: int(counts[2 * i + 1]) for i, lb in enumerate(LABELS)},
        by_region_source={str(k): int(v) for k, v in by_source},
    )
