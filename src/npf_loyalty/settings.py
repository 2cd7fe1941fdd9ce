"""One settings object, read from the environment (prefix ``NPF_``).

S3 endpoints and credentials are not here: boto3 reads the standard AWS settings
(``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, …), so any S3-compatible storage works unchanged.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NPF_", extra="ignore")

    store: str = Field(
        default="npf-store",
        description="where everything lives: a local folder or s3://bucket[/prefix]",
    )
    work_dir: Path = Field(
        default=Path(tempfile.gettempdir()),
        description="scratch space for large intermediate files (/tmp on Lambda)",
    )
    log_level: str = "INFO"
    duckdb_memory_limit: str = Field(
        default="4GB", description="DuckDB spills to work_dir beyond this"
    )
    duckdb_threads: int | None = Field(default=None, description="None: all cores")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
