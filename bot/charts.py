"""The bot's pictures as PNG bytes (matplotlib, Agg, imported on first use).

matplotlib costs about a second to import, so a cold start that answers /start or /help never
pays for it. Figures use the object API (no pyplot, no global figure registry).

A client card must answer fast, and most of matplotlib's time goes into laying out and
rasterising text. The card's frame — title, quarter labels, the loyalty axis, the panel
labels — is the same for every account with the same quarters, so it is drawn once into a
template and kept (a few templates, one per set of quarters); each card then draws only its
data (bars, line, the contributions axis, the split) onto a copy of that background. That is
matplotlib's own blitting technique, used here for still pictures.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot import texts
from npf_loyalty.lookup import FundStats, HistoryRow

BAND_COLOURS = {"низкая": "#d64541", "средняя": "#f2c94c", "высокая": "#27ae60"}
CONTRIB_COLOUR = "#4a7fb5"
INCOME_COLOUR = "#9b7fc9"
LOYALTY_COLOUR = "#e07b39"
DPI = 100
CARD_SIZE = (7.0, 4.6)
TEMPLATES = 8  # distinct sets of quarters kept drawn
PNG_COMPRESSION = 1  # zlib level: fast; Telegram recompresses photos anyway


def _figure(width: float, height: float) -> Any:
    # Lambda's home is read-only: matplotlib keeps its font cache in /tmp instead
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)  # fixed margins: a layout engine costs 3×
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": PNG_COMPRESSION})
    return buffer.getvalue()


def _quarter_label(quarter: str) -> str:
    name = texts.quarter_name(quarter)
    return name.replace(" кв. ", " кв.\n") if " кв. " in name else name


def _value(x: float | None) -> float:
    return 0.0 if x is None or x != x else float(x)  # None / NaN → 0


def _rub_axis(value: float, _: Any = None) -> str:
    for scale, unit in ((1e6, " млн"), (1e3, " тыс"), (1.0, "")):
        if abs(value) >= scale or scale == 1.0:
            short = f"{value / scale:.2f}".rstrip("0").rstrip(".")
            return f"{short}{unit}".replace(".", ",")
    return ""  # unreachable


class _CardTemplate:
    """The card's figure for one set of quarters; `render` draws one account's data on it."""

    def __init__(self, quarters: tuple[str, ...]) -> None:
        from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

        figure = _figure(*CARD_SIZE)
        grid = figure.add_gridspec(
            2, 1, height_ratios=(3.4, 1.0), left=0.11, right=0.89, top=0.93, bottom=0.03,
            hspace=0.3,
        )  # fmt: skip
        x = list(range(len(quarters)))
        bars = figure.add_subplot(grid[0])
        bars.set_title(texts.CHART_TITLE, fontsize=11)
        self.bars = bars.bar(x, [1.0] * len(x), color=CONTRIB_COLOUR, animated=True).patches
        bars.set_xticks(x, [_quarter_label(q) for q in quarters], fontsize=8)
        bars.yaxis.set_major_locator(MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]))
        bars.yaxis.set_major_formatter(FuncFormatter(_rub_axis))
        bars.set_ylabel(texts.CHART_CONTRIB, fontsize=9, color=CONTRIB_COLOUR)
        bars.grid(axis="y", alpha=0.3)
        bars.yaxis.set_animated(True)  # its scale is each account's own

        loyalty_axis = bars.twinx()
        (self.line,) = loyalty_axis.plot(
            x, [0.5] * len(x), color=LOYALTY_COLOUR, marker="o", animated=True
        )
        loyalty_axis.set_xlim(bars.get_xlim())
        loyalty_axis.set_ylim(0, 1.05)
        loyalty_axis.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
        loyalty_axis.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        loyalty_axis.set_ylabel(texts.CHART_LOYALTY, fontsize=8, color=LOYALTY_COLOUR)

        split = figure.add_subplot(grid[1])
        split.set_axis_off()
        self.split_bars = split.barh(
            [1, 0], [1.0, 1.0], color=(CONTRIB_COLOUR, INCOME_COLOUR), animated=True
        ).patches
        split.set_xlim(-0.25, 1.6)
        split.set_ylim(-0.6, 1.9)
        split.text(-0.25, 1.75, texts.CHART_SPLIT.format(quarters=len(quarters)), fontsize=9)
        self.split_values = []
        for row, name in ((1, texts.CHART_SPLIT_CONTRIB), (0, texts.CHART_SPLIT_INCOME)):
            split.text(-0.02, row, name, ha="right", va="center", fontsize=8)
            self.split_values.append(split.text(0, row, "", va="center", fontsize=8, animated=True))

        self.figure, self.axes, self.loyalty_axis, self.split = figure, bars, loyalty_axis, split
        figure.canvas.draw()
        self.background = figure.canvas.copy_from_bbox(figure.bbox)

    def render(self, contrib: list[float], income: list[float], loyalty: list[float]) -> bytes:
        from PIL import Image

        canvas = self.figure.canvas
        canvas.restore_region(self.background)
        low, high = min(0.0, *contrib), max(0.0, *contrib)
        self.axes.set_ylim(low * 1.05, high * 1.05 if high > 0 else 1000.0)  # 0 ₽: a ruble scale
        for patch, value in zip(self.bars, contrib, strict=True):
            patch.set_height(value)
            self.axes.draw_artist(patch)
        self.axes.draw_artist(self.axes.yaxis)
        self.line.set_ydata(loyalty)
        self.loyalty_axis.draw_artist(self.line)

        values = (sum(contrib), sum(income))
        total = sum(abs(v) for v in values)
        widest = max(abs(v) for v in values) or 1.0
        for patch, text, value in zip(self.split_bars, self.split_values, values, strict=True):
            patch.set_width(abs(value) / widest)
            share = f" ({100 * abs(value) / total:.0f}%)" if total else ""
            text.set_x(abs(value) / widest + 0.02)
            text.set_text(texts.rub(value) + share)
            self.split.draw_artist(patch)
            self.split.draw_artist(text)

        width, height = canvas.get_width_height()
        image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buffer = io.BytesIO()
        image.save(buffer, format="png", compress_level=PNG_COMPRESSION)
        return buffer.getvalue()


_templates: OrderedDict[tuple[str, ...], _CardTemplate] = OrderedDict()
_templates_lock = threading.Lock()


def account_chart(history: Sequence[HistoryRow]) -> bytes:
    """Contributions by quarter (bars), loyalty 1 − P(leave next quarter) (line, right axis),
    and the split of the period's operations into contributions and income accruals."""
    if not history:
        figure = _figure(*CARD_SIZE)
        axes = figure.add_subplot()
        axes.set_title(texts.CHART_TITLE, fontsize=11)
        axes.text(0.5, 0.5, texts.CHART_NO_HISTORY, ha="center", va="center")
        axes.set_axis_off()
        return _png(figure)
    quarters = tuple(h.quarter for h in history)
    contrib = [_value(h.contrib_q) for h in history]
    income = [_value(h.income_q) for h in history]
    loyalty = [
        math.nan if h.p_leave_next_q is None else 1.0 - float(h.p_leave_next_q) for h in history
    ]
    with _templates_lock:  # a template is one figure: one drawing at a time
        template = _templates.get(quarters)
        if template is None:
            template = _templates[quarters] = _CardTemplate(quarters)
            while len(_templates) > TEMPLATES:
                _templates.popitem(last=False)
        _templates.move_to_end(quarters)
        return template.render(contrib, income, loyalty)


def stats_chart(stats: FundStats) -> bytes:
    """Share of accounts closed by year and by quarter, and today's loyalty bands."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    figure = _figure(8.0, 5.6)
    grid = figure.add_gridspec(
        2,
        2,
        height_ratios=(2.4, 1.0),
        left=0.07,
        right=0.98,
        top=0.94,
        bottom=0.16,
        hspace=0.45,
        wspace=0.18,
    )
    years = figure.add_subplot(grid[0, 0])
    quarters = figure.add_subplot(grid[0, 1])

    by_year = [y for y in stats.by_year.values() if y.accounts]
    years.bar(
        [texts.year_span(y).replace(" г. (", "\n(").removesuffix(" г.") for y in by_year],
        [y.left / y.accounts for y in by_year],
        color=[CONTRIB_COLOUR if y.quarters >= 4 else "#a9c1dc" for y in by_year],
    )
    years.set_title(texts.STATS_CHART_YEARS, fontsize=10)
    years.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    years.tick_params(axis="x", labelsize=7, labelrotation=90 if len(by_year) > 8 else 0)
    years.grid(axis="y", alpha=0.3)

    by_quarter = [q for q in stats.by_quarter if q.accounts]
    quarters.plot(
        range(len(by_quarter)),
        [q.left / q.accounts for q in by_quarter],
        color=LOYALTY_COLOUR,
        marker="o" if len(by_quarter) <= 12 else None,
    )
    step = max(1, len(by_quarter) // 8)
    ticks = list(range(0, len(by_quarter), step))
    labels = [_quarter_label(by_quarter[i].quarter) for i in ticks]
    quarters.set_xticks(ticks, labels, fontsize=7)
    quarters.set_ylim(bottom=0)
    quarters.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    quarters.set_title(texts.STATS_CHART_QUARTERS, fontsize=10)
    quarters.grid(axis="y", alpha=0.3)

    bands = figure.add_subplot(grid[1, :])
    total = max(sum(stats.bands.values()), 1)
    left = 0.0
    legend = []
    for band in texts.BAND_ORDER:
        count = stats.bands.get(band, 0)
        share = count / total
        bands.barh([0], [share], left=left, color=BAND_COLOURS[band], height=0.6)
        left += share
        label = texts.STATS_CHART_BAND_LABEL.format(
            band=band, count=texts.number(count), share=texts.pct(share)
        )
        legend.append(Patch(color=BAND_COLOURS[band], label=label))
    bands.set_xlim(0, 1)
    bands.set_yticks([])
    bands.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    bands.set_title(texts.STATS_CHART_BANDS, fontsize=10)
    bands.legend(
        handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncols=3, frameon=False
    )
    return _png(figure)
