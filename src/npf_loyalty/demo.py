"""`npf-loyalty demo`: the cloud's flow on this machine, with no account and no token.

A synthetic fund's back office "uploads" its dumps into a local folder that stands for the
bucket; each upload is handed to the same handler Lambda runs, as the same S3 event JSON. The
model is trained as an operator would (`npf-loyalty train`), then the features pointer's event
goes to the score handler and a scheduled event to the report handler, as in the cloud.
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
SCHEDULED_EVENT = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
STEPS = ("synthetic fund", "upload", "ingest", "train", "score", "report")


def run_demo(workdir: Path, accounts: int = 5000, seed: int = 7) -> int:
    workdir = workdir.resolve()
    store = LocalStore(workdir / "bucket")
    _use_store(store, workdir / "work")
    progress = tqdm(total=len(STEPS), desc="demo", unit="step")

    def step(name: str) -> None:
        progress.set_postfix_str(name)

    step("synthetic fund")
    fund = generate(SynthConfig(accounts=accounts, seed=seed))
    # the back office's usual export: cp1251, ';' and decimal commas
    dumps = write_fund(fund, workdir / "dumps", fmt="csv", encoding="cp1251", decimal_comma=True)
    progress.update()

    step("upload")
    keys = []
    for name in ("clnts_fin_prtrt", "trnsctns", "cntrbtrs"):
        key = f"{Keys.uploads}backoffice/{dumps[name].name}"
        if not store.exists(key):
            store.put_file(key, dumps[name])
        keys.append(key)
    progress.update()

    step("ingest (Lambda handler)")
    ingest = load_handler("ingest")
    results: list[dict[str, Any]] = []
    for key in keys:
        results += ingest.handler(s3_put_event(LOCAL_BUCKET, key), None)["results"]
    progress.update()
    features = store.current(Keys.features)
    if features is None:
        progress.close()
        _print_ingest(results)
        print("features were not built; see the messages above")
        return 1

    step("train (catboost → one ONNX model)")
    from npf_loyalty.model import train_from_store

    trained, decision = train_from_store(store, get_settings(), dumps["truth"])
    progress.update()

    step("score (Lambda handler, onnxruntime)")
    scored = load_handler("score").handler(
        s3_put_event(LOCAL_BUCKET, Keys.pointer(Keys.features)), None
    )
    progress.update()

    step("report (Lambda handler)")
    report = load_handler("report").handler({**SCHEDULED_EVENT, "deliver": False}, None)
    progress.update()
    progress.close()

    _print_ingest(results)
    summary = features.get("summary", {})
    print(f"\nfeatures: {store.url(Keys.version_dir(Keys.features, features['version']))}")
    print(f"  rows {summary.get('rows')}, accounts {summary.get('accounts')}")
    print(f"\nmodel {decision.version} ({'promoted' if decision.promoted else 'not promoted'})")
    print(_card_lines(trained.card))
    print(f"  card: {store.url(Keys.version_dir(Keys.models, decision.version) + 'card.md')}")
    print(f"\nscores for {scored['quarter']}: {scored['accounts']} accounts → {scored['location']}")
    _print_riskiest(store)
    print(f"\nquarterly report: {_report_path(store, report)}")
    print(f"truth file (not part of any dump): {dumps['truth']}")
    print("\nlook a client up as a manager would: npf-loyalty bot --console")
    return 0


def _print_ingest(results: list[dict[str, Any]]) -> None:
    for result in results:
        print(
            f"{result['key']}: {result['status']}, "
            f"{result['rows_clean']}/{result['rows_total']} rows accepted"
        )


def _card_lines(card: dict[str, Any]) -> str:
    from npf_loyalty.cli import card_summary

    return card_summary(card)


def _print_riskiest(store: LocalStore, n: int = 5) -> None:
    import duckdb

    folder = store.current_dir(Keys.scores)
    if folder is None:
        return
    path = store.local_path(folder + "scores.parquet")
    rows = duckdb.execute(
        f"SELECT npo_account_id, p_leave_next_q, p_leave_next_4q, relative_risk, reason_1 "
        f"FROM '{path}' ORDER BY p_leave_next_q DESC LIMIT {n}"
    ).fetchall()
    print(f"  the {n} riskiest accounts:")
    for account, p_q, p_4q, relative, reason in rows:
        print(
            f"  {account[:12]}…  P(next q) {p_q:6.1%}  P(year) {p_4q:6.1%}  "
            f"×{relative:4.1f} of average  — {reason}"
        )


def _report_path(store: LocalStore, report: dict[str, Any]) -> str:
    pointer = store.current(Keys.reports)
    if pointer is not None and pointer.get("html"):
        return store.url(pointer["html"])
    return str(report.get("html", "not written"))


def _use_store(store: LocalStore, work: Path) -> None:
    """Point the handlers' settings at the local bucket, as Lambda's environment would."""
    work.mkdir(parents=True, exist_ok=True)
    os.environ["NPF_STORE"] = store.uri
    os.environ["NPF_WORK_DIR"] = str(work)
    os.environ.setdefault("NPF_LOG_LEVEL", "WARNING")  # the progress bar tells the story
    get_settings.cache_clear()
