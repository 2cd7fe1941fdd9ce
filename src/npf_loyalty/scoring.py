"""Score every active account's latest quarter with the current ONNX model.

This is the Lambda scoring path: DuckDB, numpy and onnxruntime only — never catboost, pandas or
pyarrow, so the function fits a zip. Reasons come from the per-leaf SHAP tables that training
exports: the graph returns each row's leaf in every tree, and a table lookup turns that into
exact per-feature contributions.

Outputs, each published atomically (version folder, then pointer):
- `scores/<version>/scores.parquet`: one row per scored account.
- `lookup/<version>/client/shard=<xx>/…` and `…/account/shard=<xx>/…`: the same rows split by
  the first two hex digits of the client id (and an account → client map by account id), plus
  `history/shard=<xx>/` with the last quarters of each account, so the bot reads one small
  file per question instead of the whole fund.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from npf_loyalty import schema
from npf_loyalty.engine import connect
from npf_loyalty.explain import ShapTables, explain
from npf_loyalty.metrics import BANDS
from npf_loyalty.observability import fields
from npf_loyalty.onnx_runtime import make_session, run_in_batches
from npf_loyalty.reasons import top_reasons
from npf_loyalty.settings import Settings
from npf_loyalty.storage import Keys, LocalStore, Store

log = logging.getLogger(__name__)

HISTORY_QUARTERS = 8
TOP_OVERALL = 1000
CHUNK_ROWS = 100_000
TOP_PER_AREA = 100
N_REASONS = 3


class NoModelError(RuntimeError):
    """No model has been promoted yet: run `npf-loyalty train` first."""


class NoFeaturesError(RuntimeError):
    """No feature table has been published yet: upload the dumps first."""


@dataclass
class LoadedModel:
    version: str
    meta: dict[str, Any]
    session: Any  # onnxruntime.InferenceSession
    shap: ShapTables

    @property
    def input_columns(self) -> list[str]:
        columns: list[str] = self.meta["input_columns"]
        return columns

    @property
    def tree_columns(self) -> list[str]:
        columns: list[str] = self.meta["tree_columns"]
        return columns


def load_current_model(store: Store, work_dir: Path) -> LoadedModel:
    pointer = store.current(Keys.models)
    if pointer is None:
        raise NoModelError("no current model: run `npf-loyalty train` first")
    version = pointer["version"]
    folder = Keys.version_dir(Keys.models, version)
    local = work_dir / "models" / version
    onnx_path = store.get_file(folder + "model.onnx", local / "model.onnx")
    shap_path = store.get_file(folder + "shap.npz", local / "shap.npz")
    session = make_session(onnx_path, threads=os.cpu_count() or 2)
    meta = store.get_json(folder + "meta.json")
    return LoadedModel(version, meta, session, ShapTables.load(shap_path))


@dataclass
class ScoreOutcome:
    version: str
    model_version: str
    features_version: str
    quarter: str
    accounts: int
    built: bool
    timings: dict[str, float] = field(default_factory=dict)
    location: str = ""


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def score_current(store: Store, settings: Settings, model: LoadedModel) -> ScoreOutcome:
    """Score the current feature table with a loaded model, unless already done."""
    features = store.current(Keys.features)
    if features is None:
        raise NoFeaturesError("no features yet: upload the fund's dumps first")
    version = hashlib.sha256(f"{features['version']}|{model.version}".encode()).hexdigest()[:16]
    current = store.current(Keys.scores)
    if current is not None and current["version"] == version:
        return ScoreOutcome(
            version,
            model.version,
            features["version"],
            current.get("quarter", ""),
            current.get("accounts", 0),
            built=False,
            location=store.url(Keys.version_dir(Keys.scores, version)),
        )
    timer = _Timer()
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="score-") as tmp:
        work = Path(tmp)
        with timer.step("read"):
            glob, quarter = _latest_partitions(store, features["version"], work)
        con = connect(settings)
        try:
            with timer.step("read"):
                rows = _scoring_rows(con, glob, model.input_columns, quarter)
            scored = score_rows(rows, model, timer)
            with timer.step("write"):
                out = work / "out"
                _write_scores(con, scored, out / "scores", model.version, features["version"])
                _write_lookup(con, glob, model, out / "lookup")
                _write_stats(con, features.get("by_quarter", []), out / "lookup" / "stats.json")
        finally:
            con.close()
        with timer.step("upload"):
            store.put_dir(Keys.version_dir(Keys.scores, version), out / "scores", move=True)
            store.put_dir(Keys.version_dir(Keys.lookup, version), out / "lookup", move=True)
    meta = {
        "model_version": model.version,
        "features_version": features["version"],
        "quarter": quarter,
        "accounts": len(scored["npo_account_id"]),
        "scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    store.publish(Keys.lookup, version, meta)
    store.publish(Keys.scores, version, meta)
    # the report finds each quarter's predictions here to check them against what happened
    store.put_json(Keys.scores_of_quarter(quarter), {"version": version, **meta})
    log.info("scores published", extra=fields(version=version, **meta, **timer.timings))
    return ScoreOutcome(
        version,
        model.version,
        features["version"],
        quarter,
        meta["accounts"],
        built=True,
        timings=timer.timings,
        location=store.url(Keys.version_dir(Keys.scores, version)),
    )


def _latest_partitions(store: Store, features_version: str, work: Path) -> tuple[str, str]:
    """A glob over the last quarters' partitions, fetched locally when the store is remote."""
    folder = Keys.version_dir(Keys.features, features_version)
    keys = [k for k in store.list(folder) if k.endswith(".parquet")]
    quarters = sorted({k[len(folder) :].split("/")[0] for k in keys})
    if not quarters:
        raise NoFeaturesError(f"feature version {features_version} has no partitions")
    wanted = set(quarters[-HISTORY_QUARTERS:])
    latest = quarters[-1].removeprefix("quarter=")
    if isinstance(store, LocalStore):
        root = store.local_path(folder)
        return str(root / "*" / "*.parquet"), latest
    local = work / "features"
    for key in keys:
        if key[len(folder) :].split("/")[0] in wanted:
            store.get_file(key, local / key[len(folder) :])
    return str(local / "*" / "*.parquet"), latest


def _scoring_rows(
    con: Any, glob: str, input_columns: list[str], quarter: str
) -> dict[str, np.ndarray]:
    keep = [
        "npo_account_id",
        "client_id",
        "quarter",
        "region",
        "federal_district",
        *input_columns,
    ]
    select = ", ".join(f'"{c}"' for c in dict.fromkeys(keep))
    rows: dict[str, np.ndarray] = con.sql(
        f"SELECT {select} FROM read_parquet('{glob}', hive_partitioning = true) "
        f"WHERE is_scoring_row AND quarter = '{quarter}' ORDER BY npo_account_id"
    ).fetchnumpy()
    return rows


def feature_matrix(rows: dict[str, np.ndarray], columns: list[str]) -> np.ndarray:
    """The model's input matrix: float32, schema order, NaN where a value is missing."""
    matrix = np.empty((len(rows[columns[0]]), len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        column = rows[name]
        if isinstance(column, np.ma.MaskedArray):  # DuckDB returns NULLs as masked values
            column = np.ma.filled(column.astype(np.float64), np.nan)
        matrix[:, j] = column
    return matrix


def score_rows(
    rows: dict[str, np.ndarray], model: LoadedModel, timer: _Timer | None = None
) -> dict[str, np.ndarray]:
    """Probabilities, bands, relative risk and reasons for the given feature rows."""
    timer = timer or _Timer()
    x = feature_matrix(rows, model.input_columns)
    horizons: list[str] = model.meta["horizons"]
    meanings = {f.name: f.meaning for f in schema.FEATURES}
    p = np.empty((len(x), len(horizons)), dtype=np.float64)
    texts = np.empty((len(x), N_REASONS), dtype=object)
    pushes = np.empty((len(x), N_REASONS), dtype=np.float64)
    # chunks keep the leaf indices small: 1M rows × 300 trees would be 1.2 GB at once
    for lo in range(0, len(x), CHUNK_ROWS):
        chunk = slice(lo, lo + CHUNK_ROWS)
        with timer.step("model"):
            outputs = run_in_batches(model.session, x[chunk])
        p[chunk] = outputs["p_leave"]
        with timer.step("reasons"):
            contributions = explain(outputs["leaf_index"], model.shap, len(model.tree_columns))
            reasons = top_reasons(
                contributions, x[chunk], model.tree_columns, meanings, k=N_REASONS
            )
        texts[chunk] = reasons.text
        pushes[chunk] = reasons.contribution
    p_q = p[:, horizons.index("next_q")]
    p_4q = p[:, horizons.index("next_4q")]
    mean_q = float(p_q.mean()) if len(p_q) else 0.0
    order = np.argsort(-p_q, kind="stable")
    rank = np.empty(len(p_q), dtype=np.int64)
    rank[order] = np.arange(1, len(p_q) + 1)
    scored: dict[str, np.ndarray] = {
        "npo_account_id": rows["npo_account_id"],
        "client_id": rows["client_id"],
        "quarter": rows["quarter"],
        "p_leave_next_q": p_q,
        "p_leave_next_4q": p_4q,
        "loyalty_next_q": 1.0 - p_q,
        "loyalty_next_4q": 1.0 - p_4q,
        "band": band_of(1.0 - p_4q),
        "band_next_q": band_of(1.0 - p_q),
        "relative_risk": p_q / mean_q if mean_q > 0 else np.ones_like(p_q),
        "risk_rank": rank,
        "risk_top_pct": 100.0 * rank / max(len(rank), 1),
        "model_version": np.full(len(p_q), model.version, dtype=object),
    }
    for k in range(N_REASONS):
        scored[f"reason_{k + 1}"] = texts[:, k]
        scored[f"reason_{k + 1}_contribution"] = pushes[:, k]
    return scored


def band_of(loyalty: np.ndarray) -> np.ndarray:
    """The fund's loyalty bands: < 0.2 низкая, 0.2–0.8 средняя, ≥ 0.8 высокая."""
    low, mid, high = (name for name, _, _ in BANDS)
    return np.where(loyalty < 0.2, low, np.where(loyalty < 0.8, mid, high)).astype(object)


def _write_scores(
    con: Any, scored: dict[str, np.ndarray], out: Path, model_version: str, features_version: str
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # one scan of the numpy arrays (Python strings are slow to scan); the later steps read a
    # native table
    con.register("scored_arrays", scored)
    con.sql("CREATE OR REPLACE TEMP TABLE scored AS SELECT * FROM scored_arrays")
    con.unregister("scored_arrays")
    con.sql(
        f"COPY (SELECT *, '{features_version}' AS features_version FROM scored "
        f"ORDER BY npo_account_id) TO '{out / 'scores.parquet'}' (FORMAT parquet)"
    )
    (out / "summary.json").write_text(
        json.dumps({"model_version": model_version, "rows": len(scored["npo_account_id"])})
    )


def _write_lookup(con: Any, glob: str, model: LoadedModel, out: Path) -> None:
    """Per-shard files the bot can read one at a time."""
    out.mkdir(parents=True, exist_ok=True)
    shard = "substr({col}, 3, 2)"
    con.sql(
        f"""
        CREATE OR REPLACE TEMP TABLE account_view AS
        SELECT s.*, f.region, f.federal_district, f.balance, f.contrib_q, f.income_q,
               f.days_since_contrib, f.quarters_without_contrib, f.age, f.gender,
               f.pmnts_type, f.tenure_years, f.lk, f.appl_mrkr,
               s.p_leave_next_q * f.balance AS balance_at_risk
        FROM scored s JOIN read_parquet('{glob}', hive_partitioning = true) f
          USING (npo_account_id, quarter)
        """
    )
    con.sql(
        f"""
        COPY (SELECT *, {shard.format(col="client_id")} AS shard FROM account_view)
        TO '{out / "client"}' (FORMAT parquet, PARTITION_BY (shard), OVERWRITE_OR_IGNORE)
        """
    )
    # /top reads one small file: the riskiest accounts overall, per region and per district
    # (ranked on narrow columns, then the chosen rows fetched whole)
    con.sql(
        f"""
        COPY (
            WITH ranked AS (
                SELECT npo_account_id,
                    row_number() OVER (ORDER BY p_leave_next_q DESC, npo_account_id) AS r_all,
                    row_number() OVER (PARTITION BY region
                                       ORDER BY p_leave_next_q DESC, npo_account_id) AS r_region,
                    row_number() OVER (PARTITION BY federal_district
                                       ORDER BY p_leave_next_q DESC, npo_account_id) AS r_district
                FROM (SELECT npo_account_id, p_leave_next_q, region, federal_district
                      FROM account_view))
            SELECT a.* FROM account_view a SEMI JOIN ranked r
              ON a.npo_account_id = r.npo_account_id
             AND (r.r_all <= {TOP_OVERALL} OR r.r_region <= {TOP_PER_AREA}
                  OR r.r_district <= {TOP_PER_AREA})
            ORDER BY a.p_leave_next_q DESC, a.npo_account_id
        ) TO '{out / "top.parquet"}' (FORMAT parquet)
        """
    )
    con.sql(
        f"""
        COPY (
            SELECT npo_account_id, client_id, {shard.format(col="npo_account_id")} AS shard
            FROM scored
        ) TO '{out / "account"}' (FORMAT parquet, PARTITION_BY (shard), OVERWRITE_OR_IGNORE)
        """
    )
    history = con.sql(
        f"""
        SELECT f.npo_account_id, f.client_id, f.quarter, f.contrib_q, f.income_q,
               f.contrib_count_q, f.balance,
               {
            ", ".join(
                f'f."{c}"'
                for c in model.input_columns
                if c not in ("contrib_q", "income_q", "contrib_count_q", "balance")
            )
        }
        FROM read_parquet('{glob}', hive_partitioning = true) f
        SEMI JOIN scored s ON f.npo_account_id = s.npo_account_id
        """
    ).fetchnumpy()
    if len(history["npo_account_id"]):
        x = feature_matrix(history, model.input_columns)
        p = run_in_batches(model.session, x)["p_leave"]
        horizons: list[str] = model.meta["horizons"]
        history["p_leave_next_q"] = p[:, horizons.index("next_q")].astype(np.float64)
        history["p_leave_next_4q"] = p[:, horizons.index("next_4q")].astype(np.float64)
    else:
        history["p_leave_next_q"] = np.array([], dtype=np.float64)
        history["p_leave_next_4q"] = np.array([], dtype=np.float64)
    slim = {
        k: history[k]
        for k in (
            "npo_account_id",
            "client_id",
            "quarter",
            "contrib_q",
            "income_q",
            "contrib_count_q",
            "balance",
            "p_leave_next_q",
            "p_leave_next_4q",
        )
    }
    con.register("history", slim)
    con.sql(
        f"""
        COPY (SELECT *, {shard.format(col="client_id")} AS shard FROM history)
        TO '{out / "history"}' (FORMAT parquet, PARTITION_BY (shard), OVERWRITE_OR_IGNORE)
        """
    )


def _write_stats(con: Any, by_quarter: list[dict[str, Any]], path: Path) -> None:
    """Fund-wide figures for /stats: today's bands and the history of departures."""
    ((accounts, expected_q, expected_4q, at_risk),) = con.sql(
        "SELECT count(*), sum(p_leave_next_q), sum(p_leave_next_4q), sum(balance_at_risk) "
        "FROM account_view"
    ).fetchall()
    bands = dict(con.sql("SELECT band, count(*) FROM account_view GROUP BY band").fetchall())
    bands_q = dict(
        con.sql("SELECT band_next_q, count(*) FROM account_view GROUP BY band_next_q").fetchall()
    )
    by_year: dict[str, dict[str, int]] = {}
    for row in by_quarter:
        year = by_year.setdefault(row["quarter"][:4], {"accounts": 0, "left": 0, "quarters": 0})
        year["left"] += row["left"]
        year["quarters"] += 1
        year["accounts"] = max(year["accounts"], row["accounts"])
    stats = {
        "accounts_scored": int(accounts),
        "expected_leavers_next_q": float(expected_q or 0.0),
        "expected_leavers_next_4q": float(expected_4q or 0.0),
        "balance_at_risk_next_q": float(at_risk or 0.0),
        "bands": {str(k): int(v) for k, v in bands.items()},
        "bands_next_q": {str(k): int(v) for k, v in bands_q.items()},
        "by_quarter": by_quarter,
        "by_year": by_year,
    }
    path.write_text(json.dumps(stats, ensure_ascii=False, indent=2))
