"""Training: out-of-time split, numpy autoencoder, CatBoost per horizon, calibration, card.

Protocol (also written into every model card)
---------------------------------------------
* Each horizon h (1 = next quarter, 4 = within four quarters) is split on its own labels.
  Let T be the last quarter whose label for h is defined over a fully observed window
  (T ≤ last quarter of the table − h: the features mark an exit inside a window that runs
  past the table's end as 1 but cannot mark a stay, so those rows are all positive and are
  never used). Test = T−3..T, validation = the four quarters before (T−7..T−4), training =
  every quarter before validation. Never a random split: the same account appears in many
  quarters, and the economy moves.
* A label at quarter q is decided by quarters q+1..q+h and is known at the end of q+h.
  Training rows must have labels known when the validation period starts (q ≤ v₀ − h, v₀ =
  first validation quarter) and validation rows when the test period starts (q ≤ t₀ − h).
  For h = 1 this is just "before"; for h = 4 it purges three quarters at each border (the
  4-quarter validation keeps only its first quarter). So no label used to fit, stop, calibrate
  or pick a threshold shares an outcome quarter with a label it is judged on.
* Validation is used for early stopping, for the choice of depth and learning rate (PR-AUC),
  for the embedding ablation, for Platt calibration and for the F1 threshold; test rows are
  touched only to report. The exported boosters are the ones fitted on the training window.

The autoencoder compresses recent behaviour (contributions, income, activity) into a few
numbers. The ONNX graph can only standardise linearly (mean/scale) before its dense layers,
so money columns are not log-transformed: they are centred on the median and divided by a
robust spread, and the *training* inputs are clipped to ±`clip` so that a few millionaires
do not dominate the reconstruction loss. At scoring the same linear map runs without the
clip; the trees were fitted on exactly those unclipped embeddings, so training and scoring
agree.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

from npf_loyalty import metrics as mt
from npf_loyalty.onnx_export import Calibration, Encoder, build_scoring_model, leaf_shap_tables
from npf_loyalty.onnx_runtime import make_session, run_in_batches
from npf_loyalty.schema import FEATURES, MODEL_INPUTS, Role
from npf_loyalty.settings import Settings
from npf_loyalty.storage import Keys, LocalStore, Store

if TYPE_CHECKING:
    import onnx

    from npf_loyalty.explain import ShapTables


@dataclass(frozen=True)
class Horizon:
    name: str
    label: str
    quarters: int
    title: str


HORIZONS: tuple[Horizon, ...] = (
    Horizon("next_q", "label_next_q", 1, "уход в следующем квартале"),
    Horizon("next_4q", "label_next_4q", 4, "уход в ближайшие 4 квартала"),
)

#: Recent behaviour the autoencoder summarises (all already in the feature row).
AE_COLUMNS: tuple[str, ...] = (
    "contrib_q",
    "contrib_lag1",
    "contrib_lag2",
    "contrib_lag3",
    "contrib_lag4",
    "income_q",
    "income_lag1",
    "income_lag2",
    "income_lag3",
    "income_lag4",
    "contrib_count_q",
    "contrib_count_4q",
    "days_since_contrib",
    "quarters_without_contrib",
    "balance_change_q",
)

CATEGORICAL_INPUTS: tuple[str, ...] = tuple(
    f.name for f in FEATURES if f.role is Role.INPUT and f.categorical
)
KEY_COLUMNS: tuple[str, ...] = ("npo_account_id", "quarter", "quarter_idx")
RECENCY_MISSING_DAYS = 100_000.0  # never contributed: older than any real recency
WINDOW = 4  # quarters in the test and in the validation window


# --- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AEConfig:
    hidden: int = 32
    embedding: int = 8
    epochs: int = 40
    batch_size: int = 512
    learning_rate: float = 3e-3
    patience: int = 4  # epochs without validation improvement before stopping
    clip: float = 5.0  # training inputs only, in robust-σ units
    max_train_rows: int = 200_000
    max_valid_rows: int = 50_000
    seed: int = 17


@dataclass(frozen=True)
class TrainConfig:
    depths: tuple[int, ...] = (4, 6)
    learning_rates: tuple[float, ...] = (0.08,)
    iterations: int = 600  # upper bound; early stopping on validation log-loss picks the size
    early_stopping_rounds: int = 40
    l2_leaf_reg: float = 3.0
    thread_count: int = 2
    seed: int = 17
    # "auto": keep the embeddings only if they raise validation PR-AUC; "always"/"never" skip
    # that choice (the ablation is still reported unless "never")
    embeddings: Literal["auto", "always", "never"] = "auto"
    ae: AEConfig = field(default_factory=AEConfig)
    # the fund's original recipe, as the baseline to beat
    recipe_depth: int = 7
    recipe_iterations: int = 1000
    recipe_learning_rate: float = 0.02
    recipe_class_weights: tuple[float, float] = (1.0, 4.0)
    explain_horizon: int = 0  # index into HORIZONS of the booster whose leaves are explained
    reliability_bins: int = 10
    onnx_tolerance: float = 1e-3  # max |p_onnx − p_catboost| accepted on the test rows


# --- inputs and the split -------------------------------------------------------------------------


def prepare_inputs(frame: pd.DataFrame) -> np.ndarray:
    """MODEL_INPUTS as float32 in schema order; categorical codes stay numbers, NaN stays NaN."""
    missing = [c for c in MODEL_INPUTS if c not in frame.columns]
    if missing:
        raise ValueError(f"feature table lacks model inputs: {missing}")
    cols = [
        pd.to_numeric(frame[c], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
        for c in MODEL_INPUTS
    ]
    return np.column_stack(cols).astype(np.float32)


def quarter_label(idx: int) -> str:
    """quarter_idx (year·4 + quarter − 1) → '2017Q4'."""
    return f"{idx // 4}Q{idx % 4 + 1}"


@dataclass(frozen=True)
class Split:
    """Row masks of one horizon's out-of-time split, with the quarter bounds that made them."""

    horizon: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    last_labelled: int  # T
    valid_start: int
    test_start: int
    train_last: int  # last training quarter after the purge
    valid_last: int  # last validation quarter after the purge

    def describe(self) -> dict[str, Any]:
        def span(mask: np.ndarray, first: int, last: int) -> dict[str, Any]:
            return {
                "first": quarter_label(first) if first >= 0 else None,
                "last": quarter_label(last),
                "rows": int(mask.sum()),
            }

        return {
            "horizon_quarters": self.horizon,
            "train": span(self.train, -1, self.train_last),
            "valid": span(self.valid, self.valid_start, self.valid_last),
            "test": span(self.test, self.test_start, self.last_labelled),
        }


def out_of_time_split(quarter_idx: np.ndarray, labelled: np.ndarray, horizon: int) -> Split:
    """Train / validation / test by quarter, purged so no label window reaches the next period.

    A row at q with horizon h has its label decided in q+1..q+h. T = the last labelled quarter
    whose window is fully inside the table (T ≤ last quarter of `quarter_idx` − h: later
    labels exist only for accounts that already left, so they are all positive). Test
    T−3..T; validation T−7..T−4 keeping q ≤ T−3−h; training q ≤ T−7−h. Pass the quarter of
    every row, labelled or not, so the table's last quarter is known.
    """
    q = np.asarray(quarter_idx, dtype=np.int64)
    lab = np.asarray(labelled, dtype=bool)
    if not lab.any():
        raise ValueError("no labelled rows")
    last = min(int(q[lab].max()), int(q.max()) - horizon)
    test_start = last - WINDOW + 1
    valid_start = test_start - WINDOW
    train_last = valid_start - horizon
    valid_last = min(test_start - 1, test_start - horizon)
    train = lab & (q <= train_last)
    valid = lab & (q >= valid_start) & (q <= valid_last)
    test = lab & (q >= test_start) & (q <= last)
    for name, mask in (("training", train), ("validation", valid), ("test", test)):
        if not mask.any():
            raise ValueError(
                f"horizon {horizon}: the {name} period is empty; need at least "
                f"{2 * WINDOW + horizon} labelled quarters, have "
                f"{len(np.unique(q[lab]))}"
            )
    return Split(horizon, train, valid, test, last, valid_start, test_start, train_last, valid_last)


# --- the autoencoder ------------------------------------------------------------------------------

_NORMAL_TWO_SIDED = ((0.75, 1.1503), (0.9, 1.6449), (0.99, 2.5758))


def robust_standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and a robust σ per column, NaN ignored.

    σ comes from the smallest of the 75/90/99 % quantiles of |x − median| that is non-zero,
    rescaled as for a normal; columns that are mostly zero (contributions) still get a scale
    set by the accounts that do pay. Falls back to the standard deviation, then 1.
    """
    center = np.zeros(x.shape[1])
    scale = np.ones(x.shape[1])
    for j in range(x.shape[1]):
        col = x[:, j].astype(np.float64)
        col = col[~np.isnan(col)]
        if col.shape[0] == 0:
            continue
        center[j] = float(np.median(col))
        dev = np.abs(col - center[j])
        for p, z in _NORMAL_TWO_SIDED:
            d = float(np.quantile(dev, p))
            if d > 0:
                scale[j] = d / z
                break
        else:
            sd = float(col.std())
            scale[j] = sd if sd > 0 else 1.0
    return center, scale


@dataclass
class AEReport:
    train_loss: list[float]
    valid_loss: list[float]
    best_epoch: int
    seconds: float
    train_rows: int
    valid_rows: int
    columns: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


class _AutoEncoder:
    """k → hidden → embedding → hidden → k, ReLU inside, linear ends; MSE; Adam."""

    def __init__(self, k: int, cfg: AEConfig, rng: np.random.Generator) -> None:
        sizes = [(k, cfg.hidden), (cfg.hidden, cfg.embedding), (cfg.embedding, cfg.hidden)]
        sizes.append((cfg.hidden, k))
        self.w = [(rng.normal(size=s) * np.sqrt(2.0 / s[0])).astype(np.float32) for s in sizes]
        self.b = [np.zeros(s[1], dtype=np.float32) for s in sizes]
        self.m = [np.zeros_like(p) for p in self.w + self.b]
        self.v = [np.zeros_like(p) for p in self.w + self.b]
        self.t = 0

    def forward(self, z: np.ndarray) -> list[np.ndarray]:
        a1 = z @ self.w[0] + self.b[0]
        h1 = _relu(a1)
        e = h1 @ self.w[1] + self.b[1]
        a3 = e @ self.w[2] + self.b[2]
        h3 = _relu(a3)
        out = h3 @ self.w[3] + self.b[3]
        return [z, a1, h1, e, a3, h3, out]

    def loss(self, z: np.ndarray) -> float:
        out = self.forward(z)[-1]
        return float(np.mean((out - z) ** 2))

    def step(self, z: np.ndarray, lr: float) -> None:
        z, a1, h1, e, a3, h3, out = self.forward(z)
        d_out = (2.0 / out.size) * (out - z)
        d_h3 = d_out @ self.w[3].T
        d_a3 = d_h3 * (a3 > 0)
        d_e = d_a3 @ self.w[2].T
        d_h1 = d_e @ self.w[1].T
        d_a1 = d_h1 * (a1 > 0)
        grads_w = [z.T @ d_a1, h1.T @ d_e, e.T @ d_a3, h3.T @ d_out]
        grads_b = [d_a1.sum(0), d_e.sum(0), d_a3.sum(0), d_out.sum(0)]
        self.t += 1
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        c1 = 1 - beta1**self.t
        c2 = 1 - beta2**self.t
        for i, (p, g) in enumerate(zip(self.w + self.b, grads_w + grads_b, strict=True)):
            self.m[i] = beta1 * self.m[i] + (1 - beta1) * g
            self.v[i] = beta2 * self.v[i] + (1 - beta2) * g * g
            p -= (lr * (self.m[i] / c1) / (np.sqrt(self.v[i] / c2) + eps)).astype(p.dtype)

    def snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [w.copy() for w in self.w], [b.copy() for b in self.b]


def fit_autoencoder(
    x_train: np.ndarray,
    x_valid: np.ndarray,
    cfg: AEConfig | None = None,
    columns: Sequence[str] = AE_COLUMNS,
) -> tuple[Encoder, AEReport]:
    """Fit on training rows, stop on validation reconstruction; return the encoder half.

    `x_train`/`x_valid` are full MODEL_INPUTS matrices; only `columns` feed the network.
    """
    cfg = cfg or AEConfig()
    started = time.perf_counter()
    idx = np.array([MODEL_INPUTS.index(c) for c in columns], dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    tr = x_train[:, idx]
    va = x_valid[:, idx]
    if tr.shape[0] > cfg.max_train_rows:
        tr = tr[rng.choice(tr.shape[0], cfg.max_train_rows, replace=False)]
    if va.shape[0] > cfg.max_valid_rows:
        va = va[rng.choice(va.shape[0], cfg.max_valid_rows, replace=False)]
    center, scale = robust_standardiser(tr)

    def standardise(raw: np.ndarray) -> np.ndarray:
        z = (raw.astype(np.float64) - center) / scale
        z = np.where(np.isnan(z), 0.0, z)  # NaN → the centre, as the graph does
        return np.clip(z, -cfg.clip, cfg.clip).astype(np.float32)

    z_tr, z_va = standardise(tr), standardise(va)
    net = _AutoEncoder(len(idx), cfg, rng)
    best = (net.loss(z_va), net.snapshot(), 0)
    train_hist = [net.loss(z_tr)]
    valid_hist = [best[0]]
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(z_tr.shape[0])
        for start in range(0, order.shape[0], cfg.batch_size):
            net.step(z_tr[order[start : start + cfg.batch_size]], cfg.learning_rate)
        train_hist.append(net.loss(z_tr))
        valid_hist.append(net.loss(z_va))
        if valid_hist[-1] < best[0] - 1e-6:
            best = (valid_hist[-1], net.snapshot(), epoch)
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    weights, biases = best[1]
    encoder = Encoder(
        mean=center.astype(np.float32),
        scale=scale.astype(np.float32),
        input_columns=idx,
        weights=weights[:2],
        biases=biases[:2],
    )
    report = AEReport(
        train_loss=train_hist,
        valid_loss=valid_hist,
        best_epoch=best[2],
        seconds=time.perf_counter() - started,
        train_rows=int(z_tr.shape[0]),
        valid_rows=int(z_va.shape[0]),
        columns=tuple(columns),
    )
    return encoder, report


def encode(encoder: Encoder, x: np.ndarray) -> np.ndarray:
    """Embeddings exactly as the scoring graph computes them (no training clip)."""
    return np.asarray(encoder.transform(x), dtype=np.float32)


# --- calibration ----------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def fit_platt(raw: np.ndarray, y: np.ndarray, steps: int = 50) -> Calibration:
    """Platt scaling p = σ(a·raw + b) by Newton's method on the log-loss.

    Targets are Platt's smoothed (N₊+1)/(N₊+2) and 1/(N₋+2), which keeps a and b finite when
    validation separates perfectly; a step that does not lower the loss is halved.
    """
    s = np.asarray(raw, dtype=np.float64)
    yb = np.asarray(y, dtype=np.float64)
    n_pos = yb.sum()
    n_neg = yb.shape[0] - n_pos
    t = np.where(yb > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    design = np.column_stack([s, np.ones_like(s)])

    def nll(theta: np.ndarray) -> float:
        z = design @ theta
        # log(1+e^z) − t·z, stable
        return float(np.mean(np.logaddexp(0.0, z) - t * z))

    theta = np.array([1.0, 0.0])
    current = nll(theta)
    for _ in range(steps):
        p = sigmoid(design @ theta)
        grad = design.T @ (p - t) / s.shape[0]
        w = p * (1 - p)
        hess = (design * w[:, None]).T @ design / s.shape[0] + 1e-9 * np.eye(2)
        delta = np.linalg.solve(hess, grad)
        step = 1.0
        while step > 1e-6:
            candidate = theta - step * delta
            value = nll(candidate)
            if value <= current:
                break
            step /= 2
        else:
            break
        improvement = current - value
        theta, current = candidate, value
        if improvement < 1e-12:
            break
    return Calibration(a=float(theta[0]), b=float(theta[1]))


def apply_calibration(cal: Calibration, raw: np.ndarray) -> np.ndarray:
    return sigmoid(cal.a * np.asarray(raw, dtype=np.float64) + cal.b)


# --- boosting -------------------------------------------------------------------------------------


def _pool(x: np.ndarray, y: np.ndarray | None, names: Sequence[str]) -> Pool:
    # integer class labels: CatBoost's own ONNX export (the benchmark's reference) refuses floats
    label = None if y is None else np.asarray(y).astype(np.int64)
    return Pool(x, label=label, feature_names=list(names))


def _booster(cfg: TrainConfig, **params: Any) -> CatBoostClassifier:
    base: dict[str, Any] = {
        "loss_function": "Logloss",
        "random_seed": cfg.seed,
        "thread_count": cfg.thread_count,
        "verbose": False,
        "allow_writing_files": False,
        "l2_leaf_reg": cfg.l2_leaf_reg,
    }
    base.update(params)
    return CatBoostClassifier(**base)


def raw_scores(booster: CatBoostClassifier, x: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.asarray(
        booster.predict(_pool(x, None, names), prediction_type="RawFormulaVal"), dtype=np.float64
    )


@dataclass
class Fitted:
    booster: CatBoostClassifier
    depth: int
    learning_rate: float
    trees: int
    valid_pr_auc: float
    grid: list[dict[str, Any]]


def fit_with_grid(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    names: Sequence[str],
    cfg: TrainConfig,
) -> Fitted:
    """Depth × learning rate on validation PR-AUC; size by early stopping on validation loss."""
    train_pool = _pool(x_tr, y_tr, names)
    valid_pool = _pool(x_va, y_va, names)
    best: Fitted | None = None
    grid = []
    for depth in cfg.depths:
        for lr in cfg.learning_rates:
            booster = _booster(
                cfg,
                depth=depth,
                learning_rate=lr,
                iterations=cfg.iterations,
                early_stopping_rounds=cfg.early_stopping_rounds,
                use_best_model=True,
            )
            booster.fit(train_pool, eval_set=valid_pool)
            score = mt.pr_auc(y_va, raw_scores(booster, x_va, names))
            trees = int(booster.tree_count_)
            grid.append(
                {"depth": depth, "learning_rate": lr, "trees": trees, "valid_pr_auc": score}
            )
            if best is None or score > best.valid_pr_auc:
                best = Fitted(booster, depth, lr, trees, score, grid)
    if best is None:
        raise ValueError("empty grid: set at least one depth and one learning rate")
    best.grid = grid
    return best


# --- the trained model ----------------------------------------------------------------------------


@dataclass
class TrainedModel:
    """Everything `save_version` writes, plus what promotion needs to re-score the test rows."""

    version: str
    onnx_model: onnx.ModelProto
    shap: ShapTables
    card: dict[str, Any]
    meta: dict[str, Any]
    encoder: Encoder | None
    boosters: list[CatBoostClassifier]
    calibrations: list[Calibration]
    test_frame: pd.DataFrame  # next-quarter test rows: keys, label, MODEL_INPUTS
    test_p_leave: np.ndarray  # the ONNX graph's next-quarter probability on those rows


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    promoted: bool
    forced: bool
    reason: str
    new_pr_auc: float
    current_version: str | None = None
    current_pr_auc: float | None = None
    test_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_hash(features: pd.DataFrame) -> str:
    """Short content hash of the rows and columns the model learns from."""
    cols = [c for c in (*KEY_COLUMNS, *MODEL_INPUTS, *(h.label for h in HORIZONS)) if c in features]
    hashed = pd.util.hash_pandas_object(features[cols], index=False).to_numpy()
    digest = hashlib.sha256(np.sort(hashed).tobytes())
    digest.update(",".join(cols).encode())
    return digest.hexdigest()[:10]


def _recency_score(x: np.ndarray) -> np.ndarray:
    days = x[:, MODEL_INPUTS.index("days_since_contrib")].astype(np.float64)
    return np.where(np.isnan(days), RECENCY_MISSING_DAYS, days)


def _metrics_block(
    y_va: np.ndarray, p_va: np.ndarray, y_te: np.ndarray, p_te: np.ndarray
) -> dict[str, Any]:
    """Threshold = best F1 on validation; the test block is measured at that threshold."""
    threshold, _ = mt.best_f1_threshold(y_va, p_va)
    return {
        "valid": mt.binary_metrics(y_va, p_va, threshold),
        "test": mt.binary_metrics(y_te, p_te, threshold),
        "threshold": threshold,
    }


def _truth_probabilities(frame: pd.DataFrame, truth: pd.DataFrame, column: str) -> np.ndarray:
    keys = ["npo_account_id", "quarter"]
    right = truth[[*keys, column]].copy()
    left = frame[keys].copy()
    for k in keys:
        left[k] = left[k].astype(str)
        right[k] = right[k].astype(str)
    merged = left.merge(right.drop_duplicates(keys), on=keys, how="left", validate="many_to_one")
    return merged[column].to_numpy(dtype=np.float64, na_value=np.nan)


def _run_onnx(model_bytes: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities and raw scores exactly as scoring will compute them."""
    session = make_session(model_bytes, threads=2)
    return run_in_batches(session, x, outputs=("p_leave", "raw_score"))


def train(
    features: pd.DataFrame,
    truth: pd.DataFrame | None = None,
    config: TrainConfig = TrainConfig(),
) -> TrainedModel:
    """Fit, select, calibrate and evaluate both horizons; build the single ONNX scoring graph."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    frame = features.reset_index(drop=True)
    x = prepare_inputs(frame)
    q = frame["quarter_idx"].to_numpy(dtype=np.int64)
    labels = {h.name: frame[h.label].to_numpy(dtype=np.float64, na_value=np.nan) for h in HORIZONS}
    splits = {h.name: out_of_time_split(q, ~np.isnan(labels[h.name]), h.quarters) for h in HORIZONS}
    version_hash = data_hash(frame)
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{version_hash}"
    timings["prepare"] = time.perf_counter() - started

    # Autoencoder: inputs only (no labels), fitted before every horizon's validation window
    # and stopped on the earliest validation window.
    encoder: Encoder | None = None
    ae_report: AEReport | None = None
    emb_names: list[str] = []
    x_with = x
    if config.embeddings != "never":
        t0 = time.perf_counter()
        first_valid = min(s.valid_start for s in splits.values())
        ae_train = q < first_valid
        ae_valid = (q >= first_valid) & (q < first_valid + WINDOW)
        encoder, ae_report = fit_autoencoder(x[ae_train], x[ae_valid], config.ae)
        emb = encode(encoder, x)
        emb_names = [f"emb_{i}" for i in range(emb.shape[1])]
        x_with = np.hstack([x, emb]).astype(np.float32)
        timings["autoencoder"] = time.perf_counter() - t0
    raw_names = list(MODEL_INPUTS)
    with_names = raw_names + emb_names

    # Boosters with and without embeddings, on each horizon's own split.
    t0 = time.perf_counter()
    fitted: dict[str, dict[str, Fitted]] = {}
    for h in HORIZONS:
        s, y = splits[h.name], labels[h.name]
        variants = {"without": (x, raw_names)}
        if encoder is not None:
            variants["with"] = (x_with, with_names)
        fitted[h.name] = {
            name: fit_with_grid(xx[s.train], y[s.train], xx[s.valid], y[s.valid], names, config)
            for name, (xx, names) in variants.items()
        }
    timings["boosters"] = time.perf_counter() - t0

    # One encoder serves every horizon in the graph: keep it only if it helps on the whole.
    gain = sum(
        f["with"].valid_pr_auc - f["without"].valid_pr_auc for f in fitted.values() if "with" in f
    )
    embeddings_used = encoder is not None and (config.embeddings == "always" or gain > 0)
    variant = "with" if embeddings_used else "without"
    x_tree, tree_names = (x_with, with_names) if embeddings_used else (x, raw_names)

    horizons_card: dict[str, Any] = {}
    boosters: list[CatBoostClassifier] = []
    calibrations: list[Calibration] = []
    p_test_python: dict[str, np.ndarray] = {}
    t_base = 0.0
    for h in HORIZONS:
        s, y = splits[h.name], labels[h.name]
        chosen = fitted[h.name][variant]
        raw_va = raw_scores(chosen.booster, x_tree[s.valid], tree_names)
        raw_te = raw_scores(chosen.booster, x_tree[s.test], tree_names)
        cal = fit_platt(raw_va, y[s.valid])
        p_va, p_te = apply_calibration(cal, raw_va), apply_calibration(cal, raw_te)
        block = _metrics_block(y[s.valid], p_va, y[s.test], p_te)
        block["test"]["pr_auc_uncalibrated"] = mt.pr_auc(y[s.test], raw_te)
        boosters.append(chosen.booster)
        calibrations.append(cal)
        p_test_python[h.name] = p_te

        tb = time.perf_counter()
        baselines = {
            "recency": _recency_baseline(x, y, s),
            "original_recipe": _recipe_baseline(x, y, s, raw_names, config),
        }
        t_base += time.perf_counter() - tb

        help_block: dict[str, Any] = {"value": False, "with": None, "without": None}
        if "with" in fitted[h.name]:
            w, wo = fitted[h.name]["with"].valid_pr_auc, fitted[h.name]["without"].valid_pr_auc
            help_block = {"value": bool(w > wo), "with": w, "without": wo}

        q_te = q[s.test]
        last_quarter = q_te == q_te.max()
        loyalty_last = 1.0 - p_te[last_quarter]
        card_h: dict[str, Any] = {
            "title": h.title,
            "label": h.label,
            "split": s.describe(),
            "metrics": {"valid": block["valid"], "test": block["test"]},
            "threshold": block["threshold"],
            "calibration": {"a": cal.a, "b": cal.b},
            "booster": {
                "depth": chosen.depth,
                "learning_rate": chosen.learning_rate,
                "trees": chosen.trees,
                "grid": chosen.grid,
                "embeddings": embeddings_used,
            },
            "embeddings_help": help_block,
            "ablation_grid": {k: v.grid for k, v in fitted[h.name].items()},
            "baselines": baselines,
            "reliability": [
                r.as_dict() for r in mt.reliability_table(y[s.test], p_te, config.reliability_bins)
            ],
            "bands": _band_table(
                y[s.test][last_quarter], loyalty_last, quarter_label(int(q_te.max()))
            ),
            "feature_importance": _importance(chosen.booster, tree_names),
        }
        if truth is not None:
            card_h["metrics"]["truth"] = _truth_block(frame, truth, h, s, y)
        horizons_card[h.name] = card_h
    timings["baselines"] = t_base

    t0 = time.perf_counter()
    onnx_model = build_scoring_model(
        n_inputs=len(MODEL_INPUTS),
        encoder=encoder if embeddings_used else None,
        boosters=boosters,
        calibrations=calibrations,
        explain_horizon=config.explain_horizon,
    )
    primary = splits[HORIZONS[0].name]
    onnx_bytes = onnx_model.SerializeToString()
    onnx_out = _run_onnx(onnx_bytes, x[primary.test])
    diff = float(np.max(np.abs(onnx_out["p_leave"][:, 0] - p_test_python[HORIZONS[0].name])))
    for i, h in enumerate(HORIZONS[1:], start=1):
        s = splits[h.name]
        p_onnx = _run_onnx(onnx_bytes, x[s.test])["p_leave"][:, i]
        diff = max(diff, float(np.max(np.abs(p_onnx - p_test_python[h.name]))))
    if not diff <= config.onnx_tolerance:
        raise RuntimeError(f"ONNX graph disagrees with CatBoost: max |Δp| = {diff:.2e}")
    shap = leaf_shap_tables(boosters[config.explain_horizon])
    timings["export"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started

    test_frame = frame.loc[primary.test, [*KEY_COLUMNS, HORIZONS[0].label, *MODEL_INPUTS]]
    trained_on = {h.name: splits[h.name].describe() for h in HORIZONS}
    meta = {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_hash": version_hash,
        "input_columns": raw_names,
        "tree_columns": tree_names,
        "embedding_columns": emb_names if embeddings_used else [],
        "categorical_columns": list(CATEGORICAL_INPUTS),
        "encoder": (
            {
                "used": True,
                "input_columns": list(AE_COLUMNS),
                "embedding_dim": len(emb_names),
            }
            if embeddings_used
            else {"used": False}
        ),
        "horizons": [h.name for h in HORIZONS],  # = column order of p_leave / raw_score
        "horizon_labels": {h.name: h.label for h in HORIZONS},
        "horizon_quarters": {h.name: h.quarters for h in HORIZONS},
        "thresholds": {h.name: horizons_card[h.name]["threshold"] for h in HORIZONS},
        "calibrations": {h.name: horizons_card[h.name]["calibration"] for h in HORIZONS},
        "explain_horizon": config.explain_horizon,
        "explain_horizon_name": HORIZONS[config.explain_horizon].name,
        "bands": [{"name": n, "low": lo, "high": hi} for n, lo, hi in mt.BANDS],
        "trained_on": trained_on,
        "outputs": {"p_leave": [h.name for h in HORIZONS], "raw_score": [h.name for h in HORIZONS]},
    }
    card = {
        "version": version,
        "created_at": meta["created_at"],
        "data": {
            "rows": len(frame),
            "accounts": int(frame["npo_account_id"].nunique()),
            "quarters": [quarter_label(int(q.min())), quarter_label(int(q.max()))],
            "hash": version_hash,
        },
        "protocol": _protocol_text(),
        "embeddings_used": embeddings_used,
        "embeddings_gain_valid_pr_auc": gain if encoder is not None else None,
        "autoencoder": ae_report.as_dict() if ae_report else None,
        "horizons": horizons_card,
        # the headline horizon (leave next quarter) at the top level, as the fund asked
        **{
            key: horizons_card[HORIZONS[0].name][key]
            for key in ("metrics", "threshold", "baselines", "embeddings_help")
        },
        "onnx_max_abs_diff": diff,
        "timings_s": timings,
        "config": _jsonable(asdict(config)),
    }
    return TrainedModel(
        version=version,
        onnx_model=onnx_model,
        shap=shap,
        card=_jsonable(card),
        meta=_jsonable(meta),
        encoder=encoder if embeddings_used else None,
        boosters=boosters,
        calibrations=calibrations,
        test_frame=test_frame.reset_index(drop=True),
        test_p_leave=onnx_out["p_leave"][:, 0].astype(np.float64),
    )


def _recency_baseline(x: np.ndarray, y: np.ndarray, s: Split) -> dict[str, Any]:
    """Days since the last contribution as the risk score; Platt on log1p(days) for Brier."""
    score = _recency_score(x)
    feat = np.log1p(score)
    cal = fit_platt(feat[s.valid], y[s.valid])
    p_va = apply_calibration(cal, feat[s.valid])
    p_te = apply_calibration(cal, feat[s.test])
    block = _metrics_block(y[s.valid], p_va, y[s.test], p_te)
    test = block["test"]
    # ranking metrics on the score itself (the calibration is monotone only when a > 0)
    test["roc_auc"] = mt.roc_auc(y[s.test], score[s.test])
    test["pr_auc"] = mt.pr_auc(y[s.test], score[s.test])
    threshold = block["threshold"]
    days: float | None = None
    if 0 < threshold < 1 and cal.a > 0:  # invert σ(a·log1p(days) + b) = threshold
        days = float(np.expm1((np.log(threshold / (1 - threshold)) - cal.b) / cal.a))
    return {**test, "threshold": threshold, "threshold_days": days}


def _recipe_baseline(
    x: np.ndarray, y: np.ndarray, s: Split, names: Sequence[str], cfg: TrainConfig
) -> dict[str, Any]:
    """The fund's recipe: depth 7, 1000 trees, lr 0.02, class weights 1:4, raw inputs, no eval."""
    booster = _booster(
        cfg,
        depth=cfg.recipe_depth,
        iterations=cfg.recipe_iterations,
        learning_rate=cfg.recipe_learning_rate,
        class_weights=list(cfg.recipe_class_weights),
    )
    booster.fit(_pool(x[s.train], y[s.train], names))
    p_va = booster.predict_proba(_pool(x[s.valid], None, names))[:, 1]
    p_te = booster.predict_proba(_pool(x[s.test], None, names))[:, 1]
    block = _metrics_block(y[s.valid], p_va, y[s.test], p_te)
    return {
        **block["test"],
        "threshold": block["threshold"],
        "f1_at_0_5": mt.f1_at(y[s.test], p_te, 0.5),
        "iterations": cfg.recipe_iterations,
    }


def _truth_block(
    frame: pd.DataFrame, truth: pd.DataFrame, h: Horizon, s: Split, y: np.ndarray
) -> dict[str, Any]:
    """The simulator's true probabilities on the same rows: the ceiling no model can beat."""
    column = f"p_leave_{h.name}"
    p_va = _truth_probabilities(frame.loc[s.valid], truth, column)
    p_te = _truth_probabilities(frame.loc[s.test], truth, column)
    ok_va, ok_te = ~np.isnan(p_va), ~np.isnan(p_te)
    if not ok_te.any():
        return {"coverage": 0.0}
    y_va, y_te = y[s.valid][ok_va], y[s.test][ok_te]
    threshold = mt.best_f1_threshold(y_va, p_va[ok_va])[0] if ok_va.any() else 0.5
    block = mt.binary_metrics(y_te, p_te[ok_te], threshold)
    block["coverage"] = float(ok_te.mean())
    return block


def _band_table(y: np.ndarray, loyalty: np.ndarray, quarter: str) -> dict[str, Any]:
    """Share of accounts per band in the last test quarter, with observed leave rate and lift."""
    shares = mt.band_shares(loyalty)
    overall = float(y.mean()) if y.shape[0] else float("nan")
    rows = []
    for name, low, high in mt.BANDS:
        mask = (loyalty >= low) & (loyalty < high)
        rate = float(y[mask].mean()) if mask.any() else None
        rows.append(
            {
                "band": name,
                "share": shares[name],
                "accounts": int(mask.sum()),
                "observed_leave_rate": rate,
                "relative_risk": rate / overall if rate is not None and overall > 0 else None,
            }
        )
    return {"quarter": quarter, "accounts": int(y.shape[0]), "leave_rate": overall, "rows": rows}


def _importance(booster: CatBoostClassifier, names: Sequence[str], top: int = 15) -> list[Any]:
    values = np.asarray(booster.get_feature_importance(), dtype=np.float64)
    order = np.argsort(-values)[:top]
    return [{"feature": names[i], "importance": float(values[i])} for i in order]


def _protocol_text() -> str:
    return (
        "Разбиение по времени, для каждого горизонта h (1 или 4 квартала) отдельно. "
        "T — последний квартал с известной меткой, окно которой целиком внутри данных "
        "(T ≤ последний квартал − h). Тест: T−3..T. Валидация: T−7..T−4, только кварталы "
        "≤ T−3−h. Обучение: кварталы ≤ T−7−h. Метка строки квартала q решается в кварталах "
        "q+1..q+h, поэтому каждая метка обучения известна к началу валидации, а каждая метка "
        "валидации — к началу теста («метка из будущего» исключена). На валидации: ранняя "
        "остановка, выбор глубины и шага по PR-AUC, абляция эмбеддингов, калибровка Платта, "
        "порог по максимуму F1. Тест только для отчёта; базовые модели и потолок (истинные "
        "вероятности) — на тех же строках. Случайного разбиения нет."
    )


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if np.isfinite(value) else None
    return obj


# --- saving and promotion -------------------------------------------------------------------------


def evaluate_current(store: Store, trained: TrainedModel) -> tuple[str, float] | None:
    """The current model's next-quarter PR-AUC on the new model's test rows, via its ONNX.

    None when there is no current model or it cannot read these rows (other input columns).
    """
    pointer = store.current(Keys.models)
    if pointer is None:
        return None
    folder = Keys.version_dir(Keys.models, pointer["version"])
    meta = store.get_json(folder + "meta.json")
    columns = meta.get("input_columns", list(MODEL_INPUTS))
    if any(c not in trained.test_frame.columns for c in columns):
        return None
    horizons = list(meta.get("horizons", []))
    index = horizons.index(HORIZONS[0].name) if HORIZONS[0].name in horizons else 0
    x = trained.test_frame[columns].to_numpy(dtype=np.float32, na_value=np.nan)
    p = _run_onnx(store.get_bytes(folder + "model.onnx"), x)["p_leave"][:, index]
    y = trained.test_frame[HORIZONS[0].label].to_numpy(dtype=np.float64)
    return str(pointer["version"]), mt.pr_auc(y, p)


def decide_promotion(store: Store, trained: TrainedModel, force: bool = False) -> PromotionDecision:
    y = trained.test_frame[HORIZONS[0].label].to_numpy(dtype=np.float64)
    new = mt.pr_auc(y, trained.test_p_leave)
    rows = int(y.shape[0])
    current = evaluate_current(store, trained)
    if current is None:
        pointer = store.current(Keys.models)
        if pointer is None:
            reason = "первая модель: текущей нет"
        else:
            reason = (
                f"текущая модель {pointer['version']} не читает нынешние признаки; "
                "сравнение невозможно, новая модель становится текущей"
            )
        return PromotionDecision(trained.version, True, False, reason, new, test_rows=rows)
    cur_version, cur = current
    better = new >= cur - 1e-12
    comparison = (
        f"PR-AUC (следующий квартал) на тех же {rows} тестовых строках: новая {new:.4f}, "
        f"текущая {cur_version} {cur:.4f}"
    )
    if better:
        reason = f"не хуже текущей — {comparison}"
    elif force:
        reason = f"хуже текущей, но принудительно (--force) — {comparison}"
    else:
        reason = f"хуже текущей, текущая остаётся — {comparison}"
    return PromotionDecision(
        trained.version, better or force, force and not better, reason, new, cur_version, cur, rows
    )


def save_version(store: Store, trained: TrainedModel, force: bool = False) -> PromotionDecision:
    """Write models/<version>/… and make it current if it is not worse (or when forced).

    The pointer is written last, so a reader never sees a half-written version as current.
    """
    folder = Keys.version_dir(Keys.models, trained.version)
    if store.exists(folder + "meta.json"):
        raise FileExistsError(f"model version {trained.version} is already saved")
    decision = decide_promotion(store, trained, force)
    card = {**trained.card, "promotion": _jsonable(decision.as_dict())}
    store.put_bytes(folder + "model.onnx", trained.onnx_model.SerializeToString())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shap.npz"
        trained.shap.save(path)
        store.put_file(folder + "shap.npz", path)
        # the boosters themselves, for audits and the benchmark; scoring never reads them
        for horizon, booster in zip(HORIZONS, trained.boosters, strict=True):
            cbm = Path(tmp) / f"{horizon.name}.cbm"
            booster.save_model(str(cbm))
            store.put_file(f"{folder}boosters/{horizon.name}.cbm", cbm)
    store.put_json(folder + "meta.json", trained.meta)
    store.put_bytes(folder + "card.json", json.dumps(card, ensure_ascii=False, indent=2).encode())
    store.put_bytes(folder + "card.md", render_card_md(card).encode())
    if decision.promoted:
        store.publish(
            Keys.models,
            trained.version,
            {
                "pr_auc_test_next_q": decision.new_pr_auc,
                "forced": decision.forced,
                "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
    return decision


# --- the Markdown card ----------------------------------------------------------------------------


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "да" if value else "нет"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _metric_row(name: str, block: dict[str, Any] | None) -> str:
    if not block or "roc_auc" not in block:
        return f"| {name} | — | — | — | — | — | — | — |"
    cells = [block.get(k) for k in ("roc_auc", "pr_auc", "f1", "precision", "recall", "brier")]
    cells.append(block.get("threshold"))
    return "| " + name + " | " + " | ".join(_f(c) for c in cells) + " |"


def render_card_md(card: dict[str, Any]) -> str:
    """A readable card: Russian text, numbers with a decimal point."""
    lines = [f"# Модель оттока НПО — версия `{card['version']}`", ""]
    promo = card.get("promotion")
    if promo:
        status = "стала текущей" if promo["promoted"] else "НЕ стала текущей"
        lines += [f"**Итог:** {status}. {promo['reason']}.", ""]
    data = card["data"]
    lines += [
        "## Данные",
        "",
        f"- строк (счёт × квартал): {_f(data['rows'])}; счетов: {_f(data['accounts'])}; "
        f"кварталы {data['quarters'][0]}–{data['quarters'][1]}; хэш данных `{data['hash']}`",
        "",
        "## Протокол",
        "",
        card["protocol"],
        "",
    ]
    for name, h in card["horizons"].items():
        sp = h["split"]
        lines += [f"## Горизонт `{name}` — {h['title']}", ""]
        lines += ["| часть | кварталы | строк |", "| --- | --- | --- |"]
        for part, title in (("train", "обучение"), ("valid", "валидация"), ("test", "тест")):
            first = sp[part]["first"] or "начало"
            lines.append(f"| {title} | {first}–{sp[part]['last']} | {_f(sp[part]['rows'])} |")
        test = h["metrics"]["test"]
        lines += [
            "",
            f"Доля ушедших на тесте: {_f(test['positive_rate'])} ({_f(test['positives'])} "
            f"из {_f(test['n'])}), на валидации: {_f(h['metrics']['valid']['positive_rate'])}"
            " (калибровка и порог настроены на валидации: при сдвиге доли ушедших "
            "вероятности на тесте смещены). "
            f"Порог (макс. F1 на валидации): {_f(h['threshold'])}.",
            "",
            "| модель | ROC-AUC | PR-AUC | F1 | точность | полнота | Brier | порог |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            _metric_row("модель (тест)", test),
            _metric_row("модель (валидация)", h["metrics"]["valid"]),
            _metric_row("базовая: давность взноса", h["baselines"]["recency"]),
            _metric_row("базовая: исходный рецепт", h["baselines"]["original_recipe"]),
        ]
        if "truth" in h["metrics"]:
            lines.append(_metric_row("потолок: истинные вероятности", h["metrics"]["truth"]))
        recipe = h["baselines"]["original_recipe"]
        eh = h["embeddings_help"]
        bo = h["booster"]
        lines += [
            "",
            f"Исходный рецепт: F1 при пороге 0.5 = {_f(recipe.get('f1_at_0_5'))}; "
            f"его вероятности не калиброваны (веса классов 1:4), отсюда Brier.",
            "",
            f"Бустинг: глубина {bo['depth']}, шаг {bo['learning_rate']}, деревьев {bo['trees']}, "
            f"эмбеддинги {'используются' if bo['embeddings'] else 'не используются'}. "
            f"Абляция (PR-AUC на валидации): с эмбеддингами {_f(eh['with'])}, "
            f"без {_f(eh['without'])} — помогают: {_f(eh['value'])}.",
            "",
            f"Калибровка Платта: p = σ({_f(h['calibration']['a'])}·raw "
            f"{'−' if h['calibration']['b'] < 0 else '+'} {_f(abs(h['calibration']['b']))}).",
            "",
            "Надёжность (тест, по децилям прогноза):",
            "",
            "| прогноз от | до | средний прогноз | доля ушедших | строк |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in h["reliability"]:
            lines.append(
                f"| {_f(r['p_low'])} | {_f(r['p_high'])} | {_f(r['mean_predicted'])} | "
                f"{_f(r['observed_rate'])} | {_f(r['count'])} |"
            )
        bands = h["bands"]
        lines += [
            "",
            f"Полосы лояльности (1 − P(ухода)), счета последнего тестового квартала "
            f"{bands['quarter']}:",
            "",
            "| полоса | доля счетов | счетов | доля ушедших | отн. риск |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in bands["rows"]:
            lines.append(
                f"| {r['band']} | {_f(r['share'])} | {_f(r['accounts'])} | "
                f"{_f(r['observed_leave_rate'])} | {_f(r['relative_risk'], 2)} |"
            )
        lines += [
            "",
            "Важнейшие признаки: "
            + ", ".join(
                f"{f['feature']} ({f['importance']:.1f})" for f in h["feature_importance"][:10]
            ),
            "",
        ]
    ae = card.get("autoencoder")
    if ae:
        lines += [
            "## Автоэнкодер",
            "",
            f"{len(ae['columns'])} признаков → 32 → 8; обучение {_f(ae['train_rows'])} строк, "
            f"валидация {_f(ae['valid_rows'])}; лучшая эпоха {ae['best_epoch']}; "
            f"ошибка восстановления (валидация) {_f(ae['valid_loss'][0])} → "
            f"{_f(min(ae['valid_loss']))}; {_f(ae['seconds'], 1)} с. "
            f"Эмбеддинги в модели: {_f(card['embeddings_used'])}.",
            "",
        ]
    timings = ", ".join(f"{k} {v:.1f} с" for k, v in card["timings_s"].items())
    lines += [
        "## Прочее",
        "",
        f"- расхождение ONNX и CatBoost на тесте: {card['onnx_max_abs_diff']:.2e}",
        f"- время: {timings}",
        "",
    ]
    return "\n".join(lines)


def train_from_store(
    store: Store,
    settings: Settings,
    truth_path: Path | None = None,
    config: TrainConfig = TrainConfig(),
    force: bool = False,
) -> tuple[TrainedModel, PromotionDecision]:
    """Train on the current feature table and save (and maybe promote) a new version."""
    from npf_loyalty.engine import connect

    pointer = store.current(Keys.features)
    if pointer is None:
        raise RuntimeError("no features yet: upload the fund's dumps first")
    folder = Keys.version_dir(Keys.features, pointer["version"])
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="train-") as tmp:
        if isinstance(store, LocalStore):
            root = store.local_path(folder)
        else:
            root = Path(tmp) / "features"
            for key in store.list(folder):
                store.get_file(key, root / key[len(folder) :])
        con = connect(settings)
        try:
            features = con.sql(
                f"SELECT * FROM read_parquet('{root.as_posix()}/*/*.parquet', "
                "hive_partitioning = true) ORDER BY quarter_idx, npo_account_id"
            ).df()
        finally:
            con.close()
    truth = pd.read_parquet(truth_path) if truth_path is not None else None
    trained = train(features, truth, config)
    return trained, save_version(store, trained, force=force)
