"""How big each Lambda function is once unzipped: handler + its dependency layer + the core layer.

    python bench/package_size.py                 # all four functions
    python bench/package_size.py score bot       # some of them
    python bench/package_size.py --keep DIR      # keep the installed trees in DIR

For each function it installs exactly what `sam build` puts in its layers (the same code:
``layers/build.py``) — the pinned requirements for CPython 3.12 on manylinux x86_64, wheels
only, ``--no-deps`` — plus the ``npf_loyalty`` package and the handler, then adds up the
file sizes. Lambda refuses a function whose code and layers exceed 262,144,000 bytes
(250 MiB) unzipped; such a function must become a container image (10 GB).

Sizes are attributed to distributions through their ``RECORD`` files. Needs the network to
PyPI the first time (pip caches the wheels afterwards).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 262_144_000  # Lambda: function + all its layers, unzipped
MIB = 1024 * 1024


def _layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("npf_layers_build", ROOT / "layers" / "build.py")
    if spec is None or spec.loader is None:
        raise SystemExit("layers/build.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _copy_handler(function: str, target: Path) -> None:
    """What the function's own zip holds (template.yaml CodeUri)."""
    if function == "bot":
        source = ROOT / "bot"
        shutil.copytree(
            source, target / "bot", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        return
    handler = ROOT / "functions" / function / "handler.py"
    if handler.exists():
        shutil.copyfile(handler, target / "handler.py")


def sizes_by_distribution(tree: Path) -> dict[str, int]:
    """Bytes per installed distribution (from RECORD); the rest is named by its top folder."""
    owner: dict[Path, str] = {}
    for record in tree.glob("*.dist-info/RECORD"):
        name = record.parent.name.split("-")[0]
        with record.open(newline="") as handle:
            for row in csv.reader(handle):
                if row:
                    owner[(tree / row[0]).resolve()] = name
    totals: dict[str, int] = defaultdict(int)
    for path in tree.rglob("*"):
        if path.is_file():
            top = path.relative_to(tree).parts[0]
            default = "npf_loyalty (core layer)" if top == "npf_loyalty" else f"{top} (handler)"
            totals[owner.get(path.resolve(), default)] += path.stat().st_size
    return dict(totals)


def measure(function: str, workdir: Path, layers: ModuleType) -> dict[str, int]:
    tree = workdir / function
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    layers.install(function, tree, quiet=True)
    layers.copy_core(tree)
    _copy_handler(function, tree)
    return sizes_by_distribution(tree)


def main(argv: list[str] | None = None) -> int:
    layers = _layers()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("functions", nargs="*", default=sorted(layers.FUNCTIONS))
    parser.add_argument("--top", type=int, default=6, help="largest distributions to list")
    parser.add_argument("--keep", type=Path, default=None, help="install here and keep it")
    args = parser.parse_args(argv)
    unknown = set(args.functions) - set(layers.FUNCTIONS)
    if unknown:
        parser.error(f"unknown function(s): {', '.join(sorted(unknown))}")

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="npf-package-size-"))
    over = []
    rows = []
    try:
        for function in args.functions:
            start = time.perf_counter()
            sizes = measure(function, workdir, layers)
            total = sum(sizes.values())
            rows.append((function, total))
            status = "OVER THE LIMIT" if total > LIMIT_BYTES else "ok"
            if total > LIMIT_BYTES:
                over.append(function)
            print(
                f"\n{function}: {total / MIB:.1f} MiB unzipped "
                f"({100 * total / LIMIT_BYTES:.0f}% of Lambda's 250 MiB, "
                f"{(LIMIT_BYTES - total) / MIB:+.1f} MiB to spare) — {status} "
                f"[{time.perf_counter() - start:.0f} s]"
            )
            for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"  {size / MIB:7.1f} MiB  {name}")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print("\nfunction  unzipped MiB  limit 250 MiB")
    for function, total in rows:
        flag = "  > 250: needs a container image" if total > LIMIT_BYTES else ""
        print(f"{function:<8}  {total / MIB:12.1f}{flag}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
