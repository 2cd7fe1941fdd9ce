"""One storage interface for the whole product: a local folder or S3, chosen by URI.

Every key the product reads or writes is built here (`Keys`), so the layout of a bucket is
visible in one place. Writes are atomic: a reader sees the old object or the new one, never a
half-written file. Uploaded raw dumps are write-once: the product never overwrites them.

Results that span several files (features, scores) are published as a versioned folder plus
a small pointer object written last, so a crash mid-way leaves the previous result current.
"""

from __future__ import annotations

import builtins
import json
import shutil
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

RAW_PREFIX = "uploads/"


class RawDumpProtectedError(PermissionError):
    """Raised on an attempt to overwrite an uploaded raw dump."""


class Keys:
    """The bucket's layout. Prefixes are disjoint so that no trigger can fire on its own output."""

    uploads = RAW_PREFIX
    clean = "clean/"
    quarantine = "quarantine/"
    features = "features/"
    models = "models/"
    scores = "scores/"
    lookup = "lookup/"
    reports = "reports/"
    state = "state/"

    @staticmethod
    def pointer(prefix: str) -> str:
        return f"{prefix}_current.json"

    @staticmethod
    def version_dir(prefix: str, version: str) -> str:
        return f"{prefix}{version}/"

    @staticmethod
    def clean_table(table: str, digest: str) -> str:
        return f"clean/{table}/{digest}.parquet"

    @staticmethod
    def clean_manifest(table: str, digest: str) -> str:
        return f"clean/{table}/{digest}.json"

    @staticmethod
    def quarantine_dir(table: str, digest: str) -> str:
        return f"quarantine/{table}/{digest}/"

    @staticmethod
    def scores_of_quarter(quarter: str) -> str:
        """The latest scores of the accounts as of one quarter (what was predicted then)."""
        return f"scores/by_quarter/{quarter}.json"

    @staticmethod
    def report_dir(quarter: str, run: str) -> str:
        return f"reports/{quarter}/{run}/"


class Store(ABC):
    """Objects addressed by '/'-separated keys relative to the store's root."""

    uri: str

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _put_file(self, key: str, path: Path, move: bool) -> None: ...

    @abstractmethod
    def get_file(self, key: str, path: Path) -> Path: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under a prefix, recursively, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def url(self, key: str) -> str:
        """Where a person (or DuckDB) finds the object."""

    @abstractmethod
    def key_of(self, ref: ObjectRef) -> str:
        """The store key of an object named by a trigger event; refuses foreign buckets."""

    # --- writes, with the raw-dump guard -------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        self._guard(key)
        self._put_bytes(key, data)

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Store a local file. ``move``: the caller is done with it, so a local store may take
        the file itself instead of copying it (gigabytes of scratch output, written twice)."""
        self._guard(key)
        self._put_file(key, path, move)

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, ensure_ascii=False, indent=2, default=str).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_dir(self, prefix: str, folder: Path, *, move: bool = False) -> builtins.list[str]:
        """Upload every file under a local folder, keeping relative paths (``move``: as in
        put_file)."""
        keys = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(folder).as_posix()
            self.put_file(key, path, move=move)
            keys.append(key)
        return keys

    def _guard(self, key: str) -> None:
        if key.startswith(RAW_PREFIX) and self.exists(key):
            raise RawDumpProtectedError(f"raw dump {key!r} already exists and is never overwritten")

    # --- versioned results -----------------------------------------------------------------
    def publish(self, prefix: str, version: str, meta: dict[str, Any]) -> None:
        """Make a fully written version folder current by writing its pointer last."""
        self.put_json(Keys.pointer(prefix), {"version": version, **meta})

    def current(self, prefix: str) -> dict[str, Any] | None:
        """The pointer of the current version under a prefix, or None before the first one."""
        key = Keys.pointer(prefix)
        if not self.exists(key):
            return None
        pointer: dict[str, Any] = self.get_json(key)
        return pointer

    def current_dir(self, prefix: str) -> str | None:
        pointer = self.current(prefix)
        return None if pointer is None else Keys.version_dir(prefix, pointer["version"])


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValueError(f"key {key!r} escapes the store")
        return path

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def _put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)

    def _put_file(self, key: str, path: Path, move: bool) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        if move:
            shutil.move(path, tmp)  # a rename on the same file system, else a copy
        else:
            shutil.copyfile(path, tmp)
        tmp.replace(target)

    def get_file(self, key: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), path)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = (
            self._path(prefix)
            if prefix in ("", "/") or prefix.endswith("/")
            else (self._path(prefix).parent)
        )
        if not base.exists():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not _is_temp(k))

    def delete(self, key: str) -> None:
        if key.startswith(RAW_PREFIX):
            raise RawDumpProtectedError(f"raw dump {key!r} is never deleted")
        self._path(key).unlink(missing_ok=True)

    def url(self, key: str) -> str:
        return str(self._path(key))

    def key_of(self, ref: ObjectRef) -> str:
        return ref.key  # a local folder stands for any one bucket

    def local_path(self, key: str) -> Path:
        """Local stores can hand a file to a reader without a copy."""
        return self._path(key)


def _is_temp(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


class S3Store(Store):
    """S3 or any S3-compatible endpoint (boto3 reads AWS_ENDPOINT_URL and credentials itself)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client("s3")
        self.uri = f"s3://{bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + key

    def get_bytes(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        return body

    def _put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _put_file(self, key: str, path: Path, move: bool) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))  # the file stays

    def get_file(self, key: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(path))
        return path

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        if key.startswith(RAW_PREFIX):
            raise RawDumpProtectedError(f"raw dump {key!r} is never deleted")
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def key_of(self, ref: ObjectRef) -> str:
        if ref.bucket != self.bucket or not ref.key.startswith(self.prefix):
            raise ValueError(f"object s3://{ref.bucket}/{ref.key} is outside this store {self.uri}")
        return ref.key[len(self.prefix) :]


@dataclass(frozen=True)
class ObjectRef:
    """An object named by a trigger event: which bucket, which key."""

    bucket: str
    key: str


def open_store(uri: str) -> Store:
    """`s3://bucket/prefix` → S3Store; anything else is a local folder."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    return LocalStore(Path(uri))
