"""Ingest: uploads become features; bad input is explained and nothing is ever lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from npf_loyalty import ingest as ingest_module
from npf_loyalty.events import s3_put_event
from npf_loyalty.ingest import NotAnUploadError, ingest_object
from npf_loyalty.settings import Settings
from npf_loyalty.storage import Keys, S3Store, Store
from npf_loyalty.synth import SynthConfig, generate, write_fund
from tests.conftest import TEST_BUCKET

TABLES = ("clnts_fin_prtrt", "trnsctns", "cntrbtrs")


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    fund = generate(SynthConfig(accounts=150, seed=3, quarters=12))
    return write_fund(fund, tmp_path_factory.mktemp("dumps"))


def upload(store: Store, path: Path, folder: str = "2023Q1") -> str:
    key = f"{Keys.uploads}{folder}/{path.name}"
    store.put_file(key, path)
    return key


def upload_all(store: Store, dumps: dict[str, Path], settings: Settings) -> list[str]:
    keys = [upload(store, dumps[name]) for name in TABLES]
    for key in keys:
        ingest_object(store, key, settings)
    return keys


def snapshot(store: Store) -> dict[str, bytes]:
    return {key: store.get_bytes(key) for key in store.list("")}


def test_three_dumps_become_a_published_feature_table(
    store: Store, dumps: dict[str, Path], settings: Settings
) -> None:
    upload_all(store, dumps, settings)
    pointer = store.current(Keys.features)
    assert pointer is not None
    partitions = store.list(Keys.version_dir(Keys.features, pointer["version"]))
    assert any("quarter=" in key and key.endswith(".parquet") for key in partitions)
    assert pointer["summary"]["accounts"] == 150


def test_features_wait_until_the_transactions_arrive(
    local_store: Store, dumps: dict[str, Path], settings: Settings
) -> None:
    outcome = ingest_object(local_store, upload(local_store, dumps["clnts_fin_prtrt"]), settings)
    assert outcome.status == "accepted"
    assert outcome.waiting_for == ["trnsctns"]
    assert local_store.current(Keys.features) is None


def without_last_quarter(path: Path, folder: Path) -> tuple[Path, str]:
    """A copy of a synthetic dump missing the rows of its last quarter, and that quarter."""
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    separator = ";" if header.count(";") > header.count(",") else ","
    position = header.split(separator).index("quarter")
    last = max(row.split(separator)[position] for row in rows)
    kept = [row for row in rows if row.split(separator)[position] != last]
    folder.mkdir(exist_ok=True)
    copy = folder / path.name
    copy.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    return copy, last


def test_features_wait_while_the_operations_end_before_the_panel(
    local_store: Store, dumps: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    short_ops, last = without_last_quarter(dumps["trnsctns"], tmp_path / "short")
    ingest_object(local_store, upload(local_store, dumps["clnts_fin_prtrt"]), settings)
    outcome = ingest_object(local_store, upload(local_store, short_ops, "old"), settings)
    assert outcome.status == "accepted"
    assert outcome.waiting_for and outcome.waiting_for[0].startswith(f"trnsctns up to {last}")
    assert local_store.current(Keys.features) is None
    complete = ingest_object(local_store, upload(local_store, dumps["trnsctns"]), settings)
    assert complete.waiting_for == []
    assert complete.features is not None and complete.features.built


def test_features_do_not_wait_when_the_operations_run_past_the_panel(
    local_store: Store, dumps: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    short_panel, _ = without_last_quarter(dumps["clnts_fin_prtrt"], tmp_path / "short")
    ingest_object(local_store, upload(local_store, short_panel), settings)
    outcome = ingest_object(local_store, upload(local_store, dumps["trnsctns"]), settings)
    assert outcome.waiting_for == []
    assert outcome.features is not None and outcome.features.built


def test_the_same_upload_processed_twice_changes_nothing(
    local_store: Store, dumps: dict[str, Path], settings: Settings
) -> None:
    keys = upload_all(local_store, dumps, settings)
    before = snapshot(local_store)
    again = ingest_object(local_store, keys[0], settings)
    assert again.status == "duplicate"
    assert again.features is not None and not again.features.built
    assert snapshot(local_store) == before


def test_the_same_bytes_uploaded_under_another_name_add_only_the_raw_copy(
    local_store: Store, dumps: dict[str, Path], settings: Settings
) -> None:
    upload_all(local_store, dumps, settings)
    before = snapshot(local_store)
    key = upload(local_store, dumps["trnsctns"], folder="resent")
    assert ingest_object(local_store, key, settings).status == "duplicate"
    assert set(snapshot(local_store)) - set(before) == {key}


def test_bad_rows_are_quarantined_with_their_line_and_reason(
    local_store: Store, dumps: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    lines = dumps["trnsctns"].read_text(encoding="utf-8").splitlines()
    fields = lines[2].split(";")
    fields[2] = "много"  # npo_sum is not a number
    lines[2] = ";".join(fields)
    broken = tmp_path / "trnsctns.csv"
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")

    outcome = ingest_object(local_store, upload(local_store, broken), settings)

    assert outcome.status == "accepted"
    assert outcome.rows_rejected == 1
    assert outcome.rows_clean == outcome.rows_total - 1
    rejected_rows = [k for k in local_store.list(Keys.quarantine) if k.endswith(".csv")]
    report = local_store.get_bytes(rejected_rows[0]).decode("utf-8-sig")
    assert "npo_sum" in report and "много" in report
    assert ";3;" in report or report.splitlines()[1].startswith("3;")  # source line 3


def test_a_file_that_is_not_the_contract_is_rejected_whole_and_kept(
    local_store: Store, settings: Settings, tmp_path: Path
) -> None:
    garbage = tmp_path / "scan.csv"
    garbage.write_bytes(b"\x00\x01\x02PNG\xff\xfe" * 100)
    key = upload(local_store, garbage)

    outcome = ingest_object(local_store, key, settings)

    assert outcome.status == "rejected"
    assert not outcome.ok
    assert "отклонён" in outcome.report
    assert local_store.get_bytes(key) == garbage.read_bytes()
    assert local_store.exists(Keys.quarantine_dir("rejected", outcome.digest) + "report.md")


def test_raw_uploads_are_left_byte_for_byte_as_uploaded(
    local_store: Store, dumps: dict[str, Path], settings: Settings
) -> None:
    keys = upload_all(local_store, dumps, settings)
    for key, name in zip(keys, TABLES, strict=True):
        assert local_store.get_bytes(key) == dumps[name].read_bytes()


def test_ingest_refuses_keys_outside_uploads(local_store: Store, settings: Settings) -> None:
    local_store.put_bytes("features/_current.json", b"{}")
    with pytest.raises(NotAnUploadError):
        ingest_object(local_store, "features/_current.json", settings)


def test_a_crash_while_building_features_leaves_the_previous_table_current(
    local_store: Store,
    dumps: dict[str, Path],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    upload_all(local_store, dumps, settings)
    before = local_store.current(Keys.features)

    def crash(*args: object, **kwargs: object) -> None:
        raise MemoryError("simulated crash mid-way")

    monkeypatch.setattr(ingest_module, "write_features", crash)
    newer = tmp_path / "cntrbtrs.csv"
    newer.write_text(dumps["cntrbtrs"].read_text(encoding="utf-8").replace(";1\n", ";2\n", 3))
    with pytest.raises(MemoryError):
        ingest_object(local_store, upload(local_store, newer, folder="next"), settings)

    assert local_store.current(Keys.features) == before


def test_the_lambda_handler_ingests_an_s3_event(
    s3_store: S3Store,
    dumps: dict[str, Path],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from npf_loyalty.edges import load_handler
    from npf_loyalty.settings import get_settings

    monkeypatch.setenv("NPF_STORE", f"s3://{TEST_BUCKET}")
    monkeypatch.setenv("NPF_WORK_DIR", str(settings.work_dir))
    get_settings.cache_clear()
    handler = load_handler("ingest")
    keys = [upload(s3_store, dumps[name]) for name in TABLES]

    results = [handler.handler(s3_put_event(TEST_BUCKET, key))["results"][0] for key in keys]

    assert [r["status"] for r in results] == ["accepted"] * 3
    assert results[-1]["features"]["built"] is True
    assert s3_store.current(Keys.features) is not None
    get_settings.cache_clear()
