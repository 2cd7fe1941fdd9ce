"""The quarterly report's charts: plain numbers in, PNG bytes out.

Kept apart from `report` so the arithmetic can be tested without drawing, and so matplotlib
(the heaviest import on the report path) loads only when a report is actually rendered. The
Agg backend needs no display; the config dir goes to a temp folder because Lambda's home is
read-only.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "npf-matplotlib"))

import matplotlib  # after MPLCONFIGDIR is set

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

#: Band colours: low loyalty is the risk, so it is red.
BAND_COLOURS = {"низкая": "#d64545", "средняя": "#e8a33d", "высокая": "#3c9d5d"}
ACCENT = "#2f5d8a"
MUTED = "#9aa9b8"
DPI = 110

plt.rcParams.update(
    {
        "font.family": "DejaVu Sans",  # has Cyrillic and ships with matplotlib
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 10,
        "axes.titleweight": "bold",
        "axes.grid": True,
        "grid.color": "#e6e9ee",
        "grid.linewidth": 0.8,
        "axes.axisbelow": True,
    }
)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")  # tight_layout already ran
    plt.close(fig)
    return buffer.getvalue()


def _thousands(value: float, _pos: Any = None) -> str:
    return f"{value:,.0f}".replace(",", " ")


def _percent(decimals: int) -> FuncFormatter:
    """Shares as Russian percentages: 0.125 → '12,5 %'."""
    return FuncFormatter(lambda v, _pos: f"{100 * v:.{decimals}f} %".replace(".", ","))


def risk_histogram(p_next_q: np.ndarray, p_next_4q: np.ndarray) -> bytes:
    """How the fund's probabilities spread: most accounts are safe, the tail is the work."""
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.0))
    for ax, values, title, colour in (
        (axes[0], p_next_q, "P(уход) в следующем квартале", ACCENT),
        (axes[1], p_next_4q, "P(уход) в течение года", "#8a4f9e"),
    ):
        v = np.asarray(values, dtype=np.float64)
        top = float(np.quantile(v, 0.995)) if v.size else 1.0
        top = min(1.0, max(0.05, top * 1.05))
        ax.hist(np.clip(v, 0.0, top), bins=40, range=(0.0, top), color=colour, alpha=0.85)
        if v.size:
            ax.axvline(float(v.mean()), color="#333", linestyle="--", linewidth=1)
            ax.annotate(
                f"среднее {100 * v.mean():.1f} %".replace(".", ","),
                xy=(float(v.mean()), 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(4, -12),
                textcoords="offset points",
                fontsize=8,
            )
        ax.set_title(title)
        ax.xaxis.set_major_formatter(_percent(0))
        ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
        ax.set_ylabel("счетов")
    fig.tight_layout()
    return _png(fig)


def bands_chart(bands: Sequence[str], now: Sequence[int], previous: Sequence[int] | None) -> bytes:
    """Accounts per loyalty band this quarter, next to last quarter's when it exists."""
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    x = np.arange(len(bands))
    colours = [BAND_COLOURS.get(b, ACCENT) for b in bands]
    if previous is not None:
        ax.bar(x - 0.2, previous, width=0.4, color=colours, alpha=0.35, label="прошлый квартал")
        bars = ax.bar(x + 0.2, now, width=0.4, color=colours, label="этот квартал")
        ax.legend(frameon=False, fontsize=8, loc="upper left", ncol=2)
    else:
        bars = ax.bar(x, now, width=0.6, color=colours)
    for bar, value in zip(bars, now, strict=True):
        ax.annotate(
            _thousands(value),
            xy=(bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    top = max([*now, *(previous or [])], default=0)
    ax.set_ylim(0, max(1.0, top * 1.22))  # headroom for the legend and the labels
    ax.set_xticks(x, [f"{b}\nлояльность" for b in bands])
    ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.set_title("Счета по полосам лояльности (год)")
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return _png(fig)


def segments_chart(
    panels: Sequence[tuple[str, Sequence[str], Sequence[float]]], overall: float
) -> bytes:
    """Expected leaver rate per segment, one panel per dimension, with the fund's rate marked."""
    n = len(panels)
    cols = 2
    rows = (n + cols - 1) // cols
    heights = [max(len(p[1]) for p in panels[r * cols : (r + 1) * cols]) for r in range(rows)]
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(9.6, 0.28 * sum(heights) + 0.9 * rows),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.set_visible(False)
            continue
        title, labels, rates = panels[i]
        y = np.arange(len(labels))[::-1]
        values = np.asarray(rates, dtype=np.float64)
        colours = [BAND_COLOURS["низкая"] if v > overall * 1.2 else ACCENT for v in values]
        ax.barh(y, values, color=colours, height=0.65)
        ax.axvline(overall, color="#333", linestyle="--", linewidth=1)
        ax.set_yticks(y, labels)
        ax.set_title(title)
        ax.xaxis.set_major_formatter(_percent(1))
        ax.grid(axis="y", visible=False)
        for yy, v in zip(y, values, strict=True):
            ax.annotate(
                f"{100 * v:.1f} %".replace(".", ","),
                xy=(v, yy),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7.5,
            )
        ax.set_xlim(0, max(float(values.max()) if values.size else 0.0, overall) * 1.25 or 0.01)
    fig.suptitle(
        "Ожидаемая доля уходов в следующем квартале (пунктир — по фонду; красным — выше на 20 %+)",
        fontsize=9,
    )
    fig.tight_layout(h_pad=2.0)
    return _png(fig)


def calibration_chart(
    mean_predicted: Sequence[float], observed: Sequence[float], counts: Sequence[int]
) -> bytes:
    """Predicted against observed by decile: on the diagonal the probabilities can be summed."""
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    pred = np.asarray(mean_predicted, dtype=np.float64)
    obs = np.asarray(observed, dtype=np.float64)
    top = max(float(pred.max()) if pred.size else 0.0, float(obs.max()) if obs.size else 0.0)
    top = min(1.0, top * 1.1) or 0.05
    ax.plot([0, top], [0, top], color=MUTED, linestyle="--", linewidth=1, label="идеал")
    sizes = 20 + 180 * np.asarray(counts, dtype=np.float64) / max(1, max(counts, default=1))
    ax.plot(pred, obs, color=ACCENT, linewidth=1)
    ax.scatter(pred, obs, s=sizes, color=ACCENT, zorder=3)
    ax.plot([], [], "o", color=ACCENT, markersize=6, label="децили (размер — число счетов)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.xaxis.set_major_formatter(_percent(0))
    ax.yaxis.set_major_formatter(_percent(0))
    ax.set_xlabel("прогноз: средняя P(уход)")
    ax.set_ylabel("факт: доля ушедших")
    ax.set_title("Калибровка по децилям")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def transitions_chart(
    counts: Sequence[Sequence[int]], row_labels: Sequence[str], col_labels: Sequence[str]
) -> bytes:
    """Where last quarter's accounts went: colour is the share of the row, text the count."""
    matrix = np.asarray(counts, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    fig, ax = plt.subplots(figsize=(5.4, 3.2))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "white" if shares[i, j] > 0.55 else "#222"
            ax.text(j, i, _thousands(matrix[i, j]), ha="center", va="center", color=colour)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=20, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_title("Переходы: строки — кварталом ранее, столбцы — сейчас")
    ax.grid(visible=False)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return _png(fig)
