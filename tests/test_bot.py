"""The bot offline: real aiogram updates through the real dispatcher, a recording session.

The webhook tests go one step further: the real aiohttp session talks to a fake Bot API on
localhost, which is what shows that the event loop survives from one invocation to the next.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from aiogram.types import Message

from bot import texts
from bot.access import MANAGERS_KEY, RateLimiter, Verdict
from bot.app import App, MissingTokenError, build_app
from bot.console import Call, RecordingSession, callback_update, message_update, run_console
from bot.handlers import OpenAccount, PickId, Shown, parse_top
from npf_loyalty.settings import Settings, get_settings
from npf_loyalty.storage import LocalStore, Store
from tests.conftest import load_event
from tests.test_lookup import (
    A_CALM,
    A_PREFIXED,
    A_RISKY,
    C_BY_ACCOUNT,
    C_TWIN_1,
    C_TWIN_2,
    C_TWO_ACCOUNTS,
    UNKNOWN,
    write_lookup,
)

MANAGER, ADMIN, STRANGER, NEWCOMER = 100, 200, 999, 555
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Harness:
    """One container's bot: dispatcher + recording session over a store."""

    def __init__(self, store: Store, work: Path, **overrides: Any) -> None:
        settings = Settings(
            store=store.uri,
            work_dir=work,
            managers=[MANAGER],
            admins=[ADMIN],
            **overrides,
        )
        self.session = RecordingSession()
        self.app: App = build_app(settings, store=store, session=self.session)
        self.loop = asyncio.new_event_loop()

    def send(self, text: str, user: int = MANAGER) -> list[Call]:
        update = message_update(text, user)
        self.loop.run_until_complete(self.app.dp.feed_update(self.app.bot, update))
        return self.session.take()

    def press(self, data: str, message: Message | None, user: int = MANAGER) -> list[Call]:
        update = callback_update(data, message, user)
        self.loop.run_until_complete(self.app.dp.feed_update(self.app.bot, update))
        return self.session.take()

    def close(self) -> None:
        self.loop.close()
        self.app.view.close()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lookup, written once per module; each test gets its own copy of the bucket."""
    root = tmp_path_factory.mktemp("published") / "bucket"
    write_lookup(LocalStore(root))
    return root


@pytest.fixture
def bot_store(published: Path, tmp_path: Path) -> LocalStore:
    shutil.copytree(published, tmp_path / "bucket")
    return LocalStore(tmp_path / "bucket")


@pytest.fixture
def harness(bot_store: LocalStore, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(bot_store, tmp_path)
    yield h
    h.close()


def only(calls: list[Call], name: str = "SendMessage") -> Call:
    assert [c.name for c in calls] == [name], [c.name for c in calls]
    return calls[0]


def buttons(call: Call) -> list[tuple[str, str]]:
    assert call.keyboard is not None
    return [(b.text, b.callback_data or "") for row in call.keyboard.inline_keyboard for b in row]


def assert_png(data: bytes) -> None:
    from matplotlib import image

    assert data.startswith(PNG_MAGIC)
    pixels = image.imread(io.BytesIO(data), format="png")
    height, width = pixels.shape[:2]
    assert 300 <= width <= 1200 and 200 <= height <= 900


# --- commands -------------------------------------------------------------------------------
def test_start_and_help(harness: Harness) -> None:
    start = only(harness.send("/start")).text or ""
    assert start.startswith(texts.START) and "/client" in start and "/grant" not in start
    admin_help = only(harness.send("/help", ADMIN)).text or ""
    assert "/grant" in admin_help and "/managers" in admin_help


def test_client_card(harness: Harness) -> None:
    call = only(harness.send(f"/client {C_TWO_ACCOUNTS}"), "SendPhoto")
    caption = call.text or ""
    assert C_TWO_ACCOUNTS in caption and A_RISKY in caption
    assert "Пол: женский · 47 лет" in caption
    assert "🔴 Лояльность: <b>низкая</b> — скорее всего клиент покинет фонд" in caption
    assert "в следующем квартале <b>62,0%</b>, в течение года <b>93,0%</b>" in caption
    assert "Риск в 6,6 раза выше среднего, 2% самых рискованных" in caption
    assert "↑ нет взносов 3 квартала" in caption and "↓ есть личный кабинет" in caption
    assert "Взносы за 1 кв. 2023: 12 000 ₽" in caption
    assert "Остаток на счёте: 1 234 567 ₽" in caption
    assert "Последний взнос: 14.02.2023" in caption  # 31.03.2023 − 45 days
    assert len(caption) <= texts.CAPTION_LIMIT
    labels = buttons(call)
    assert labels[0] == (f"• 🔴 {A_RISKY[:10]}…", Shown().pack())
    assert labels[1][1] == OpenAccount(account=A_CALM[2:], edit=True).pack()
    [(name, png)] = call.files
    assert name == "client.png"
    assert_png(png)


def test_switch_account_edits_the_card(harness: Harness) -> None:
    card = only(harness.send(f"/client {C_TWO_ACCOUNTS}"), "SendPhoto")
    assert isinstance(card.result, Message)
    calls = harness.press(OpenAccount(account=A_CALM[2:], edit=True).pack(), card.result)
    assert [c.name for c in calls] == ["EditMessageMedia", "AnswerCallbackQuery"]
    caption = calls[0].text or ""
    assert A_CALM in caption and "🟢 Лояльность: <b>высокая</b>" in caption
    assert buttons(calls[0])[1] == (f"• 🟢 {A_CALM[:10]}…", Shown().pack())
    assert_png(calls[0].files[0][1])
    shown = harness.press(Shown().pack(), card.result)
    assert [c.name for c in shown] == ["AnswerCallbackQuery"]


def test_tampered_button_is_refused_politely(harness: Harness) -> None:
    for data in ("acc:not-an-id:1", "acc:" + "A" * 32 + ":1", "id:0x1", "whatever"):
        call = only(harness.press(data, None), "AnswerCallbackQuery")
        assert getattr(call.method, "text", None) == texts.STALE_BUTTON


def test_prefix_ambiguous_unknown_invalid(harness: Harness) -> None:
    by_prefix = only(harness.send("/client 0xAB12CD34"), "SendPhoto")
    assert C_TWO_ACCOUNTS in (by_prefix.text or "")
    by_account = only(harness.send("/client ab12cd36"), "SendPhoto")
    assert C_BY_ACCOUNT in (by_account.text or "") and A_PREFIXED in (by_account.text or "")

    ambiguous = only(harness.send("/client ab12cd35"))
    assert ambiguous.text == texts.ambiguous(more=False)
    picks = buttons(ambiguous)
    assert {data for _, data in picks} == {
        PickId(id=C_TWIN_1[2:]).pack(),
        PickId(id=C_TWIN_2[2:]).pack(),
    }
    assert isinstance(ambiguous.result, Message)
    picked = harness.press(picks[0][1], ambiguous.result)
    assert [c.name for c in picked] == ["SendPhoto", "AnswerCallbackQuery"]

    assert only(harness.send(f"/client {UNKNOWN}")).text == texts.NOT_FOUND
    assert only(harness.send("/client 12ab")).text == texts.INVALID_ID
    assert only(harness.send("/client")).text == texts.CLIENT_USAGE
    # a pasted id without the command is a /client question
    assert C_TWO_ACCOUNTS in (only(harness.send(C_TWO_ACCOUNTS), "SendPhoto").text or "")


def test_top(harness: Harness) -> None:
    call = only(harness.send("/top"))
    text = call.text or ""
    assert text.startswith("<b>10 самых рискованных счетов</b>")
    assert f"1. 🔴 <code>{A_RISKY[:10]}</code> 62% / 93%" in text
    assert "₽" in text
    labels = buttons(call)
    assert [label for label, _ in labels] == [str(i) for i in range(1, 11)]
    assert labels[0][1] == OpenAccount(account=A_RISKY[2:]).pack()
    assert isinstance(call.result, Message)
    opened = harness.press(labels[0][1], call.result)
    assert [c.name for c in opened] == ["SendPhoto", "AnswerCallbackQuery"]
    assert A_RISKY in (opened[0].text or "")

    samara = only(harness.send("/top 3 самарская")).text or ""
    assert "<b>3 самых рискованных счёта — Самарская обл</b>" in samara
    assert "Татарстан" not in samara
    volga = only(harness.send("/top приволжский 2")).text or ""
    assert volga.startswith("<b>2 самых рискованных счёта — Приволжский</b>")
    clamped = only(harness.send("/top 500")).text or ""
    assert texts.TOP_CLAMPED in clamped and "\n50. " in clamped
    assert only(harness.send("/top 5 атлантида")).text == texts.TOP_NO_AREA.format(area="атлантида")
    assert only(harness.send("/top 0")).text == texts.TOP_USAGE


def test_card_text_survives_missing_values() -> None:
    from npf_loyalty.lookup import Account, Client

    bare = Account(A_RISKY, C_TWO_ACCOUNTS, "2023Q4", 0.05, 0.3)  # nothing else known
    text = texts.client_card(Client(C_TWO_ACCOUNTS, (bare,)), bare)
    assert "Пол: не указан · возраст не указан" in text
    assert "⚪ Лояльность: <b>—</b>" in text
    assert "Взносы за 4 кв. 2023: нет данных" in text and "Последний взнос: нет данных" in text
    assert "Почему" not in text


def test_parse_top() -> None:
    assert parse_top(None) == (10, None)
    assert parse_top("20 самарская обл") == (20, "самарская обл")
    assert parse_top("приволжский 5") == (5, "приволжский")
    assert parse_top("-3") is None


def test_stats_and_report(harness: Harness, bot_store: LocalStore) -> None:
    call = only(harness.send("/stats"), "SendPhoto")
    caption = call.text or ""
    assert (
        caption.startswith("<b>Фонд на 1 кв. 2023</b>") and "Оценено действующих счетов" in caption
    )
    assert "🔴 низкая:" in caption and "Закрыто счетов за 2023 г. (1 кв.)" in caption
    assert_png(call.files[0][1])

    assert only(harness.send("/report")).text == texts.REPORT_NONE
    write_lookup(bot_store, report=True)
    document = only(harness.send("/report"), "SendDocument")
    assert document.files == [("npf-report-2023Q1.html", b"<html>report</html>")]


def test_anything_else_gets_a_hint(harness: Harness) -> None:
    assert only(harness.send("привет")).text == texts.FALLBACK
    assert only(harness.send("/unknown")).text == texts.FALLBACK


def test_errors_are_short_and_leak_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(query: str) -> Any:
        raise RuntimeError(f"cannot read {query}")

    harness.app.view.find = broken
    with caplog.at_level(logging.INFO):
        call = only(harness.send(f"/client {C_TWO_ACCOUNTS}"))
    assert call.text == texts.ERROR
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "RuntimeError" in logged and C_TWO_ACCOUNTS[2:] not in logged


def test_no_scores_yet(tmp_path: Path) -> None:
    h = Harness(LocalStore(tmp_path / "empty"), tmp_path)
    try:
        assert only(h.send(f"/client {C_TWO_ACCOUNTS}")).text == texts.NO_DATA
        assert only(h.send("/top")).text == texts.NO_DATA
        assert only(h.send("/start")).text == texts.start(False)
    finally:
        h.close()


# --- access ---------------------------------------------------------------------------------
def test_stranger_is_refused_once_even_after_a_cold_start(
    harness: Harness, bot_store: LocalStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        refusal = only(harness.send(f"/client {C_TWO_ACCOUNTS}", STRANGER))
    assert refusal.text == texts.REFUSAL.format(user_id=STRANGER)
    assert harness.send("/start", STRANGER) == []
    assert harness.press(OpenAccount(account=A_RISKY[2:]).pack(), None, STRANGER) == []
    logged = [getattr(r, "fields", {}) for r in caplog.records if r.name == "bot.access"]
    assert logged and all(set(f) <= {"user_id", "refused_now"} for f in logged)
    fresh = Harness(bot_store, tmp_path)  # a new container reads the refusal from storage
    try:
        assert fresh.send("/start", STRANGER) == []
    finally:
        fresh.close()


def test_grant_persists_and_revoke(harness: Harness, bot_store: LocalStore, tmp_path: Path) -> None:
    assert only(harness.send(f"/grant {NEWCOMER}", MANAGER)).text == texts.ADMIN_ONLY
    assert only(harness.send("/grant abc", ADMIN)).text == texts.GRANT_USAGE
    assert only(harness.send(f"/grant {NEWCOMER}", ADMIN)).text == texts.GRANTED.format(
        user_id=NEWCOMER
    )
    assert only(harness.send(f"/grant {NEWCOMER}", ADMIN)).text == texts.ALREADY_GRANTED.format(
        user_id=NEWCOMER
    )
    assert bot_store.get_json(MANAGERS_KEY)["managers"] == [NEWCOMER]
    assert only(harness.send("/start", NEWCOMER)).text == texts.start(False)

    fresh = Harness(bot_store, tmp_path)  # a new FundView, dispatcher and access list
    try:
        assert only(fresh.send(f"/client {C_TWO_ACCOUNTS}", NEWCOMER), "SendPhoto")
        listing = only(fresh.send("/managers", ADMIN)).text or ""
        assert f"<code>{NEWCOMER}</code>" in listing and f"<code>{MANAGER}</code>" in listing
        assert only(fresh.send(f"/revoke {MANAGER}", ADMIN)).text == (
            texts.REVOKE_CONFIGURED.format(user_id=MANAGER)
        )
        assert only(fresh.send(f"/revoke {NEWCOMER}", ADMIN)).text == texts.REVOKED.format(
            user_id=NEWCOMER
        )
        assert only(fresh.send("/start", NEWCOMER)).text == texts.REFUSAL.format(user_id=NEWCOMER)
    finally:
        fresh.close()
    assert bot_store.get_json(MANAGERS_KEY)["managers"] == []


def test_rate_limit(bot_store: LocalStore, tmp_path: Path) -> None:
    h = Harness(bot_store, tmp_path, rate_limit_per_minute=3)
    try:
        for _ in range(3):
            assert only(h.send("/help")).text
        warned = only(h.send("/help"))
        assert warned.text == texts.RATE_LIMITED.format(limit=3)
        assert h.send("/help") == []  # told once, then silence
        assert only(h.send("/help", ADMIN)).text  # others are not affected
    finally:
        h.close()


def test_rate_limiter_window() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert [limiter.check(1) for _ in range(4)] == [
        Verdict.ALLOW,
        Verdict.ALLOW,
        Verdict.WARN,
        Verdict.SILENT,
    ]
    now[0] = 61.0
    assert limiter.check(1) is Verdict.ALLOW


def test_missing_token_is_explicit(tmp_path: Path) -> None:
    with pytest.raises(MissingTokenError):
        build_app(Settings(store=str(tmp_path / "bucket"), work_dir=tmp_path))


def test_card_from_s3(s3_store: Store, tmp_path: Path) -> None:
    write_lookup(s3_store)
    h = Harness(s3_store, tmp_path)
    try:
        call = only(h.send(f"/client {A_CALM}"), "SendPhoto")
        assert A_CALM in (call.text or "")
        assert_png(call.files[0][1])
    finally:
        h.close()


# --- settings and secrets -------------------------------------------------------------------
def test_settings_read_id_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPF_MANAGERS", "100, 101;102")
    monkeypatch.setenv("NPF_ADMINS", "[200]")
    monkeypatch.setenv("NPF_BOT_TOKEN", "123:secret")
    settings = Settings()
    assert settings.managers == [100, 101, 102] and settings.admins == [200]
    assert "123:secret" not in repr(settings)


def test_secrets_from_ssm(aws_env: None) -> None:
    """SecureString parameters under the prefix override the environment (botocore's stubber
    checks the request against the real SSM API model)."""
    import boto3
    from botocore.stub import Stubber

    from npf_loyalty.secrets import with_ssm_secrets

    ssm = boto3.client("ssm", region_name="eu-central-1")
    values = {"bot_token": "42:from-ssm", "webhook-secret": "hook", "managers": "100,101"}
    parameters = [
        {"Name": f"/npf/prod/{name}", "Type": "SecureString", "Value": value}
        for name, value in {**values, "admins": "200"}.items()
    ]
    expected = {"Path": "/npf/prod/", "Recursive": False, "WithDecryption": True}
    with Stubber(ssm) as stub:
        stub.add_response(
            "get_parameters_by_path",
            {"Parameters": parameters[:2], "NextToken": "page-2"},
            expected,
        )
        stub.add_response(
            "get_parameters_by_path",
            {"Parameters": parameters[2:]},
            {**expected, "NextToken": "page-2"},
        )
        settings = with_ssm_secrets(Settings(ssm_prefix="npf/prod", managers=[1]), ssm)
        stub.assert_no_pending_responses()
    assert settings.bot_token is not None and settings.bot_token.get_secret_value() == "42:from-ssm"
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == "hook"
    assert settings.managers == [100, 101] and settings.admins == [200]
    assert with_ssm_secrets(Settings(managers=[1])).managers == [1]  # no prefix: unchanged


# --- the webhook ----------------------------------------------------------------------------
class FakeTelegram(BaseHTTPRequestHandler):
    """Just enough of the Bot API: every call succeeds; sends return a message."""

    calls: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        method = self.path.rsplit("/", 1)[-1]
        FakeTelegram.calls.append(method)
        result: Any = True
        if method.lower().startswith("send"):
            result = {"message_id": 1, "date": 1775030400, "chat": {"id": 100, "type": "private"}}
        body = json.dumps({"ok": True, "result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def webhook(
    bot_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTelegram)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    FakeTelegram.calls = []
    for name, value in {
        "NPF_STORE": bot_store.uri,
        "NPF_WORK_DIR": str(tmp_path),
        "NPF_BOT_TOKEN": "123456:TEST-TOKEN",
        "NPF_WEBHOOK_SECRET": "test-webhook-secret",
        "NPF_MANAGERS": str(MANAGER),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NPF_SSM_PREFIX", raising=False)
    get_settings.cache_clear()
    sys.modules.pop("bot.webhook", None)
    module = importlib.import_module("bot.webhook")
    base = f"http://127.0.0.1:{server.server_port}"
    module.app.bot.session = AiohttpSession(api=TelegramAPIServer.from_base(base))
    try:
        yield module
    finally:
        module.loop.run_until_complete(module.app.bot.session.close())
        module.loop.close()
        asyncio.set_event_loop(None)
        module.app.view.close()
        server.shutdown()
        server.server_close()
        sys.modules.pop("bot.webhook", None)
        get_settings.cache_clear()


def test_webhook_checks_the_secret(webhook: ModuleType) -> None:
    event = load_event("function_url_telegram_update.json")
    missing = {**event, "headers": {"content-type": "application/json"}}
    assert webhook.handler(missing)["statusCode"] == 403
    wrong = {**event, "headers": {**event["headers"], "x-telegram-bot-api-secret-token": "nope"}}
    assert webhook.handler(wrong)["statusCode"] == 403
    assert FakeTelegram.calls == []
    assert webhook.handler(event)["statusCode"] == 200
    assert FakeTelegram.calls == ["sendMessage"]


def test_webhook_reuses_its_loop_across_invocations(webhook: ModuleType) -> None:
    function_url = load_event("function_url_telegram_update.json")
    api_gateway = load_event("api_gateway_telegram_update.json")  # mixed-case header, base64
    assert webhook.handler(function_url)["statusCode"] == 200
    assert webhook.handler(api_gateway)["statusCode"] == 200
    assert webhook.handler(function_url)["statusCode"] == 200
    assert FakeTelegram.calls == ["sendMessage"] * 3
    assert not webhook.loop.is_closed()
    bad = {**function_url, "body": "not json"}
    assert webhook.handler(bad)["statusCode"] == 400


# --- the console ----------------------------------------------------------------------------
def test_cli_console(
    bot_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from npf_loyalty.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/client {A_CALM}\n"))
    assert main(["bot", "--console", "--store", bot_store.uri]) == 0
    output = capsys.readouterr().out
    assert "🟢 Лояльность: высокая" in output and "[файл]" in output


def test_console_session(bot_store: LocalStore, tmp_path: Path) -> None:
    typed = iter([f"/client {C_TWO_ACCOUNTS[:12]}", "2", "/stats", "7", "exit"])
    printed: list[str] = []
    code = run_console(
        bot_store.uri, out_dir=tmp_path / "out", read=lambda _: next(typed), write=printed.append
    )
    assert code == 0
    output = "\n".join(printed)
    assert "<b>" not in output and "Лояльность: низкая" in output
    assert f"[2] 🟢 {A_CALM[:10]}…" in output
    assert f"Счетов НПО: 2, показан {A_CALM}" in output  # the second account after pressing 2
    assert "нет кнопки 7" in output
    pictures = sorted((tmp_path / "out").glob("*.png"))
    assert len(pictures) == 3
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pictures)
