"""A deterministic synthetic fund: the three dump tables plus the truth behind them.

The fund's real data are private, so everything downstream (features, models, reports, the bot)
is built and tested on this generator. It simulates each voluntary pension account (НПО) quarter
by quarter with numpy, vectorised over accounts, and writes the tables exactly as the fund's
export does (`schema.py`).

How the simulation is organised, and why:

* **Covariate path.** For every account the generator simulates its behaviour from the opening
  quarter on: contributions (employer programmes, self-payment through a bank, mixed,
  undefined), investment income by pension scheme and year, complaints, the personal cabinet,
  ageing, and the hidden causes the dump never shows: a per-client latent dissatisfaction
  (static), financial stress (AR(1)), employers ending their programmes, and competitors'
  campaigns in some regions in some quarters. This path does not depend on whether the
  account leaves, so it can be continued for four quarters past an account's last row; the
  truth needs those quarters.
* **Churn hazard** (logit, constants ``W_*`` below): contributions stopped 1–4 quarters ago
  (strongest), complaints this or the last three quarters, no personal cabinet, the policy
  rate above the account's return, a negative return, a new account, a young self-payer
  (raise it); an active employer programme and nearing pension age (lower it); plus the hidden
  causes and noise. Observable causes carry most of the signal (see the truth's two logits).
* **Exits.** At the end of each quarter the generator fixes, for every account, the hazard of
  leaving voluntarily in the next quarter (`lambda`) and the probability that the account ends
  for another reason (death, about 0.1–0.4 %/quarter by age, or moving to the payout phase,
  5 %/quarter from pension age 60 ж / 65 м; `d`). A voluntary exit gives a last row with
  ``churn = 1``; another end simply stops the rows (``other_end_after = 1`` in the truth, also
  when that happens in the quarter after the dump ends).
* **Truth.** ``p_leave_next_q = (1 − d) · lambda`` of the next quarter: exactly the probability
  that was used to draw the exit, given everything at the row's quarter, hidden causes
  included. ``p_leave_next_4q`` is the exact competing-risk product of the per-quarter
  probabilities along the account's *realised covariate path* (continued past its last row
  where needed): ``Σ_k Π_{j<k} (1 − d_j)(1 − lambda_j) · (1 − d_k) · lambda_k``. It therefore
  conditions on the account's future behaviour (e.g. a complaint two quarters ahead) and is an
  upper bound for what a model can reach, not an expectation over futures.
* **Transfers.** A transfer of savings from another fund is recorded as a large first
  contribution (``npo_oprtn_grp = 1``), so ``balance = pmnts_sum + incm_sum`` always.
* **Money** is kept in integer kopecks throughout, so every aggregate in `clnts_fin_prtrt`
  equals the sum of the account's `trnsctns` rows exactly.

Accounts opened before the window keep their earlier history in `trnsctns` (cumulative columns
need it) and have no exits before the window (the dump holds the accounts that were there).
"""

from __future__ import annotations

import codecs
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from npf_loyalty import schema

FArr = npt.NDArray[np.float64]
IArr = npt.NDArray[np.int64]
BArr = npt.NDArray[np.bool_]

Progress = Callable[[str], None]

# --- calibration: every number that shapes the fund, named ----------------------------------

FUND_START = "1993Q2"  # no account of the fund is older (the macro series start here too)
PRE_WINDOW_QUARTERS = 40  # how far before the window the oldest surviving accounts opened
OPEN_GROWTH = 0.035  # per quarter: the fund took on more accounts every year
PRE_WINDOW_SURVIVAL = 0.025  # per quarter: thins the pre-window cohorts to the survivors

SCHEMES = (1, 2, 3, 5, 7)
SCHEME_WEIGHTS = (0.50, 0.22, 0.15, 0.09, 0.04)
SCHEME_OFFSET_PP = (0.0, 0.7, -1.0, 1.2, 0.0)  # return relative to the market, p.p.
SCHEME_BETA = (1.0, 1.1, 0.6, 1.5, 1.8)  # exposure to the year's bond/equity shocks
SCHEME_NOISE_PP = (0.4, 0.7, 0.3, 1.5, 2.5)
SCHEME_QUARTERLY = (False, True, False, True, False)  # income accrued quarterly, else at year end

#: extra market shocks (p.p.) on top of the rate-driven return: the bad years
BAD_YEARS_PP = {1998: -20.0, 2008: -10.0, 2011: -2.0, 2022: -3.0}
#: quarters in which employers ended pension programmes much more often (crises)
CRISIS_QUARTERS = frozenset(
    {"1998Q3", "1998Q4", "2008Q4", "2009Q1", "2009Q2", "2014Q4", "2015Q1", "2015Q2"}
    | {"2020Q2", "2022Q1", "2022Q2"}
)

#: average nominal monthly wage in Russia, thousand post-1998 rubles (Rosstat, rounded); scales
#: every contribution so that amounts look right in every year
WAGE_K_RUB = {
    1993: 0.059, 1994: 0.221, 1995: 0.472, 1996: 0.790, 1997: 0.950, 1998: 1.052,
    1999: 1.523, 2000: 2.223, 2001: 3.240, 2002: 4.360, 2003: 5.499, 2004: 6.740,
    2005: 8.555, 2006: 10.634, 2007: 13.593, 2008: 17.290, 2009: 18.638, 2010: 20.952,
    2011: 23.369, 2012: 26.629, 2013: 29.792, 2014: 32.495, 2015: 34.030, 2016: 36.709,
    2017: 39.167, 2018: 43.724, 2019: 47.867, 2020: 51.344, 2021: 57.244, 2022: 65.338,
    2023: 73.000,
}  # fmt: skip

# employer programme patterns: operations per month (0 = one operation per quarter);
# 2 = the employee's and the employer's parts, 4 = both parts twice a month (advance + salary)
EMPLOYER_PATTERNS = (0, 1, 2, 4)
EMPLOYER_PATTERN_WEIGHTS = (0.05, 0.10, 0.30, 0.55)
EMPLOYEE_SHARE = 0.4  # of a month's employer-programme contribution
EMPLOYER_END_Q = 0.006  # programme ends, per quarter
EMPLOYER_END_CRISIS_Q = 0.04
MONTH_SKIP = 0.03  # an employer misses a month

BANK_MU = 0.55  # operations per quarter of an active self-payer, Q1–Q3
BANK_Q4_FACTOR = 2.4  # tax deduction: the year's top-up comes in Q4
BANK_DECEMBER = 0.65  # share of Q4 self-payments made in December
UNDEFINED_MU = 0.35

# churn hazard (logit) for the next quarter; observable causes
B0 = -5.05
W_STOP_RECENT = 1.2  # last contribution 1–4 quarters ago
W_STOP_MID = 0.8  # 5–12 quarters ago
W_STOP_OLD = 0.4  # longer ago: dormant accounts rarely bother to leave
W_COMPLAINT_NOW = 1.6
W_COMPLAINT_RECENT = 0.9  # a complaint in the previous three quarters
W_NO_CABINET = 0.45
W_SPREAD = 0.07  # per p.p. of key rate above the account's return, clipped to [-5, 15]
W_NEGATIVE_RETURN = 0.5
W_NEAR_PENSION = -0.7  # five years or less to pension age
W_PRE_PENSION = -0.3  # five to ten years
W_YOUNG_SELF_PAYER = 0.5  # under 35, paying through a bank or undefined
W_EMPLOYER_ACTIVE = -0.5  # leaving would forfeit the employer's part
W_MIXED_EMPLOYER_ACTIVE = -0.25
W_NEW_ACCOUNT = 0.35  # first two years
# hidden causes
W_LATENT = 0.45  # per s.d. of the client's latent dissatisfaction
W_STRESS = 0.3  # per s.d. of financial stress
W_CAMPAIGN = 1.0  # a competitor's campaign in the client's region
NOISE_SD = 0.3

DEATH_BASE = 0.0008  # per quarter
DEATH_PER_YEAR_OVER_40 = 0.00012
PAYOUT_AFTER_PENSION_AGE = 0.05  # per quarter once pension age is reached

CAMPAIGN_START = 0.012  # per region and quarter
COMPLAINT_B0 = -4.7

XLSX_MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; the same config always gives byte-identical tables."""

    accounts: int = 5000
    seed: int = 7
    quarters: int = 40  # span of quarters ending at end_quarter
    end_quarter: str = "2023Q1"


@dataclass
class SyntheticFund:
    """The dump tables of a synthetic fund and the truth the dump does not show."""

    clients: pa.Table  # clnts_fin_prtrt, columns exactly schema.CLIENTS_QUARTERLY.names
    transactions: pa.Table  # trnsctns
    contributors: pa.Table  # cntrbtrs
    #: one row per clients row, same order: npo_account_id, quarter, p_leave_next_q,
    #: p_leave_next_4q, p_other_end_next_q, other_end_after (rows stop after this one for
    #: death/payout), latent_dissatisfaction, financial_stress, competitor_campaign_next_q,
    #: logit_observable_next_q, logit_hidden_next_q (the hazard's two parts; noise is hidden)
    truth: pa.Table


# --- quarters and calendar ------------------------------------------------------------------

_QUARTER_RE = re.compile(r"^(\d{4})Q([1-4])$")


def quarter_index(label: str) -> int:
    """``"2017Q4"`` → year·4 + (quarter − 1), the product's quarter_idx."""
    m = _QUARTER_RE.match(label)
    if m is None:
        raise ValueError(f"not a quarter: {label!r} (expected e.g. 2017Q4)")
    return int(m.group(1)) * 4 + int(m.group(2)) - 1


def quarter_label(index: int) -> str:
    return f"{index // 4}Q{index % 4 + 1}"


@dataclass(frozen=True)
class _Calendar:
    """Dates of the simulated quarters, as days since 1970-01-01 (date32)."""

    qidx: IArr
    year: IArr
    qnum: IArr  # 1..4
    start: IArr
    end: IArr  # last day of the quarter
    month_start: IArr  # (n, 3)
    labels: list[str]

    @classmethod
    def build(cls, first: int, last: int) -> _Calendar:
        qidx = np.arange(first, last + 1, dtype=np.int64)
        year = qidx // 4
        qnum = qidx % 4 + 1
        months = (year - 1970) * 12 + (qnum - 1) * 3
        grid = months[:, None] + np.arange(4)[None, :]
        days = grid.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
        return cls(
            qidx=qidx,
            year=year,
            qnum=qnum,
            start=days[:, 0],
            end=days[:, 3] - 1,
            month_start=days[:, :3].copy(),
            labels=[quarter_label(int(q)) for q in qidx],
        )


# --- reference data -------------------------------------------------------------------------


def _resource_csv(name: str, types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Read a CSV bundled in npf_loyalty/data (works from a wheel or a zip, not only a folder)."""
    data = resources.files("npf_loyalty.data").joinpath(name).read_bytes()
    return pacsv.read_csv(
        io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types=types or {})
    )


def _policy_rate(cal: _Calendar) -> FArr:
    """Key/refinancing rate at each quarter's end, %; carried beyond the series' ends."""
    t = _resource_csv("policy_rate_quarterly.csv")
    known = np.array([quarter_index(q) for q in t.column("quarter").to_pylist()], np.int64)
    rate = np.asarray(t.column("rate").to_numpy(), np.float64)
    order = np.argsort(known)
    known, rate = known[order], rate[order]
    pos = np.clip(np.searchsorted(known, cal.qidx, side="right") - 1, 0, len(known) - 1)
    return rate[pos]


def _wage_k(years: IArr) -> FArr:
    """Average monthly wage, thousand rubles; 7 %/year beyond the table, /3 a year before it."""
    lo, hi = min(WAGE_K_RUB), max(WAGE_K_RUB)
    out = np.empty(len(years), np.float64)
    for i, y in enumerate(years.tolist()):
        if y > hi:
            out[i] = WAGE_K_RUB[hi] * 1.07 ** (y - hi)
        elif y < lo:
            out[i] = WAGE_K_RUB[lo] / 3.0 ** (lo - y)
        else:
            out[i] = WAGE_K_RUB[y]
    return out


@dataclass(frozen=True)
class _Geography:
    """Cities weighted by population, with each region's dump spellings."""

    city_region: IArr
    city_postal: IArr
    city_population: FArr
    city_is_moscow: BArr
    city_is_spb: BArr
    region_texts: pa.Array  # n_regions * 5 spellings (key, full, type first, lower, null)
    n_regions: int

    @classmethod
    def load(cls) -> _Geography:
        regions = _resource_csv("regions.csv")
        cities = _resource_csv("cities.csv", {"postal_code": pa.string()})
        names = regions.column("region").to_pylist()
        keys = regions.column("region_key").to_pylist()
        types = regions.column("region_type").to_pylist()
        index = {n: i for i, n in enumerate(names)}
        postal = cities.column("postal_code").to_pylist()
        region = cities.column("region").to_pylist()
        pop = cities.column("population").to_pylist()
        keep = [
            i
            for i, p in enumerate(postal)
            if p is not None and len(p) == 6 and p.isdigit() and region[i] in index
        ]
        texts: list[str | None] = []
        for key, kind in zip(keys, types, strict=True):
            words = key.split(" ")
            full = key[: -len(" ОБЛ")] + " ОБЛАСТЬ" if kind == "обл" else None
            if words[0] == "Г":
                first = " ".join([*words[1:], "Г"])
            else:
                first = " ".join([words[-1], *words[:-1]])
            texts += [key, full or first, first, key.lower(), None]
        return cls(
            city_region=np.array([index[region[i]] for i in keep], np.int64),
            city_postal=np.array([int(postal[i]) for i in keep], np.int64),
            city_population=np.array([float(pop[i] or 0) for i in keep], np.float64),
            city_is_moscow=np.array([region[i] == "г Москва" for i in keep]),
            city_is_spb=np.array([region[i] == "г Санкт-Петербург" for i in keep]),
            region_texts=pa.array(texts, pa.string()),
            n_regions=len(names),
        )


# --- identifiers ----------------------------------------------------------------------------

_HEX = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")


def _hex_ids(rng: np.random.Generator, n: int) -> pa.StringArray:
    """n distinct "0x" + 32 lowercase hex ids, built as one buffer (fast at millions)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    if n > 1:
        rows = np.ascontiguousarray(raw).view(np.dtype((np.void, 16))).ravel()
        if len(np.unique(rows)) != n:  # 128 random bits: never in practice
            raise RuntimeError("duplicate synthetic id; change the seed")
    body = np.ascontiguousarray(_HEX[raw]).view("S32").ravel()
    data = np.char.add(np.bytes_(b"0x"), body).astype("S34").tobytes()
    offsets = np.arange(n + 1, dtype=np.int32) * 34
    arr = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    assert isinstance(arr, pa.StringArray)
    return arr


# --- the generator --------------------------------------------------------------------------


def _sigmoid(x: FArr) -> FArr:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), np.float64)


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent streams, so that changing one part does not reshuffle the others."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def _yields(cal: _Calendar, rate: FArr, rng: np.random.Generator) -> tuple[FArr, FArr]:
    """Per scheme: accrual rate per quarter, and the return a client sees at quarter end.

    The market's annual return follows the policy rate (≈ 0.7 of it), loses on rate rises
    (bond prices) and in the bad years; schemes differ by offset, exposure and noise.
    """
    years = np.unique(cal.year)
    n_s = len(SCHEMES)
    mean_rate = np.array([rate[cal.year == y].mean() for y in years])
    last_rate = np.array([rate[cal.year == y][-1] for y in years])
    prev_rate = np.concatenate([[last_rate[0]], last_rate[:-1]])
    shock = -0.8 * (last_rate - prev_rate) + np.array(
        [BAD_YEARS_PP.get(int(y), 0.0) for y in years]
    )
    base = 0.7 * mean_rate - 0.5
    y_pp = (
        base[None, :]
        + np.array(SCHEME_OFFSET_PP)[:, None]
        + np.array(SCHEME_BETA)[:, None] * shock[None, :]
        + rng.normal(size=(n_s, len(years))) * np.array(SCHEME_NOISE_PP)[:, None]
    )
    y = np.clip(y_pp, -12.0, 60.0) / 100.0
    yi = np.searchsorted(years, cal.year)
    y_q = y[:, yi]  # (n_s, n_q): the year's return, by quarter
    accrual = (1.0 + y_q) ** 0.25 - 1.0
    # annual schemes show last year's return until the year-end accrual
    prev = y[:, np.maximum(yi - 1, 0)]
    visible_annual = np.where(cal.qnum[None, :] == 4, y_q, prev)
    kernel = np.ones(4) / 4.0
    visible_q = np.empty_like(y_q)
    for s in range(n_s):
        padded = np.concatenate([np.full(3, y_q[s, 0]), y_q[s]])
        visible_q[s] = np.convolve(padded, kernel, mode="valid")
    quarterly = np.array(SCHEME_QUARTERLY)[:, None]
    return accrual, np.where(quarterly, visible_q, visible_annual)


class _Generator:
    """One run of the simulation; state is plain numpy arrays indexed by account/client."""

    def __init__(self, config: SynthConfig, progress: Progress | None) -> None:
        if config.accounts < 1 or config.quarters < 1:
            raise ValueError("accounts and quarters must be positive")
        self.cfg = config
        self.progress = progress or (lambda _stage: None)
        self.we = quarter_index(config.end_quarter)
        self.ws = self.we - config.quarters + 1
        pre_lo = max(quarter_index(FUND_START), self.ws - PRE_WINDOW_QUARTERS)
        self.open_lo = min(pre_lo, self.ws)
        # simulate to we+3: hazards for we+1..we+4 feed p_leave_next_4q of the last rows
        self.cal = _Calendar.build(self.open_lo, self.we + 3)
        self.ws_l = self.ws - self.open_lo
        self.we_l = self.we - self.open_lo
        self.n_sim = len(self.cal.qidx)
        self.rate = _policy_rate(self.cal)
        self.wage = _wage_k(self.cal.year)
        self.accrual, self.visible = _yields(self.cal, self.rate, _rng(config.seed, 1))

    # -- static attributes ------------------------------------------------------------------

    def setup(self) -> None:
        self.progress("accounts")
        n = self.cfg.accounts
        rng = _rng(self.cfg.seed, 2)
        self.geo = _Geography.load()

        # clients: 93 % have one account, 6 % two, 1 % three
        per_client = rng.choice([1, 2, 3], size=n, p=[0.93, 0.06, 0.01])
        ends = np.cumsum(per_client)
        n_clients = int(np.searchsorted(ends, n) + 1)
        per_client = per_client[:n_clients].copy()
        per_client[-1] -= int(ends[n_clients - 1] - n)
        self.n_clients = n_clients
        self.client = np.repeat(np.arange(n_clients), per_client).astype(np.int64)
        self.n_acc = per_client.astype(np.int64)

        ids = _hex_ids(_rng(self.cfg.seed, 3), n_clients + n)
        self.client_ids = ids.slice(0, n_clients)
        self.account_ids = ids.slice(n_clients, n)

        # opening quarters: growing intake; pre-window cohorts thinned to survivors
        q = np.arange(self.open_lo, self.we + 1)
        w = np.exp(OPEN_GROWTH * (q - self.we))
        w = np.where(q < self.ws, w * np.exp(-PRE_WINDOW_SURVIVAL * (self.ws - q)), w)
        self.open_s = rng.choice(len(q), size=n, p=w / w.sum()).astype(np.int64)
        qlen = self.cal.end[self.open_s] - self.cal.start[self.open_s] + 1
        self.open_day = self.cal.start[self.open_s] + (rng.random(n) * qlen).astype(np.int64)
        open_year = self.cal.year[self.open_s]

        # payment type: employer programmes dominated early, self-payment grew later
        emp_share = np.clip(0.62 - 0.015 * (open_year - 2005), 0.35, 0.65)
        u = rng.random(n)
        self.ptype = np.select(
            [u < emp_share, u < emp_share + 0.15, u < emp_share + 0.22], [3, 1, 0], default=2
        ).astype(np.int64)
        self.has_employer = (self.ptype == 3) | (self.ptype == 1)
        self.bank_stream = self.ptype != 3

        # clients' person: gender, birth, address, hidden traits
        first = np.r_[0, np.cumsum(per_client)[:-1]]
        c_open = np.minimum.reduceat(self.open_day, first)
        c_type = self.ptype[first]
        self.gender = np.where(rng.random(n_clients) < 0.55, -1, 1).astype(np.int64)
        self.pension_age = np.where(self.gender == -1, 60, 65).astype(np.int64)
        age0 = np.where(
            (c_type == 3) | (c_type == 1),
            rng.normal(40.0, 9.0, n_clients),
            rng.normal(45.0, 9.0, n_clients),
        )
        age0 = np.clip(age0, 20.0, self.pension_age - 1.0)
        self.birth = (c_open - age0 * 365.2425).astype(np.int64)

        geo = self.geo
        city = rng.choice(
            len(geo.city_postal), size=n_clients, p=geo.city_population / geo.city_population.sum()
        )
        self.region = geo.city_region[city]
        pop = geo.city_population[city]
        spread = np.select([pop < 5e4, pop < 3e5, pop < 1e6], [1, 20, 60], default=120)
        last3 = (geo.city_postal[city] % 1000 + rng.integers(0, 10**6, n_clients) % spread) % 1000
        prefix = geo.city_postal[city] // 1000
        prefix = np.where(geo.city_is_moscow[city], rng.integers(101, 130, n_clients), prefix)
        prefix = np.where(geo.city_is_spb[city], rng.integers(190, 200, n_clients), prefix)
        codes = np.char.zfill((prefix * 1000 + last3).astype(str), 6)
        self.postal = pa.array(codes, pa.string(), mask=rng.random(n_clients) < 0.03)
        v = rng.random(n_clients)
        variant = np.select([v < 0.03, v < 0.055, v < 0.075, v < 0.10], [1, 2, 3, 4], default=0)
        self.region_text = pc.take(geo.region_texts, pa.array(self.region * 5 + variant))

        self.latent = rng.normal(size=n_clients)  # hidden: dissatisfaction
        self.stress = rng.normal(size=n_clients)  # hidden: financial stress, AR(1)
        c_year = (c_open // 365.2425 + 1970).astype(np.int64)
        self.lk = rng.random(n_clients) < np.clip(0.15 + 0.05 * (c_year - 2010), 0.0, 0.7)
        self.phone = (rng.random(n_clients) < 0.88).astype(np.int64)
        p_email = np.clip(0.15 + 0.04 * (c_year - 2005), 0.1, 0.8) * np.exp(-0.25 * self.latent)
        self.email = (rng.random(n_clients) < np.clip(p_email, 0, 0.95)).astype(np.int64)
        self.assignee_npo = (rng.random(n_clients) < 0.25).astype(np.int64)
        self.assignee_ops = (rng.random(n_clients) < 0.12).astype(np.int64)
        self.citizen = (rng.random(n_clients) < 0.99).astype(np.int64)
        self.fact_addrss = rng.choice([1, 0, -1], size=n_clients, p=[0.7, 0.25, 0.05]).astype(
            np.int64
        )

        # account terms
        age_open = (self.open_day - self.birth[self.client]) / 365.2425
        to_pension = np.maximum(self.pension_age[self.client] - age_open, 1.0)
        accum = np.where(rng.random(n) < 0.5, np.round(to_pension), rng.choice([5, 10, 15], n))
        self.accum = pa.array(accum.astype(np.float64), mask=rng.random(n) < 0.18)
        pay = rng.choice([5.0, 10.0, 15.0, 20.0], size=n, p=[0.3, 0.35, 0.2, 0.15])
        self.payment = pa.array(pay, mask=rng.random(n) < 0.15)
        self.selection = 1 + rng.integers(0, max(1, math.ceil(n / 100_000)), n)
        self.level_e = rng.lognormal(np.log(0.035), 0.5, n)  # employer programme, wages/month
        self.level_b = np.where(
            self.ptype == 0, rng.lognormal(np.log(0.12), 0.8, n), rng.lognormal(np.log(0.3), 0.7, n)
        )
        self.transfer = (open_year >= 2004) & (rng.random(n) < 0.07)
        self.transfer_k = (
            rng.lognormal(np.log(10.0), 0.9, n) * self.wage[self.open_s] * 1000 * 100
        ).astype(np.int64)
        self.scheme_i = rng.choice(len(SCHEMES), size=n, p=SCHEME_WEIGHTS).astype(np.int64)

        # competitor campaigns (hidden): region × quarter
        starts = rng.random((geo.n_regions, self.n_sim)) < CAMPAIGN_START
        dur = rng.integers(2, 5, size=starts.shape)
        camp = np.zeros((geo.n_regions, self.n_sim + 4), bool)
        for d in range(4):
            camp[:, d : d + self.n_sim] |= starts & (dur > d)
        self.campaign = camp[:, : self.n_sim + 1]

    # -- the quarter loop -------------------------------------------------------------------

    def _employer_ops(self, rng: np.random.Generator, idx: IArr, s: int) -> tuple[IArr, IArr, IArr]:
        """Regular employer-programme operations of accounts `idx` in quarter s."""
        emp = self.emp[idx]
        pattern = self.emp_pattern[emp]
        per_q = np.where(pattern == 0, 1, 3 * pattern)
        local = np.repeat(np.arange(len(idx)), per_q)
        start = np.cumsum(per_q) - per_q
        k = np.arange(len(local)) - start[local]
        pat = pattern[local]
        ppm = np.maximum(pat, 1)
        month = np.where(pat == 0, 2, k // ppm)
        part = np.where(pat == 0, 0, k % ppm)
        day = (
            self.cal.month_start[s][month]
            + self.emp_payday[emp][local]
            + part % 2
            + 15 * (part // 2)
            - 1
        )
        monthly = self.level_e[idx][local] * self.wage[s] * 1000.0
        share = np.where(part % 2 == 0, EMPLOYEE_SHARE, 1.0 - EMPLOYEE_SHARE)
        halves = np.maximum(ppm // 2, 1)
        amount = np.select([pat == 0, pat == 1], [3.0 * monthly, monthly], monthly * share / halves)
        amount = amount * np.exp(rng.normal(0.0, 0.02, len(local)))
        skip = rng.random((len(idx), 3)) < MONTH_SKIP
        keep = ~skip[local, month]
        kop = np.maximum(np.round(amount * 100.0), 100).astype(np.int64)
        return idx[local][keep], day[keep], kop[keep]

    def _bank_ops(
        self, rng: np.random.Generator, idx: IArr, mu: FArr, s: int
    ) -> tuple[IArr, IArr, IArr]:
        """Irregular self-payments: Poisson counts, more and larger in Q4 and December."""
        q4 = self.cal.qnum[s] == 4
        counts = rng.poisson(mu * (BANK_Q4_FACTOR if q4 else 1.0))
        acct = np.repeat(idx, counts)
        m = len(acct)
        start, end = self.cal.start[s], self.cal.end[s]
        day = start + (rng.random(m) * (end - start + 1)).astype(np.int64)
        factor = np.ones(m)
        if q4:
            dec = rng.random(m) < BANK_DECEMBER
            dec_start = self.cal.month_start[s][2]
            day = np.where(dec, dec_start + (rng.random(m) * 31).astype(np.int64), day)
            factor = np.where(dec, 1.5, 1.0)
        amount = self.level_b[acct] * self.wage[s] * 1000.0 * rng.lognormal(0.0, 0.4, m) * factor
        return acct, day, np.maximum(np.round(amount * 100.0), 100).astype(np.int64)

    def run(self) -> SyntheticFund:
        self.setup()
        cfg, cal = self.cfg, self.cal
        n = cfg.accounts
        rng = _rng(cfg.seed, 4)
        n_w = cfg.quarters + 4

        # employers (hidden): size weight, pay day, pattern, scheme, alive
        n_emp = max(4, n // 50)
        self.emp_weight = rng.pareto(1.2, n_emp) + 1.0
        self.emp_payday = rng.integers(5, 13, n_emp)
        self.emp_pattern = rng.choice(EMPLOYER_PATTERNS, n_emp, p=EMPLOYER_PATTERN_WEIGHTS)
        self.emp_scheme = rng.choice(len(SCHEMES), n_emp, p=SCHEME_WEIGHTS)
        emp_alive = np.ones(n_emp, bool)
        self.emp = np.full(n, -1, np.int64)

        emp_on = np.zeros(n, bool)
        bank_on = np.zeros(n, bool)
        started = np.zeros(n, bool)
        exited = np.zeros(n, bool)
        died = np.zeros(n, bool)
        exit_s = np.full(n, np.iinfo(np.int64).max // 2, np.int64)
        cum_pay = np.zeros(n, np.int64)
        cum_n = np.zeros(n, np.int64)
        cum_inc = np.zeros(n, np.int64)
        pending = np.zeros(n, np.float64)
        first_amt = np.zeros(n, np.int64)
        last_day = np.zeros(n, np.int64)
        last_amt = np.zeros(n, np.int64)
        last_pay_s = np.zeros(n, np.int64)
        ring_pay = np.zeros((4, n), np.int64)
        ring_n = np.zeros((4, n), np.int64)
        ring_inc = np.zeros((4, n), np.int64)
        ring_paid = np.zeros((4, n), bool)
        ring_appl = np.zeros((4, n), bool)
        lam = np.zeros((n, n_w), np.float32)
        dd = np.zeros((n, n_w), np.float32)
        hid_now = np.zeros(n)
        obs_now = np.zeros(n)
        camp_now = np.zeros(n, bool)

        order = np.argsort(self.open_s, kind="stable")
        bounds = np.searchsorted(self.open_s[order], np.arange(self.n_sim + 1))

        cl_batches: list[pa.RecordBatch] = []
        tr_batches: list[pa.RecordBatch] = []
        truth_rows: list[tuple[int, IArr, dict[str, Any]]] = []

        for s in range(self.n_sim):
            label = cal.labels[s]
            in_window = self.ws_l <= s <= self.we_l
            if s >= self.ws_l - 1 and s <= self.we_l:
                self.progress(f"simulate {label}")
            churn_now = np.zeros(n, bool)

            # exits drawn from the hazards fixed at the end of the previous quarter
            if self.ws_l <= s:
                cand = np.flatnonzero(started & ~exited)
                col = s - self.ws_l
                lam_s = lam[cand, col].astype(np.float64)
                d_s = dd[cand, col].astype(np.float64)
                draw = rng.random(len(cand))
                gone = draw < d_s
                leave = ~gone & (draw < d_s + (1.0 - d_s) * lam_s)
                exited[cand[gone]] = True
                died[cand[gone]] = True
                exit_s[cand[gone]] = s - 1
                exited[cand[leave]] = True
                exit_s[cand[leave]] = s
                churn_now[cand[leave]] = True

            # employers' programmes end (more in crises) and new programmes replace them
            p_end = EMPLOYER_END_CRISIS_Q if label in CRISIS_QUARTERS else EMPLOYER_END_Q
            ended = emp_alive & (rng.random(len(emp_alive)) < p_end)
            emp_alive &= ~ended
            k_new = int(ended.sum())
            if k_new:
                self.emp_weight = np.r_[self.emp_weight, rng.pareto(1.2, k_new) + 1.0]
                self.emp_payday = np.r_[self.emp_payday, rng.integers(5, 13, k_new)]
                self.emp_pattern = np.r_[
                    self.emp_pattern,
                    rng.choice(EMPLOYER_PATTERNS, k_new, p=EMPLOYER_PATTERN_WEIGHTS),
                ]
                self.emp_scheme = np.r_[
                    self.emp_scheme, rng.choice(len(SCHEMES), k_new, p=SCHEME_WEIGHTS)
                ]
                emp_alive = np.r_[emp_alive, np.ones(k_new, bool)]

            # accounts opening this quarter
            new = order[bounds[s] : bounds[s + 1]]
            started[new] = True
            is_new = np.zeros(n, bool)
            is_new[new] = True
            joins = new[self.has_employer[new]]
            if len(joins):
                alive_idx = np.flatnonzero(emp_alive)
                w = self.emp_weight[alive_idx]
                self.emp[joins] = rng.choice(alive_idx, len(joins), p=w / w.sum())
                self.scheme_i[joins] = self.emp_scheme[self.emp[joins]]
                emp_on[joins] = True
            bank_on[new[self.bank_stream[new]]] = True
            last_pay_s[new] = s

            path = np.flatnonzero(started & (~exited | (s <= exit_s + 4)))
            cl = self.client[path]

            # hidden stress evolves; jobs change; self-payers pause and resume
            self.stress = 0.85 * self.stress + math.sqrt(1 - 0.85**2) * rng.normal(
                size=self.n_clients
            )
            st = self.stress[cl]
            e_idx = path[emp_on[path]]
            job = rng.random(len(e_idx)) < _sigmoid(-4.6 + 0.5 * self.stress[self.client[e_idx]])
            emp_on[e_idx[job | ~emp_alive[self.emp[e_idx]]]] = False
            b_idx = path[self.bank_stream[path]]
            b_st = self.stress[self.client[b_idx]]
            und = self.ptype[b_idx] == 0
            p_off = np.where(und, 0.15, _sigmoid(-2.9 + 0.5 * b_st))
            p_on = np.where(und, 0.05, 0.06)
            flip = rng.random(len(b_idx)) < np.where(bank_on[b_idx], p_off, p_on)
            bank_on[b_idx[flip & ~is_new[b_idx]]] ^= True

            # contributions
            e_idx = path[emp_on[path]]
            ea, ed, ek = self._employer_ops(rng, e_idx, s)
            b_idx = path[bank_on[path]]
            mu = np.select(
                [self.ptype[b_idx] == 0, self.ptype[b_idx] == 1],
                [UNDEFINED_MU, BANK_MU / 2],
                BANK_MU,
            )
            ba, bd, bk = self._bank_ops(rng, b_idx, mu, s)
            if len(new):
                oa = new
                od = self.open_day[new]
                regular = np.where(
                    self.has_employer[new],
                    self.level_e[new] * self.wage[s] * 1000.0,
                    self.level_b[new] * self.wage[s] * 1000.0,
                )
                ok = np.where(
                    self.transfer[new],
                    self.transfer_k[new],
                    np.maximum(np.round(regular * 100.0), 100).astype(np.int64),
                )
            else:
                oa = od = ok = np.zeros(0, np.int64)
            ca = np.concatenate([ea, ba])
            cd = np.concatenate([ed, bd])
            ck = np.concatenate([ek, bk])
            keep = ~(is_new[ca] & (cd <= self.open_day[ca]))
            ca = np.concatenate([oa, ca[keep]])
            cd = np.concatenate([od, cd[keep]])
            ck = np.concatenate([ok, ck[keep]])
            srt = np.argsort(ca * 128 + (cd - cal.start[s]), kind="stable")
            ca, cd, ck = ca[srt], cd[srt], ck[srt]
            slot = s % 4
            for ring in (ring_pay, ring_n, ring_inc, ring_paid, ring_appl):
                ring[slot] = 0
            pay_q = np.zeros(n, np.int64)
            n_q = np.zeros(n, np.int64)
            if len(ca):
                heads = np.flatnonzero(np.r_[True, ca[1:] != ca[:-1]])
                tails = np.r_[heads[1:], len(ca)] - 1
                who = ca[heads]
                pay_q[who] = np.add.reduceat(ck, heads)
                n_q[who] = tails - heads + 1
                last_day[who] = cd[tails]
                last_amt[who] = ck[tails]
                last_pay_s[who] = s
            if len(new):  # the opening operation sorts first: later ones are after open_day
                first_amt[new] = ck[np.searchsorted(ca, new)]

            # income: quarterly schemes accrue every quarter, the others at year end
            bal0 = cum_pay[path] + cum_inc[path]
            sch = self.scheme_i[path]
            inc_f = (bal0 + 0.5 * pay_q[path]) * self.accrual[sch, s]
            quarterly = np.array(SCHEME_QUARTERLY)[sch]
            inc_k = np.where(quarterly, np.round(inc_f), 0.0).astype(np.int64)
            pending[path] += np.where(quarterly, 0.0, inc_f)
            if cal.qnum[s] == 4:
                inc_k += np.where(quarterly, 0, np.round(pending[path])).astype(np.int64)
                pending[path] = 0.0
            inc_q = np.zeros(n, np.int64)
            inc_q[path] = inc_k
            cum_pay += pay_q
            cum_n += n_q
            cum_inc += inc_q
            ring_pay[slot] = pay_q
            ring_n[slot] = n_q
            ring_inc[slot] = inc_q
            ring_paid[slot] = n_q > 0

            # complaints and the personal cabinet
            qs = s - last_pay_s[path]
            yv = self.visible[sch, s]
            lat = self.latent[cl]
            p_appl = _sigmoid(
                COMPLAINT_B0
                + 0.75 * lat
                + 0.35 * st
                + 0.9 * (yv < 0)
                + 0.4 * ((qs >= 1) & (qs <= 4))
            )
            ring_appl[slot, path] = rng.random(len(path)) < p_appl
            if cal.year[s] >= 2010:
                self.lk[cl[rng.random(len(path)) < 0.02]] = True

            # hazards for the next quarter, from the state at the end of this one
            if s >= self.ws_l - 1:
                appl_now = ring_appl[slot, path]
                appl_recent = (
                    ring_appl[(s - 1) % 4, path]
                    | ring_appl[(s - 2) % 4, path]
                    | ring_appl[(s - 3) % 4, path]
                ) & ~appl_now
                age = (cal.end[s] - self.birth[cl]) / 365.2425
                ytp = self.pension_age[cl] - age
                pt = self.ptype[path]
                on = emp_on[path]
                obs = (
                    B0
                    + W_STOP_RECENT * ((qs >= 1) & (qs <= 4))
                    + W_STOP_MID * ((qs >= 5) & (qs <= 12))
                    + W_STOP_OLD * (qs > 12)
                    + W_COMPLAINT_NOW * appl_now
                    + W_COMPLAINT_RECENT * appl_recent
                    + W_NO_CABINET * ~self.lk[cl]
                    + W_SPREAD * np.clip(self.rate[s] - 100.0 * yv, -5.0, 15.0)
                    + W_NEGATIVE_RETURN * (yv < 0)
                    + W_NEAR_PENSION * (ytp <= 5)
                    + W_PRE_PENSION * ((ytp > 5) & (ytp <= 10))
                    + W_YOUNG_SELF_PAYER * ((age < 35) & ((pt == 2) | (pt == 0)))
                    + W_EMPLOYER_ACTIVE * ((pt == 3) & on)
                    + W_MIXED_EMPLOYER_ACTIVE * ((pt == 1) & on)
                    + W_NEW_ACCOUNT * (s - self.open_s[path] < 8)
                )
                camp = self.campaign[self.region[cl], s + 1]
                hidden = (
                    W_LATENT * lat
                    + W_STRESS * st
                    + W_CAMPAIGN * camp
                    + rng.normal(0.0, NOISE_SD, len(path))
                )
                d = DEATH_BASE + DEATH_PER_YEAR_OVER_40 * np.maximum(age - 40.0, 0.0)
                d = d + PAYOUT_AFTER_PENSION_AGE * (ytp <= 0)
                if s == self.ws_l - 1:
                    d = np.zeros_like(d)  # every account of the dump has a row in the window
                lam[path, s + 1 - self.ws_l] = _sigmoid(obs + hidden).astype(np.float32)
                dd[path, s + 1 - self.ws_l] = np.minimum(d, 0.5).astype(np.float32)
                obs_now[path] = obs
                hid_now[path] = hidden
                camp_now[path] = camp

            # what the dump shows
            if s < self.ws_l:
                shown = np.ones(n, bool)  # pre-window history of the surviving accounts
            elif in_window:
                shown = started & (~exited | (exit_s == s))
            else:
                continue
            tr_batches.append(self._transactions(s, ca, cd, ck, path, inc_k, shown))
            if not in_window:
                continue
            rows = np.flatnonzero(shown)
            rc = self.client[rows]
            qend = cal.end[s]
            ysum = ring_pay.sum(axis=0)
            paid_all = ring_paid.sum(axis=0) >= np.minimum(s - self.open_s + 1, 4)
            cols: dict[str, pa.Array] = {
                "slctn_nmbr": pa.array(self.selection[rows]),
                "client_id": pc.take(self.client_ids, pa.array(rc)),
                "npo_account_id": pc.take(self.account_ids, pa.array(rows)),
                "npo_accnts_nmbr": pa.array(self.n_acc[rc]),
                "pmnts_type": pa.array(self.ptype[rows]),
                "year": pa.array(np.full(len(rows), cal.year[s])),
                "quarter": pa.repeat(pa.scalar(label), len(rows)),
                "gender": pa.array(self.gender[rc]),
                "age": pa.array(((qend - self.birth[rc]) / 365.2425).astype(np.int64)),
                "clnt_cprtn_time_d": pa.array((qend - self.open_day[rows]).astype(np.float64)),
                "actv_prd_d": pa.array((last_day[rows] - self.open_day[rows]).astype(np.float64)),
                "lst_pmnt_rcnc_d": pa.array((qend - last_day[rows]).astype(np.float64)),
                "balance": _rub(cum_pay[rows] + cum_inc[rows]),
                "oprtn_sum_per_qrtr": _rub(pay_q[rows] + inc_q[rows]),
                "oprtn_sum_per_year": _rub(ysum[rows] + ring_inc.sum(axis=0)[rows]),
                "frst_pmnt_date": pa.array(self.open_day[rows].astype(np.int32), pa.date32()),
                "lst_pmnt_date_per_qrtr": pa.array(
                    last_day[rows].astype(np.int32), pa.date32(), mask=n_q[rows] == 0
                ),
                "frst_pmnt": _rub(first_amt[rows]),
                "lst_pmnt": _rub(last_amt[rows]),
                "pmnts_sum": _rub(cum_pay[rows]),
                "pmnts_nmbr": pa.array(cum_n[rows]),
                "pmnts_sum_per_qrtr": _rub(pay_q[rows]),
                "pmnts_sum_per_year": _rub(ysum[rows]),
                "pmnts_nmbr_per_qrtr": pa.array(n_q[rows]),
                "pmnts_nmbr_per_year": pa.array(ring_n.sum(axis=0)[rows]),
                "incm_sum": _rub(cum_inc[rows]),
                "incm_per_qrtr": _rub(inc_q[rows]),
                "incm_per_year": _rub(ring_inc.sum(axis=0)[rows]),
                "mgd_accum_period": pc.take(self.accum, pa.array(rows)),
                "mgd_payment_period": pc.take(self.payment, pa.array(rows)),
                "churn": pa.array(churn_now[rows].astype(np.int64)),
                "phone_number": pa.array(self.phone[rc]),
                "email": pa.array(self.email[rc]),
                "lk": pa.array(self.lk[rc].astype(np.int64)),
                "assignee_npo": pa.array(self.assignee_npo[rc]),
                "assignee_ops": pa.array(self.assignee_ops[rc]),
                "citizen": pa.array(self.citizen[rc]),
                "fact_addrss": pa.array(self.fact_addrss[rc]),
                "postal_code": pc.take(self.postal, pa.array(rc)),
                "region": pc.take(self.region_text, pa.array(rc)),
                "appl_mrkr": pa.array(ring_appl[slot, rows].astype(np.int64)),
                "evry_qrtr_pmnt": pa.array(paid_all[rows].astype(np.int64)),
            }
            cl_batches.append(_batch(cols, schema.CLIENTS_QUARTERLY.names))
            truth_rows.append(
                (
                    s,
                    rows,
                    {
                        "latent_dissatisfaction": self.latent[rc],
                        "financial_stress": self.stress[rc],
                        "competitor_campaign_next_q": camp_now[rows].astype(np.int64),
                        "logit_observable_next_q": obs_now[rows],
                        "logit_hidden_next_q": hid_now[rows],
                    },
                )
            )

        self.progress("truth")
        truth = self._truth(truth_rows, lam, dd, died, exit_s)
        del lam, dd, truth_rows
        self.progress("tables")
        contributors = pa.table(
            {
                "slctn_nmbr": pa.array(self.selection),
                "npo_accnt_id": self.account_ids,
                "accnt_pnsn_schm": pa.array(np.array(SCHEMES, np.int64)[self.scheme_i]),
            }
        )
        return SyntheticFund(
            clients=pa.Table.from_batches(cl_batches, schema=_clients_schema()),
            transactions=pa.Table.from_batches(tr_batches, schema=_transactions_schema()),
            contributors=contributors,
            truth=truth,
        )

    def _transactions(
        self,
        s: int,
        ca: IArr,
        cd: IArr,
        ck: IArr,
        path: IArr,
        inc_k: IArr,
        shown: BArr,
    ) -> pa.RecordBatch:
        """The quarter's operations of the accounts the dump shows, by account and date."""
        keep = shown[ca]
        has_inc = (inc_k != 0) & shown[path]
        acct = np.concatenate([ca[keep], path[has_inc]])
        day = np.concatenate([cd[keep], np.full(int(has_inc.sum()), self.cal.end[s])])
        kop = np.concatenate([ck[keep], inc_k[has_inc]])
        grp = np.concatenate(
            [
                np.full(int(keep.sum()), schema.OPERATION_CONTRIBUTION, np.int64),
                np.full(int(has_inc.sum()), schema.OPERATION_INCOME, np.int64),
            ]
        )
        key = acct * 256 + (day - self.cal.start[s]) * 2 + (grp == schema.OPERATION_INCOME)
        o = np.argsort(key, kind="stable")
        acct, day, kop, grp = acct[o], day[o], kop[o], grp[o]
        cols = {
            "slctn_nmbr": pa.array(self.selection[acct]),
            "npo_account_id": pc.take(self.account_ids, pa.array(acct)),
            "npo_sum": _rub(kop),
            "npo_oprtn_date": pa.array(day.astype(np.int32), pa.date32()),
            "npo_oprtn_grp": pa.array(grp),
            "year": pa.array(np.full(len(acct), self.cal.year[s])),
            "quarter": pa.repeat(pa.scalar(self.cal.labels[s]), len(acct)),
        }
        return _batch(cols, schema.TRANSACTIONS.names)

    def _truth(
        self,
        quarters: list[tuple[int, IArr, dict[str, Any]]],
        lam: npt.NDArray[np.float32],
        dd: npt.NDArray[np.float32],
        died: BArr,
        exit_s: IArr,
    ) -> pa.Table:
        """Exact next-quarter and next-4-quarter probabilities for every row (module doc).

        Built quarter by quarter so that the temporaries stay small at millions of rows.
        """
        batches = []
        for s, acct, hidden in quarters:
            col = s + 1 - self.ws_l
            p4 = np.zeros(len(acct))
            surv = np.ones(len(acct))
            p1 = d1 = p4
            for k in range(4):
                lk = lam[acct, col + k].astype(np.float64)
                dk = dd[acct, col + k].astype(np.float64)
                leave = (1.0 - dk) * lk
                if k == 0:
                    p1, d1 = leave, dk
                p4 = p4 + surv * leave
                surv = surv * (1.0 - dk) * (1.0 - lk)
            out: dict[str, Any] = {
                "npo_account_id": pc.take(self.account_ids, pa.array(acct)),
                "quarter": pa.repeat(pa.scalar(self.cal.labels[s]), len(acct)),
                "p_leave_next_q": pa.array(p1),
                "p_leave_next_4q": pa.array(p4),
                "p_other_end_next_q": pa.array(d1),
                "other_end_after": pa.array((died[acct] & (exit_s[acct] == s)).astype(np.int64)),
            }
            out.update({name: pa.array(values) for name, values in hidden.items()})
            batches.append(pa.RecordBatch.from_pydict(out))
        return pa.Table.from_batches(batches)


def _rub(kopecks: IArr) -> pa.Array:
    """Kopecks → rubles as float64 (exact to the kopeck)."""
    return pa.array(kopecks.astype(np.float64) / 100.0)


def _arrow_type(col: schema.Column) -> pa.DataType:
    if col.kind is schema.Kind.INT:
        return pa.int64()
    if col.kind is schema.Kind.FLOAT:
        return pa.float64()
    if col.kind is schema.Kind.DATE:
        return pa.date32()
    return pa.string()


def _table_schema(table: schema.Table) -> pa.Schema:
    return pa.schema([pa.field(c.name, _arrow_type(c)) for c in table.columns])


def _clients_schema() -> pa.Schema:
    return _table_schema(schema.CLIENTS_QUARTERLY)


def _transactions_schema() -> pa.Schema:
    return _table_schema(schema.TRANSACTIONS)


def _batch(cols: dict[str, pa.Array], names: tuple[str, ...]) -> pa.RecordBatch:
    if set(cols) != set(names):
        raise AssertionError(f"columns differ from the contract: {set(cols) ^ set(names)}")
    return pa.RecordBatch.from_arrays([cols[c] for c in names], names=list(names))


def generate(config: SynthConfig, progress: Callable[[str], None] | None = None) -> SyntheticFund:
    """Generate the synthetic fund; `progress` receives short stage names."""
    return _Generator(config, progress).run()


# --- writing a dump -------------------------------------------------------------------------

_FLOAT_POSTAL_TAILS = pa.array([f"{i:02x}" for i in range(26)])  # ~10 % of clients


class _Cp1251Sink:
    """A write-only stream that transcodes UTF-8 chunks to cp1251 as they arrive."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        self.raw.write(self.decoder.decode(bytes(data)).encode("cp1251"))
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.write(self.decoder.decode(b"", final=True).encode("cp1251"))
        self.closed = True


def _csv_batch(batch: pa.RecordBatch, decimal_comma: bool) -> pa.RecordBatch:
    """How the fund's exports look: some postal codes as "443001.0", optional "," decimals."""
    arrays = list(batch.columns)
    names = batch.schema.names
    if "postal_code" in names and "client_id" in names:
        i = names.index("postal_code")
        tail = pc.utf8_slice_codeunits(batch.column("client_id"), -2)
        as_float = pc.is_in(tail, value_set=_FLOAT_POSTAL_TAILS)
        code = arrays[i]
        arrays[i] = pc.if_else(as_float, pc.binary_join_element_wise(code, ".0", ""), code)
    if decimal_comma:
        for j, field in enumerate(batch.schema):
            if pa.types.is_floating(field.type):
                text = pc.cast(arrays[j], pa.string())
                arrays[j] = pc.replace_substring(text, ".", ",")
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _write_csv(
    table: pa.Table, path: Path, delimiter: str, encoding: str, decimal_comma: bool
) -> None:
    options = pacsv.WriteOptions(
        delimiter=delimiter, quoting_style="none", quoting_header="none", batch_size=8192
    )
    batches = (_csv_batch(b, decimal_comma) for b in table.to_batches(max_chunksize=200_000))
    first = next(batches, None)
    target_schema = first.schema if first is not None else _csv_batch_schema(table, decimal_comma)
    with path.open("wb") as raw:
        sink: Any = raw if encoding == "utf-8" else _Cp1251Sink(raw)
        with pacsv.CSVWriter(sink, target_schema, write_options=options) as writer:
            if first is not None:
                writer.write_batch(first)
            for b in batches:
                writer.write_batch(b)
        if encoding != "utf-8":
            sink.close()


def _csv_batch_schema(table: pa.Table, decimal_comma: bool) -> pa.Schema:
    if not decimal_comma:
        return table.schema
    return pa.schema(
        [pa.field(f.name, pa.string()) if pa.types.is_floating(f.type) else f for f in table.schema]
    )


def _check_xlsx_rows(rows: int) -> None:
    if rows > XLSX_MAX_ROWS:
        raise ValueError(
            f"{rows:,} rows do not fit an XLSX sheet here (limit {XLSX_MAX_ROWS:,} per sheet); "
            "write csv or parquet instead"
        )


def _write_xlsx(table: pa.Table, path: Path, sheet: str) -> None:
    from openpyxl import Workbook

    _check_xlsx_rows(table.num_rows)
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title=sheet[:31])
    ws.append(list(table.column_names))
    for batch in table.to_batches(max_chunksize=50_000):
        columns = [c.to_pylist() for c in batch.columns]
        for row in zip(*columns, strict=True):
            ws.append(list(row))
    wb.save(path)


def write_fund(
    fund: SyntheticFund,
    out_dir: Path,
    fmt: Literal["csv", "parquet", "xlsx"] = "csv",
    encoding: Literal["utf-8", "cp1251"] = "utf-8",
    decimal_comma: bool = False,
) -> dict[str, Path]:
    """Write the dump as the fund's export would, plus truth.parquet (never part of a dump).

    CSV separators are the fund's: "," for clnts_fin_prtrt and ";" for the others; with decimal
    commas every table uses ";". Returns table name → path.
    """
    if fmt not in ("csv", "parquet", "xlsx"):
        raise ValueError(f"unknown format {fmt!r}")
    if encoding not in ("utf-8", "cp1251"):
        raise ValueError(f"unknown encoding {encoding!r}")
    if fmt == "xlsx":  # refuse before writing anything
        for t in (fund.clients, fund.transactions, fund.contributors):
            _check_xlsx_rows(t.num_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        schema.CLIENTS_QUARTERLY.name: (fund.clients, schema.CLIENTS_QUARTERLY),
        schema.TRANSACTIONS.name: (fund.transactions, schema.TRANSACTIONS),
        schema.CONTRIBUTORS.name: (fund.contributors, schema.CONTRIBUTORS),
    }
    paths: dict[str, Path] = {}
    for name, (table, spec) in tables.items():
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            delimiter = ";" if decimal_comma else spec.separator
            _write_csv(table, path, delimiter, encoding, decimal_comma)
        elif fmt == "parquet":
            pq.write_table(table, path)
        else:
            _write_xlsx(table, path, name)
        paths[name] = path
    paths["truth"] = out_dir / "truth.parquet"
    pq.write_table(fund.truth, paths["truth"])
    return paths
