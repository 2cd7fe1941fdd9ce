"""The storage interface behaves the same on a local folder and on S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from npf_loyalty.storage import (
    Keys,
    LocalStore,
    ObjectRef,
    RawDumpProtectedError,
    S3Store,
    Store,
    open_store,
)


def test_bytes_written_are_read_back(store: Store) -> None:
    store.put_bytes("features/a.bin", b"\x00\x01")
    assert store.get_bytes("features/a.bin") == b"\x00\x01"


def test_files_round_trip(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("данные")
    store.put_file("clean/x/in.txt", source)
    assert store.get_file("clean/x/in.txt", tmp_path / "out.txt").read_text() == "данные"


def test_a_moved_directory_is_stored_whole(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    (folder / "quarter=2020Q1").mkdir(parents=True)
    (folder / "quarter=2020Q1" / "a.parquet").write_bytes(b"first")
    (folder / "b.json").write_bytes(b"second")
    keys = store.put_dir("features/v1/", folder, move=True)
    assert keys == ["features/v1/b.json", "features/v1/quarter=2020Q1/a.parquet"]
    assert [store.get_bytes(k) for k in keys] == [b"second", b"first"]


def test_a_file_put_without_move_stays_where_it_was(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "clean.parquet"
    path.write_bytes(b"rows")
    store.put_file("clean/t/1.parquet", path)
    assert path.read_bytes() == b"rows"


def test_list_returns_sorted_keys_under_the_prefix_only(store: Store) -> None:
    for key in ("scores/v2/b", "scores/v1/a", "features/v1/a"):
        store.put_bytes(key, b"x")
    assert store.list("scores/") == ["scores/v1/a", "scores/v2/b"]


def test_list_of_the_empty_prefix_is_the_whole_store(store: Store) -> None:
    store.put_bytes("a/b", b"x")
    store.put_bytes("c", b"y")
    assert store.list("") == ["a/b", "c"]


def test_missing_object_does_not_exist(store: Store) -> None:
    assert not store.exists("nothing/here")


def test_an_uploaded_raw_dump_is_never_overwritten(store: Store) -> None:
    store.put_bytes("uploads/dump.csv", b"original")
    with pytest.raises(RawDumpProtectedError):
        store.put_bytes("uploads/dump.csv", b"changed")
    assert store.get_bytes("uploads/dump.csv") == b"original"


def test_an_uploaded_raw_dump_is_never_deleted(store: Store) -> None:
    store.put_bytes("uploads/dump.csv", b"original")
    with pytest.raises(RawDumpProtectedError):
        store.delete("uploads/dump.csv")
    assert store.exists("uploads/dump.csv")


def test_a_version_becomes_current_only_when_published(store: Store) -> None:
    store.put_bytes(Keys.version_dir(Keys.scores, "v1") + "part.parquet", b"x")
    assert store.current(Keys.scores) is None
    store.publish(Keys.scores, "v1", {"rows": 1})
    assert store.current(Keys.scores) == {"version": "v1", "rows": 1}
    assert store.current_dir(Keys.scores) == "scores/v1/"


def test_local_writes_leave_no_temporary_files(local_store: LocalStore) -> None:
    local_store.put_bytes("a/b.json", b"{}")
    assert [p.name for p in (local_store.root / "a").iterdir()] == ["b.json"]


def test_local_keys_cannot_escape_the_folder(local_store: LocalStore) -> None:
    with pytest.raises(ValueError, match="escapes"):
        local_store.put_bytes("../outside.txt", b"x")


def test_s3_store_refuses_objects_of_another_bucket(s3_store: S3Store) -> None:
    with pytest.raises(ValueError, match="outside this store"):
        s3_store.key_of(ObjectRef("someone-else", "uploads/a.csv"))


def test_s3_store_with_prefix_maps_event_keys_to_its_own_keys(s3_store: S3Store) -> None:
    prefixed = S3Store(s3_store.bucket, "fund-a", client=s3_store.client)
    prefixed.put_bytes("uploads/a.csv", b"x")
    assert prefixed.key_of(ObjectRef(s3_store.bucket, "fund-a/uploads/a.csv")) == "uploads/a.csv"
    assert s3_store.list("") == ["fund-a/uploads/a.csv"]


def test_uri_chooses_the_backend(tmp_path: Path, aws_env: None) -> None:
    assert isinstance(open_store(str(tmp_path / "b")), LocalStore)
    s3 = open_store("s3://bucket/some/prefix")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
