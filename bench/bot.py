"""Benchmark: /client answers over a 1,000,000-account lookup in S3 (moto's server).

    python bench/bot.py [--accounts 1000000] [--lookups 500]

1. Generates a lookup in scoring's layout directly with DuckDB (no model needed): client rows,
   the account → client map and 8 quarters of history per account, sharded by the id's first
   two hex digits, plus top.parquet and stats.json.
2. Uploads it to a bucket of moto's S3 server on 127.0.0.1 (AWS_ENDPOINT_URL points boto3 there,
   so the product's S3Store needs nothing special) and publishes the pointer.
3. Runs `/client` questions for random ids through the real dispatcher and handlers with the
   recording session (no Telegram network) and prints p50/p95/max latency, warm: once after
   warm-up with the default shard cache (most questions fetch their shards from S3), once with
   every shard already local.
4. Times the webhook's cold start in a fresh Python process: import bot.webhook (settings, app)
   plus its first answer to a /client update (which also imports matplotlib).

The moto server runs in this process, so its request handling competes with the bot for the
GIL: S3 figures here are pessimistic next to a real S3 endpoint in the same region.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/bot.py` puts bench/ first on sys.path, where this file would shadow the bot package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

BUCKET = "npf-bench"
VERSION = "bench-v1"
QUARTER = "2024Q4"
QUARTERS = 8
TOKEN = "123456:BENCH"
SECRET = "bench-webhook-secret"
MANAGER = 100
REASONS = (
    "нет взносов 3 квартала",
    "перестал платить взносы",
    "есть личный кабинет",
    "платит работодатель",
    "остаток за год -12%",
    "ставка ЦБ выше доходности на 7.5 п.п.",
    "необычная история взносов",
    "в фонде 12 лет",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def generate(out: Path, accounts: int) -> dict[str, Any]:
    """The lookup layout for `accounts` accounts (about 5 accounts per 4 clients)."""
    from npf_loyalty.reference import regions

    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"threads": 2, "memory_limit": "3GB"})
    con.execute("SELECT setseed(0.42)")
    con.execute("CREATE TABLE regions (k INTEGER, region VARCHAR, federal_district VARCHAR)")
    con.executemany(
        "INSERT INTO regions VALUES (?, ?, ?)",
        [(i, r.name, r.federal_district) for i, r in enumerate(regions())],
    )
    n_regions = len(regions())
    reasons = "[" + ", ".join(f"'{r}'" for r in REASONS) + "]"
    con.execute(
        f"""
        CREATE TABLE base AS
        SELECT i,
               '0x' || md5('account-' || i) AS npo_account_id,
               '0x' || md5('client-' || (i * 4 // 5)) AS client_id,
               least(0.97, pow(random(), 5) * 0.9 + 0.002) AS p_q,
               random() AS u,
               (hash(i * 4 // 5) % {n_regions})::INTEGER AS k
        FROM range({accounts}) t(i)
        """
    )
    con.execute(
        f"""
        CREATE TABLE account_view AS
        WITH scored AS (
            SELECT *, least(0.99, p_q * (2.2 + u)) AS p_4q,
                   row_number() OVER (ORDER BY p_q DESC, npo_account_id) AS rank
            FROM base)
        SELECT npo_account_id, client_id, '{QUARTER}' AS quarter,
               p_q AS p_leave_next_q, p_4q AS p_leave_next_4q,
               1 - p_q AS loyalty_next_q, 1 - p_4q AS loyalty_next_4q,
               CASE WHEN 1 - p_4q < 0.2 THEN 'низкая' WHEN 1 - p_4q < 0.8 THEN 'средняя'
                    ELSE 'высокая' END AS band,
               CASE WHEN 1 - p_q < 0.2 THEN 'низкая' WHEN 1 - p_q < 0.8 THEN 'средняя'
                    ELSE 'высокая' END AS band_next_q,
               p_q / avg(p_q) OVER () AS relative_risk,
               rank AS risk_rank, 100.0 * rank / {accounts} AS risk_top_pct,
               'bench-model' AS model_version,
               {reasons}[1 + (i % 8)] AS reason_1,
               {reasons}[1 + ((i + 3) % 8)] AS reason_2,
               {reasons}[1 + ((i + 5) % 8)] AS reason_3,
               0.9 * p_q + 0.2 AS reason_1_contribution,
               -0.3 * u AS reason_2_contribution,
               0.1 - 0.2 * u AS reason_3_contribution,
               'bench-features' AS features_version,
               r.region, r.federal_district,
               round(20000 + 3000000 * u * u, 2) AS balance,
               round(CASE WHEN p_q > 0.3 THEN 0 ELSE 30000 * u END, 2) AS contrib_q,
               round(3000 * u, 2) AS income_q,
               floor(20 + 700 * p_q) AS days_since_contrib,
               (p_q * 8)::BIGINT AS quarters_without_contrib,
               (25 + hash(client_id) % 45)::BIGINT AS age,
               CASE WHEN hash(client_id) % 2 = 0 THEN -1 ELSE 1 END::BIGINT AS gender,
               (i % 4)::BIGINT AS pmnts_type,
               round(1 + 20 * u, 1) AS tenure_years,
               (i % 3 = 0)::BIGINT AS lk, (i % 97 = 0)::BIGINT AS appl_mrkr,
               p_q * round(20000 + 3000000 * u * u, 2) AS balance_at_risk
        FROM scored JOIN regions r USING (k)
        """
    )
    part = "(FORMAT parquet, PARTITION_BY (shard), OVERWRITE_OR_IGNORE)"
    con.execute(
        "COPY (SELECT *, substr(client_id, 3, 2) AS shard FROM account_view "
        f"ORDER BY client_id, npo_account_id) TO '{out / 'client'}' {part}"
    )
    con.execute(
        "COPY (SELECT npo_account_id, client_id, substr(npo_account_id, 3, 2) AS shard "
        f"FROM account_view) TO '{out / 'account'}' {part}"
    )
    quarters = [f"{2023 + q // 4}Q{q % 4 + 1}" for q in range(QUARTERS)]  # … {QUARTER}
    con.execute(
        f"""
        COPY (
            SELECT v.npo_account_id, v.client_id,
                   {quarters}[q + 1] AS quarter,
                   round(greatest(0, v.contrib_q + 5000 * (8 - q) * v.p_leave_next_q), 2)
                       AS contrib_q,
                   v.income_q, (3 - (v.p_leave_next_q * 3)::BIGINT) AS contrib_count_q,
                   v.balance * (0.85 + 0.02 * q) AS balance,
                   v.p_leave_next_q * (0.5 + q / 14.0) AS p_leave_next_q,
                   least(0.99, v.p_leave_next_4q * (0.5 + q / 14.0)) AS p_leave_next_4q,
                   substr(v.client_id, 3, 2) AS shard
            FROM account_view v, range({QUARTERS}) t(q)
            ORDER BY v.client_id, v.npo_account_id, quarter
        ) TO '{out / "history"}' {part}
        """
    )
    con.execute(
        f"""
        COPY (
            SELECT * EXCLUDE (r_all, r_region, r_district) FROM (
                SELECT *,
                    row_number() OVER (ORDER BY p_leave_next_q DESC, npo_account_id) AS r_all,
                    row_number() OVER (PARTITION BY region
                                       ORDER BY p_leave_next_q DESC, npo_account_id) AS r_region,
                    row_number() OVER (PARTITION BY federal_district
                                       ORDER BY p_leave_next_q DESC, npo_account_id) AS r_district
                FROM account_view)
            WHERE r_all <= 1000 OR r_region <= 100 OR r_district <= 100
            ORDER BY p_leave_next_q DESC, npo_account_id
        ) TO '{out / "top.parquet"}' (FORMAT parquet)
        """
    )
    total, expected_q, expected_4q, at_risk = con.execute(
        "SELECT count(*), sum(p_leave_next_q), sum(p_leave_next_4q), sum(balance_at_risk) "
        "FROM account_view"
    ).fetchone() or (0, 0.0, 0.0, 0.0)
    bands = dict(con.execute("SELECT band, count(*) FROM account_view GROUP BY 1").fetchall())
    by_quarter = [
        {"quarter": q, "accounts": int(accounts * 1.1), "left": int(accounts * 0.012)}
        for q in quarters
    ]
    stats = {
        "accounts_scored": int(total),
        "expected_leavers_next_q": float(expected_q),
        "expected_leavers_next_4q": float(expected_4q),
        "balance_at_risk_next_q": float(at_risk),
        "bands": {str(k): int(v) for k, v in bands.items()},
        "bands_next_q": {},
        "by_quarter": by_quarter,
        "by_year": {},
    }
    (out / "stats.json").write_text(json.dumps(stats, ensure_ascii=False))
    sample = con.execute(
        "SELECT client_id, npo_account_id FROM account_view USING SAMPLE 2000 ROWS (reservoir, 7)"
    ).fetchall()
    con.close()
    files = [p for p in out.rglob("*") if p.is_file()]
    return {
        "files": len(files),
        "megabytes": sum(p.stat().st_size for p in files) / 1e6,
        "sample": sample,
    }


def upload(store: Any, folder: Path, prefix: str) -> None:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())

    def put(path: Path) -> None:
        store.put_file(prefix + path.relative_to(folder).as_posix(), path)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, paths))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def queries(sample: list[tuple[str, str]], n: int, seed: int = 1) -> list[str]:
    """Random ids as managers type them: full client ids, account ids, 10-digit prefixes."""
    rng = random.Random(seed)
    picked = rng.sample(sample, min(n, len(sample)))
    out = []
    for i, (client, account) in enumerate(picked):
        kind = i % 5
        out.append(account if kind == 3 else client[:12] if kind == 4 else client)
    return out


def timed_lookups(app: Any, session: Any, ids: list[str]) -> tuple[list[float], list[float]]:
    """Wall time per /client answer, and the part of it spent drawing the picture."""
    from bot import charts
    from bot.console import message_update

    drawing: list[float] = []
    draw = charts.account_chart

    def timed_draw(*args: Any) -> bytes:
        start = time.perf_counter()
        png = draw(*args)
        drawing.append(time.perf_counter() - start)
        return png

    charts.account_chart = timed_draw  # type: ignore[assignment]
    loop = asyncio.get_event_loop()
    latencies = []
    try:
        for query in ids:
            update = message_update(f"/client {query}", MANAGER)
            start = time.perf_counter()
            loop.run_until_complete(app.dp.feed_update(app.bot, update))
            latencies.append(time.perf_counter() - start)
            calls = session.take()
            if [c.name for c in calls] != ["SendPhoto"]:
                raise RuntimeError(f"unexpected answer: {[c.name for c in calls]}")
    finally:
        charts.account_chart = draw
    return latencies, drawing


def show(label: str, latencies: list[float], drawing: list[float]) -> None:
    ms = [1000 * x for x in latencies]
    print(
        f"  {label}: n={len(ms)}  p50 {percentile(ms, 50):6.1f} ms   "
        f"p95 {percentile(ms, 95):6.1f} ms   max {max(ms):6.1f} ms   "
        f"(picture p50 {1000 * statistics.median(drawing):.1f} ms)"
    )


COLD_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import bot.webhook as webhook
t1 = time.perf_counter()
from bot.console import RecordingSession
webhook.app.bot.session = session = RecordingSession()
event = json.loads(sys.argv[1])
status = webhook.handler(event)["statusCode"]
t2 = time.perf_counter()
status2 = webhook.handler(event)["statusCode"]
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first": t2 - t1, "second": t3 - t2,
                  "status": [status, status2], "calls": [c.name for c in session.calls]}))
"""


def cold_start(env: dict[str, str], client_id: str) -> dict[str, Any]:
    update = {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "date": 1775030400,
            "chat": {"id": MANAGER, "type": "private"},
            "from": {"id": MANAGER, "is_bot": False, "first_name": "Bench"},
            "text": f"/client {client_id}",
        },
    }
    event = {
        "version": "2.0",
        "headers": {"x-telegram-bot-api-secret-token": SECRET},
        "body": json.dumps(update),
        "isBase64Encoded": False,
    }
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", COLD_CHILD, json.dumps(event)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--cold-starts", type=int, default=3)
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "eu-central-1",
    }
    os.environ.update(aws)
    os.environ.pop("AWS_PROFILE", None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        return run(args, endpoint, aws)
    finally:
        server.stop()


def step(label: str) -> Callable[[], None]:
    start = time.perf_counter()
    print(f"{label} …", end="", flush=True)
    return lambda: print(f" {time.perf_counter() - start:.1f} s", flush=True)


def run(args: argparse.Namespace, endpoint: str, aws: dict[str, str]) -> int:
    import boto3

    from bot.app import build_app
    from bot.console import RecordingSession
    from npf_loyalty.settings import Settings
    from npf_loyalty.storage import Keys, S3Store

    boto3.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    store = S3Store(BUCKET)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load} (1/5/15 min)")
    with tempfile.TemporaryDirectory(prefix="npf-bench-bot-") as tmp:
        work = Path(tmp)
        done = step(f"generate a lookup of {args.accounts:,} accounts with DuckDB")
        made = generate(work / "lookup", args.accounts)
        done()
        print(f"  {made['files']} files, {made['megabytes']:.0f} MB")
        done = step(f"upload to moto S3 at {endpoint}")
        upload(store, work / "lookup", Keys.version_dir(Keys.lookup, VERSION))
        store.publish(
            Keys.lookup,
            VERSION,
            {"quarter": QUARTER, "accounts": args.accounts, "model_version": "bench-model"},
        )
        done()

        settings = Settings(
            store=f"s3://{BUCKET}", work_dir=work / "bot", managers=[MANAGER],
            rate_limit_per_minute=1_000_000,
        )  # fmt: skip
        (work / "bot").mkdir()
        session = RecordingSession()
        app = build_app(settings, store=store, session=session)
        asyncio.set_event_loop(asyncio.new_event_loop())
        ids = queries(made["sample"], args.lookups + args.warmup)
        warmup, measured = ids[: args.warmup], ids[args.warmup :]

        print(f"\n/client through the real dispatcher and handlers ({len(measured)} random ids)")
        timed_lookups(app, session, warmup)
        latencies, drawing = timed_lookups(app, session, measured)
        show(f"warm, shard cache {app.view.cache_size} (most shards from S3)", latencies, drawing)
        app.view.cache_size = 100_000
        timed_lookups(app, session, measured)  # fetch every shard these ids need
        latencies, drawing = timed_lookups(app, session, measured)
        show("warm, every shard already local", latencies, drawing)
        app.view.close()

        print("\nwebhook cold start (fresh Python: import bot.webhook + first /client answer)")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NPF_")},
            **aws,
            "PYTHONPATH": str(ROOT),
            "NPF_STORE": f"s3://{BUCKET}",
            "NPF_WORK_DIR": str(work / "cold"),
            "NPF_BOT_TOKEN": TOKEN,
            "NPF_WEBHOOK_SECRET": SECRET,
            "NPF_MANAGERS": str(MANAGER),
            "NPF_LOG_LEVEL": "WARNING",
        }
        (work / "cold").mkdir()
        for i in range(args.cold_starts):
            r = cold_start(env, made["sample"][i][0])
            if r["status"] != [200, 200] or "SendPhoto" not in r["calls"]:
                raise RuntimeError(f"cold start failed: {r}")
            print(
                f"  run {i + 1}: process wall {r['wall']:.2f} s = interpreter + "
                f"import bot.webhook {r['import']:.2f} s + first answer {r['first']:.2f} s "
                f"(second answer {1000 * r['second']:.0f} ms)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
