"""What the managers' bot asks of the fund: one client, the riskiest accounts, figures, the report.

Scoring publishes `lookup/<version>/` split into shards by the first two hex digits of an id, so
one question reads one small parquet file instead of the whole fund. This module only reads:
it follows `lookup/_current.json` (re-read at most every `pointer_ttl` seconds, so a new
scoring run is picked up within a minute without a request per question), keeps the last shards
it fetched in a small LRU cache keyed by version and shard, and queries them with DuckDB. No
pandas or pyarrow here: the bot's Lambda must stay small.

Results are plain dataclasses; wording is the bot's business. Nothing here logs client data.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

import duckdb

from npf_loyalty.storage import Keys, LocalStore, Store

ID_HEX_DIGITS = 32
MIN_PREFIX = 8
MAX_TOP = 50
MAX_CANDIDATES = 10
POINTER_TTL = 60.0
SHARD_CACHE_SIZE = 64
REPORT_NAMES = ("report.html", "report.xlsx")

_HEX = re.compile(r"[0-9a-f]+")
_Row = TypeVar("_Row")


class NoLookupError(RuntimeError):
    """Nothing has been scored yet: there is no `lookup/_current.json`."""


def normalize_id(text: str) -> str | None:
    """The hex digits of an id or id prefix ("0xAB…", "ab…", with spaces, quotes or "…")."""
    value = text.strip().strip("«»\"'`<>").strip().lower()
    value = value.removesuffix("…").removesuffix("...").strip()
    value = value.removeprefix("0x")
    if not MIN_PREFIX <= len(value) <= ID_HEX_DIGITS or not _HEX.fullmatch(value):
        return None
    return value


def shard_of(identifier: str) -> str:
    """The shard of a full id or of normalised hex digits: the two digits after "0x"."""
    digits = identifier[2:] if identifier.startswith("0x") else identifier
    return digits[:2]


@dataclass(frozen=True)
class Account:
    """One scored account as of the latest quarter: one row of `client/shard=…`."""

    npo_account_id: str
    client_id: str
    quarter: str
    p_leave_next_q: float
    p_leave_next_4q: float
    loyalty_next_q: float | None = None
    loyalty_next_4q: float | None = None
    band: str | None = None
    band_next_q: str | None = None
    relative_risk: float | None = None
    risk_rank: int | None = None
    risk_top_pct: float | None = None
    model_version: str | None = None
    reason_1: str | None = None
    reason_2: str | None = None
    reason_3: str | None = None
    reason_1_contribution: float | None = None
    reason_2_contribution: float | None = None
    reason_3_contribution: float | None = None
    features_version: str | None = None
    region: str | None = None
    federal_district: str | None = None
    balance: float | None = None
    contrib_q: float | None = None
    income_q: float | None = None
    days_since_contrib: float | None = None
    quarters_without_contrib: int | None = None
    age: int | None = None
    gender: int | None = None
    pmnts_type: int | None = None
    tenure_years: float | None = None
    lk: int | None = None
    appl_mrkr: int | None = None
    balance_at_risk: float | None = None

    @property
    def reasons(self) -> list[tuple[str, float]]:
        """The top reasons with their log-odds contributions (> 0 raises the risk)."""
        pairs = [
            (self.reason_1, self.reason_1_contribution),
            (self.reason_2, self.reason_2_contribution),
            (self.reason_3, self.reason_3_contribution),
        ]
        return [(text, float(c or 0.0)) for text, c in pairs if text]


@dataclass(frozen=True)
class Client:
    client_id: str
    accounts: tuple[Account, ...]  # the riskiest first

    @property
    def gender(self) -> int | None:
        return self.accounts[0].gender

    @property
    def age(self) -> int | None:
        return self.accounts[0].age

    @property
    def quarter(self) -> str:
        return self.accounts[0].quarter

    def account(self, account_id: str | None) -> Account:
        """The named account, or the riskiest one when the name is unknown or missing."""
        for account in self.accounts:
            if account.npo_account_id == account_id:
                return account
        return self.accounts[0]


@dataclass(frozen=True)
class Candidate:
    """One of several ids that start with what a manager typed."""

    id: str
    kind: Literal["client", "account"]
    client_id: str


class MatchKind(StrEnum):
    FOUND = "found"
    AMBIGUOUS = "ambiguous"
    NOT_FOUND = "not_found"
    INVALID = "invalid"


@dataclass(frozen=True)
class Match:
    kind: MatchKind
    client: Client | None = None
    selected: str | None = None  # the account the query named, if it named one
    candidates: tuple[Candidate, ...] = ()
    more: bool = False  # more candidates than listed


@dataclass(frozen=True)
class HistoryRow:
    npo_account_id: str
    client_id: str
    quarter: str
    contrib_q: float | None = None
    income_q: float | None = None
    contrib_count_q: int | None = None
    balance: float | None = None
    p_leave_next_q: float | None = None
    p_leave_next_4q: float | None = None


@dataclass(frozen=True)
class TopResult:
    accounts: tuple[Account, ...]
    areas: tuple[str, ...] = ()  # the regions / districts an area query matched


@dataclass(frozen=True)
class QuarterStat:
    quarter: str
    accounts: int
    left: int


@dataclass(frozen=True)
class YearStat:
    year: str
    accounts: int  # the most accounts open in any of its quarters
    left: int
    quarters: int  # fewer than 4: the year is not over (or the history starts in it)


@dataclass(frozen=True)
class FundStats:
    quarter: str
    scored_at: str
    accounts_scored: int
    expected_leavers_next_q: float
    expected_leavers_next_4q: float
    balance_at_risk_next_q: float
    bands: dict[str, int]
    bands_next_q: dict[str, int]
    by_quarter: tuple[QuarterStat, ...]
    by_year: dict[str, YearStat] = field(default_factory=dict)


def _build(cls: type[_Row], row: dict[str, Any]) -> _Row:
    """A dataclass from a row, tolerant of columns it does not know (newer scoring runs)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in row.items() if k in names})


class FundView:
    """Read-only answers over the current lookup version of a store."""

    def __init__(
        self,
        store: Store,
        *,
        work_dir: Path | None = None,
        pointer_ttl: float = POINTER_TTL,
        cache_size: int = SHARD_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.pointer_ttl = pointer_ttl
        self.cache_size = cache_size
        self._clock = clock
        self._pointer: dict[str, Any] | None = None
        self._pointer_at = 0.0
        self._files: OrderedDict[tuple[str, str, str], list[str]] = OrderedDict()
        self._stats: dict[str, FundStats] = {}
        self._listings: dict[str, dict[str, list[str]]] = {}
        self._lock = threading.RLock()
        self._work = Path(tempfile.mkdtemp(prefix="npf-lookup-", dir=work_dir))
        self._con = duckdb.connect(config={"threads": 1})
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="npf-lookup")

    # --- the current version -------------------------------------------------------------
    def pointer(self) -> dict[str, Any]:
        """`lookup/_current.json`, re-read at most every `pointer_ttl` seconds."""
        with self._lock:
            now = self._clock()
            if self._pointer is None or now - self._pointer_at >= self.pointer_ttl:
                pointer = self.store.current(Keys.lookup)
                if pointer is None:
                    raise NoLookupError("no scores yet: nothing has been scored")
                if self._pointer is not None and pointer["version"] != self._pointer["version"]:
                    self._drop_other_versions(pointer["version"])
                self._pointer, self._pointer_at = pointer, now
            return self._pointer

    @property
    def version(self) -> str:
        version: str = self.pointer()["version"]
        return version

    # --- questions -----------------------------------------------------------------------
    def find(self, query: str) -> Match:
        """A client by client id or account id, full or a unique prefix of ≥ 8 hex digits."""
        digits = normalize_id(query)
        if digits is None:
            return Match(MatchKind.INVALID)
        prefix = "0x" + digits
        shard = shard_of(digits)
        # a client's card needs these three; from S3 they come in one parallel round trip
        self._prefetch([("client", shard), ("account", shard), ("history", shard)])
        limit = MAX_CANDIDATES + 1
        clients = self._rows(
            "client",
            shard,
            "SELECT DISTINCT client_id FROM {rows} WHERE starts_with(client_id, ?) "
            f"ORDER BY client_id LIMIT {limit}",
            [prefix],
        )
        accounts = self._rows(
            "account",
            shard,
            "SELECT npo_account_id, client_id FROM {rows} WHERE starts_with(npo_account_id, ?) "
            f"ORDER BY npo_account_id LIMIT {limit}",
            [prefix],
        )
        candidates = [Candidate(r["client_id"], "client", r["client_id"]) for r in clients]
        candidates += [Candidate(r["npo_account_id"], "account", r["client_id"]) for r in accounts]
        owners = list(dict.fromkeys(c.client_id for c in candidates))
        if not owners:
            return Match(MatchKind.NOT_FOUND)
        if len(owners) > 1:
            return Match(
                MatchKind.AMBIGUOUS,
                candidates=tuple(candidates[:MAX_CANDIDATES]),
                more=len(candidates) > MAX_CANDIDATES,
            )
        if shard_of(owners[0]) != shard:  # found by an account id: the owner lives elsewhere
            self._prefetch([("client", shard_of(owners[0])), ("history", shard_of(owners[0]))])
        client = self.client(owners[0])
        if client is None:  # an account map without its client rows: a broken version
            return Match(MatchKind.NOT_FOUND)
        named = [c.id for c in candidates if c.kind == "account"]
        return Match(MatchKind.FOUND, client=client, selected=named[0] if named else None)

    def client(self, client_id: str) -> Client | None:
        """A client's scored accounts, the riskiest first."""
        rows = self._rows(
            "client",
            shard_of(client_id),
            "SELECT * FROM {rows} WHERE client_id = ? ORDER BY p_leave_next_q DESC, npo_account_id",
            [client_id],
        )
        if not rows:
            return None
        return Client(client_id, tuple(_build(Account, r) for r in rows))

    def history(self, client_id: str) -> list[HistoryRow]:
        """The last quarters of every account of a client, by account and quarter."""
        digits = normalize_id(client_id)
        if digits is None or len(digits) != ID_HEX_DIGITS:
            return []
        rows = self._rows(
            "history",
            shard_of(digits),
            "SELECT * FROM {rows} WHERE client_id = ? ORDER BY npo_account_id, quarter",
            ["0x" + digits],
        )
        return [_build(HistoryRow, r) for r in rows]

    def top(self, n: int = 10, area: str | None = None) -> TopResult:
        """The riskiest accounts overall, or of a region / federal district (a name fragment)."""
        n = max(1, min(int(n), MAX_TOP))
        files = self._top_file()
        if not area or not area.strip():
            rows = self._query(
                files,
                "SELECT * FROM {rows} ORDER BY p_leave_next_q DESC, npo_account_id LIMIT ?",
                [n],
            )
            return TopResult(tuple(_build(Account, r) for r in rows))
        needle = _fold(area)
        match = (
            "(contains(replace(lower(region), 'ё', 'е'), $needle) "
            "OR contains(replace(lower(federal_district), 'ё', 'е'), $needle))"
        )
        rows = self._query(
            files,
            f"SELECT * FROM {{rows}} WHERE {match} "
            "ORDER BY p_leave_next_q DESC, npo_account_id LIMIT $n",
            {"needle": needle, "n": n},
        )
        names = self._query(
            files,
            "SELECT DISTINCT name FROM ("
            "SELECT region AS name FROM {rows} WHERE contains(replace(lower(region), 'ё', 'е'), "
            "$needle) UNION ALL SELECT federal_district FROM {rows} WHERE "
            "contains(replace(lower(federal_district), 'ё', 'е'), $needle)) ORDER BY name",
            {"needle": needle},
        )
        return TopResult(tuple(_build(Account, r) for r in rows), tuple(r["name"] for r in names))

    def stats(self) -> FundStats:
        """Fund-wide figures of the current version (read once per version)."""
        pointer = self.pointer()
        version = pointer["version"]
        with self._lock:
            cached = self._stats.get(version)
        if cached is not None:
            return cached
        raw = self.store.get_json(Keys.version_dir(Keys.lookup, version) + "stats.json")
        stats = FundStats(
            quarter=str(pointer.get("quarter", "")),
            scored_at=str(pointer.get("scored_at", "")),
            accounts_scored=int(raw.get("accounts_scored", 0)),
            expected_leavers_next_q=float(raw.get("expected_leavers_next_q", 0.0)),
            expected_leavers_next_4q=float(raw.get("expected_leavers_next_4q", 0.0)),
            balance_at_risk_next_q=float(raw.get("balance_at_risk_next_q", 0.0)),
            bands={str(k): int(v) for k, v in raw.get("bands", {}).items()},
            bands_next_q={str(k): int(v) for k, v in raw.get("bands_next_q", {}).items()},
            by_quarter=tuple(
                QuarterStat(str(q["quarter"]), int(q["accounts"]), int(q["left"]))
                for q in raw.get("by_quarter", [])
            ),
            by_year={
                str(year): YearStat(
                    str(year), int(v["accounts"]), int(v["left"]), int(v.get("quarters", 4))
                )
                for year, v in sorted(raw.get("by_year", {}).items())
            },
        )
        with self._lock:
            self._stats[version] = stats
        return stats

    def latest_report(self) -> tuple[str, bytes] | None:
        """The latest quarterly report as (file name, bytes): HTML when there is one, else XLSX.

        `reports/_current.json` names the files of the latest run; without it (or with keys
        gone) the newest quarter folder holding a report is used."""
        pointer = self.store.current(Keys.reports) or {}
        quarter = str(pointer.get("version") or "")
        for name in REPORT_NAMES:
            key = pointer.get(name.rsplit(".", 1)[-1])  # "html" / "xlsx"
            if isinstance(key, str) and key and self.store.exists(key):
                return _report_name(quarter, name), self.store.get_bytes(key)
        quarters = sorted(
            {k[len(Keys.reports) :].split("/")[0] for k in self.store.list(Keys.reports)}
            - {Keys.pointer("")},
            reverse=True,
        )
        if quarter in quarters:  # the pointer's quarter first, then the newest
            quarters.remove(quarter)
            quarters.insert(0, quarter)
        for q in quarters:
            keys = self.store.list(Keys.version_dir(Keys.reports, q))
            runs = self.store.current(Keys.version_dir(Keys.reports, q)) or {}
            run_dir = Keys.report_dir(q, str(runs["version"])) if runs.get("version") else None
            for name in REPORT_NAMES:
                found = sorted(k for k in keys if k.rsplit("/", 1)[-1] == name)
                current = [k for k in found if run_dir and k.startswith(run_dir)]
                if current or found:  # reports/<q>/<run>/report.html or reports/<q>/report.html
                    return _report_name(q, name), self.store.get_bytes((current or found)[-1])
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            self._con.close()
            shutil.rmtree(self._work, ignore_errors=True)

    # --- shards --------------------------------------------------------------------------
    def _rows(self, kind: str, shard: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return self._query(self._shard_files(kind, shard), sql, params)

    def _query(
        self, files: list[str], sql: str, params: Sequence[Any] | dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Run `sql` over the parquet files, named `{rows}` in it; no files means no rows."""
        if not files:
            return []
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        statement = sql.format(rows=f"read_parquet([{listing}], hive_partitioning = false)")
        with self._lock:
            cursor = self._con.execute(statement, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _shard_files(self, kind: str, shard: str) -> list[str]:
        version = self.version
        folder = f"{Keys.version_dir(Keys.lookup, version)}{kind}/shard={shard}/"
        return self._cached((version, kind, shard), folder)

    def _top_file(self) -> list[str]:
        version = self.version
        folder = Keys.version_dir(Keys.lookup, version)
        return self._cached((version, "top", ""), folder, name="top.parquet")

    def _prefetch(self, shards: list[tuple[str, str]]) -> None:
        """Download the missing shards at once (remote stores only): one round trip, not three."""
        if isinstance(self.store, LocalStore):
            return
        version = self.version
        with self._lock:
            listing = self._listing(version)
            missing: dict[tuple[str, str, str], list[str]] = {}
            for kind, shard in shards:
                if (version, kind, shard) not in self._files:
                    folder = f"{Keys.version_dir(Keys.lookup, version)}{kind}/shard={shard}/"
                    names = sorted(n for n in listing.get(folder, []) if n.endswith(".parquet"))
                    missing[(version, kind, shard)] = [folder + n for n in names]
        keys = [k for ks in missing.values() for k in ks]
        paths = dict(zip(keys, self._pool.map(self._local, keys), strict=True))
        with self._lock:
            for key, shard_keys in missing.items():
                if key not in self._files:
                    self._remember(key, [paths[k] for k in shard_keys])

    def _listing(self, version: str) -> dict[str, list[str]]:
        """Every file of a version by folder: one listing per version, not one per shard
        (a version folder never changes once its pointer is published)."""
        listing = self._listings.get(version)
        if listing is None:
            listing = {}
            for key in self.store.list(Keys.version_dir(Keys.lookup, version)):
                folder, _, name = key.rpartition("/")
                listing.setdefault(folder + "/", []).append(name)
            self._listings[version] = listing
        return listing

    def _cached(self, key: tuple[str, str, str], folder: str, name: str | None = None) -> list[str]:
        with self._lock:
            hit = self._files.get(key)
            if hit is not None:
                self._files.move_to_end(key)
                return hit
            names = self._listing(key[0]).get(folder, [])
            wanted = [n for n in names if (n == name if name else n.endswith(".parquet"))]
            files = [self._local(folder + n) for n in sorted(wanted)]
            self._remember(key, files)
            return files

    def _remember(self, key: tuple[str, str, str], files: list[str]) -> None:
        """Cache a shard's local files; beyond `cache_size` the oldest shard is deleted."""
        self._files[key] = files
        while len(self._files) > self.cache_size:
            old_key, _ = self._files.popitem(last=False)
            self._forget(old_key)

    def _local(self, key: str) -> str:
        """A local path DuckDB can read: the file itself in a local store, else a fresh copy."""
        if isinstance(self.store, LocalStore):
            return str(self.store.local_path(key))
        path = self._work / key
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.part")
            partial.write_bytes(self.store.get_bytes(key))  # one GET; no HEAD, no threads
            partial.replace(path)
        return str(path)

    def _forget(self, key: tuple[str, str, str]) -> None:
        version, kind, shard = key
        if isinstance(self.store, LocalStore):
            return
        folder = self._work / Keys.version_dir(Keys.lookup, version)
        if kind == "top":
            (folder / "top.parquet").unlink(missing_ok=True)
        else:
            shutil.rmtree(folder / kind / f"shard={shard}", ignore_errors=True)

    def _drop_other_versions(self, version: str) -> None:
        for key in [k for k in self._files if k[0] != version]:
            del self._files[key]
            self._forget(key)
        self._stats = {v: s for v, s in self._stats.items() if v == version}
        self._listings = {v: s for v, s in self._listings.items() if v == version}


def _report_name(quarter: str, name: str) -> str:
    suffix = name.rsplit(".", 1)[-1]
    return f"npf-report-{quarter}.{suffix}" if quarter else f"npf-report.{suffix}"


def _fold(text: str) -> str:
    """Case- and ё-insensitive form of an area name fragment."""
    return " ".join(text.lower().replace("ё", "е").split())
