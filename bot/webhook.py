"""AWS Lambda behind a Function URL or API Gateway: Telegram's webhook → the bot.

At cold start: settings (and, with NPF_SSM_PREFIX, the token, the webhook secret and the
allow-list from SSM), ONE event loop and the app. Each invocation runs on that same loop with
`run_until_complete`: aiogram's aiohttp session belongs to the loop it was opened on, so
`asyncio.run` per invocation (a new loop each time) breaks it on the second call.

A request without Telegram's secret header (or with a wrong one) gets 403 and never reaches the
dispatcher. Everything else gets 200 once the update is handled — also when a handler failed:
the user already got a short error text, and a non-200 would make Telegram redeliver the same
update again and again. Lambda freezes the container after returning, so nothing is left
running in the background.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
from typing import Any

from pydantic import SecretStr

from bot.app import App, build_app
from npf_loyalty.observability import configure_logging, fields
from npf_loyalty.secrets import with_ssm_secrets
from npf_loyalty.settings import get_settings

SECRET_HEADER = "x-telegram-bot-api-secret-token"

log = logging.getLogger(__name__)

settings = with_ssm_secrets(get_settings())
configure_logging(settings.log_level)
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
app: App = build_app(settings)


def secret_ok(headers: dict[str, Any] | None, secret: SecretStr | None) -> bool:
    """Constant-time check of Telegram's secret header; no configured secret refuses all."""
    if secret is None:
        return False
    given = {str(k).lower(): v for k, v in (headers or {}).items()}.get(SECRET_HEADER)
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())


def _body(event: dict[str, Any]) -> dict[str, Any] | None:
    raw = event.get("body") or ""
    try:
        if event.get("isBase64Encoded"):
            raw = base64.b64decode(raw).decode()
        update = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return update if isinstance(update, dict) else None


def _response(status: int) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "text/plain"}, "body": ""}


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    if not secret_ok(event.get("headers"), app.settings.webhook_secret):
        log.warning("webhook refused: bad or missing secret header")
        return _response(403)
    update = _body(event)
    if update is None:
        return _response(400)
    try:
        loop.run_until_complete(app.feed(update))
    except Exception as error:  # handled already or unparseable: redelivery would not help
        log.error("update not handled", extra=fields(error=type(error).__name__))
    return _response(200)
