"""Scoring 1M accounts end to end with the product's trained model, and its model step 3 ways.

    python bench/score.py --store npf-demo/bucket          # after `npf-loyalty demo`
    python bench/score.py --store npf-demo/bucket --accounts 200000

Takes the store's current model and feature table, and builds a 1M-account scoring quarter by
drawing the real scoring rows with replacement (fresh account and client ids), published as a
new feature version in a copy of the store (bench/out/score-store). Then, in one run:

1. `score_current` end to end — read / model / reasons / write (+ upload), the same code the
   score Lambda runs (DuckDB + onnxruntime + numpy; no catboost);
2. the next-quarter model step on the same rows three ways, each with max |Δp| against
   catboost: catboost's own `predict_proba` (the floor), onnxruntime on CatBoost's own ONNX
   export (TreeEnsemble), and the product graph (encoder + both horizons + leaf indices).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np


def build_bench_store(source: Path, target: Path, accounts: int) -> None:
    from npf_loyalty.storage import Keys, LocalStore

    shutil.rmtree(target, ignore_errors=True)
    src = LocalStore(source)
    dst = LocalStore(target)
    pointer = src.current(Keys.models)
    if pointer is None:
        raise SystemExit("no model in the store: run `npf-loyalty demo` first")
    shutil.copytree(src.local_path(Keys.models), dst.local_path(Keys.models), dirs_exist_ok=True)
    features = src.current(Keys.features)
    assert features is not None
    root = src.local_path(Keys.version_dir(Keys.features, features["version"]))
    quarters = sorted(p.name for p in root.iterdir() if p.name.startswith("quarter="))
    latest = root / quarters[-1]
    out = dst.local_path(Keys.version_dir(Keys.features, "bench")) / quarters[-1]
    out.mkdir(parents=True)
    duckdb.sql(
        f"""
        COPY (
            WITH base AS (
                SELECT * EXCLUDE (npo_account_id, client_id), row_number() OVER () AS k
                FROM read_parquet('{latest}/*.parquet') WHERE is_scoring_row),
            draws AS (
                SELECT i, 1 + CAST(floor(random() * (SELECT count(*) FROM base)) AS BIGINT) AS k
                FROM range({accounts}) t(i))
            SELECT '0x' || md5('a' || i) AS npo_account_id, '0x' || md5('c' || i) AS client_id,
                   base.* EXCLUDE (k)
            FROM draws JOIN base USING (k)
        ) TO '{out}/data_0.parquet' (FORMAT parquet)
        """
    )
    dst.publish(Keys.features, "bench", {"summary": {"scoring_rows": accounts}, "by_quarter": []})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("npf-demo/bucket"))
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("bench/out"))
    args = parser.parse_args()

    from catboost import CatBoostClassifier
    from score_model import run_native_onnx  # bench/, beside this script

    from npf_loyalty.onnx_export import catboost_native_onnx
    from npf_loyalty.onnx_runtime import make_session, run_in_batches
    from npf_loyalty.scoring import feature_matrix, load_current_model, score_current
    from npf_loyalty.settings import Settings
    from npf_loyalty.storage import Keys, LocalStore

    bench_store = args.workdir.resolve() / "score-store"
    work = args.workdir.resolve() / "score-work"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    build_bench_store(args.store.resolve(), bench_store, args.accounts)
    print(
        f"built a {args.accounts:,}-account scoring quarter in {time.perf_counter() - start:.1f} s"
    )

    store = LocalStore(bench_store)
    settings = Settings(store=str(bench_store), work_dir=work)
    model = load_current_model(store, work)
    start = time.perf_counter()
    outcome = score_current(store, settings, model)
    total = time.perf_counter() - start
    t = outcome.timings
    print(f"\nscore_current, {outcome.accounts:,} accounts, model {model.version}")
    for step in ("read", "model", "reasons", "write", "upload"):
        print(f"  {step:8} {t.get(step, 0.0):6.2f} s")
    print(f"  {'total':8} {total:6.2f} s  (scores without reasons: {total - t['reasons']:.2f} s)")

    # the model step three ways, on the same rows
    folder = Keys.version_dir(Keys.models, model.version)
    booster = CatBoostClassifier()
    booster.load_model(str(store.local_path(folder + "boosters/next_q.cbm")))
    glob = store.local_path(Keys.version_dir(Keys.features, "bench")) / "*" / "*.parquet"
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").fetchnumpy()
    x = feature_matrix(rows, model.input_columns)
    horizon = model.meta["horizons"].index("next_q")
    tree_x = x if len(model.tree_columns) == x.shape[1] else None

    print(f"\nmodel step, next quarter, {len(x):,} rows ({booster.tree_count_} trees)")
    product = run_in_batches(model.session, x)
    start = time.perf_counter()
    product = run_in_batches(model.session, x)
    product_s = time.perf_counter() - start
    raw = product["raw_score"][:, horizon].astype(np.float64)
    p_product = 1 / (1 + np.exp(-raw))
    if tree_x is None:
        print("  (embeddings in use: catboost comparisons need the encoder's output; skipped)")
        print(f"  product ONNX graph     {product_s:6.2f} s")
        return
    booster.predict_proba(tree_x[:1000], thread_count=2)
    start = time.perf_counter()
    native = booster.predict_proba(tree_x, thread_count=2)[:, 1]
    native_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "native.onnx"
        catboost_native_onnx(booster, path)
        session = make_session(path, threads=2)
        clean = np.nan_to_num(tree_x, nan=0.0)  # TreeEnsemble has no NaN handling of catboost's
        run_native_onnx(session, clean[:1000])
        start = time.perf_counter()
        p_tree_ensemble = run_native_onnx(session, clean)
        tree_ensemble_s = time.perf_counter() - start
    native_clean = booster.predict_proba(clean, thread_count=2)[:, 1]
    print(f"  catboost predict_proba {native_s:6.2f} s")
    print(
        f"  onnxruntime, catboost's own export (TreeEnsemble) {tree_ensemble_s:6.2f} s, "
        f"max |Δp| {np.abs(p_tree_ensemble - native_clean).max():.1e}"
    )
    print(
        f"  onnxruntime, product graph (both horizons + leaf indices) {product_s:6.2f} s "
        f"= {product_s / native_s:.2f}× catboost, max |Δp| {np.abs(p_product - native).max():.1e}"
    )
    print(json.dumps({"accounts": outcome.accounts, "timings": t, "total_s": total}))


if __name__ == "__main__":
    main()
