"""Shared fixtures: stores (a local folder and moto's S3) and settings that point at them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from npf_loyalty.settings import Settings
from npf_loyalty.storage import LocalStore, S3Store, Store

EVENTS = Path(__file__).parent / "events"
TEST_BUCKET = "npf-test"


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials so that nothing can reach a real AWS account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-central-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3_store(aws_env: None) -> Iterator[S3Store]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="eu-central-1")
        client.create_bucket(
            Bucket=TEST_BUCKET,
            CreateBucketConfiguration={"LocationConstraint": "eu-central-1"},
        )
        yield S3Store(TEST_BUCKET, "", client=client)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "bucket")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "bucket")
    s3: Store = request.getfixturevalue("s3_store")
    return s3


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    work = tmp_path / "work"
    work.mkdir()
    return Settings(store=str(tmp_path / "bucket"), work_dir=work, duckdb_memory_limit="1GB")
