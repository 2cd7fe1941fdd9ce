"""From an uploaded dump to the current quarterly feature table.

One upload is one table of the contract. Ingest validates it into `clean/<table>/<digest>` and
quarantines its bad rows; when the tables the features need are all present, it rebuilds the
feature table from the latest accepted dump of each and publishes it under `features/`.

Why it is idempotent: a dump is identified by the SHA-256 of its bytes, and the feature table
by the digests of its inputs. Processing the same bytes again finds its manifest and changes
nothing; rebuilding from the same inputs finds the same features version already current.

Why a crash leaves nothing half-visible: every multi-file result is written into a fresh
version folder and becomes visible only when its pointer (or manifest) is written, last.

Dumps are full snapshots: a new `clnts_fin_prtrt` replaces the previous one as the input of the
features (see docs/data-contract.md). The features wait while the operations end before the
panel's last quarter: built from a new panel and last quarter's operations, every account
would look as if it had stopped paying, and scoring would raise a false alarm fund-wide.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from npf_loyalty import schema
from npf_loyalty.engine import connect
from npf_loyalty.features import FeatureSources, feature_query, write_features
from npf_loyalty.observability import fields
from npf_loyalty.readers import DumpRejected, ValidatedTable, read_dump, validated_summary
from npf_loyalty.settings import Settings
from npf_loyalty.storage import Keys, LocalStore, Store

log = logging.getLogger(__name__)

#: Bump when a feature definition changes, so the same dumps give a new features version.
FEATURES_REVISION = "3"  # 2: money summed in whole kopecks; 3: counts and flags as integers

Status = Literal["accepted", "rejected", "duplicate"]


class NotAnUploadError(ValueError):
    """The key is outside `uploads/`: ingest never reads its own outputs."""


@dataclass
class FeaturesOutcome:
    version: str
    built: bool  # False when the same inputs were already current
    location: str
    summary: dict[str, Any]


@dataclass
class IngestOutcome:
    key: str
    status: Status
    digest: str
    table: str | None = None
    rows_total: int = 0
    rows_clean: int = 0
    rows_rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    report: str = ""  # readable text for a person (rejections and quarantine)
    quarantine: str | None = None  # where the report and rejected rows are
    waiting_for: list[str] = field(default_factory=list)  # what the features still wait for
    features: FeaturesOutcome | None = None

    @property
    def ok(self) -> bool:
        return self.status != "rejected"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest_object(store: Store, key: str, settings: Settings) -> IngestOutcome:
    """Validate one uploaded dump, keep its clean rows, and refresh the features if possible."""
    if not key.startswith(Keys.uploads):
        raise NotAnUploadError(f"{key!r} is not under {Keys.uploads!r}")
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="ingest-") as tmp:
        work = Path(tmp)
        raw = _local_copy(store, key, work)
        digest = file_digest(raw)
        known = _find_manifest(store, digest)
        if known is not None:
            log.info("dump already ingested", extra=fields(key=key, digest=digest))
            outcome = _outcome_from_manifest(key, known, "duplicate")
        else:
            outcome = _validate_and_keep(store, key, raw, digest, work, settings)
        if outcome.status != "rejected":
            outcome.waiting_for = waiting_for(store)
            if outcome.waiting_for:
                log.info("features wait", extra=fields(key=key, waiting_for=outcome.waiting_for))
            else:
                outcome.features = refresh_features(store, settings)
    return outcome


def _validate_and_keep(
    store: Store, key: str, raw: Path, digest: str, work: Path, settings: Settings
) -> IngestOutcome:
    name = key.rsplit("/", 1)[-1]
    con = connect(settings)
    try:
        validated = read_dump(raw, work, con, name_hint=name)
        last_quarter = _last_quarter(con, validated)
    except DumpRejected as rejection:
        return _reject(store, key, digest, rejection)
    finally:
        con.close()
    table = validated.table.name
    quarantine = None
    if validated.rows_rejected:
        quarantine = _write_quarantine(store, key, digest, validated)
    store.put_file(Keys.clean_table(table, digest), validated.clean_path, move=True)
    manifest = {
        "table": table,
        "digest": digest,
        "source": key,
        "ingested_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quarantine": quarantine,
        "last_quarter": last_quarter,
        **validated_summary(validated),
    }
    store.put_json(Keys.clean_manifest(table, digest), manifest)  # the commit point
    store.publish(f"{Keys.clean}{table}/", digest, {"source": key})
    log.info(
        "dump accepted",
        extra=fields(
            key=key,
            table=table,
            digest=digest,
            rows=validated.rows_total,
            rejected=validated.rows_rejected,
        ),
    )
    return _outcome_from_manifest(key, manifest, "accepted")


def _reject(store: Store, key: str, digest: str, rejection: DumpRejected) -> IngestOutcome:
    prefix = Keys.quarantine_dir("rejected", digest)
    report = f"Файл {key} отклонён целиком.\n\n{rejection.report()}\n"
    store.put_bytes(prefix + "report.md", report.encode())
    store.put_json(
        prefix + "report.json",
        {"source": key, "digest": digest, "reason": rejection.reason, "details": rejection.details},
    )
    log.warning("dump rejected", extra=fields(key=key, digest=digest, reason=rejection.reason))
    return IngestOutcome(
        key=key,
        status="rejected",
        digest=digest,
        report=report,
        quarantine=store.url(prefix),
    )


def _write_quarantine(store: Store, key: str, digest: str, validated: ValidatedTable) -> str:
    prefix = Keys.quarantine_dir(validated.table.name, digest)
    assert validated.rejects_path is not None
    store.put_file(prefix + "rejected_rows.csv", validated.rejects_path)
    lines = [
        f"# Карантин: {key}",
        "",
        f"Таблица `{validated.table.name}`: строк {validated.rows_total}, "
        f"принято {validated.rows_clean}, в карантине {validated.rows_rejected}.",
        "",
        "| причина | строк |",
        "|---|---|",
        *(f"| {reason} | {count} |" for reason, count in validated.reasons.items()),
        "",
        "Каждая отклонённая строка с номером строки исходного файла, столбцом и причиной —",
        "в `rejected_rows.csv` рядом с этим отчётом. Исходный файл не изменён.",
    ]
    store.put_bytes(prefix + "report.md", "\n".join(lines).encode())
    return store.url(prefix)


def _outcome_from_manifest(key: str, manifest: dict[str, Any], status: Status) -> IngestOutcome:
    return IngestOutcome(
        key=key,
        status=status,
        digest=manifest["digest"],
        table=manifest["table"],
        rows_total=manifest["rows_total"],
        rows_clean=manifest["rows_clean"],
        rows_rejected=manifest["rows_rejected"],
        reasons=manifest.get("reasons", {}),
        quarantine=manifest.get("quarantine"),
    )


def _find_manifest(store: Store, digest: str) -> dict[str, Any] | None:
    for table in schema.TABLES:
        key = Keys.clean_manifest(table, digest)
        if store.exists(key):
            manifest: dict[str, Any] = store.get_json(key)
            return manifest
    return None


def _last_quarter(con: Any, validated: ValidatedTable) -> str | None:
    """The table's latest quarter ("2017Q4" sorts as text), if it has a quarter column."""
    if "quarter" not in validated.table.names or not validated.rows_clean:
        return None
    row = con.execute(
        f"SELECT max(quarter) FROM read_parquet('{validated.clean_path.as_posix()}')"
    ).fetchone()
    return str(row[0]) if row and row[0] is not None else None


def waiting_for(store: Store) -> list[str]:
    """What the features wait for: a required table never uploaded, or operations that end
    before the panel does (the dump that brings them is probably on its way)."""
    missing = [
        t for t in schema.REQUIRED_FOR_FEATURES if store.current(f"{Keys.clean}{t}/") is None
    ]
    if missing:
        return missing
    panel, operations = (
        _current_manifest(store, table).get("last_quarter")
        for table in (schema.CLIENTS_QUARTERLY.name, schema.TRANSACTIONS.name)
    )
    if panel and operations and operations < panel:
        return [f"{schema.TRANSACTIONS.name} up to {panel} (the current dump ends at {operations})"]
    return []


def _current_manifest(store: Store, table: str) -> dict[str, Any]:
    pointer = store.current(f"{Keys.clean}{table}/")
    if pointer is None:
        return {}
    manifest: dict[str, Any] = store.get_json(Keys.clean_manifest(table, pointer["version"]))
    return manifest


def refresh_features(store: Store, settings: Settings) -> FeaturesOutcome:
    """Rebuild the feature table from the latest dump of each table, unless already current."""
    inputs = {
        table: pointer["version"]
        for table in schema.TABLES
        if (pointer := store.current(f"{Keys.clean}{table}/")) is not None
    }
    version = _features_version(inputs)
    current = store.current(Keys.features)
    location = store.url(Keys.version_dir(Keys.features, version))
    if current is not None and current["version"] == version:
        return FeaturesOutcome(version, False, location, current.get("summary", {}))
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="features-") as tmp:
        work = Path(tmp)
        local = {
            table: _local_copy(store, Keys.clean_table(table, digest), work / "in")
            for table, digest in inputs.items()
        }
        sources = FeatureSources(
            clients=str(local[schema.CLIENTS_QUARTERLY.name]),
            transactions=str(local[schema.TRANSACTIONS.name]),
            contributors=(
                str(local[schema.CONTRIBUTORS.name]) if schema.CONTRIBUTORS.name in local else None
            ),
        )
        con = connect(settings)
        try:
            summary = write_features(feature_query(con, sources), work / "out")
            by_quarter = _accounts_by_quarter(con, work / "out")
        finally:
            con.close()
        store.put_dir(Keys.version_dir(Keys.features, version), work / "out", move=True)
    summary_dict = asdict(summary)
    store.publish(
        Keys.features,
        version,
        {"inputs": inputs, "summary": summary_dict, "by_quarter": by_quarter},
    )
    log.info("features published", extra=fields(version=version, rows=summary.rows))
    return FeaturesOutcome(version, True, location, summary_dict)


def _accounts_by_quarter(con: Any, folder: Path) -> list[dict[str, Any]]:
    """Accounts present and leaving per quarter: the fund-wide history the bot and report show."""
    rows = con.sql(
        f"""SELECT quarter, count(*) AS accounts, count(*) FILTER (WHERE churn = 1) AS left_
            FROM read_parquet('{folder.as_posix()}/*/*.parquet', hive_partitioning = true)
            GROUP BY quarter ORDER BY quarter"""
    ).fetchall()
    return [{"quarter": q, "accounts": int(n), "left": int(left)} for q, n, left in rows]


def _features_version(inputs: dict[str, str]) -> str:
    payload = json.dumps({"revision": FEATURES_REVISION, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _local_copy(store: Store, key: str, folder: Path) -> Path:
    """A local file to read: the object itself for a local store, a download for S3."""
    if isinstance(store, LocalStore):
        return store.local_path(key)
    folder.mkdir(parents=True, exist_ok=True)
    return store.get_file(key, folder / key.replace("/", "__"))


def file_digest(path: Path) -> str:
    """SHA-256 of a file, streamed: dumps are gigabytes."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
