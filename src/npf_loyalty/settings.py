"""One settings object, read from the environment (prefix ``NPF_``).

S3 endpoints and credentials are not here: boto3 reads the standard AWS settings
(``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, …), so any S3-compatible storage works unchanged.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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

    # --- the managers' Telegram bot -------------------------------------------------------
    bot_token: SecretStr | None = Field(default=None, description="Telegram bot token")
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Telegram's X-Telegram-Bot-Api-Secret-Token; the webhook refuses without it",
    )
    managers: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Telegram user ids allowed to use the bot: 1,2,3"
    )
    admins: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Telegram user ids that may /grant and /revoke"
    )
    rate_limit_per_minute: int = Field(default=20, ge=1, description="requests per user")
    ssm_prefix: str | None = Field(
        default=None,
        description="SSM Parameter Store path with bot_token, webhook_secret, managers, admins",
    )
    reports_chat_id: int | None = Field(
        default=None, description="the managers' chat that receives the quarterly reports"
    )

    @field_validator("managers", "admins", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> list[int]:
        return parse_ids(value)


def parse_ids(value: Any) -> list[int]:
    """Telegram user ids from "1, 2,3", "[1, 2]", a list or None (env and SSM both use it)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip().strip("[]")
        items: list[Any] = [part for part in text.replace(";", ",").split(",") if part.strip()]
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    ids = [int(str(item).strip()) for item in items]
    return list(dict.fromkeys(ids))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
