"""Lambda / Yandex Cloud Function: new features published → score every active account.

Triggered by `features/_current.json`. The model is loaded once per container and reloaded
only when a new version is promoted. Nothing here imports catboost: onnxruntime runs the model.
"""

from __future__ import annotations

from typing import Any

from npf_loyalty.events import object_refs
from npf_loyalty.observability import configure_logging
from npf_loyalty.scoring import LoadedModel, load_current_model, score_current
from npf_loyalty.settings import get_settings
from npf_loyalty.storage import Keys, open_store

settings = get_settings()
configure_logging(settings.log_level)
store = open_store(settings.store)
_model: LoadedModel | None = None


def _model_for_now() -> LoadedModel:
    global _model
    pointer = store.current(Keys.models)
    if _model is None or (pointer is not None and pointer["version"] != _model.version):
        _model = load_current_model(store, settings.work_dir)
    return _model


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    keys = [store.key_of(ref) for ref in object_refs(event)]
    if Keys.pointer(Keys.features) not in keys:
        return {"skipped": keys, "reason": "not a features pointer"}
    outcome = score_current(store, settings, _model_for_now())
    return {
        "version": outcome.version,
        "model_version": outcome.model_version,
        "quarter": outcome.quarter,
        "accounts": outcome.accounts,
        "built": outcome.built,
        "location": outcome.location,
    }
