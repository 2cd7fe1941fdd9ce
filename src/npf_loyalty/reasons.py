"""Per-account reasons in the managers' words, from exact per-feature contributions.

A contribution is a feature's SHAP value in log-odds of the next-quarter model: positive pushes
the risk of leaving up, negative holds the client. The autoencoder's embedding features have no
plain meaning on their own, so their contributions are summed into one reason, «необычная
история взносов» (unusual contribution history).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

EMBEDDING_PREFIX = "emb_"
EMBEDDING_REASON = "необычная история взносов"


def _rub(value: float) -> str:
    return f"{value:,.0f} ₽".replace(",", " ")


def _flag(yes: str, no: str) -> Callable[[float], str]:
    return lambda v: yes if v >= 0.5 else no


def plural(n: int, one: str, few: str, many: str) -> str:
    """Russian plural form: 1 квартал, 2 квартала, 5 кварталов."""
    n = abs(n)
    if n % 10 == 1 and n % 100 != 11:
        return one
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return few
    return many


def _plural_quarters(n: int) -> str:
    return f"{n} {plural(n, 'квартал', 'квартала', 'кварталов')}"


#: How a feature's value reads to a manager. Features missing here fall back to their meaning.
PHRASES: dict[str, Callable[[float], str]] = {
    "quarters_without_contrib": lambda v: (
        f"нет взносов {_plural_quarters(int(v))}" if v >= 1 else "взносы в этом квартале"
    ),
    "days_since_contrib": lambda v: f"{int(v)} дн. с последнего взноса",
    "stopped_paying": _flag("перестал платить взносы", "взносы не прекращались"),
    "contrib_q": lambda v: f"взносы за квартал {_rub(v)}",
    "contrib_4q": lambda v: f"взносы за год {_rub(v)}",
    "contrib_8q": lambda v: f"взносы за 2 года {_rub(v)}",
    "contrib_count_4q": lambda v: f"{int(v)} взносов за год",
    "contrib_trend": lambda v: "взносы растут" if v > 0 else "взносы снижаются",
    "appl_mrkr": _flag("жалоба в этом квартале", "нет жалоб в этом квартале"),
    "complaints_4q": lambda v: f"жалоб за год: {int(v)}" if v else "жалоб за год не было",
    "lk": _flag("есть личный кабинет", "нет личного кабинета"),
    "email": _flag("указан e-mail", "нет e-mail"),
    "phone_number": _flag("указан телефон", "нет телефона"),
    "assignee_npo": _flag("назначен правопреемник", "нет правопреемника"),
    "evry_qrtr_pmnt": _flag("платит каждый квартал", "платит нерегулярно"),
    "pmnts_type": lambda v: {
        0: "тип взносов не определён",
        1: "смешанные взносы",
        2: "платит сам через банк",
        3: "платит работодатель",
    }.get(int(v), "тип взносов не определён"),
    "age": lambda v: f"возраст {int(v)} лет",
    "years_to_pension": lambda v: (
        f"до пенсии {int(v)} лет" if v > 0 else "пенсионный возраст наступил"
    ),
    "tenure_years": lambda v: f"в фонде {v:.0f} лет" if v >= 1 else "в фонде меньше года",
    "balance": lambda v: f"на счёте {_rub(v)}",
    "balance_change_4q_pct": lambda v: f"остаток за год {v:+.0f}%",
    "return_4q_pct": lambda v: f"доходность счёта {v:.1f}% за год",
    "key_rate": lambda v: f"ключевая ставка {v:.1f}%",
    "rate_spread_pp": lambda v: (
        f"ставка ЦБ выше доходности на {v:.1f} п.п."
        if v > 0
        else f"доходность выше ставки ЦБ на {-v:.1f} п.п."
    ),
}


def describe(feature: str, value: float, meanings: dict[str, str]) -> str:
    if feature.startswith(EMBEDDING_PREFIX):
        return EMBEDDING_REASON
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{meanings.get(feature, feature)}: нет данных"
    phrase = PHRASES.get(feature)
    if phrase is not None:
        return phrase(value)
    return f"{meanings.get(feature, feature)}: {value:g}"


def fold_embeddings(
    contributions: np.ndarray, columns: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """Sum the embedding columns into one column named `emb_*` (placed last)."""
    plain = [i for i, c in enumerate(columns) if not c.startswith(EMBEDDING_PREFIX)]
    embedded = [i for i, c in enumerate(columns) if c.startswith(EMBEDDING_PREFIX)]
    names = [columns[i] for i in plain]
    folded = contributions[:, plain]
    if embedded:
        folded = np.column_stack([folded, contributions[:, embedded].sum(axis=1)])
        names.append(f"{EMBEDDING_PREFIX}*")
    return folded, names


@dataclass(frozen=True)
class TopReasons:
    """The k strongest drivers per row: which column, its contribution, its value and words."""

    names: list[str]  # column names after folding the embeddings
    feature: np.ndarray  # int [rows, k] into `names`
    contribution: np.ndarray  # float [rows, k], log-odds; > 0 raises the risk of leaving
    value: np.ndarray  # float [rows, k]; NaN for the embedding reason
    text: np.ndarray  # object [rows, k]


def top_reasons(
    contributions: np.ndarray,
    values: np.ndarray,
    columns: Sequence[str],
    meanings: dict[str, str],
    k: int = 3,
) -> TopReasons:
    """Pick each row's k strongest drivers, up or down, and put them in words.

    `contributions` is [rows, columns] (SHAP, log-odds) over the model's tree inputs;
    `values` holds the same rows' values of those columns. Words are rendered once per
    distinct (feature, value), which keeps a million rows fast.
    """
    folded, names = fold_embeddings(contributions, columns)
    rows = np.arange(len(folded))
    strength = np.abs(folded)
    picks = np.empty((len(folded), k), dtype=np.int64)
    for rank in range(k):  # k argmax passes beat a full sort of every row
        picks[:, rank] = strength.argmax(axis=1)
        strength[rows, picks[:, rank]] = -1.0
    rows = rows[:, None]
    contribution = folded[rows, picks]
    index = {c: i for i, c in enumerate(columns)}
    source = np.array([index.get(n, -1) for n in names])[picks]  # -1: the folded embeddings
    value = np.where(source >= 0, values[rows, np.maximum(source, 0)], np.nan).astype(np.float64)
    text = np.empty(picks.shape, dtype=object)
    for j, name in enumerate(names):
        mask = picks == j
        if not mask.any():
            continue
        distinct, inverse = np.unique(value[mask], return_inverse=True)
        words = np.array([describe(name, float(v), meanings) for v in distinct], dtype=object)
        text[mask] = words[inverse.ravel()]
    return TopReasons(names, picks, contribution, value, text)
