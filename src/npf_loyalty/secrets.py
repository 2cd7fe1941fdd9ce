"""The bot's secrets from SSM Parameter Store, read once at a function's cold start.

A Lambda's environment is visible to anyone who can read its configuration; SecureString
parameters are encrypted with KMS and readable only by the function's role. When
`NPF_SSM_PREFIX` is set, every parameter directly under it whose name is a known setting
(`bot_token`, `webhook_secret`, `managers`, `admins`; `-` and `_` are the same) overrides the
environment. Values are never logged: only which names were found.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import SecretStr

from npf_loyalty.observability import fields
from npf_loyalty.settings import Settings, parse_ids

log = logging.getLogger(__name__)

SECRET_NAMES = ("bot_token", "webhook_secret")
ID_LIST_NAMES = ("managers", "admins")


def read_parameters(prefix: str, client: Any = None) -> dict[str, str]:
    """All parameters directly under a path, decrypted, keyed by their last name component."""
    if client is None:
        import boto3

        client = boto3.client("ssm")
    path = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    values: dict[str, str] = {}
    paginator = client.get_paginator("get_parameters_by_path")
    for page in paginator.paginate(Path=path, Recursive=False, WithDecryption=True):
        for parameter in page.get("Parameters", []):
            name = parameter["Name"].rsplit("/", 1)[-1].replace("-", "_").lower()
            values[name] = parameter["Value"]
    return values


def with_ssm_secrets(settings: Settings, client: Any = None) -> Settings:
    """Settings with the bot's secrets and allow-list from SSM, when a prefix is configured."""
    if not settings.ssm_prefix:
        return settings
    found = read_parameters(settings.ssm_prefix, client)
    update: dict[str, Any] = {}
    for name in SECRET_NAMES:
        if found.get(name):
            update[name] = SecretStr(found[name].strip())
    for name in ID_LIST_NAMES:
        if name in found:
            update[name] = parse_ids(found[name])
    log.info("bot settings read from SSM", extra=fields(names=sorted(update)))
    return settings.model_copy(update=update)
