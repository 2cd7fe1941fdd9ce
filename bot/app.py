"""Build the bot: one Dispatcher with the access middleware and the routers, one Bot.

Every way of running the bot goes through `build_app`: the Lambda webhook, long polling on a
server, the offline console, the tests and the benchmark. Only the session differs (aiohttp to
Telegram, or a recorder that never touches the network).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.base import BaseSession
from aiogram.enums import ParseMode
from aiogram.types import BotCommand, BotCommandScopeDefault, Update

from bot import texts
from bot.access import AccessList, AccessMiddleware, RateLimiter
from bot.handlers import build_router
from npf_loyalty.lookup import FundView
from npf_loyalty.settings import Settings, get_settings
from npf_loyalty.storage import Store, open_store

log = logging.getLogger(__name__)

OFFLINE_TOKEN = "1:offline"  # a well-formed token for sessions that never reach Telegram


class MissingTokenError(RuntimeError):
    """The bot needs NPF_BOT_TOKEN (or bot_token in SSM) to talk to Telegram."""


@dataclass
class App:
    bot: Bot
    dp: Dispatcher
    view: FundView
    access: AccessList
    limiter: RateLimiter
    settings: Settings

    async def feed(self, update: dict[str, Any]) -> None:
        """Handle one update from Telegram's JSON (webhook) to the last answer sent."""
        parsed = Update.model_validate(update, context={"bot": self.bot})
        await self.dp.feed_update(self.bot, parsed)


def build_app(
    settings: Settings,
    *,
    store: Store | None = None,
    session: BaseSession | None = None,
) -> App:
    """The dispatcher and bot over the settings' store; a session replaces aiohttp's."""
    if session is None and settings.bot_token is None:
        raise MissingTokenError("set NPF_BOT_TOKEN (or bot_token under NPF_SSM_PREFIX)")
    token = settings.bot_token.get_secret_value() if settings.bot_token else OFFLINE_TOKEN
    store = store or open_store(settings.store)
    view = FundView(store, work_dir=settings.work_dir)
    access = AccessList(store, settings)
    limiter = RateLimiter(settings.rate_limit_per_minute)
    dp = Dispatcher(view=view, access=access)
    dp.update.outer_middleware(AccessMiddleware(access, limiter))
    dp.include_router(build_router())
    bot = Bot(token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))
    return App(bot, dp, view, access, limiter, settings)


async def set_commands(bot: Bot) -> None:
    """The command menu managers see in Telegram's client."""
    commands = [BotCommand(command=c, description=d) for c, d in texts.COMMANDS]
    await bot.set_my_commands(commands, scope=BotCommandScopeDefault())


def run_polling(settings: Settings | None = None) -> None:
    """Long polling for a server (or a laptop): no public URL needed."""
    from npf_loyalty.observability import configure_logging
    from npf_loyalty.secrets import with_ssm_secrets

    settings = with_ssm_secrets(settings or get_settings())
    configure_logging(settings.log_level)
    app = build_app(settings)

    async def main() -> None:
        await set_commands(app.bot)
        await app.bot.delete_webhook(drop_pending_updates=False)
        log.info("polling started")
        await app.dp.start_polling(app.bot, handle_signals=True)

    asyncio.run(main())
