"""The bot's routers: parse a command, ask `FundView` one question, shape the answer.

`FundView` (`view`) and `AccessList` (`access`) come from the dispatcher's workflow data;
`is_admin` is set by the access middleware. Routers are built by `build_router()` because an
aiogram router can belong to one dispatcher only (tests and the console build several).

Errors never reach the user as a stack trace: the error handler answers with a short text and
logs only the exception's type and where it happened.
"""

from __future__ import annotations

import logging
import re
import traceback
from dataclasses import dataclass
from typing import Annotated

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.filters.callback_data import CallbackData
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    ErrorEvent,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
)
from pydantic import Field

from bot import charts, texts
from bot.access import AccessList, Revoke
from npf_loyalty.lookup import (
    MAX_TOP,
    Client,
    FundView,
    Match,
    MatchKind,
    NoLookupError,
    normalize_id,
)
from npf_loyalty.observability import fields

log = logging.getLogger(__name__)

HEX32 = r"^[0-9a-f]{32}$"
BARE_ID = re.compile(r"^\s*(0[xX])?[0-9a-fA-F]{8,32}\s*…?$")
TOP_DEFAULT = 10
TOP_BUTTONS_PER_ROW = 5


class OpenAccount(CallbackData, prefix="acc"):
    """Show the card of the client that owns an account (`edit`: replace the card in place)."""

    account: Annotated[str, Field(pattern=HEX32)]  # hex digits without "0x": 64-byte limit
    edit: bool = False


class PickId(CallbackData, prefix="id"):
    """One candidate of an ambiguous prefix: a client or account id."""

    id: Annotated[str, Field(pattern=HEX32)]


class Shown(CallbackData, prefix="shown"):
    """The account already on the card: pressing it changes nothing."""


@dataclass(frozen=True)
class Card:
    caption: str
    png: bytes
    keyboard: InlineKeyboardMarkup | None


# --- commands -----------------------------------------------------------------------------
async def cmd_start(message: Message, is_admin: bool = False) -> None:
    await message.answer(texts.start(is_admin))


async def cmd_help(message: Message, is_admin: bool = False) -> None:
    await message.answer(texts.help_text(is_admin))


async def cmd_client(message: Message, command: CommandObject, view: FundView) -> None:
    if not command.args:
        await message.answer(texts.CLIENT_USAGE)
        return
    await _answer_match(message, view, view.find(command.args))


async def bare_id(message: Message, view: FundView) -> None:
    """A pasted id without a command is a /client question."""
    await _answer_match(message, view, view.find(message.text or ""))


async def cmd_top(message: Message, command: CommandObject, view: FundView) -> None:
    parsed = parse_top(command.args)
    if parsed is None:
        await message.answer(texts.TOP_USAGE)
        return
    n, area = parsed
    result = view.top(n, area)
    parts = texts.split(texts.top(result, area, clamped=n > MAX_TOP))
    buttons = [
        InlineKeyboardButton(
            text=str(i),
            callback_data=OpenAccount(account=a.npo_account_id.removeprefix("0x")).pack(),
        )
        for i, a in enumerate(result.accounts, 1)
    ]
    keyboard = _rows(buttons, TOP_BUTTONS_PER_ROW) if buttons else None
    for part in parts[:-1]:
        await message.answer(part)
    await message.answer(parts[-1], reply_markup=keyboard)


async def cmd_stats(message: Message, view: FundView) -> None:
    stats = view.stats()
    png = charts.stats_chart(stats)
    await message.answer_photo(BufferedInputFile(png, "npf-stats.png"), caption=texts.stats(stats))


async def cmd_report(message: Message, view: FundView) -> None:
    report = view.latest_report()
    if report is None:
        await message.answer(texts.REPORT_NONE)
        return
    name, data = report
    await message.answer_document(BufferedInputFile(data, name), caption=texts.REPORT_CAPTION)


# --- admin ----------------------------------------------------------------------------------
async def cmd_grant(
    message: Message, command: CommandObject, access: AccessList, is_admin: bool = False
) -> None:
    user_id = _admin_target(command, is_admin, texts.GRANT_USAGE)
    if isinstance(user_id, str):
        await message.answer(user_id)
        return
    by = message.from_user.id if message.from_user else 0
    done = access.grant(user_id, by)
    await message.answer((texts.GRANTED if done else texts.ALREADY_GRANTED).format(user_id=user_id))


async def cmd_revoke(
    message: Message, command: CommandObject, access: AccessList, is_admin: bool = False
) -> None:
    user_id = _admin_target(command, is_admin, texts.REVOKE_USAGE)
    if isinstance(user_id, str):
        await message.answer(user_id)
        return
    by = message.from_user.id if message.from_user else 0
    outcome = access.revoke(user_id, by)
    text = {
        Revoke.REVOKED: texts.REVOKED,
        Revoke.NOT_GRANTED: texts.NOT_GRANTED,
        Revoke.CONFIGURED: texts.REVOKE_CONFIGURED,
    }[outcome]
    await message.answer(text.format(user_id=user_id))


async def cmd_managers(message: Message, access: AccessList, is_admin: bool = False) -> None:
    if not is_admin:
        await message.answer(texts.ADMIN_ONLY)
        return
    await message.answer(
        texts.managers(sorted(access.configured), sorted(access.admins), access.granted(fresh=True))
    )


def _admin_target(command: CommandObject, is_admin: bool, usage: str) -> int | str:
    """The user id an admin command names, or the text to answer instead."""
    if not is_admin:
        return texts.ADMIN_ONLY
    arg = (command.args or "").strip()
    if not arg.isdigit() or int(arg) <= 0:
        return usage
    return int(arg)


async def fallback(message: Message) -> None:
    await message.answer(texts.FALLBACK)


# --- buttons --------------------------------------------------------------------------------
async def on_open(
    query: CallbackQuery, callback_data: OpenAccount, view: FundView, bot: Bot
) -> None:
    match = view.find(callback_data.account)
    if match.kind is not MatchKind.FOUND or match.client is None:
        await query.answer(texts.STALE_BUTTON)
        return
    card = build_card(view, match.client, match.selected)
    photo = BufferedInputFile(card.png, "client.png")
    message = query.message
    if callback_data.edit and isinstance(message, Message) and message.photo:
        await message.edit_media(
            InputMediaPhoto(media=photo, caption=card.caption), reply_markup=card.keyboard
        )
    else:
        await bot.send_photo(
            message.chat.id if message is not None else query.from_user.id,
            photo,
            caption=card.caption,
            reply_markup=card.keyboard,
        )
    await query.answer()


async def on_pick(query: CallbackQuery, callback_data: PickId, view: FundView) -> None:
    match = view.find(callback_data.id)
    if match.kind is not MatchKind.FOUND or not isinstance(query.message, Message):
        await query.answer(texts.STALE_BUTTON)
        return
    await _answer_match(query.message, view, match)
    await query.answer()


async def on_shown(query: CallbackQuery) -> None:
    await query.answer()


async def on_stale(query: CallbackQuery) -> None:
    await query.answer(texts.STALE_BUTTON)


# --- errors ---------------------------------------------------------------------------------
async def on_error(event: ErrorEvent, bot: Bot) -> bool:
    error = event.exception
    if isinstance(error, NoLookupError):
        text = texts.NO_DATA
    else:
        # frames only: an exception's message may carry a client's id or figures
        where = [f"{f.name}:{f.lineno}" for f in traceback.extract_tb(error.__traceback__)]
        log.error("handler failed", extra=fields(error=type(error).__name__, where=where[-4:]))
        text = texts.ERROR
    update = event.update
    chat_id: int | None = None
    try:
        if update.message is not None:
            chat_id = update.message.chat.id
        elif update.callback_query is not None:
            query = update.callback_query
            chat_id = query.message.chat.id if query.message else query.from_user.id
            await bot.answer_callback_query(query.id)
        if chat_id is not None:
            await bot.send_message(chat_id, text)
    except Exception as failure:  # the error answer itself failed: nothing more to do
        log.error("error reply failed", extra=fields(error=type(failure).__name__))
    return True


# --- shaping --------------------------------------------------------------------------------
async def _answer_match(message: Message, view: FundView, match: Match) -> None:
    if match.kind is MatchKind.INVALID:
        await message.answer(texts.INVALID_ID)
    elif match.kind is MatchKind.NOT_FOUND:
        await message.answer(texts.NOT_FOUND)
    elif match.kind is MatchKind.AMBIGUOUS:
        buttons = [
            InlineKeyboardButton(
                text=texts.candidate_button(c),
                callback_data=PickId(id=c.id.removeprefix("0x")).pack(),
            )
            for c in match.candidates
        ]
        await message.answer(texts.ambiguous(match.more), reply_markup=_rows(buttons, 1))
    elif match.client is not None:
        card = build_card(view, match.client, match.selected)
        await message.answer_photo(
            BufferedInputFile(card.png, "client.png"),
            caption=card.caption,
            reply_markup=card.keyboard,
        )


def build_card(view: FundView, client: Client, account_id: str | None) -> Card:
    """A client's card for one of their accounts: caption, picture and account switcher."""
    account = client.account(account_id)
    history = [
        h for h in view.history(client.client_id) if h.npo_account_id == account.npo_account_id
    ]
    keyboard = None
    if len(client.accounts) > 1:
        buttons = [
            InlineKeyboardButton(
                text=texts.account_button(a, a is account),
                callback_data=(
                    Shown().pack()
                    if a is account
                    else OpenAccount(account=a.npo_account_id.removeprefix("0x"), edit=True).pack()
                ),
            )
            for a in client.accounts
        ]
        keyboard = _rows(buttons, 2)
    return Card(texts.client_card(client, account), charts.account_chart(history), keyboard)


def parse_top(args: str | None) -> tuple[int, str | None] | None:
    """ "/top", "/top 20", "/top 20 самарская", "/top приволжский 5" → (N, area)."""
    words = (args or "").split()
    n = TOP_DEFAULT
    if words and words[0].lstrip("-").isdigit():
        n = int(words.pop(0))
    elif words and words[-1].lstrip("-").isdigit():
        n = int(words.pop())
    if n < 1:
        return None
    return n, " ".join(words) or None


def _rows(buttons: list[InlineKeyboardButton], width: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[buttons[i : i + width] for i in range(0, len(buttons), width)]
    )


def _is_bare_id(text: str) -> bool:
    return bool(BARE_ID.match(text)) and normalize_id(text) is not None


def build_router() -> Router:
    """A fresh router with every handler of the bot, in matching order."""
    router = Router(name="npf-loyalty")
    router.message.register(cmd_start, CommandStart())
    router.message.register(cmd_help, Command("help"))
    router.message.register(cmd_client, Command("client"))
    router.message.register(cmd_top, Command("top"))
    router.message.register(cmd_stats, Command("stats"))
    router.message.register(cmd_report, Command("report"))
    router.message.register(cmd_grant, Command("grant"))
    router.message.register(cmd_revoke, Command("revoke"))
    router.message.register(cmd_managers, Command("managers"))
    router.message.register(bare_id, F.text.func(_is_bare_id))
    router.message.register(fallback)
    router.callback_query.register(on_open, OpenAccount.filter())
    router.callback_query.register(on_pick, PickId.filter())
    router.callback_query.register(on_shown, Shown.filter())
    router.callback_query.register(on_stale)
    router.errors.register(on_error)
    return router
