"""The Lambda layers: which locked packages each function ships, and how they are installed.

Every function gets two layers: its own dependency layer (``layers/<fn>/requirements.txt``,
pinned to exactly the versions in ``requirements.lock``) and the shared core layer (the
``npf_loyalty`` package, no dependencies). A function's own zip holds only its handler.

The requirement files are generated, never edited by hand: each is the closure of a few
top-level packages over the ``# via`` graph that pip-compile writes into the lock, minus the
packages a function provably never imports (see ``PRUNED``). ``--check`` fails when the lock
moved and the files did not (the test suite runs it).

Installation targets Lambda, not this machine: CPython 3.12 on Amazon Linux 2023 (glibc 2.34),
x86_64, wheels only, no dependency resolution (the files already are closures), no .pyc (they
would be compiled by the build machine's Python, whose version may differ).

    python layers/build.py                      # write layers/<fn>/requirements.txt
    python layers/build.py --check              # exit 1 if any is stale
    python layers/build.py install FN TARGET    # pip install FN's layer into TARGET for Lambda
    python layers/build.py core TARGET [--src DIR]   # copy the npf_loyalty package into TARGET
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LAYERS = Path(__file__).resolve().parent
ROOT = LAYERS.parent
LOCK = ROOT / "requirements.lock"

#: The Lambda runtime the layers are built for (template.yaml says the same).
PYTHON_VERSION = "3.12"
#: Amazon Linux 2023 has glibc 2.34. Wheels are tagged manylinux2014 (= glibc 2.17) or
#: manylinux_2_28 (numpy, duckdb, onnxruntime): `--platform manylinux2014_x86_64` alone would
#: find no numpy at all, so every tag the runtime can load is listed.
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64")

#: What the core package may bring into a deployed function (package data included).
CORE_PACKAGE = "npf_loyalty"
CORE_DATA = ("data/*.csv", "data/*.md")


@dataclass(frozen=True)
class Layer:
    roots: tuple[str, ...]
    why: str
    pruned: dict[str, str] = field(default_factory=dict)


#: boto3 is in the Python runtime, but its version there moves with AWS's schedule: it is
#: pinned in every layer so that Lambda runs what the tests ran.
FUNCTIONS: dict[str, Layer] = {
    "ingest": Layer(
        roots=("boto3", "duckdb", "numpy", "openpyxl", "pydantic", "pydantic-settings"),
        why="validate CSV/XLSX dumps and build the feature table with DuckDB",
    ),
    "score": Layer(
        roots=("boto3", "duckdb", "numpy", "onnxruntime", "pydantic", "pydantic-settings"),
        why="run the ONNX model; catboost, pandas and pyarrow stay out",
        pruned={
            # onnxruntime declares these, but `import onnxruntime` and InferenceSession.run load
            # only numpy (checked with the imports blocked); they serve its offline tools
            # (ORT-format conversion, quantisation). sympy is an optional extra already.
            "flatbuffers": "onnxruntime tools only (ORT format conversion)",
            "packaging": "onnxruntime tools only",
            "protobuf": "onnxruntime tools only; the model is parsed in C++",
        },
    ),
    "report": Layer(
        roots=(
            "aiogram",
            "boto3",
            "duckdb",
            "matplotlib",
            "numpy",
            "openpyxl",
            "pydantic",
            "pydantic-settings",
        ),
        why="the quarterly report: charts (matplotlib), XLSX, delivery to Telegram (aiogram)",
    ),
    "bot": Layer(
        roots=(
            "aiogram",
            "boto3",
            "duckdb",
            "matplotlib",
            "numpy",
            "pydantic",
            "pydantic-settings",
        ),
        why="the managers' Telegram bot (aiogram 3) behind the webhook",
    ),
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, tuple[str, set[str]]]:
    """name → (pinned version, names of the packages that require it) from a pip-compile lock."""
    entries: dict[str, tuple[str, set[str]]] = {}
    current: str | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("--"):
            current = None
            continue
        if not line.startswith("#"):
            name, _, version = line.partition("==")
            current = normalize(name.split("[")[0])
            entries[current] = (version.split(";")[0].strip(), set())
            continue
        if current is None:
            continue
        text = line.lstrip("#").strip()
        text = text.removeprefix("via").strip()
        if text and not text.startswith("-r ") and "(pyproject.toml)" not in text:
            entries[current][1].add(normalize(text))
    return entries


def closure(layer: Layer, lock: dict[str, tuple[str, set[str]]]) -> dict[str, str]:
    """The roots and everything they pull in per the lock, minus what is pruned."""
    missing = [r for r in layer.roots if normalize(r) not in lock]
    if missing:
        raise SystemExit(f"not in {LOCK.name}: {', '.join(missing)}")
    pruned = {normalize(n) for n in layer.pruned}
    chosen = {normalize(r) for r in layer.roots}
    grew = True
    while grew:
        grew = False
        for name, (_, parents) in lock.items():
            if name not in chosen and name not in pruned and parents & chosen:
                chosen.add(name)
                grew = True
    return {name: lock[name][0] for name in sorted(chosen)}


def render(function: str, pins: dict[str, str]) -> str:
    layer = FUNCTIONS[function]
    lines = [
        f"# {function}: {layer.why}",
        "# Generated by layers/build.py from requirements.lock: do not edit, run it instead.",
        f"# Installed for Lambda (python{PYTHON_VERSION}, x86_64) with --no-deps: this is the",
        "# whole closure.",
    ]
    lines += [f"# left out: {name} ({why})" for name, why in layer.pruned.items()]
    lines += [f"{name}=={version}" for name, version in pins.items()]
    return "\n".join(lines) + "\n"


def requirements_path(function: str) -> Path:
    return LAYERS / function / "requirements.txt"


def expected_files() -> dict[Path, str]:
    lock = read_lock()
    return {requirements_path(fn): render(fn, closure(FUNCTIONS[fn], lock)) for fn in FUNCTIONS}


def write_requirements() -> list[Path]:
    written = []
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def stale_requirements() -> list[Path]:
    return [p for p, text in expected_files().items() if not p.exists() or p.read_text() != text]


def pip_install_args(requirements: Path, target: Path) -> list[str]:
    """The pip command that installs a requirements file for the Lambda runtime."""
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
        "--no-deps",
        "--no-compile",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        *platforms,
        "--target",
        str(target),
        "--upgrade",
        "-r",
        str(requirements),
    ]


def install(
    function: str, target: Path, requirements: Path | None = None, *, quiet: bool = False
) -> None:
    """pip install a function's layer into target (quiet: pip's output only if it fails)."""
    requirements = requirements or requirements_path(function)
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        pip_install_args(requirements, target), capture_output=quiet, text=True, check=False
    )
    if done.returncode != 0:
        if quiet:
            sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"pip failed for the {function} layer (exit {done.returncode})")
    prune(target)


#: Never imported at run time: the packages' own test suites (~10 MB, numpy and matplotlib
#: mostly) and console scripts. `numpy.testing` is a real module and stays.
PRUNE_DIRS = ("tests", "__pycache__")


def prune(target: Path) -> None:
    for path in sorted(target.rglob("*"), reverse=True):
        if path.is_dir() and path.name in PRUNE_DIRS:
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(target / "bin", ignore_errors=True)


def copy_core(target: Path, src: Path | None = None) -> list[Path]:
    """Copy the npf_loyalty package (modules and package data) into a layer's python/ dir."""
    package = (src or ROOT / "src") / CORE_PACKAGE
    if not (package / "__init__.py").is_file():
        raise SystemExit(f"no {CORE_PACKAGE} package under {package.parent}")
    dest = target / CORE_PACKAGE
    if dest.exists():
        shutil.rmtree(dest)
    files = [p for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    files += [p for pattern in CORE_DATA for p in package.glob(pattern)]
    for path in sorted(files):
        out = dest / path.relative_to(package)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a requirements file is stale")
    sub = parser.add_subparsers(dest="command")
    p_install = sub.add_parser("install", help="install a function's layer for Lambda")
    p_install.add_argument("function", choices=sorted(FUNCTIONS))
    p_install.add_argument("target", type=Path)
    p_install.add_argument("-r", "--requirements", type=Path, default=None)
    p_core = sub.add_parser("core", help="copy the core package")
    p_core.add_argument("target", type=Path)
    p_core.add_argument("--src", type=Path, default=None, help="folder holding npf_loyalty/")
    args = parser.parse_args(argv)

    if args.command == "install":
        install(args.function, args.target, args.requirements)
        return 0
    if args.command == "core":
        copied = copy_core(args.target, args.src)
        print(f"{CORE_PACKAGE}: {len(copied)} files → {args.target}")
        return 0
    if args.check:
        stale = stale_requirements()
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python layers/build.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_requirements():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
