"""The DuckDB connection every heavy step uses, sized for the machine it runs on."""

from __future__ import annotations

import duckdb

from npf_loyalty.schema import QUARTERS
from npf_loyalty.settings import Settings

#: COPY options of every parquet file ingest writes (clean tables, features). A dictionary is
#: kept only while it stays under 4 KB: flags, codes and regions still get one, while ids,
#: money and dates stop trying early. Trying a dictionary on every high-cardinality column
#: was a quarter of the writer's CPU time, for files only 4–7% smaller
#: (measured on the 250k-account benchmark fund).
PARQUET_WRITE_OPTIONS = "FORMAT parquet, COMPRESSION snappy, DICTIONARY_SIZE_LIMIT 4096"

#: schema.QUARTERS as a DuckDB ENUM. Reading a quarter as one is a single lookup that both
#: validates the text and gives its position; a row carries it in two bytes, not a string.
QUARTER_TYPE = "npf_quarter"


def create_quarter_type(con: duckdb.DuckDBPyConnection) -> None:
    """Create QUARTER_TYPE on this connection if it is not there yet."""
    labels = ", ".join(f"'{q}'" for q in QUARTERS)
    con.execute(f"CREATE TYPE IF NOT EXISTS {QUARTER_TYPE} AS ENUM ({labels})")


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory database that spills to the work dir instead of running out of memory."""
    spill = settings.work_dir / "duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"memory_limit": settings.duckdb_memory_limit})
    con.execute(f"SET temp_directory = '{spill.as_posix()}'")
    con.execute("SET preserve_insertion_order = false")
    if settings.duckdb_threads:
        con.execute(f"SET threads = {int(settings.duckdb_threads)}")
    return con
