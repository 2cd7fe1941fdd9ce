"""Yandex Cloud's real trigger messages through the real handlers (152-FZ: the Russian deployment).

Object Storage triggers and timers both arrive as {"messages": [...]} with `event_metadata`
and `details`; the handlers are the same files AWS runs (see deploy/yandex/).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from npf_loyalty.events import UnsupportedEventError, object_refs
from npf_loyalty.settings import Settings, get_settings
from npf_loyalty.storage import Keys, LocalStore, ObjectRef
from tests.conftest import load_event

UPLOAD_KEY = "uploads/2023Q1/trnsctns.csv"  # what yandex_object_create.json names


@pytest.fixture
def edge(
    local_store: LocalStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Load a handler file the way the cloud does: settings from the environment at import."""
    from npf_loyalty.edges import load_handler

    monkeypatch.setenv("NPF_STORE", str(local_store.root))
    monkeypatch.setenv("NPF_WORK_DIR", str(settings.work_dir))
    monkeypatch.delenv("NPF_SSM_PREFIX", raising=False)
    get_settings.cache_clear()

    def load(function: str) -> ModuleType:
        return load_handler(function)

    yield load
    get_settings.cache_clear()


def object_event(key: str, event_type: str = "yandex.cloud.events.storage.ObjectCreate") -> Any:
    event = copy.deepcopy(load_event("yandex_object_create.json"))
    event["messages"][0]["details"]["object_id"] = key
    event["messages"][0]["event_metadata"]["event_type"] = event_type
    return event


def test_the_fixtures_are_the_documented_shapes() -> None:
    for name in ("yandex_object_create.json", "yandex_timer.json"):
        (message,) = load_event(name)["messages"]
        assert set(message) == {"event_metadata", "details"}
        assert message["event_metadata"]["event_type"].startswith("yandex.cloud.events.")
    timer = load_event("yandex_timer.json")["messages"][0]
    assert timer["event_metadata"]["event_type"].endswith("TimerMessage")
    assert set(timer["details"]) == {"trigger_id"}


def test_an_object_storage_trigger_runs_the_real_ingest_on_a_rejected_file(
    local_store: LocalStore, edge: Any
) -> None:
    garbage = b"\x00\x01\x02PNG\xff\xfe" * 50  # not the contract at all: rejected whole
    local_store.put_bytes(UPLOAD_KEY, garbage)
    ingest = edge("ingest")

    result = ingest.handler(load_event("yandex_object_create.json"), None)

    (outcome,) = result["results"]
    assert outcome["status"] == "rejected"
    json.dumps(result)  # a cloud function's answer must be JSON
    reports = local_store.list(f"{Keys.quarantine}rejected/")
    assert any(key.endswith("report.md") for key in reports)
    assert local_store.get_bytes(UPLOAD_KEY) == garbage  # the raw dump is kept as uploaded


def test_a_deleted_object_is_ignored_by_ingest(local_store: LocalStore, edge: Any) -> None:
    event = object_event(UPLOAD_KEY, "yandex.cloud.events.storage.ObjectDelete")
    assert edge("ingest").handler(event, None) == {"results": []}


def test_score_skips_anything_but_the_features_pointer(edge: Any) -> None:
    score = edge("score")
    key = "features/0123abcd/quarter=2023Q1/part-0.parquet"
    result = score.handler(object_event(key), None)
    assert result == {"skipped": [key], "reason": "not a features pointer"}


def test_a_timer_message_names_no_object_and_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedEventError, match="Yandex"):
        object_refs(load_event("yandex_timer.json"))


def test_object_refs_of_the_pointer_event() -> None:
    pointer = Keys.pointer(Keys.features)
    assert object_refs(object_event(pointer)) == [ObjectRef("npf-test", pointer)]


def report_handler_exists() -> bool:
    return (Path(__file__).resolve().parents[1] / "functions" / "report" / "handler.py").exists()


@pytest.mark.skipif(not report_handler_exists(), reason="functions/report/handler.py not yet")
def test_the_quarterly_timer_reaches_the_real_report_handler(edge: Any) -> None:
    from npf_loyalty.report import NoScoresError

    report = edge("report")
    timer = load_event("yandex_timer.json")
    assert report.quarter_from_event(timer) is None  # no payload: the current scores' quarter
    with pytest.raises(NoScoresError, match="no current scores"):
        report.handler(timer, None)  # an empty bucket: the report says why it cannot run

    timer["messages"][0]["details"]["payload"] = '{"quarter": "2023q1"}'  # a manual re-run
    assert report.quarter_from_event(timer) == "2023Q1"
    with pytest.raises(NoScoresError, match="2023Q1"):
        report.handler(timer, None)
