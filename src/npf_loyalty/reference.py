"""Bundled reference data (geography, macro series, life expectancy) as small DuckDB tables.

The files ship inside the package (``npf_loyalty/data``, provenance in ``SOURCES.md``) and are
read through :mod:`importlib.resources`, so a deployed function never needs ``../shared`` or the
network. :func:`register` creates these temporary tables on a connection:

====================  =============================================================================
table                 columns
====================  =============================================================================
ref_regions           region, region_key, match_key, region_type, federal_district,
                      federal_district_code, capital, lat, lon (one row per region, 85 rows)
ref_region_keys       match_key → region: every accepted spelling of every region (see below)
ref_postal_prefixes   postal_prefix (3 digits), region, federal_district, city, lat, lon, how
ref_policy_rate       quarter, quarter_idx, key_rate (refinancing rate before 2013Q3), kind
ref_usd_rub           quarter, quarter_idx, usd_rub
ref_life_expectancy   year, gender (−1 female, 1 male), life_expectancy; 2023 is left out
====================  =============================================================================

Region text matching (:func:`region_match_key`): a dump writes the same region as
«САМАРСКАЯ ОБЛ», «Самарская область», «обл. Самарская» or «ОБЛ САМАРСКАЯ». The key upper-cases,
turns ё into е, spells the type word short (ОБЛАСТЬ→ОБЛ, РЕСПУБЛИКА→РЕСП, АВТОНОМНЫЙ ОКРУГ→АО,
АВТОНОМНАЯ ОБЛАСТЬ→АОБЛ, ГОРОД/Г.→Г), splits on spaces, hyphens, slashes, brackets and dots,
and keeps the sorted set of words, so word order (type word first or last) and spacing do not
matter. A few official long or short forms are listed in :data:`REGION_ALIASES`. Anything else
stays unmatched: the features then try the postal prefix and otherwise say «unknown»; nothing is
guessed.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import duckdb
import numpy as np

from npf_loyalty.schema import FEDERAL_DISTRICTS

UNKNOWN = "unknown"  # region, federal district and region source when nothing matches

#: Life expectancy for 2023 (66.0 / 73.46) contradicts Rosstat's reported rise: it is treated
#: as missing, so 2023 and later years use 2022 (and are flagged as carried forward).
LIFE_EXPECTANCY_LAST_TRUSTED_YEAR = 2022

#: Other spellings of regions whose reference name alone would not match them: official long
#: names, names without the part after the dash, bare names of the federal cities.
REGION_ALIASES: dict[str, tuple[str, ...]] = {
    "Кемеровская область - Кузбасс обл": ("Кемеровская обл",),
    "Ханты-Мансийский Автономный округ - Югра АО": ("Ханты-Мансийский АО",),
    "Северная Осетия - Алания Респ": ("Северная Осетия Респ",),
    "Чувашская Республика": ("Чувашская Республика - Чувашия", "Чувашия Респ"),
    "Саха /Якутия/ Респ": ("Якутия Респ",),
    "Еврейская Аобл": ("Еврейская автономная область",),
    "Кабардино-Балкарская Респ": ("Кабардино-Балкария Респ",),
    "Карачаево-Черкесская Респ": ("Карачаево-Черкесия Респ",),
    "Удмуртская Респ": ("Удмуртия Респ",),
    "Чеченская Респ": ("Чечня Респ",),
    "г Москва": ("Москва",),
    "г Санкт-Петербург": ("Санкт-Петербург",),
    "г Севастополь": ("Севастополь",),
}

# ОБЛАСТЬ is shortened first, so «АВТОНОМНАЯ ОБЛАСТЬ» and «АВТОНОМНАЯ ОБЛ» both become АОБЛ.
_PHRASES = (
    (re.compile(r"(?<![А-ЯA-Z])ОБЛАСТЬ(?![А-ЯA-Z])"), "ОБЛ"),
    (re.compile(r"(?<![А-ЯA-Z])АВТОНОМНАЯ ОБЛ(?![А-ЯA-Z])"), "АОБЛ"),
    (re.compile(r"(?<![А-ЯA-Z])АВТОНОМНЫЙ ОКРУГ(?![А-ЯA-Z])"), "АО"),
    (re.compile(r"(?<![А-ЯA-Z])РЕСПУБЛИКА(?![А-ЯA-Z])"), "РЕСП"),
    (re.compile(r"(?<![А-ЯA-Z])ГОРОД(?![А-ЯA-Z])"), "Г"),
)
_SEPARATORS = re.compile(r"[\s\-–—/\\().,«»\"']+")


def region_match_key(text: str | None) -> str | None:
    """The spelling-independent key of a region's name (None for empty text).

    >>> region_match_key("обл. Самарская") == region_match_key("САМАРСКАЯ ОБЛАСТЬ")
    True
    """
    if text is None:
        return None
    s = text.upper().replace("Ё", "Е")
    s = re.sub(r"\s+", " ", s).strip()
    for pattern, short in _PHRASES:
        s = pattern.sub(short, s)
    words = sorted({w for w in _SEPARATORS.split(s) if w})
    return " ".join(words) or None


# --- reading the bundled files ---------------------------------------------------------------


def _rows(filename: str) -> list[dict[str, str]]:
    text = resources.files("npf_loyalty.data").joinpath(filename).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _quarter_idx(quarter: str) -> int:
    """ "2017Q4" → 2017·4 + 3, the same numbering as the features' quarter_idx."""
    year, q = quarter.split("Q")
    return int(year) * 4 + int(q) - 1


def _district_code(district: str) -> int:
    return FEDERAL_DISTRICTS.index(district) if district in FEDERAL_DISTRICTS else -1


@dataclass(frozen=True)
class Region:
    """One region of the reference, as the bot and reports list it."""

    name: str  # e.g. "Самарская обл"
    federal_district: str
    federal_district_code: int  # index in schema.FEDERAL_DISTRICTS
    capital: str
    lat: float
    lon: float


@cache
def regions() -> tuple[Region, ...]:
    """All 85 regions, sorted by federal district code and name."""
    out = [
        Region(
            name=r["region"],
            federal_district=r["federal_district"],
            federal_district_code=_district_code(r["federal_district"]),
            capital=r["capital"],
            lat=float(r["lat"]),
            lon=float(r["lon"]),
        )
        for r in _rows("regions.csv")
    ]
    return tuple(sorted(out, key=lambda r: (r.federal_district_code, r.name)))


def federal_districts() -> tuple[str, ...]:
    """The federal districts in code order (code = position; −1 means unknown)."""
    return FEDERAL_DISTRICTS


@cache
def region_keys() -> dict[str, str]:
    """match_key → region name, for the reference names and :data:`REGION_ALIASES`.

    Raises if two regions would share a key: a match must never be a coin toss.
    """
    rows = _rows("regions.csv")
    names = {r["region"] for r in rows}
    spellings = [(r["region"], r["region"]) for r in rows]
    spellings += [(r["region"], r["region_key"]) for r in rows]
    spellings += [(n, alias) for n, aliases in REGION_ALIASES.items() for alias in aliases]
    keys: dict[str, str] = {}
    for name, spelling in spellings:
        if name not in names:
            raise ValueError(f"alias for a region not in regions.csv: {name!r}")
        key = region_match_key(spelling)
        assert key is not None
        if keys.setdefault(key, name) != name:
            raise ValueError(f"{spelling!r} matches both {keys[key]!r} and {name!r}")
    return keys


def match_region(text: str | None) -> str | None:
    """The reference region named by a dump's text, or None when it matches none."""
    key = region_match_key(text)
    return None if key is None else region_keys().get(key)


# --- registering the tables ------------------------------------------------------------------


#: Column name → numpy array; DuckDB scans such a dict directly (no pyarrow on Lambda).
Columns = dict[str, np.ndarray]


def _columns(values: dict[str, Any]) -> Columns:
    """Text columns become object arrays; numeric ones are built with their dtype already."""
    return {
        name: v if isinstance(v, np.ndarray) else np.array(v, dtype=object)
        for name, v in values.items()
    }


def _floats(rows: list[dict[str, str]], column: str) -> np.ndarray:
    return np.array([float(r[column]) for r in rows], dtype=np.float64)


def _regions_table() -> Columns:
    rows = _rows("regions.csv")
    return _columns(
        {
            "region": [r["region"] for r in rows],
            "region_key": [r["region_key"] for r in rows],
            "match_key": [region_match_key(r["region"]) for r in rows],
            "region_type": [r["region_type"] for r in rows],
            "federal_district": [r["federal_district"] for r in rows],
            "federal_district_code": np.array(
                [_district_code(r["federal_district"]) for r in rows], dtype=np.int32
            ),
            "capital": [r["capital"] for r in rows],
            "lat": _floats(rows, "lat"),
            "lon": _floats(rows, "lon"),
        }
    )


def _region_keys_table() -> Columns:
    keys = region_keys()
    return _columns({"match_key": list(keys), "region": list(keys.values())})


def _postal_table() -> Columns:
    rows = _rows("postal_prefixes.csv")
    return _columns(
        {
            "postal_prefix": [r["postal_prefix"].zfill(3) for r in rows],
            "region": [r["region"] for r in rows],
            "federal_district": [r["federal_district"] for r in rows],
            "city": [r["city"] for r in rows],
            "lat": _floats(rows, "lat"),
            "lon": _floats(rows, "lon"),
            "how": [r["how"] for r in rows],
        }
    )


def _quarterly(filename: str, source: str, name: str) -> Columns:
    rows = _rows(filename)
    return _columns(
        {
            "quarter": [r["quarter"] for r in rows],
            "quarter_idx": np.array([_quarter_idx(r["quarter"]) for r in rows], dtype=np.int32),
            name: _floats(rows, source),
            **({"kind": [r["kind"] for r in rows]} if "kind" in rows[0] else {}),
        }
    )


def _policy_rate_table() -> Columns:
    return _quarterly("policy_rate_quarterly.csv", "rate", "key_rate")


def _usd_rub_table() -> Columns:
    return _quarterly("usd_rub_quarterly.csv", "usd_rub", "usd_rub")


def _life_expectancy_table() -> Columns:
    """Long form (year, gender, value); years after 2022 are dropped as untrustworthy.

    The features fill later years from the last remaining one (2022) and flag them.
    """
    rows = [
        r
        for r in _rows("life_expectancy.csv")
        if int(r["year"]) <= LIFE_EXPECTANCY_LAST_TRUSTED_YEAR
    ]
    years = [int(r["year"]) for r in rows]
    return {
        "year": np.array(years + years, dtype=np.int32),
        "gender": np.array([1] * len(rows) + [-1] * len(rows), dtype=np.int32),
        "life_expectancy": np.concatenate([_floats(rows, "male"), _floats(rows, "female")]),
    }


REFERENCE_TABLES = {
    "ref_regions": _regions_table,
    "ref_region_keys": _region_keys_table,
    "ref_postal_prefixes": _postal_table,
    "ref_policy_rate": _policy_rate_table,
    "ref_usd_rub": _usd_rub_table,
    "ref_life_expectancy": _life_expectancy_table,
}


def register(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or replace) the reference tables as temporary tables on ``con``."""
    for name, build in REFERENCE_TABLES.items():
        view = f"_{name}_arrays"
        con.register(view, build())
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {view}")
        finally:
            con.unregister(view)
