"""Full-scale ingest: the product's path against a straightforward pandas version, in one run.

    python bench/ingest.py                      # 250k accounts, 120 quarters (the real case's size)
    python bench/ingest.py --accounts 20000     # a quick look

Generates the synthetic fund once (cached in --workdir), then runs each side in its own
subprocess so that peak memory (ru_maxrss) belongs to that side alone:

- product: `ingest_object` over a local store for the three CSV dumps — hashing, validation
  with quarantine, clean parquet, and the feature table (DuckDB), exactly what Lambda runs;
- pandas: `pd.read_csv` of the same files and `bench/pandas_features.py` (groupby/shift/rolling)
  computing the same transaction and panel features, written to parquet. It does no
  validation, so the comparison flatters pandas.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(workdir: Path, accounts: int, quarters: int) -> dict[str, Path]:
    from npf_loyalty.synth import SynthConfig, generate, write_fund

    dumps = workdir / f"fund-{accounts}-{quarters}"
    marker = dumps / "done.json"
    if marker.exists():
        return {k: Path(v) for k, v in json.loads(marker.read_text()).items()}
    start = time.perf_counter()
    fund = generate(SynthConfig(accounts=accounts, seed=7, quarters=quarters))
    paths = write_fund(fund, dumps)
    marker.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    print(
        f"generated {fund.clients.num_rows:,} account-quarters, "
        f"{fund.transactions.num_rows:,} operations in {time.perf_counter() - start:.1f} s"
    )
    return paths


def run_product(paths: dict[str, Path], workdir: Path) -> dict[str, float]:
    import shutil

    from npf_loyalty.ingest import ingest_object
    from npf_loyalty.settings import Settings
    from npf_loyalty.storage import LocalStore

    bucket = workdir / "bucket"
    shutil.rmtree(bucket, ignore_errors=True)
    store = LocalStore(bucket)
    settings = Settings(store=str(bucket), work_dir=workdir, duckdb_memory_limit="3GB")
    keys = []
    # the operations last: features are rebuilt on every upload once both required tables
    # are present, so this order builds them once (any other order builds them twice)
    for name in ("clnts_fin_prtrt", "cntrbtrs", "trnsctns"):
        key = f"uploads/bench/{paths[name].name}"
        store.put_file(key, paths[name])
        keys.append(key)
    # staging wrote 2.7 GB into the bucket: flush it to disk before the clock starts, or its
    # write-back competes with the ingest being measured
    os.sync()
    steps: dict[str, float] = {}
    start = time.perf_counter()
    for key in keys:
        began = time.perf_counter()
        outcome = ingest_object(store, key, settings)
        assert outcome.ok, outcome.report
        steps[key.rsplit("/", 1)[-1]] = time.perf_counter() - began
    seconds = time.perf_counter() - start
    assert outcome.features is not None
    return {
        "seconds": seconds,
        "rows": outcome.features.summary["rows"],
        "peak_mb": _peak_mb(),
        "steps": steps,
    }


def run_pandas(paths: dict[str, Path], workdir: Path) -> dict[str, float]:
    import pandas as pd

    sys.path.insert(0, str(HERE))
    from pandas_features import pandas_features

    start = time.perf_counter()
    clients = pd.read_csv(paths["clnts_fin_prtrt"], sep=",")
    transactions = pd.read_csv(paths["trnsctns"], sep=";", parse_dates=["npo_oprtn_date"])
    features = pandas_features(clients, transactions)
    features.to_parquet(workdir / "pandas_features.parquet", index=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": len(features), "peak_mb": _peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=250_000)
    parser.add_argument("--quarters", type=int, default=120)
    parser.add_argument("--workdir", type=Path, default=Path("bench/out"))
    parser.add_argument("--side", choices=["product", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--sides", nargs="+", default=["product", "pandas"])
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = generate(args.workdir, args.accounts, args.quarters)

    if args.side:  # a child run: print one JSON line
        run = run_product if args.side == "product" else run_pandas
        print(json.dumps(run(paths, args.workdir.resolve())))
        return

    results = {}
    for side in args.sides:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--side",
                side,
                "--accounts",
                str(args.accounts),
                "--quarters",
                str(args.quarters),
                "--workdir",
                str(args.workdir),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\ningest, {args.accounts:,} accounts × {args.quarters} quarters, CSV in → features out")
    print(f"{'':10}{'seconds':>10}{'peak MB':>10}{'rows':>12}")
    for side, r in results.items():
        print(f"{side:10}{r['seconds']:>10.1f}{r['peak_mb']:>10.0f}{r['rows']:>12,}")
    for name, seconds in results.get("product", {}).get("steps", {}).items():
        print(f"  product, upload of {name}: {seconds:.1f} s")
    if {"product", "pandas"} <= set(results):
        ratio = results["pandas"]["seconds"] / results["product"]["seconds"]
        print(f"speed-up: {ratio:.1f}× (target ≥ 3×; product target ≤ 60 s and ≤ 4096 MB)")


if __name__ == "__main__":
    main()
