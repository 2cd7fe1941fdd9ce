"""Every word the bot says, in one place (Russian; HTML parse mode).

Handlers pass plain results from `npf_loyalty.lookup` here and send what comes back, so the
wording can be reviewed and changed without touching the logic. Values that come from data
(reasons, regions) are HTML-escaped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import date, timedelta
from html import escape

from npf_loyalty.lookup import (
    MAX_CANDIDATES,
    MAX_TOP,
    MIN_PREFIX,
    Account,
    Candidate,
    Client,
    FundStats,
    TopResult,
    YearStat,
)
from npf_loyalty.reasons import plural

CAPTION_LIMIT = 1024  # Telegram's limit for a photo's caption
MESSAGE_LIMIT = 4096

BAND_MARK = {"низкая": "🔴", "средняя": "🟡", "высокая": "🟢"}
BAND_MEANING = {
    "низкая": "скорее всего клиент покинет фонд",
    "средняя": "клиент может уйти, стоит связаться",
    "высокая": "скорее всего клиент останется",
}
BAND_ORDER = ("низкая", "средняя", "высокая")
GENDER = {-1: "женский", 1: "мужской"}

# --- commands -------------------------------------------------------------------------------
COMMANDS: tuple[tuple[str, str], ...] = (
    ("client", "карточка клиента: /client <id клиента или счёта>"),
    ("top", "самые рискованные счета: /top [N] [регион или округ]"),
    ("stats", "лояльность по фонду"),
    ("report", "последний квартальный отчёт"),
    ("help", "что умеет бот"),
)
ADMIN_COMMANDS: tuple[tuple[str, str], ...] = (
    ("grant", "дать доступ: /grant <user_id>"),
    ("revoke", "забрать доступ: /revoke <user_id>"),
    ("managers", "кто имеет доступ"),
)

START = "Здравствуйте! Я показываю, какие клиенты фонда могут расторгнуть договор НПО и почему.\n\n"
HELP = (
    "<b>Команды</b>\n"
    "/client <code>0x…</code> — карточка клиента по id клиента или счёта НПО; "
    f"достаточно первых {MIN_PREFIX} символов\n"
    "/top — самые рискованные счета; /top 20 самарская, /top приволжский\n"
    "/stats — лояльность по фонду и уходы по годам\n"
    "/report — последний квартальный отчёт\n"
    "/help — эта справка"
)
ADMIN_HELP = (
    "\n\n<b>Администратору</b>\n"
    "/grant <code>user_id</code> — дать доступ менеджеру\n"
    "/revoke <code>user_id</code> — забрать доступ\n"
    "/managers — список доступа"
)
FALLBACK = "Не понял запрос. Например: /client 0x1a2b3c4d или /top 10. Все команды — /help"
ERROR = "Не получилось ответить на запрос. Попробуйте ещё раз чуть позже; справка — /help"
NO_DATA = (
    "Оценок лояльности ещё нет: фонд пока не загрузил выгрузки или расчёт не завершён. "
    "Попробуйте позже."
)

# --- access ---------------------------------------------------------------------------------
REFUSAL = (
    "Здравствуйте! Этот бот — внутренний инструмент менеджеров фонда, доступ к нему выдаёт "
    "администратор. Если вы сотрудник фонда, передайте администратору ваш id: {user_id}"
)
RATE_LIMITED = (
    "Слишком много запросов подряд: не больше {limit} в минуту. Подождите немного, "
    "и я снова отвечу."
)
ADMIN_ONLY = "Эта команда только для администраторов бота."
GRANT_USAGE = "Укажите числовой id пользователя Telegram: /grant 123456789"
REVOKE_USAGE = "Укажите числовой id пользователя Telegram: /revoke 123456789"
GRANTED = "Доступ выдан: {user_id}."
ALREADY_GRANTED = "У {user_id} уже есть доступ."
REVOKED = "Доступ забран: {user_id}."
NOT_GRANTED = "У {user_id} не было доступа, выданного через /grant."
REVOKE_CONFIGURED = (
    "{user_id} задан в настройках бота (NPF_MANAGERS / NPF_ADMINS или SSM): "
    "уберите его там, командой это не изменить."
)

# --- /client --------------------------------------------------------------------------------
CLIENT_USAGE = (
    "Укажите id клиента или счёта НПО: /client 0x1a2b3c4d… "
    f"(достаточно первых {MIN_PREFIX} шестнадцатеричных символов)."
)
INVALID_ID = (
    "Это не похоже на id: нужен «0x» и 32 шестнадцатеричных символа (0–9, a–f) "
    f"или хотя бы первые {MIN_PREFIX} из них. Например: /client 0x1a2b3c4d"
)
NOT_FOUND = (
    "Клиент не найден. Проверьте id: подходит id клиента или счёта НПО, "
    "полностью или первые 8+ символов. Среди оценённых только действующие счета."
)
AMBIGUOUS = "Под это начало подходят несколько id — выберите нужный:"
AMBIGUOUS_MORE = f"\nПоказаны первые {MAX_CANDIDATES}; добавьте символов, чтобы сузить поиск."
STALE_BUTTON = "Кнопка устарела: запросите карточку заново."
CHART_TITLE = "Взносы и лояльность по кварталам"
CHART_CONTRIB = "взносы, ₽"
CHART_LOYALTY = "лояльность = 1 − P(уход в след. кв.)"
CHART_SPLIT = "Операции за {quarters} кв."
CHART_SPLIT_CONTRIB = "взносы"
CHART_SPLIT_INCOME = "доход"
CHART_NO_HISTORY = "нет истории по кварталам"

# --- /top -----------------------------------------------------------------------------------
TOP_USAGE = "Например: /top, /top 20, /top 15 самарская, /top приволжский"
TOP_NO_AREA = "Не нашёл регион или округ «{area}» среди рискованных счетов. " + TOP_USAGE
TOP_TITLE_ONE = "самый рискованный счёт"
TOP_TITLE_FEW = "самых рискованных счёта"
TOP_TITLE_MANY = "самых рискованных счетов"
TOP_CLAMPED = f"Показываю не больше {MAX_TOP}."
TOP_EMPTY = "Оценённых счетов пока нет."

# --- /stats and /report ---------------------------------------------------------------------
STATS_CHART_YEARS = "Доля закрытых счетов по годам"
STATS_CHART_QUARTERS = "по кварталам"
STATS_CHART_BANDS = "Лояльность сейчас (горизонт — год)"
STATS_CHART_BAND_LABEL = "{band}: {count} ({share})"
REPORT_NONE = "Квартального отчёта пока нет: он появится после первого расчёта за квартал."
REPORT_CAPTION = "Квартальный отчёт по лояльности клиентов"

_TAG = re.compile(r"<[^>]+>")


# --- formatting helpers ---------------------------------------------------------------------
def rub(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "нет данных"
    return f"{value:,.0f} ₽".replace(",", " ")


def pct(p: float | None, digits: int = 1) -> str:
    if p is None or math.isnan(p):
        return "—"
    return f"{100 * p:.{digits}f}%".replace(".", ",")


def number(value: float) -> str:
    return f"{value:,.0f}".replace(",", " ")


def quarter_name(quarter: str) -> str:
    """ "2023Q1" → "1 кв. 2023"."""
    if len(quarter) == 6 and quarter[4] == "Q":
        return f"{quarter[5]} кв. {quarter[:4]}"
    return quarter


def quarter_end(quarter: str) -> date | None:
    try:
        year, q = int(quarter[:4]), int(quarter[5])
    except (ValueError, IndexError):
        return None
    if not 1 <= q <= 4:
        return None
    return date(year, 3 * q, 1) + timedelta(days=31 if q in (1, 4) else 30) - timedelta(days=1)


def year_span(year: YearStat) -> str:
    """ "2022 г." or, for a year not over yet, "2023 г. (1 кв.)"."""
    if year.quarters >= 4:
        return f"{year.year} г."
    return f"{year.year} г. ({year.quarters} кв.)"


def short_id(identifier: str) -> str:
    return identifier[: 2 + MIN_PREFIX] + "…"


def relative_risk(account: Account) -> str:
    """ "риск в 6 раз выше среднего, 1% самых рискованных"."""
    rr = account.relative_risk
    if rr is None or math.isnan(rr) or rr <= 0:
        words = "риск не сравнить со средним"
    elif 1 / 1.25 <= rr <= 1.25:
        words = "риск на уровне среднего по фонду"
    elif rr > 1:
        words = f"риск в {_times(rr)} выше среднего"
    else:
        words = f"риск в {_times(1 / rr)} ниже среднего"
    top = account.risk_top_pct
    if top is not None and not math.isnan(top) and top <= 50:
        words += f", {max(1, math.ceil(top))}% самых рискованных"
    return words


def _times(x: float) -> str:
    if x >= 10 or abs(x - round(x)) < 0.05:
        n = round(x)
        return f"{n} {plural(n, 'раз', 'раза', 'раз')}"
    return f"{x:.1f} раза".replace(".", ",")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def age_words(age: int | None) -> str:
    if age is None:
        return "возраст не указан"
    years = int(age)  # the feature table keeps ages as numbers, e.g. 38.0
    return f"{years} {plural(years, 'год', 'года', 'лет')}"


def plain(text: str) -> str:
    """Text without HTML tags, for the console."""
    return _TAG.sub("", text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# --- /start and /help -----------------------------------------------------------------------
def start(is_admin: bool) -> str:
    return START + help_text(is_admin)


def help_text(is_admin: bool) -> str:
    return HELP + (ADMIN_HELP if is_admin else "")


# --- /client --------------------------------------------------------------------------------
def client_card(client: Client, account: Account) -> str:
    """The card's caption: who, how loyal, why, and the money."""
    band = account.band or "—"
    lines = [
        f"👤 <b>Клиент</b> <code>{escape(client.client_id)}</code>",
        f"Пол: {GENDER.get(client.gender or 0, 'не указан')} · {age_words(client.age)}",
    ]
    if len(client.accounts) > 1:
        lines.append(
            f"Счетов НПО: {len(client.accounts)}, показан <code>{escape(account.npo_account_id)}"
            "</code> (переключите кнопками)"
        )
    else:
        lines.append(f"Счёт НПО: <code>{escape(account.npo_account_id)}</code>")
    lines += [
        "",
        f"{BAND_MARK.get(band, '⚪')} Лояльность: <b>{escape(band)}</b>"
        + (f" — {BAND_MEANING[band]}" if band in BAND_MEANING else ""),
        f"Вероятность ухода: в следующем квартале <b>{pct(account.p_leave_next_q)}</b>, "
        f"в течение года <b>{pct(account.p_leave_next_4q)}</b>",
        _capital(relative_risk(account)),
    ]
    reasons = account.reasons
    if reasons:
        lines += ["", "<b>Почему</b> (↑ повышает риск, ↓ снижает):"]
        lines += [f"{'↑' if c > 0 else '↓'} {escape(text)}" for text, c in reasons]
    last = last_contribution(account)
    lines += [
        "",
        f"Взносы за {quarter_name(account.quarter)}: {rub(account.contrib_q)}",
        f"Остаток на счёте: {rub(account.balance)}",
        f"Последний взнос: {last}",
    ]
    if account.region:
        lines.append(f"Регион: {escape(account.region)}")
    return fit("\n".join(lines), CAPTION_LIMIT)


def last_contribution(account: Account) -> str:
    end = quarter_end(account.quarter)
    days = account.days_since_contrib
    if end is None or days is None or math.isnan(days):
        return "нет данных"
    return (end - timedelta(days=int(days))).strftime("%d.%m.%Y")


def account_button(account: Account, selected: bool) -> str:
    mark = BAND_MARK.get(account.band or "", "⚪")
    return f"{'• ' if selected else ''}{mark} {short_id(account.npo_account_id)}"


def ambiguous(more: bool) -> str:
    return AMBIGUOUS + (AMBIGUOUS_MORE if more else "")


def candidate_button(candidate: Candidate) -> str:
    kind = "клиент" if candidate.kind == "client" else "счёт"
    return f"{kind} {candidate.id[:18]}…"


# --- /top -----------------------------------------------------------------------------------
def top(result: TopResult, area: str | None, clamped: bool) -> str:
    if not result.accounts:
        return TOP_NO_AREA.format(area=escape(area)) if area else TOP_EMPTY
    where = f" — {escape(', '.join(result.areas))}" if area and result.areas else ""
    n = len(result.accounts)
    title = plural(n, TOP_TITLE_ONE, TOP_TITLE_FEW, TOP_TITLE_MANY)
    lines = [
        f"<b>{n} {title}{where}</b>",
        "вероятность ухода в квартале / за год · остаток под риском",
    ]
    for i, account in enumerate(result.accounts, 1):
        mark = BAND_MARK.get(account.band or "", "⚪")
        region = "" if area else f" · {escape(account.region or '')}"
        lines.append(
            f"{i}. {mark} <code>{escape(account.npo_account_id[: 2 + MIN_PREFIX])}</code> "
            f"{pct(account.p_leave_next_q, 0)} / {pct(account.p_leave_next_4q, 0)} · "
            f"{rub(account.balance_at_risk)}{region}"
        )
    if clamped:
        lines.append(TOP_CLAMPED)
    lines.append("Карточка — кнопкой с номером.")
    return "\n".join(lines)


# --- /stats ---------------------------------------------------------------------------------
def stats(s: FundStats) -> str:
    total = max(s.accounts_scored, 1)
    lines = [
        f"<b>Фонд на {quarter_name(s.quarter)}</b>",
        f"Оценено действующих счетов: {number(s.accounts_scored)}",
        f"Ожидаемо уйдут в следующем квартале: ≈{number(s.expected_leavers_next_q)} "
        f"({pct(s.expected_leavers_next_q / total)})",
        f"Ожидаемо уйдут в течение года: ≈{number(s.expected_leavers_next_4q)} "
        f"({pct(s.expected_leavers_next_4q / total)})",
        f"Остаток под риском в следующем квартале: {rub(s.balance_at_risk_next_q)}",
        "",
        "<b>Лояльность</b> (горизонт — год):",
    ]
    for band in BAND_ORDER:
        count = s.bands.get(band, 0)
        lines.append(f"{BAND_MARK[band]} {band}: {number(count)} ({pct(count / total)})")
    years = [y for y in s.by_year.values() if y.accounts]
    if years:
        year = years[-1]
        span = year_span(year)
        lines.append(
            f"\nЗакрыто счетов за {span}: {number(year.left)} ({pct(year.left / year.accounts)})"
        )
    return fit("\n".join(lines), CAPTION_LIMIT)


# --- admin ----------------------------------------------------------------------------------
def managers(configured: Sequence[int], admins: Sequence[int], granted: Sequence[int]) -> str:
    def ids(values: Sequence[int]) -> str:
        return ", ".join(f"<code>{v}</code>" for v in values) or "—"

    return (
        "<b>Доступ к боту</b>\n"
        f"Администраторы (настройки): {ids(admins)}\n"
        f"Менеджеры (настройки): {ids(configured)}\n"
        f"Менеджеры (выдан /grant): {ids(granted)}"
    )


def fit(text: str, limit: int) -> str:
    """Cut a text at a line boundary so that Telegram accepts it."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    return cut[: cut.rfind("\n")] if "\n" in cut else cut + "…"


def split(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split a long text into messages at line boundaries."""
    parts: list[str] = []
    current = ""
    for line in text.split("\n"):
        if current and len(current) + 1 + len(line) > limit:
            parts.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    parts.append(current)
    return parts
