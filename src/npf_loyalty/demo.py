"""`npf-loyalty demo`: the cloud's flow on this machine, with no account and no token.

A synthetic fund's back office "uploads" its dumps into a local folder that stands for the
bucket; each upload is handed to the same handler Lambda runs, as the same S3 event JSON.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from npf_loyalty.edges import load_handler
from npf_loyalty.events import s3_put_event
from npf_loyalty.settings import get_settings
from npf_loyalty.storage import Keys, LocalStore
from npf_loyalty.synth import SynthConfig, generate, write_fund

LOCAL_BUCKET = "npf-local"


def run_demo(workdir: Path, accounts: int = 5000, seed: int = 7) -> int:
    workdir = workdir.resolve()
    store = LocalStore(workdir / "bucket")
    _use_store(store)
    steps = tqdm(total=3, desc="demo", unit="step")

    steps.set_postfix_str("synthetic fund")
    fund = generate(SynthConfig(accounts=accounts, seed=seed))
    # the back office's usual export: cp1251, ';' and decimal commas
    dumps = write_fund(fund, workdir / "dumps", fmt="csv", encoding="cp1251", decimal_comma=True)
    steps.update()

    steps.set_postfix_str("upload")
    keys = []
    for name in ("clnts_fin_prtrt", "trnsctns", "cntrbtrs"):
        key = f"{Keys.uploads}backoffice/{dumps[name].name}"
        if not store.exists(key):
            store.put_file(key, dumps[name])
        keys.append(key)
    steps.update()

    steps.set_postfix_str("ingest (Lambda handler)")
    ingest = load_handler("ingest")
    results: list[dict[str, Any]] = []
    for key in keys:
        results += ingest.handler(s3_put_event(LOCAL_BUCKET, key), None)["results"]
    steps.update()
    steps.close()

    for result in results:
        print(
            f"{result['key']}: {result['status']}, "
            f"{result['rows_clean']}/{result['rows_total']} rows accepted"
        )
    features = store.current(Keys.features)
    if features is None:
        print("features were not built; see the messages above")
        return 1
    summary = features.get("summary", {})
    print(f"\nfeatures: {store.url(Keys.version_dir(Keys.features, features['version']))}")
    print(f"  rows {summary.get('rows')}, accounts {summary.get('accounts')}")
    print(f"truth file (not part of any dump): {dumps['truth']}")
    return 0


def _use_store(store: LocalStore) -> None:
    """Point the handlers' settings at the local bucket, as Lambda's environment would."""
    os.environ["NPF_STORE"] = store.uri
    get_settings.cache_clear()
