"""Find the deployable edges (functions/*/handler.py, bot/) from a checkout.

The local run drives the very handler files that Lambda runs. They live beside the package in
the repository (SAM builds each from its own folder), so the CLI loads them by path; the core
never imports them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import npf_loyalty


def repo_root() -> Path:
    root = Path(npf_loyalty.__file__).resolve().parents[2]
    if not (root / "functions").is_dir():
        raise RuntimeError(
            "the handlers live in the repository's functions/ folder: "
            "install from a checkout with `pip install -e .`"
        )
    return root


def load_handler(function: str) -> ModuleType:
    """Import functions/<function>/handler.py afresh (it reads settings at import, as in Lambda)."""
    root = repo_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    path = root / "functions" / function / "handler.py"
    name = f"npf_edge_{function}_handler"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
