"""Lambda / Yandex Cloud Function: a dump landed under uploads/ → validate it, refresh features.

A rejected dump is a normal outcome (its report is in quarantine/), not an error: retrying
would not help. Unexpected failures raise, so the platform retries and then keeps the event
in the dead-letter queue.
"""

from __future__ import annotations

from typing import Any

from npf_loyalty.events import object_refs
from npf_loyalty.ingest import ingest_object
from npf_loyalty.observability import configure_logging
from npf_loyalty.settings import get_settings
from npf_loyalty.storage import open_store

settings = get_settings()
configure_logging(settings.log_level)


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    store = open_store(settings.store)
    outcomes = [ingest_object(store, store.key_of(ref), settings) for ref in object_refs(event)]
    return {"results": [o.as_dict() for o in outcomes]}
