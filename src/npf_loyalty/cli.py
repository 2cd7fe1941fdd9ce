"""`npf-loyalty` command line: the product's local entry point (an edge, like the handlers)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from npf_loyalty.settings import Settings, get_settings


def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from npf_loyalty.synth import SynthConfig, generate, write_fund

    config = SynthConfig(accounts=args.accounts, seed=args.seed, quarters=args.quarters)
    with tqdm(desc="synth", unit="step", leave=False) as bar:

        def progress(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update()

        fund = generate(config, progress=progress)
        paths = write_fund(fund, Path(args.out), fmt=args.format, encoding=args.encoding)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from npf_loyalty.ingest import ingest_object
    from npf_loyalty.storage import Keys, open_store

    settings = _settings(args)
    store = open_store(settings.store)
    failed = 0
    for file in args.files:
        path = Path(file)
        key = upload_key(path)
        if not store.exists(key):
            store.put_file(key, path)
        outcome = ingest_object(store, key, settings)
        print(f"{path.name}: {outcome.status}, {outcome.rows_clean}/{outcome.rows_total} rows")
        if outcome.rows_rejected:
            print(f"  quarantined {outcome.rows_rejected} rows: {outcome.quarantine}")
        if not outcome.ok:
            failed += 1
            print(outcome.report, file=sys.stderr)
        if outcome.waiting_for:
            print(f"  features wait for: {', '.join(outcome.waiting_for)}")
        if outcome.features:
            print(f"  features: {store.url(Keys.features)} (version {outcome.features.version})")
    return 1 if failed else 0


def upload_key(path: Path) -> str:
    """Where a local file is 'uploaded': by content, so the same file is uploaded once."""
    from npf_loyalty.ingest import file_digest

    digest = file_digest(path)[:12]
    return f"uploads/local/{digest}/{path.name}"


def _demo(args: argparse.Namespace) -> int:
    from npf_loyalty.demo import run_demo

    return run_demo(Path(args.workdir), accounts=args.accounts, seed=args.seed)


def _train(args: argparse.Namespace) -> int:
    from npf_loyalty.model import train_from_store
    from npf_loyalty.storage import open_store

    settings = _settings(args)
    store = open_store(settings.store)
    truth = Path(args.truth) if args.truth else None
    trained, decision = train_from_store(store, settings, truth, force=args.force)
    print(card_summary(trained.card))
    verdict = "promoted to current" if decision.promoted else "saved, NOT promoted"
    print(f"model {decision.version}: {verdict} — {decision.reason}")
    return 0


def card_summary(card: dict[str, Any]) -> str:
    """The model card's test figures, one line per horizon and comparison."""
    lines = []
    for horizon, block in card.get("horizons", {}).items():
        rows = {"model": block["metrics"]["test"]}
        rows.update({name: b for name, b in block.get("baselines", {}).items()})
        if "truth" in block["metrics"]:
            rows["truth (ceiling)"] = block["metrics"]["truth"]
        lines.append(f"{horizon} (test): ROC-AUC  PR-AUC   F1    Brier")
        lines += [
            f"  {name:18} {m['roc_auc']:.3f}   {m['pr_auc']:.3f}   {m['f1']:.3f} {m['brier']:.4f}"
            for name, m in rows.items()
        ]
    return "\n".join(lines)


def _score(args: argparse.Namespace) -> int:
    from npf_loyalty.scoring import load_current_model, score_current
    from npf_loyalty.storage import open_store

    settings = _settings(args)
    store = open_store(settings.store)
    outcome = score_current(store, settings, load_current_model(store, settings.work_dir))
    state = "scored" if outcome.built else "already scored"
    print(f"{outcome.accounts} accounts {state} for {outcome.quarter}: {outcome.location}")
    return 0


def _contract(args: argparse.Namespace) -> int:
    from npf_loyalty.contract_doc import render_contract

    sys.stdout.write(render_contract())
    return 0


def _bot(args: argparse.Namespace) -> int:
    """The managers' bot: offline console, or long polling against Telegram."""
    import importlib

    from npf_loyalty.edges import repo_root

    root = str(repo_root())  # bot/ lives beside the package, like functions/
    if root not in sys.path:
        sys.path.insert(0, root)
    if args.console:
        console = importlib.import_module("bot.console")
        code: int = console.run_console(args.store)
        return code
    app = importlib.import_module("bot.app")
    settings = _settings(args)
    try:
        app.run_polling(settings)
    except app.MissingTokenError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


def _report(args: argparse.Namespace) -> int:
    from npf_loyalty.report import NoScoresError, build_report
    from npf_loyalty.storage import open_store

    settings = _settings(args)
    store = open_store(settings.store)
    try:
        report = build_report(store, settings, args.quarter)
    except (NoScoresError, ValueError) as error:
        print(f"report: {error}", file=sys.stderr)
        return 1
    print(report.headline_text())
    print()
    print(f"html: {store.url(report.html_key)}")
    print(f"xlsx: {store.url(report.xlsx_key)}")
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    settings = get_settings()
    if getattr(args, "store", None):
        settings = settings.model_copy(update={"store": args.store})
    return settings


def _add_store(command: argparse.ArgumentParser) -> None:
    command.add_argument("--store", help="folder or s3://bucket/prefix (default: $NPF_STORE)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npf-loyalty", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a synthetic fund's dumps and truth file")
    synth.add_argument("--accounts", type=int, default=5000)
    synth.add_argument("--seed", type=int, default=7)
    synth.add_argument("--quarters", type=int, default=40)
    synth.add_argument("--out", required=True)
    synth.add_argument("--format", choices=["csv", "parquet", "xlsx"], default="csv")
    synth.add_argument("--encoding", choices=["utf-8", "cp1251"], default="utf-8")
    synth.set_defaults(run=_synth)

    ingest = commands.add_parser("ingest", help="validate dumps and build the features")
    ingest.add_argument("files", nargs="+")
    _add_store(ingest)
    ingest.set_defaults(run=_ingest)

    demo = commands.add_parser("demo", help="the whole local run on a synthetic fund")
    demo.add_argument("--workdir", default="npf-demo")
    demo.add_argument("--accounts", type=int, default=5000)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=_demo)
    report = commands.add_parser("report", help="the quarterly report (HTML, XLSX, tables)")
    report.add_argument("--quarter", help="e.g. 2023Q1 (default: the quarter of the scores)")
    _add_store(report)
    report.set_defaults(run=_report)

    train = commands.add_parser("train", help="train, evaluate and save a new model version")
    _add_store(train)
    train.add_argument("--truth", help="the synthetic fund's truth.parquet, for the ceiling")
    train.add_argument("--force", action="store_true", help="promote even if not better")
    train.set_defaults(run=_train)

    score = commands.add_parser("score", help="score every active account with the model")
    _add_store(score)
    score.set_defaults(run=_score)

    contract = commands.add_parser("contract", help="print the data contract as Markdown")
    contract.set_defaults(run=_contract)

    bot = commands.add_parser("bot", help="the managers' Telegram bot (long polling)")
    bot.add_argument(
        "--console", action="store_true", help="offline: no token, no network, type commands"
    )
    bot.add_argument("--store", help="folder or s3://bucket/prefix (console: ./npf-demo/bucket)")
    bot.set_defaults(run=_bot)
    return parser


def main(argv: list[str] | None = None) -> int:
    from npf_loyalty.observability import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging("WARNING")
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
