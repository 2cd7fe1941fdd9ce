"""Both clouds' trigger events reduce to the same bucket-and-key references."""

from __future__ import annotations

import pytest

from npf_loyalty.events import UnsupportedEventError, object_refs, s3_put_event
from npf_loyalty.storage import ObjectRef
from tests.conftest import load_event


def test_s3_notification_key_is_url_decoded() -> None:
    refs = object_refs(load_event("s3_put_upload.json"))
    assert refs == [ObjectRef("npf-test", "uploads/2023Q1/clnts fin prtrtв.csv")]


def test_yandex_object_storage_trigger_names_bucket_and_key() -> None:
    refs = object_refs(load_event("yandex_object_create.json"))
    assert refs == [ObjectRef("npf-test", "uploads/2023Q1/trnsctns.csv")]


def test_deletions_are_ignored() -> None:
    event = load_event("s3_put_upload.json")
    event["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    assert object_refs(event) == []


def test_an_unknown_event_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedEventError, match="expected an S3 notification"):
        object_refs({"detail-type": "Scheduled Event"})


def test_a_malformed_s3_event_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedEventError, match="malformed S3 event"):
        object_refs({"Records": [{"s3": {"bucket": {}}}]})


def test_the_local_event_round_trips_a_key_with_spaces() -> None:
    event = s3_put_event("local", "uploads/back office/dump 1.csv")
    assert object_refs(event) == [ObjectRef("local", "uploads/back office/dump 1.csv")]
