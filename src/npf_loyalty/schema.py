"""The fund's data contract: every column of every uploaded table, defined once.

The names are the fund's own (NPF «Будущее» case, April 2024) so that a real export drops in
unchanged. Readers validate against these definitions, the generator writes them, and
`docs/data-contract.md` describes them; nothing else spells a column name of a dump.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """How a column's text is parsed; each maps to one DuckDB type."""

    ID = "id"  # "0x" + 32 hex digits (case-insensitive); the prefix may be missing
    INT = "int"
    FLOAT = "float"
    DATE = "date"  # YYYY-MM-DD or DD.MM.YYYY
    QUARTER = "quarter"  # "2017Q4"
    POSTAL = "postal"  # 6 digits; "443001.0" is accepted
    TEXT = "text"


DUCKDB_TYPES: dict[Kind, str] = {
    Kind.ID: "VARCHAR",
    Kind.INT: "BIGINT",
    Kind.FLOAT: "DOUBLE",
    Kind.DATE: "DATE",
    Kind.QUARTER: "VARCHAR",
    Kind.POSTAL: "VARCHAR",
    Kind.TEXT: "VARCHAR",
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    meaning: str
    nullable: bool = False
    allowed: tuple[int, ...] | None = None
    min: float | None = None
    max: float | None = None
    optional: bool = False  # the column itself may be absent from a dump

    @property
    def duckdb_type(self) -> str:
        return DUCKDB_TYPES[self.kind]


@dataclass(frozen=True)
class Table:
    name: str
    meaning: str
    separator: str  # the separator of the fund's original export
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # what identifies a row; duplicates of it are rejected

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if not c.optional)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


FLAG = (0, 1)
YEAR_MIN, YEAR_MAX = 1990, 2100  # the years a dump's quarters may have
#: Every quarter the contract allows, in order ("1990Q1" … "2100Q4").
QUARTERS: tuple[str, ...] = tuple(
    f"{year}Q{q}" for year in range(YEAR_MIN, YEAR_MAX + 1) for q in range(1, 5)
)
MONEY_MAX = 1e11  # 100 bn rubles: anything above is a unit or parsing error
DAYS_MAX = 40_000.0  # ~110 years


def _flag(name: str, meaning: str) -> Column:
    return Column(name, Kind.INT, meaning, nullable=True, allowed=FLAG)


def _money(name: str, meaning: str, *, signed: bool = False) -> Column:
    return Column(
        name, Kind.FLOAT, meaning, nullable=True, min=-MONEY_MAX if signed else 0.0, max=MONEY_MAX
    )


def _days(name: str, meaning: str) -> Column:
    return Column(name, Kind.FLOAT, meaning, nullable=True, min=0.0, max=DAYS_MAX)


def _count(name: str, meaning: str) -> Column:
    return Column(name, Kind.INT, meaning, nullable=True, min=0, max=1_000_000)


SELECTION = Column("slctn_nmbr", Kind.INT, "номер выборки (батч выгрузки)", nullable=True, min=0)

CLIENTS_QUARTERLY = Table(
    name="clnts_fin_prtrt",
    meaning="финансовый портрет клиента: одна строка на счёт НПО за квартал",
    separator=",",
    key=("npo_account_id", "quarter"),
    columns=(
        SELECTION,
        Column("client_id", Kind.ID, "идентификатор клиента"),
        Column("npo_account_id", Kind.ID, "идентификатор счёта НПО"),
        _count("npo_accnts_nmbr", "число счетов НПО у клиента"),
        Column(
            "pmnts_type",
            Kind.INT,
            "тип взносов: 0 не определён, 1 смешанный, 2 через банк, 3 работодатель",
            nullable=True,
            allowed=(0, 1, 2, 3),
        ),
        Column("year", Kind.INT, "год квартала", min=YEAR_MIN, max=YEAR_MAX),
        Column("quarter", Kind.QUARTER, "квартал, например 2017Q4"),
        Column("gender", Kind.INT, "пол: -1 женский, 1 мужской", nullable=True, allowed=(-1, 1)),
        Column("age", Kind.INT, "возраст клиента, лет", nullable=True, min=0, max=120),
        _days("clnt_cprtn_time_d", "срок сотрудничества с фондом, дней"),
        _days("actv_prd_d", "активный период (от первого до последнего взноса), дней"),
        _days("lst_pmnt_rcnc_d", "дней с последнего взноса на конец квартала"),
        _money("balance", "остаток на счёте на конец квартала, руб."),
        _money("oprtn_sum_per_qrtr", "сумма операций за квартал, руб.", signed=True),
        _money("oprtn_sum_per_year", "сумма операций за год, руб.", signed=True),
        Column("frst_pmnt_date", Kind.DATE, "дата первого взноса", nullable=True),
        Column("lst_pmnt_date_per_qrtr", Kind.DATE, "дата последнего взноса в квартале", True),
        _money("frst_pmnt", "сумма первого взноса, руб."),
        _money("lst_pmnt", "сумма последнего взноса, руб."),
        _money("pmnts_sum", "сумма всех взносов, руб."),
        _count("pmnts_nmbr", "число всех взносов"),
        _money("pmnts_sum_per_qrtr", "сумма взносов за квартал, руб."),
        _money("pmnts_sum_per_year", "сумма взносов за год, руб."),
        _count("pmnts_nmbr_per_qrtr", "число взносов за квартал"),
        _count("pmnts_nmbr_per_year", "число взносов за год"),
        _money("incm_sum", "начисленный доход за всё время, руб.", signed=True),
        _money("incm_per_qrtr", "начисленный доход за квартал, руб.", signed=True),
        _money("incm_per_year", "начисленный доход за год, руб.", signed=True),
        Column(
            "mgd_accum_period",
            Kind.FLOAT,
            "период накопления по договору, лет",
            nullable=True,
            min=0,
            max=100,
        ),
        Column(
            "mgd_payment_period",
            Kind.FLOAT,
            "период выплат по договору, лет",
            nullable=True,
            min=0,
            max=100,
        ),
        Column(
            "churn",
            Kind.INT,
            "1 — клиент расторг договор по своей воле в этом квартале, 0 — активен; "
            "отсутствует в выгрузках для скоринга",
            nullable=True,
            allowed=FLAG,
            optional=True,
        ),
        _flag("phone_number", "указан телефон"),
        _flag("email", "указан e-mail"),
        _flag("lk", "есть личный кабинет"),
        _flag("assignee_npo", "назначен правопреемник по НПО"),
        _flag("assignee_ops", "назначен правопреемник по ОПС"),
        _flag("citizen", "гражданин РФ"),
        Column(
            "fact_addrss",
            Kind.INT,
            "фактический адрес: 1 есть, -1 нет, 0 неизвестно",
            nullable=True,
            allowed=(-1, 0, 1),
        ),
        Column("postal_code", Kind.POSTAL, "почтовый индекс (6 цифр)", nullable=True),
        Column("region", Kind.TEXT, "регион текстом, например САМАРСКАЯ ОБЛ", nullable=True),
        _flag("appl_mrkr", "обращение (жалоба) клиента в квартале"),
        _flag("evry_qrtr_pmnt", "платит каждый квартал"),
    ),
)

OPERATION_INCOME = 0
OPERATION_CONTRIBUTION = 1

TRANSACTIONS = Table(
    name="trnsctns",
    meaning="операции по счетам НПО: одна строка на операцию",
    separator=";",
    key=(),  # two identical operations on one day are legitimate
    columns=(
        SELECTION,
        Column("npo_account_id", Kind.ID, "идентификатор счёта НПО"),
        Column(
            "npo_sum",
            Kind.FLOAT,
            "сумма операции, руб.",
            min=-MONEY_MAX,
            max=MONEY_MAX,
        ),
        Column("npo_oprtn_date", Kind.DATE, "дата операции"),
        Column(
            "npo_oprtn_grp",
            Kind.INT,
            "вид операции: 0 начисление дохода, 1 взнос",
            allowed=(OPERATION_INCOME, OPERATION_CONTRIBUTION),
        ),
        Column("year", Kind.INT, "год операции", min=YEAR_MIN, max=YEAR_MAX),
        Column("quarter", Kind.QUARTER, "квартал операции, например 2017Q4"),
    ),
)

CONTRIBUTORS = Table(
    name="cntrbtrs",
    meaning="вкладчики: пенсионная схема счёта",
    separator=";",
    key=("npo_accnt_id",),
    columns=(
        SELECTION,
        Column("npo_accnt_id", Kind.ID, "идентификатор счёта НПО"),
        Column("accnt_pnsn_schm", Kind.INT, "код пенсионной схемы", min=0, max=10_000),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (CLIENTS_QUARTERLY, TRANSACTIONS, CONTRIBUTORS)}

#: Tables the features cannot be built without; `cntrbtrs` only adds the pension scheme.
REQUIRED_FOR_FEATURES = (CLIENTS_QUARTERLY.name, TRANSACTIONS.name)

PENSION_AGE = {-1: 60, 1: 65}  # statutory old-age pension age after the 2019 reform, by gender


# --- the feature table (one row per account and quarter), built by `features` -------------


class Role(StrEnum):
    KEY = "key"  # identifies the row
    LABEL = "label"  # what the model learns; never an input
    INPUT = "input"  # a model input
    INFO = "info"  # carried for reports and the bot; not a model input


@dataclass(frozen=True)
class Feature:
    name: str
    role: Role
    duckdb_type: str
    meaning: str  # plain Russian, shown to managers next to reasons
    categorical: bool = False  # integer codes; encoded before the trees


def _in(name: str, meaning: str, duckdb_type: str = "DOUBLE", *, cat: bool = False) -> Feature:
    return Feature(name, Role.INPUT, duckdb_type, meaning, categorical=cat)


FEATURES: tuple[Feature, ...] = (
    Feature("npo_account_id", Role.KEY, "VARCHAR", "счёт НПО"),
    Feature("client_id", Role.KEY, "VARCHAR", "клиент"),
    Feature("quarter", Role.KEY, "VARCHAR", "квартал, например 2017Q4"),
    Feature("quarter_idx", Role.KEY, "INTEGER", "номер квартала: год·4 + (квартал − 1)"),
    Feature("quarter_end", Role.INFO, "DATE", "последний день квартала"),
    Feature("churn", Role.LABEL, "INTEGER", "ушёл в этом квартале (из выгрузки)"),
    Feature("label_next_q", Role.LABEL, "INTEGER", "уйдёт в следующем квартале"),
    Feature("label_next_4q", Role.LABEL, "INTEGER", "уйдёт в ближайшие 4 квартала"),
    Feature("is_scoring_row", Role.INFO, "BOOLEAN", "последний квартал активного счёта"),
    Feature("region", Role.INFO, "VARCHAR", "регион (справочник) или «unknown»"),
    Feature("federal_district", Role.INFO, "VARCHAR", "федеральный округ или «unknown»"),
    Feature("region_source", Role.INFO, "VARCHAR", "откуда регион: region, postal, unknown"),
    Feature(
        "macro_carried_forward", Role.INFO, "INTEGER", "макроряды продлены последним значением"
    ),
    # contributions and income, by calendar quarter (0 where the account had no operation)
    _in("contrib_q", "взносы за квартал, руб."),
    _in("contrib_lag1", "взносы кварталом ранее, руб."),
    _in("contrib_lag2", "взносы два квартала назад, руб."),
    _in("contrib_lag3", "взносы три квартала назад, руб."),
    _in("contrib_lag4", "взносы четыре квартала назад, руб."),
    _in("contrib_4q", "взносы за последние 4 квартала, руб."),
    _in("contrib_8q", "взносы за последние 8 кварталов, руб."),
    _in("contrib_trend", "ln((1+взносы за 4 кв.)/(1+взносы за 4 кв. до них))"),
    _in("contrib_count_q", "число взносов за квартал", "INTEGER"),
    _in("contrib_count_4q", "число взносов за 4 квартала", "INTEGER"),
    _in("income_q", "начисленный доход за квартал, руб."),
    _in("income_lag1", "доход кварталом ранее, руб."),
    _in("income_lag2", "доход два квартала назад, руб."),
    _in("income_lag3", "доход три квартала назад, руб."),
    _in("income_lag4", "доход четыре квартала назад, руб."),
    _in("income_4q", "доход за последние 4 квартала, руб."),
    _in(
        "days_since_contrib",
        "дней с последнего взноса на конец квартала (пусто — не было)",
        "INTEGER",
    ),
    _in("quarters_without_contrib", "кварталов подряд без взносов", "INTEGER"),
    _in("stopped_paying", "платил в кварталах t−5…t−2, но не платил в t−1 и t", "SMALLINT"),
    # the account and the client
    _in("balance", "остаток на счёте, руб."),
    _in("balance_change_q", "изменение остатка за квартал, руб."),
    _in("balance_change_4q_pct", "изменение остатка за 4 квартала, %"),
    _in("return_4q_pct", "доход за 4 квартала к остатку, %"),
    _in("tenure_years", "срок в фонде, лет"),
    _in("age", "возраст, лет", "SMALLINT"),
    _in("years_to_pension", "лет до пенсионного возраста (60 ж / 65 м)", "SMALLINT"),
    _in("gender", "пол: −1 ж, 1 м", "SMALLINT"),
    _in(
        "pmnts_type",
        "тип взносов: 0 не опр., 1 смешанный, 2 банк, 3 работодатель",
        "SMALLINT",
        cat=True,
    ),
    _in("npo_accnts_nmbr", "число счетов НПО у клиента", "INTEGER"),
    _in("phone_number", "указан телефон", "SMALLINT"),
    _in("email", "указан e-mail", "SMALLINT"),
    _in("lk", "есть личный кабинет", "SMALLINT"),
    _in("assignee_npo", "назначен правопреемник по НПО", "SMALLINT"),
    _in("assignee_ops", "назначен правопреемник по ОПС", "SMALLINT"),
    _in("citizen", "гражданин РФ", "SMALLINT"),
    _in("fact_addrss", "фактический адрес: 1 есть, −1 нет, 0 неизвестно", "SMALLINT"),
    _in("appl_mrkr", "жалоба в этом квартале", "SMALLINT"),
    _in("complaints_4q", "жалоб за 4 квартала", "INTEGER"),
    _in("evry_qrtr_pmnt", "платит каждый квартал (по данным фонда)", "SMALLINT"),
    _in("mgd_accum_period", "период накопления по договору, лет"),
    _in("mgd_payment_period", "период выплат по договору, лет"),
    _in("pension_scheme", "код пенсионной схемы (−1 неизвестна)", "INTEGER", cat=True),
    _in("federal_district_code", "федеральный округ, код (−1 неизвестен)", "SMALLINT", cat=True),
    _in("lat", "широта населённого пункта"),
    _in("lon", "долгота населённого пункта"),
    # the economy at quarter end
    _in("key_rate", "ключевая ставка ЦБ на конец квартала, %"),
    _in("key_rate_change_4q", "изменение ключевой ставки за 4 квартала, п.п."),
    _in("rate_spread_pp", "ключевая ставка минус доходность счёта, п.п."),
    _in("usd_rub", "курс USD/RUB"),
    _in("usd_rub_change_4q_pct", "изменение курса USD/RUB за 4 квартала, %"),
    _in("life_expectancy", "ожидаемая продолжительность жизни для пола клиента, лет"),
)

FEATURE_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
MODEL_INPUTS: tuple[str, ...] = tuple(f.name for f in FEATURES if f.role is Role.INPUT)
LABELS: tuple[str, ...] = ("label_next_q", "label_next_4q")

FEDERAL_DISTRICTS: tuple[str, ...] = (
    "Центральный",
    "Северо-Западный",
    "Южный",
    "Северо-Кавказский",
    "Приволжский",
    "Уральский",
    "Сибирский",
    "Дальневосточный",
)
