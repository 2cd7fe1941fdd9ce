"""The bot on this machine: no token, no network, the same dispatcher and handlers.

`RecordingSession` stands where aiogram's HTTP session would be: every Bot API call is recorded
and answered locally, so whatever the handlers "send" can be printed (the console), asserted
(tests) or timed (the benchmark). In the console you type commands at a prompt; the replies'
texts and inline keyboards are printed, and pictures and documents are saved to files. Press a
button by typing its number.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.methods import GetMe, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import (
    CallbackQuery,
    Chat,
    InlineKeyboardMarkup,
    InputFile,
    Message,
    PhotoSize,
    Update,
    User,
)

from bot import texts
from bot.app import App, build_app
from npf_loyalty.settings import Settings, get_settings
from npf_loyalty.storage import open_store

CONSOLE_USER = 1  # the console's manager; made an admin of the offline bot
DEMO_STORE = "./npf-demo/bucket"


@dataclass
class Call:
    """One recorded Bot API call and the message the "server" returned for it."""

    method: TelegramMethod[Any]
    result: Any

    @property
    def name(self) -> str:
        return type(self.method).__name__

    @property
    def text(self) -> str | None:
        """The visible text: a message's text or a media's caption."""
        for holder in (self.method, getattr(self.method, "media", None)):
            for attr in ("text", "caption"):
                value = getattr(holder, attr, None)
                if isinstance(value, str):
                    return value
        return None

    @property
    def keyboard(self) -> InlineKeyboardMarkup | None:
        markup = getattr(self.method, "reply_markup", None)
        return markup if isinstance(markup, InlineKeyboardMarkup) else None

    @property
    def files(self) -> list[tuple[str, bytes]]:
        """(file name, bytes) of every uploaded photo or document."""
        found = []
        media = getattr(self.method, "media", None)
        for value in (
            getattr(self.method, "photo", None),
            getattr(self.method, "document", None),
            getattr(media, "media", None),
        ):
            if isinstance(value, InputFile):
                data = getattr(value, "data", b"")
                found.append((value.filename or "file", bytes(data)))
        return found


class RecordingSession(BaseSession):
    """A Bot API session that records calls instead of sending them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self._ids = itertools.count(1000)

    async def make_request(
        self, bot: Bot, method: TelegramMethod[TelegramType], timeout: int | None = None
    ) -> TelegramType:
        result: Any = self._result(bot, method)
        self.calls.append(Call(method, result))
        return result

    def _result(self, bot: Bot, method: TelegramMethod[Any]) -> Any:
        if isinstance(method, GetMe):
            return User(id=bot.id, is_bot=True, first_name="npf-loyalty", username="npf_bot")
        name = type(method).__name__
        if name.startswith("Send"):
            return self._message(method)
        return True  # answers, edits, settings: Telegram's "ok"

    def _message(self, method: TelegramMethod[Any]) -> Message:
        chat_id = getattr(method, "chat_id", 0)
        photo = None
        if getattr(method, "photo", None) is not None:
            photo = [PhotoSize(file_id="photo", file_unique_id="photo", width=700, height=480)]
        return Message(
            message_id=next(self._ids),
            date=datetime.now(UTC),
            chat=Chat(id=int(chat_id) if str(chat_id).lstrip("-").isdigit() else 0, type="private"),
            text=getattr(method, "text", None),
            caption=getattr(method, "caption", None),
            photo=photo,
            reply_markup=getattr(method, "reply_markup", None),
        )

    def take(self) -> list[Call]:
        """The calls recorded since the last take."""
        calls, self.calls = self.calls, []
        return calls

    async def close(self) -> None:
        return None

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError("the recording session downloads nothing")
        yield b""  # pragma: no cover


# --- updates as Telegram would send them ---------------------------------------------------
_update_ids = itertools.count(1)


def user(user_id: int) -> User:
    return User(id=user_id, is_bot=False, first_name="Менеджер", language_code="ru")


def message_update(text: str, user_id: int = CONSOLE_USER) -> Update:
    """An update with a private message, as Telegram delivers it."""
    return Update(
        update_id=next(_update_ids),
        message=Message(
            message_id=next(_update_ids),
            date=datetime.now(UTC),
            chat=Chat(id=user_id, type="private"),
            from_user=user(user_id),
            text=text,
        ),
    )


def callback_update(data: str, message: Message | None, user_id: int = CONSOLE_USER) -> Update:
    """An update with a pressed inline button under `message`."""
    return Update(
        update_id=next(_update_ids),
        callback_query=CallbackQuery(
            id=str(next(_update_ids)),
            from_user=user(user_id),
            chat_instance="console",
            message=message,
            data=data,
        ),
    )


# --- the console ---------------------------------------------------------------------------
def console_app(settings: Settings, session: RecordingSession) -> App:
    """The offline bot: the console user is an admin, the session records."""
    settings = settings.model_copy(update={"admins": [*settings.admins, CONSOLE_USER]})
    return build_app(settings, store=open_store(settings.store), session=session)


def run_console(
    store_uri: str | None = None,
    *,
    out_dir: Path | None = None,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
) -> int:
    """Type commands, read the answers; `exit` or Ctrl-D to leave."""
    settings = get_settings()
    settings = settings.model_copy(update={"store": store_uri or DEMO_STORE, "bot_token": None})
    out = (out_dir or Path("npf-bot-out")).resolve()
    session = RecordingSession()
    app = console_app(settings, session)
    write(f"Бот без сети: хранилище {settings.store}, картинки и файлы — в {out}")
    write("Команды: /help; нажать кнопку — её номер; выход — exit")
    buttons: list[tuple[str, Message | None]] = []
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                line = read("> ").strip()
            except (EOFError, KeyboardInterrupt):
                break
            if line in ("exit", "quit", "выход"):
                break
            if not line:
                continue
            number = line.lstrip("#")
            origin: Message | None = None
            if number.isdigit() and buttons:
                index = int(number) - 1
                if not 0 <= index < len(buttons):
                    write(f"нет кнопки {number}")
                    continue
                data, origin = buttons[index]
                update = callback_update(data, origin)
            else:
                update = message_update(line)
            loop.run_until_complete(app.dp.feed_update(app.bot, update))
            buttons = _show(session.take(), out, write, origin) or buttons
    finally:
        loop.run_until_complete(app.bot.session.close())
        loop.close()
        app.view.close()
    return 0


def _show(
    calls: list[Call], out: Path, write: Callable[[str], None], origin: Message | None
) -> list[tuple[str, Message | None]]:
    """Print what the bot sent; return the buttons of the last keyboard, numbered from 1.

    An edited message keeps its identity: its buttons stay bound to the pressed message."""
    buttons: list[tuple[str, Message | None]] = []
    for call in calls:
        if call.name == "AnswerCallbackQuery":
            notice = getattr(call.method, "text", None)
            if notice:
                write(f"[уведомление] {notice}")
            continue
        for name, data in call.files:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{datetime.now():%H%M%S}-{len(list(out.iterdir())):03d}-{name}"
            path.write_bytes(data)
            write(f"[файл] {path}")
        if call.text:
            write(texts.plain(call.text))
        if call.keyboard is not None:
            message = call.result if isinstance(call.result, Message) else origin
            buttons = []
            for row in call.keyboard.inline_keyboard:
                labels = []
                for button in row:
                    buttons.append((button.callback_data or "", message))
                    labels.append(f"[{len(buttons)}] {button.text}")
                write("  ".join(labels))
    return buttons
