"""The product model against two ceilings: the simulator's truth and the dump ceiling.

The truth uses hidden causes the dump never shows, so no model of the dump reaches it. The dump
ceiling (`npf_loyalty.ceiling.dump_ceiling`) is a CatBoost fitted on a separate, larger
simulation with the true probability as a soft target: the best achievable from the dump's
features. Both are measured on the same out-of-time test rows as the product's card.

    python bench/ceiling.py                      # retrains the product on the demo's fund
    python bench/ceiling.py --card path/card.json  # reads the product's card instead
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from npf_loyalty.ceiling import dump_ceiling, synthetic_features
from npf_loyalty.synth import SynthConfig

METRICS = ("roc_auc", "pr_auc", "f1", "brier")


def _row(name: str, block: dict[str, Any] | None) -> str:
    if block is None:
        return f"{name:<16}" + "".join(f"{'—':>9}" for _ in METRICS) + f"{'—':>8}{'—':>6}"
    cells = "".join(f"{block[m]:>9.4f}" for m in METRICS)
    return f"{name:<16}{cells}{block.get('n', 0):>8}{block.get('positives', 0):>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=5000, help="evaluation fund")
    parser.add_argument("--seed", type=int, default=7, help="evaluation fund")
    parser.add_argument("--quarters", type=int, default=40, help="both funds")
    parser.add_argument("--sim-accounts", type=int, default=30000)
    parser.add_argument("--sim-seed", type=int, default=1001)
    parser.add_argument("--iterations", type=int, default=1500, help="ceiling's tree cap")
    parser.add_argument("--card", type=Path, help="the product's card.json (skip retraining)")
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/ceiling"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.sim_seed == args.seed:
        parser.error("the simulation must be a separate fund: use another --sim-seed")

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    eval_cfg = SynthConfig(accounts=args.accounts, seed=args.seed, quarters=args.quarters)
    sim_cfg = SynthConfig(accounts=args.sim_accounts, seed=args.sim_seed, quarters=args.quarters)
    print(f"evaluation fund: {eval_cfg}")
    print(f"simulation:      {sim_cfg}")

    t0 = time.perf_counter()
    ev_features, ev_truth = synthetic_features(eval_cfg, args.workdir)
    sim_features, sim_truth = synthetic_features(sim_cfg, args.workdir)
    print(
        f"features: eval {len(ev_features):,} rows, sim {len(sim_features):,} rows "
        f"in {time.perf_counter() - t0:.0f} s"
    )

    if args.card is not None:
        card = json.loads(args.card.read_text())
        source = f"card {args.card}"
    else:
        from npf_loyalty.model import train

        t0 = time.perf_counter()
        card = train(ev_features, ev_truth).card
        source = f"retrained (model.train with truth) in {time.perf_counter() - t0:.0f} s"
    block = card["horizons"]["next_q"]
    model = block["metrics"]["test"]
    recipe = block.get("baselines", {}).get("original_recipe")
    card_truth = block["metrics"].get("truth")

    t0 = time.perf_counter()
    result = dump_ceiling(
        ev_features, ev_truth, sim_features, sim_truth, "next_q", iterations=args.iterations
    )
    print(f"dump ceiling fitted in {time.perf_counter() - t0:.0f} s: {result['booster']}")
    print(f"model: {source}, version {card.get('version')}")
    test = result["split"]["test"]
    print(f"test rows: {test['first']}..{test['last']} ({test['rows']:,} rows), horizon next_q")
    if model["n"] != result["ceiling"]["n"] or model["positives"] != result["ceiling"]["positives"]:
        print("WARNING: the card's test rows differ from this evaluation fund's test rows")

    print()
    print(f"{'':<16}" + "".join(f"{m:>9}" for m in METRICS) + f"{'n':>8}{'pos':>6}")
    print(_row("model", model))
    print(_row("original recipe", recipe))
    print(_row("truth", result["truth"]))
    print(_row("dump ceiling", result["ceiling"]))
    if card_truth is not None and abs(card_truth["pr_auc"] - result["truth"]["pr_auc"]) > 1e-9:
        print(f"(card's own truth PR-AUC {card_truth['pr_auc']:.4f} differs)")
    print()
    for name, ref in (("truth", result["truth"]), ("dump ceiling", result["ceiling"])):
        ratios = ", ".join(f"{m} {model[m] / ref[m]:.2f}×" for m in ("roc_auc", "pr_auc", "f1"))
        print(f"model / {name:<13} {ratios}")
    ratio = result["ceiling"]["pr_auc"] / result["truth"]["pr_auc"]
    print(f"dump ceiling / truth PR-AUC {ratio:.2f}×")
    rmse = result["ceiling"]["rmse_vs_truth"]
    print(f"ceiling RMSE vs truth probability on test rows: {rmse:.4f}")

    if args.json is not None:
        out = {"model": model, "original_recipe": recipe, **result, "argv": sys.argv}
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()
