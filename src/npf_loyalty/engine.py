"""The DuckDB connection every heavy step uses, sized for the machine it runs on."""

from __future__ import annotations

import duckdb

from npf_loyalty.settings import Settings


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
