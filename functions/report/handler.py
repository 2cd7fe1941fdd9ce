"""Lambda / Yandex Cloud Function: build the quarterly report, then optionally post it to Telegram.

Triggered by a schedule (EventBridge / a Yandex timer: the quarter of the current scores) or
invoked by hand with {"quarter": "2023Q1"}. Everything else lives in `npf_loyalty.report`.
Delivery runs only when the bot token and the reports chat are configured; a failed delivery is
logged, not raised: the report is already published, and a retry would only build it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from npf_loyalty.observability import configure_logging, fields
from npf_loyalty.report import Report, build_report, deliver, parse_quarter, report_as_dict
from npf_loyalty.settings import get_settings
from npf_loyalty.storage import open_store

settings = get_settings()
configure_logging(settings.log_level)
log = logging.getLogger(__name__)


def quarter_from_event(event: dict[str, Any]) -> str | None:
    """{"quarter": …}, an EventBridge detail or a Yandex timer payload; None: the default."""
    candidates: list[Any] = [event.get("quarter"), (event.get("detail") or {}).get("quarter")]
    for message in event.get("messages") or []:
        payload = (message.get("details") or {}).get("payload")
        if isinstance(payload, str) and payload.strip().startswith("{"):
            payload = json.loads(payload).get("quarter")
        candidates.append(payload)
    for value in candidates:
        if isinstance(value, str) and value.strip():
            return parse_quarter(value)
    return None


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    store = open_store(settings.store)
    report = build_report(store, settings, quarter_from_event(event or {}))
    result = report_as_dict(report)
    result["delivery"] = _deliver(report) if (event or {}).get("deliver", True) else "skipped"
    return result


def _deliver(report: Report) -> str:
    chat_id = settings.reports_chat_id
    if not chat_id:
        return "not configured"
    try:
        token = _bot_token()
        if not token:
            return "not configured"
        asyncio.run(_send_with_aiogram(token, chat_id, report))
    except Exception:
        log.exception("report delivery failed", extra=fields(quarter=report.quarter))
        return "failed"
    return "sent"


def _bot_token() -> str | None:
    """The token from the environment, else from SSM when the bot keeps its secrets there."""
    token = settings.bot_token
    if token is None and settings.ssm_prefix:
        from npf_loyalty.secrets import with_ssm_secrets

        token = with_ssm_secrets(settings).bot_token
    return token.get_secret_value() if token is not None else None


async def _send_with_aiogram(
    token: str, chat_id: int | str, report: Report, session: Any = None
) -> None:
    """Post through aiogram; `session` replaces the network (tests pass a recording one)."""
    from aiogram import Bot
    from aiogram.types import BufferedInputFile

    bot = Bot(token=token, session=session) if session is not None else Bot(token=token)

    class Chat:
        async def send_message(self, text: str) -> Any:
            return await bot.send_message(chat_id, text)

        async def send_document(self, filename: str, data: bytes, caption: str = "") -> Any:
            document = BufferedInputFile(data, filename=filename)
            return await bot.send_document(chat_id, document, caption=caption or None)

    try:
        await deliver(report, Chat())
    finally:
        await bot.session.close()
