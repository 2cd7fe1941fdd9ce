"""Who may use the bot, and how often.

The bot shows clients' data, so it answers only its allow-list: admins and managers from the
settings (environment or SSM) plus the managers admins granted with /grant, kept in
`state/managers.json` so that every container and every restart sees them (re-read at most
once a minute; a grant is visible at once in the container that made it).

A stranger gets one polite refusal, then silence: the refusal is recorded in
`state/refused.json`, so a Lambda cold start does not answer them again. Only the Telegram user
id is logged. The rate limit is per user and per container (in memory): it protects the bot
from a stuck client or a runaway script, not from a determined attacker.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.types import Chat, TelegramObject, Update, User

from bot import texts
from npf_loyalty.observability import fields
from npf_loyalty.settings import Settings
from npf_loyalty.storage import Keys, Store

log = logging.getLogger(__name__)

MANAGERS_KEY = f"{Keys.state}managers.json"
REFUSED_KEY = f"{Keys.state}refused.json"
GRANTS_TTL = 60.0
MAX_REFUSED = 10_000  # strangers remembered; the oldest are forgotten beyond this


class Revoke(StrEnum):
    REVOKED = "revoked"
    NOT_GRANTED = "not_granted"
    CONFIGURED = "configured"  # in the settings: only the settings can remove them


class AccessList:
    """Admins and managers from the settings plus the managers granted in storage."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        ttl: float = GRANTS_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.admins = frozenset(settings.admins)
        self.configured = frozenset(settings.managers)
        self.ttl = ttl
        self._clock = clock
        self._granted: list[int] | None = None
        self._granted_at = 0.0
        self._refused: set[int] = set()

    # --- who is who ----------------------------------------------------------------------
    def is_admin(self, user_id: int) -> bool:
        return user_id in self.admins

    def is_allowed(self, user_id: int) -> bool:
        if user_id in self.admins or user_id in self.configured:
            return True
        return user_id in self.granted()

    def granted(self, fresh: bool = False) -> list[int]:
        """Managers granted with /grant (cached for `ttl` seconds)."""
        now = self._clock()
        if fresh or self._granted is None or now - self._granted_at >= self.ttl:
            self._granted = self._read_granted()
            self._granted_at = now
        return list(self._granted)

    # --- admin commands ------------------------------------------------------------------
    def grant(self, user_id: int, by: int) -> bool:
        """Give a manager access; False when they already had it."""
        if user_id in self.admins or user_id in self.configured:
            return False
        granted = self.granted(fresh=True)
        if user_id in granted:
            return False
        self._write_granted([*granted, user_id], by)
        log.info("access granted", extra=fields(user_id=user_id, by=by))
        return True

    def revoke(self, user_id: int, by: int) -> Revoke:
        if user_id in self.admins or user_id in self.configured:
            return Revoke.CONFIGURED
        granted = self.granted(fresh=True)
        if user_id not in granted:
            return Revoke.NOT_GRANTED
        self._write_granted([g for g in granted if g != user_id], by)
        log.info("access revoked", extra=fields(user_id=user_id, by=by))
        return Revoke.REVOKED

    # --- strangers -----------------------------------------------------------------------
    def first_refusal(self, user_id: int) -> bool:
        """True the first time a stranger writes (ever, across containers), then False."""
        if user_id in self._refused:
            return False
        try:
            known = self._read_ids(REFUSED_KEY, "refused")
            self._refused.update(known)
            if user_id in self._refused:
                return False
            kept = [*known, user_id][-MAX_REFUSED:]
            self.store.put_json(REFUSED_KEY, {"refused": kept})
        except Exception as error:  # the refusal matters more than remembering it
            log.warning("refusals not persisted", extra=fields(error=type(error).__name__))
        self._refused.add(user_id)
        return True

    # --- storage -------------------------------------------------------------------------
    def _read_granted(self) -> list[int]:
        return self._read_ids(MANAGERS_KEY, "managers")

    def _read_ids(self, key: str, field: str) -> list[int]:
        if not self.store.exists(key):
            return []
        return [int(v) for v in self.store.get_json(key).get(field, [])]

    def _write_granted(self, granted: list[int], by: int) -> None:
        granted = list(dict.fromkeys(granted))
        self.store.put_json(
            MANAGERS_KEY,
            {
                "managers": granted,
                "updated_by": by,
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        self._granted, self._granted_at = granted, self._clock()


class Verdict(StrEnum):
    ALLOW = "allow"
    WARN = "warn"  # over the limit: say so once
    SILENT = "silent"  # still over the limit: already told


class RateLimiter:
    """At most `per_minute` requests per user in any sliding minute."""

    def __init__(
        self,
        per_minute: int,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.window = window
        self._clock = clock
        self._seen: dict[int, deque[float]] = {}
        self._warned: set[int] = set()

    def check(self, user_id: int) -> Verdict:
        now = self._clock()
        seen = self._seen.setdefault(user_id, deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) < self.per_minute:
            seen.append(now)
            self._warned.discard(user_id)
            if len(self._seen) > 10_000:  # forget idle users
                self._seen = {u: s for u, s in self._seen.items() if s and s[-1] > now - 60}
            return Verdict.ALLOW
        if user_id in self._warned:
            return Verdict.SILENT
        self._warned.add(user_id)
        return Verdict.WARN


class AccessMiddleware(BaseMiddleware):
    """Outer middleware on updates: strangers and floods never reach a handler."""

    def __init__(self, access: AccessList, limiter: RateLimiter) -> None:
        self.access = access
        self.limiter = limiter

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None or user.is_bot:
            return None
        if not self.access.is_allowed(user.id):
            first = self.access.first_refusal(user.id)
            log.info("stranger", extra=fields(user_id=user.id, refused_now=first))
            if first:
                await _say(data, event, texts.REFUSAL.format(user_id=user.id))
            return None
        verdict = self.limiter.check(user.id)
        if verdict is not Verdict.ALLOW:
            log.info("rate limited", extra=fields(user_id=user.id))
            if verdict is Verdict.WARN:
                limit = self.limiter.per_minute
                await _say(data, event, texts.RATE_LIMITED.format(limit=limit))
            return None
        data["is_admin"] = self.access.is_admin(user.id)
        return await handler(event, data)


async def _say(data: dict[str, Any], event: TelegramObject, text: str) -> None:
    """Reply where the update came from, and stop a pressed button's spinner."""
    bot: Bot = data["bot"]
    chat: Chat | None = data.get("event_chat")
    user: User = data["event_from_user"]
    if isinstance(event, Update) and event.callback_query is not None:
        await bot.answer_callback_query(event.callback_query.id)
    await bot.send_message(chat.id if chat is not None else user.id, text)
