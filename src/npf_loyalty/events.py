"""Trigger events from the clouds, validated at the boundary and reduced to `ObjectRef`s.

AWS S3 notifications and Yandex Cloud Object Storage triggers name the same thing — a bucket
and a key — in different shapes. Handlers call `object_refs(event)` and never look inside.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, ValidationError

from npf_loyalty.storage import ObjectRef


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class S3Bucket(_Model):
    name: str


class S3Object(_Model):
    key: str
    size: int | None = None


class S3Entity(_Model):
    bucket: S3Bucket
    object: S3Object


class S3Record(_Model):
    eventSource: str = "aws:s3"  # noqa: N815 - AWS's field name
    eventName: str = "ObjectCreated:Put"  # noqa: N815
    s3: S3Entity


class S3Event(_Model):
    Records: list[S3Record]


class YandexDetails(_Model):
    bucket_id: str
    object_id: str


class YandexMetadata(_Model):
    event_type: str


class YandexMessage(_Model):
    event_metadata: YandexMetadata
    details: YandexDetails


class YandexEvent(_Model):
    messages: list[YandexMessage]


class UnsupportedEventError(ValueError):
    """The event is neither an S3 notification nor a Yandex Object Storage trigger."""


def object_refs(event: dict[str, Any]) -> list[ObjectRef]:
    """Objects created, in the order the event lists them; deletions are ignored."""
    if "Records" in event:
        try:
            s3 = S3Event.model_validate(event)
        except ValidationError as error:
            raise UnsupportedEventError(f"malformed S3 event: {error}") from error
        return [
            # S3 URL-encodes keys in notifications (a space arrives as "+")
            ObjectRef(r.s3.bucket.name, unquote_plus(r.s3.object.key))
            for r in s3.Records
            if r.eventName.startswith("ObjectCreated")
        ]
    if "messages" in event:
        try:
            yc = YandexEvent.model_validate(event)
        except ValidationError as error:
            raise UnsupportedEventError(f"malformed Yandex Cloud event: {error}") from error
        return [
            ObjectRef(m.details.bucket_id, m.details.object_id)
            for m in yc.messages
            if m.event_metadata.event_type.endswith("ObjectCreate")
        ]
    raise UnsupportedEventError("expected an S3 notification ('Records') or a Yandex trigger")


def s3_put_event(bucket: str, key: str, size: int | None = None) -> dict[str, Any]:
    """The event S3 sends for a new object; the local run feeds it to the same handler."""
    from urllib.parse import quote_plus

    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key, safe="/"), "size": size or 0},
                },
            }
        ]
    }
