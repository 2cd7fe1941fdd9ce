"""Export encoder + CatBoost churn models into one plain-ONNX scoring graph (training side).

The Lambda that scores ~1M accounts a quarter can hold onnxruntime but not catboost, and
onnxruntime's ``TreeEnsemble`` operator on CatBoost's own ONNX export is ~10x slower than
catboost.  Oblivious trees map well onto a few dense tensor ops instead.  The graph works
on a batch of 1–2k rows (``onnx_runtime.run_in_batches``) so that its intermediates — at
most [~2k splits, rows] bytes — stay in cache:

1. Encoder (optional): Gather its input columns, NaN → column mean (``Where(IsNaN)``), then
   Gemm layers (standardisation folded into the first) with ``Max(h, 0)`` between them.
   Computed in float64 and rounded to float32, like ``Encoder.transform``, so the graph's
   embeddings are the training embeddings bit for bit (1 ulp can flip a split on them).
2. Work feature-major: ``Transpose`` the tree input to [columns, rows] so that every later
   Gather copies whole contiguous rows.
3. Binarise each distinct split (column, border) of all boosters once: a column's borders
   are packed into "virtual rows" of K borders (padded with +inf, never exceeded); one
   broadcast ``Greater`` gives [V, K, rows] bits, cast to uint8.  ``x > border`` is false
   for NaN, which is catboost's default ``nan_mode=Min`` (``AsFalse``); columns with
   ``AsTrue`` (``nan_mode=Max``) get NaN replaced by +inf first.
4. Leaf ids in integer arithmetic, trees in groups of 4: one Gather of every tree's bit rows,
   then one batched uint8 ``MatMulInteger`` with block-diagonal powers of two
   (id = Σ_d bit_d·2^d, bit d = split d of the tree, as catboost numbers leaves).  On
   onnxruntime ≥ 1.21 ``index_mode="uint8"`` uses a byte Horner scheme instead.
5. ``GatherElements`` of the float32 leaf values [trees, 2^depth] by leaf id, ``ReduceSum``
   within groups of ~32 trees in float32 and across groups in float64 (a float32 sum over
   hundreds of trees drifts by ~1e-5), catboost's ``scale_and_bias``, then Platt
   calibration and ``Sigmoid`` in float64.

Outputs: ``p_leave`` [N, H], ``raw_score`` [N, H] (float32), ``leaf_index`` [N, T] (int32, trees
of ``boosters[explain_horizon]``, the input of ``explain.explain``).  onnxruntime computes
every node whatever outputs are fetched, so the leaf-index transpose always runs; it is
done on bytes (~3x cheaper than on int32) and widened afterwards.

Only standard ``ai.onnx`` ops that onnxruntime 1.16 runs are used (checked on 1.16.3).
Tree structure comes from CatBoost's JSON export.  Verified against catboost 1.2.10 (see
tests): split = ``float32(x) > border`` (equal goes left), leaf id = Σ bit_d·2^d over the
JSON ``splits`` in order, NaN per ``nan_value_treatment``; for path-dependent SHAP the
*last* split of the list is the root.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from npf_loyalty.explain import ShapTables

if TYPE_CHECKING:
    from catboost import CatBoostClassifier

__all__ = [
    "Calibration",
    "Encoder",
    "ObliviousForest",
    "build_scoring_model",
    "catboost_native_onnx",
    "forest_from_catboost_json",
    "leaf_shap_tables",
    "read_forest",
]

_F32 = np.float32
_F64 = np.float64


@dataclass(frozen=True)
class Encoder:
    """Encoder half of the autoencoder: standardise, then an MLP (Relu between layers, last
    layer linear = the embedding).  NaN inputs are imputed with the column mean."""

    mean: np.ndarray
    scale: np.ndarray
    input_columns: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def __post_init__(self) -> None:
        k = self.input_columns.shape[0]
        if self.input_columns.ndim != 1 or self.mean.shape != (k,) or self.scale.shape != (k,):
            raise ValueError("mean, scale and input_columns must all be [k]")
        if not np.issubdtype(self.input_columns.dtype, np.integer):
            raise TypeError("input_columns must be integer")
        if np.any(self.scale == 0) or not np.all(np.isfinite(self.scale)):
            raise ValueError("scale must be finite and non-zero")
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError("need one bias per weight matrix and at least one layer")
        width = k
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise ValueError(f"layer {i}: weights must be [{width}, out], bias [out]")
            width = w.shape[1]

    @property
    def embedding_dim(self) -> int:
        return int(self.weights[-1].shape[1])

    def folded_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """float64 layers with the standardisation folded into the first one:
        ((x − mean)/scale)·W + b = x·(W/scale) + (b − (mean/scale)·W)."""
        w0 = np.asarray(self.weights[0], _F64)
        scale = np.asarray(self.scale, _F64)
        mean = np.asarray(self.mean, _F64)
        first = (w0 / scale[:, None], np.asarray(self.biases[0], _F64) - (mean / scale) @ w0)
        rest = [
            (np.asarray(w, _F64), np.asarray(b, _F64))
            for w, b in zip(self.weights[1:], self.biases[1:], strict=True)
        ]
        return [first, *rest]

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Numpy reference [N, n_inputs] → embedding [N, dim] float32.

        Computed in float64 and rounded once, the same as the ONNX graph, so both give the
        same float32 embeddings (the boosters split on them)."""
        xe = np.asarray(x)[:, self.input_columns].astype(_F64)
        mean = np.asarray(self.mean, _F64)
        xe = np.where(np.isnan(xe), mean, xe)
        h = (xe - mean) / np.asarray(self.scale, _F64)
        n_layers = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ np.asarray(w, _F64) + np.asarray(b, _F64)
            if i < n_layers - 1:
                h = np.maximum(h, 0.0)
        return h.astype(_F32)


@dataclass(frozen=True)
class Calibration:
    """Platt scaling: p = sigmoid(a·raw + b), raw = CatBoost's raw score (log-odds)."""

    a: float
    b: float


@dataclass(frozen=True)
class ObliviousForest:
    """A CatBoost binary classifier's oblivious trees as arrays (trees padded to max depth).

    ``split_columns/split_borders/split_nan_true``: [T, D] (−1 / +inf / False where a tree is
    shallower); bit d of a leaf index is ``x[:, split_columns[t, d]] > split_borders[t, d]``.
    ``leaf_values/leaf_weights``: [T, 2^D] (zero beyond 2^depth_t).
    raw score = scale · Σ_t leaf_values[t, leaf_t] + bias.
    """

    n_columns: int
    depths: np.ndarray
    split_columns: np.ndarray
    split_borders: np.ndarray
    split_nan_true: np.ndarray
    leaf_values: np.ndarray
    leaf_weights: np.ndarray
    scale: float
    bias: float

    @property
    def n_trees(self) -> int:
        return int(self.depths.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.split_columns.shape[1])

    def leaf_indices(self, x: np.ndarray) -> np.ndarray:
        """Numpy reference [N, n_columns] → int64 [N, T] (used in tests and checks)."""
        x = np.asarray(x, dtype=_F32)
        out = np.zeros((x.shape[0], self.n_trees), dtype=np.int64)
        for t in range(self.n_trees):
            for d in range(int(self.depths[t])):
                v = x[:, self.split_columns[t, d]]
                bit = v > self.split_borders[t, d]
                if self.split_nan_true[t, d]:
                    bit |= np.isnan(v)
                out[:, t] |= bit.astype(np.int64) << d
        return out

    def raw_score(self, x: np.ndarray) -> np.ndarray:
        leaves = self.leaf_indices(x)
        rows = np.arange(self.n_trees)
        total = self.leaf_values[rows[None, :], leaves].sum(axis=1)
        return self.scale * total + self.bias


def forest_from_catboost_json(model: dict[str, Any]) -> ObliviousForest:
    """Parse CatBoost's JSON model (``save_model(format="json")``) of a binary classifier
    with numeric features only; anything else raises (better than silently mis-scoring)."""
    if "oblivious_trees" not in model:
        raise ValueError(
            "only symmetric (oblivious) trees are supported (grow_policy=SymmetricTree)"
        )
    info = model.get("features_info", {})
    for key in ("categorical_features", "text_features", "embedding_features"):
        if info.get(key):
            raise ValueError(f"model has {key}; only float features are supported")
    if model.get("ctr_data"):
        raise ValueError("model uses CTR features; only float features are supported")
    floats = info.get("float_features", [])
    by_index = {int(f["feature_index"]): f for f in floats}
    n_columns = 1 + max((int(f["flat_feature_index"]) for f in floats), default=-1)

    trees = model["oblivious_trees"]
    depths = np.array([len(t.get("splits") or []) for t in trees], dtype=np.int64)
    max_depth = int(depths.max(initial=0))
    n_trees = len(trees)
    cols = np.full((n_trees, max_depth), -1, dtype=np.int64)
    borders = np.full((n_trees, max_depth), np.inf, dtype=_F32)
    nan_true = np.zeros((n_trees, max_depth), dtype=bool)
    values = np.zeros((n_trees, 1 << max_depth), dtype=_F64)
    weights = np.zeros((n_trees, 1 << max_depth), dtype=_F64)
    for t, tree in enumerate(trees):
        for d, split in enumerate(tree.get("splits") or []):
            if split.get("split_type", "FloatFeature") != "FloatFeature":
                raise ValueError(f"tree {t}: unsupported split type {split.get('split_type')}")
            feat = by_index[int(split["float_feature_index"])]
            cols[t, d] = int(feat["flat_feature_index"])
            border = float(split["border"])
            borders[t, d] = _F32(border)
            if float(borders[t, d]) != border:
                raise ValueError(f"tree {t}: border {border!r} is not a float32 value")
            treatment = feat.get("nan_value_treatment", "AsIs")
            nan_true[t, d] = treatment == "AsTrue"
        n_leaves = 1 << int(depths[t])
        leaf_values = np.asarray(tree["leaf_values"], dtype=_F64)
        if leaf_values.shape != (n_leaves,):
            raise ValueError(
                f"tree {t}: {leaf_values.shape[0]} leaf values for {n_leaves} leaves "
                "(multiclass/multi-target models are not supported)"
            )
        values[t, :n_leaves] = leaf_values
        weights[t, :n_leaves] = np.asarray(tree.get("leaf_weights", np.ones(n_leaves)), _F64)

    scale_and_bias = model.get("scale_and_bias", [1.0, [0.0]])
    scale = float(scale_and_bias[0])
    bias_part = scale_and_bias[1]
    bias_list = list(bias_part) if isinstance(bias_part, list) else [bias_part]
    if len(bias_list) > 1:
        raise ValueError("multi-dimensional bias: not a binary classifier")
    bias = float(bias_list[0]) if bias_list else 0.0
    return ObliviousForest(
        n_columns=n_columns,
        depths=depths,
        split_columns=cols,
        split_borders=borders,
        split_nan_true=nan_true,
        leaf_values=values,
        leaf_weights=weights,
        scale=scale,
        bias=bias,
    )


def read_forest(booster: CatBoostClassifier) -> ObliviousForest:
    """Trees of a fitted CatBoost classifier, via its JSON export."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.json"
        booster.save_model(str(path), format="json")
        model = json.loads(path.read_text(encoding="utf-8"))
    return forest_from_catboost_json(model)


# --------------------------------------------------------------------------- SHAP tables


def _tree_shap_per_leaf(
    columns: np.ndarray, values: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact path-dependent TreeSHAP of one oblivious tree, for every leaf at once.

    TreeSHAP (path-dependent) gives the exact Shapley values of the game v(S) = the tree's
    expectation when the features in S follow the row's path and the others are averaged by
    cover (training weight) ratios.  A tree has d ≤ depth distinct features, so we evaluate
    v(S) for all 2^d subsets and all 2^depth leaves at once — a bottom-up pass over the
    levels of the leaf-value cube, vectorised over subsets — and take the Shapley sums
    directly.  Level order matches catboost: bit 0 (first split) is next to the leaves, the
    last split is the root.  Zero-cover subtrees contribute nothing (catboost skips them).
    Returns (distinct features, phi [2^depth, d], v(∅) = cover-weighted mean).
    """
    depth = int(columns.shape[0])
    if depth > 12:  # the subset × leaf table is 4^depth numbers
        raise ValueError(f"per-leaf SHAP tables are built for depth ≤ 12, got {depth}")
    feats = np.unique(columns)
    m = int(feats.shape[0])
    n_sets = 1 << m
    if depth == 0:
        return feats.astype(np.int64), np.zeros((1, 0), _F64), float(values[0])
    shape = (2,) * depth
    covs = weights.reshape(shape)
    feat_of_level = np.searchsorted(feats, columns)
    masks = np.arange(n_sets)
    # cube[s, x...]: axis 1 + a of the leaf cube is bit depth-1-a (axis 1 = root's bit).
    cube = np.broadcast_to(values.reshape(shape), (n_sets, *shape)).astype(_F64)
    for p in range(depth):  # deepest level (bit 0) first, root (bit depth-1) last
        ax = depth - p  # axis of bit p in cube (which has the subset axis in front)
        # cover of the nodes one level below this split: sum over the bits under it
        cover = covs.sum(axis=tuple(range(depth - p, depth)), keepdims=True)[None]
        c0 = np.take(cover, [0], axis=ax)
        c1 = np.take(cover, [1], axis=ax)
        total = c0 + c1
        mixed = np.take(cube, [0], axis=ax) * c0 + np.take(cube, [1], axis=ax) * c1
        mixed = np.divide(mixed, total, out=np.zeros_like(mixed), where=total > 0)
        follows = ((masks >> feat_of_level[p]) & 1).astype(bool).reshape(-1, *([1] * depth))
        # in S: the row follows its own branch (this axis now indexes the row's bit)
        cube = np.where(follows, cube * (cover > 0), mixed)
    game = cube.reshape(n_sets, 1 << depth)  # game[S, leaf] = v(S) for a row in that leaf
    fact = [math.factorial(i) for i in range(m + 1)]
    sizes = np.array([bin(int(s)).count("1") for s in masks])
    phi = np.zeros((1 << depth, m), dtype=_F64)
    for i in range(m):
        without = masks[(masks >> i) & 1 == 0]
        w = np.array([fact[k] * fact[m - k - 1] / fact[m] for k in sizes[without]])
        phi[:, i] = w @ (game[without | (1 << i)] - game[without])
    return feats.astype(np.int64), phi, float(game[0, 0])


def shap_tables_from_forest(forest: ObliviousForest) -> ShapTables:
    """Per-leaf SHAP tables for a parsed forest (see ``leaf_shap_tables``)."""
    tree_features: list[np.ndarray] = []
    tree_values: list[np.ndarray] = []
    expected = 0.0
    for t in range(forest.n_trees):
        depth = int(forest.depths[t])
        n_leaves = 1 << depth
        feats, phi, base = _tree_shap_per_leaf(
            forest.split_columns[t, :depth],
            forest.leaf_values[t, :n_leaves],
            forest.leaf_weights[t, :n_leaves],
        )
        tree_features.append(feats)
        tree_values.append(phi * forest.scale)
        expected += base
    return ShapTables(
        expected_value=forest.scale * expected + forest.bias,
        tree_features=tree_features,
        tree_values=tree_values,
    )


def leaf_shap_tables(booster: CatBoostClassifier) -> ShapTables:
    """Exact path-dependent TreeSHAP per leaf of each oblivious tree, with catboost's leaf
    weights as cover — the values of ``get_feature_importance(type="ShapValues")`` (default
    Regular calc), computed once per leaf instead of once per row."""
    return shap_tables_from_forest(read_forest(booster))


# --------------------------------------------------------------------------- ONNX graph


class _GraphBuilder:
    """Tiny helper: unique tensor names, constants as initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray | float | int, hint: str, dtype: Any = None) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def op(
        self, op_type: str, inputs: list[str], hint: str, out: str | None = None, **attrs: Any
    ) -> str:
        name = out or self._name(hint)
        self.nodes.append(
            helper.make_node(op_type, inputs, [name], name=self._name(op_type), **attrs)
        )
        return name

    def i64(self, values: Sequence[int], hint: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)


def _choose_chunk(n_borders: list[int]) -> int:
    """Borders per virtual row K: minimise bytes moved ≈ V·(4 + 2K) per batch row
    (gathered float row + bool and uint8 bits of its K borders)."""
    best, best_cost = 8, math.inf
    for k in (4, 8, 16, 32):
        v = sum(-(-n // k) for n in n_borders)
        cost = v * (4 + 2 * k)
        if cost < best_cost:
            best, best_cost = k, cost
    return best


def _binarize(
    g: _GraphBuilder, xt: str, forests: Sequence[ObliviousForest], chunk: int | None
) -> tuple[str, dict[tuple[int, bool, float], int], int]:
    """Bits [V·K, rows] uint8 for every distinct (column, nan treatment, border); returns the
    tensor, the row of each split in it, and a row that is always 0 (for shallow trees)."""
    borders: dict[tuple[int, bool], set[float]] = {}
    for forest in forests:
        for t in range(forest.n_trees):
            for d in range(int(forest.depths[t])):
                key = (int(forest.split_columns[t, d]), bool(forest.split_nan_true[t, d]))
                borders.setdefault(key, set()).add(float(forest.split_borders[t, d]))
    keys = sorted(borders)
    k = chunk or _choose_chunk([len(borders[key]) for key in keys])
    row_cols: list[int] = []
    row_nan_true: list[bool] = []
    table: list[np.ndarray] = []
    position: dict[tuple[int, bool, float], int] = {}
    zero_row = -1
    for col, nan_true in keys:
        values = sorted(borders[(col, nan_true)])
        for start in range(0, len(values), k):
            part = values[start : start + k]
            r = len(row_cols)
            row = np.full(k, np.inf, dtype=_F32)
            row[: len(part)] = part
            for j, v in enumerate(part):
                position[(col, nan_true, v)] = r * k + j
            if len(part) < k and zero_row < 0:
                zero_row = r * k + len(part)
            row_cols.append(col)
            row_nan_true.append(nan_true)
            table.append(row)
    if zero_row < 0:  # every virtual row is full: add one that is never exceeded
        zero_row = len(row_cols) * k
        row_cols.append(0)
        row_nan_true.append(False)
        table.append(np.full(k, np.inf, dtype=_F32))
    n_rows = len(row_cols)
    gathered = g.op("Gather", [xt, g.i64(row_cols, "split_columns")], "split_inputs", axis=0)
    if any(row_nan_true):
        # nan_mode=Max: NaN counts as greater than every border -> +inf.
        mask = np.asarray(row_nan_true, dtype=bool).reshape(n_rows, 1)
        is_nan = g.op("IsNaN", [gathered], "is_nan")
        nan_up = g.op("And", [is_nan, g.const(mask, "nan_as_true")], "nan_up")
        gathered = g.op(
            "Where", [nan_up, g.const(np.inf, "inf", _F32), gathered], "split_inputs_nan"
        )
    expanded = g.op("Unsqueeze", [gathered, g.i64([1], "axis1")], "split_inputs_3d")
    cube = g.op(
        "Greater", [expanded, g.const(np.stack(table)[:, :, None], "borders", _F32)], "bits_3d"
    )
    flat = g.op("Reshape", [cube, g.i64([n_rows * k, -1], "bits_shape")], "bits_bool")
    bits = g.op("Cast", [flat], "bits", to=TensorProto.UINT8)
    return bits, position, zero_row


def _split_rows(
    forest: ObliviousForest, position: dict[tuple[int, bool, float], int], zero_row: int
) -> np.ndarray:
    """[T, D] row of the bits tensor for each split (``zero_row`` pads shallow trees)."""
    rows = np.full((forest.n_trees, max(forest.max_depth, 1)), zero_row, dtype=np.int64)
    for t in range(forest.n_trees):
        for d in range(int(forest.depths[t])):
            key = (
                int(forest.split_columns[t, d]),
                bool(forest.split_nan_true[t, d]),
                float(forest.split_borders[t, d]),
            )
            rows[t, d] = position[key]
    return rows


def _leaf_indices(
    g: _GraphBuilder, bits: str, rows: np.ndarray, index_mode: str, mm_group: int
) -> tuple[str, bool]:
    """Leaf index of every tree, [T, rows], from the uint8 bits; returns (tensor, is_uint8).

    ``matmul`` (any onnxruntime ≥ 1.16): one Gather of all T·D bit rows, then one batched
    uint8 ``MatMulInteger`` [G, m, m·D] × [G, m·D, rows] whose block-diagonal weights are the
    powers of two (int32 out).  ``uint8`` (onnxruntime ≥ 1.21, which added uint8 Add/Mul):
    one Gather per depth level and Horner ``idx = 2·idx + bit`` on bytes — fewer bytes moved.
    """
    n_trees, depth = rows.shape
    if depth > 8:  # leaf ids (and the powers of two) no longer fit a byte
        acc = ""
        two = g.const(2, "two", np.int32)
        for d in range(depth - 1, -1, -1):
            bit = g.op("Gather", [bits, g.i64(rows[:, d].tolist(), "bit_rows")], "bit", axis=0)
            bit = g.op("Cast", [bit], "bit_i", to=TensorProto.INT32)
            acc = bit if not acc else g.op("Add", [g.op("Mul", [acc, two], "shifted"), bit], "idx")
        return acc, False
    if index_mode == "uint8":
        two = g.const(2, "two", np.uint8)
        acc = ""
        for d in range(depth - 1, -1, -1):  # Horner from the top bit down
            bit = g.op("Gather", [bits, g.i64(rows[:, d].tolist(), "bit_rows")], "bit", axis=0)
            acc = bit if not acc else g.op("Add", [g.op("Mul", [acc, two], "shifted"), bit], "idx")
        return acc, True
    if index_mode != "matmul":
        raise ValueError(f"unknown index_mode {index_mode!r}")
    m = max(1, min(mm_group, n_trees))
    n_groups = -(-n_trees // m)
    padded = np.full((n_groups * m, depth), rows[0, 0], dtype=np.int64)
    padded[:n_trees] = rows
    weights = np.zeros((n_groups, m, m * depth), dtype=np.uint8)
    for i in range(m):
        weights[:, i, i * depth : (i + 1) * depth] = 1 << np.arange(depth)
    weights[np.arange(n_groups * m).reshape(n_groups, m) >= n_trees] = 0  # padding trees
    picked = g.op("Gather", [bits, g.i64(padded.ravel().tolist(), "bit_rows")], "bits_g", axis=0)
    blocks = g.op("Reshape", [picked, g.i64([n_groups, m * depth, -1], "blk")], "bits_blk")
    leaf = g.op("MatMulInteger", [g.const(weights, "pow2"), blocks], "leaf_blk")
    leaf = g.op("Reshape", [leaf, g.i64([n_groups * m, -1], "flat")], "leaf_pad")
    if n_groups * m != n_trees:
        leaf = g.op(
            "Slice", [leaf, g.i64([0], "s"), g.i64([n_trees], "e"), g.i64([0], "a")], "leaf"
        )
    return leaf, False


def _leaf_index_output(g: _GraphBuilder, leaves_t: str, is_uint8: bool, depth: int) -> str:
    """``leaf_index`` [rows, T] int32.  Transposing bytes is ~3x cheaper than int32 in
    onnxruntime, so transpose as uint8 whenever leaf ids fit, then widen."""
    if depth > 8:
        return g.op("Transpose", [leaves_t], "leaf_index", out="leaf_index", perm=[1, 0])
    small = leaves_t if is_uint8 else g.op("Cast", [leaves_t], "leaf_u8", to=TensorProto.UINT8)
    flipped = g.op("Transpose", [small], "leaf_index_u8", perm=[1, 0])
    return g.op("Cast", [flipped], "leaf_index", out="leaf_index", to=TensorProto.INT32)


def _forest_raw(
    g: _GraphBuilder,
    leaves_t: str,
    is_uint8: bool,
    forest: ObliviousForest,
    value_group: int,
) -> str:
    """Raw score [rows] float64: leaf values looked up per tree, summed in float32 within
    groups of ~``value_group`` trees and in float64 across groups (a float32 sum over
    hundreds of trees drifts by ~1e-5; all-float64 costs ~15% more time)."""
    n_trees = forest.n_trees
    table = forest.leaf_values[:, : 1 << forest.max_depth].astype(_F32)
    index = g.op("Cast", [leaves_t], "leaf_i32", to=TensorProto.INT32) if is_uint8 else leaves_t
    picked = g.op("GatherElements", [g.const(table, "leaf_values"), index], "picked", axis=1)
    n_groups = max(1, round(n_trees / value_group))
    per_group = -(-n_trees // n_groups)
    if n_groups * per_group != n_trees:
        pads = g.i64([0, 0, n_groups * per_group - n_trees, 0], "pads")
        picked = g.op("Pad", [picked, pads], "picked_pad")
    grouped = g.op("Reshape", [picked, g.i64([n_groups, per_group, -1], "grp")], "picked_grp")
    part = g.op("ReduceSum", [grouped, g.i64([1], "axis1")], "part", keepdims=0)
    part64 = g.op("Cast", [part], "part64", to=TensorProto.DOUBLE)
    total = g.op("ReduceSum", [part64, g.i64([0], "axis0")], "tree_sum", keepdims=0)
    raw = g.op("Mul", [total, g.const(forest.scale, "scale", _F64)], "scaled")
    return g.op("Add", [raw, g.const(forest.bias, "bias", _F64)], "raw64")


def _encoder_rows(g: _GraphBuilder, xt: str, encoder: Encoder) -> str:
    """Append the embedding rows to the feature-major input: [F, rows] → [F + E, rows].

    Runs transposed (W^T·x) so the column selection is a row Gather and the NaN → mean
    imputation a per-row broadcast; float64 throughout, rounded to float32 at the end.
    Also emits ``embedding`` [rows, E] for inspection (unused, so onnxruntime prunes it
    unless it is added to the graph outputs)."""
    cols = g.i64(encoder.input_columns.tolist(), "enc_cols")
    x_enc = g.op("Gather", [xt, cols], "enc_in", axis=0)
    is_nan = g.op("IsNaN", [x_enc], "enc_nan")
    mean64 = np.asarray(encoder.mean, _F64).reshape(-1, 1)
    if np.array_equal(mean64.astype(_F32).astype(_F64), mean64):
        # means that are float32 values (the usual case) can be imputed before widening
        imputed = g.op(
            "Where", [is_nan, g.const(mean64.astype(_F32), "enc_mean"), x_enc], "enc_imp"
        )
        hidden = g.op("Cast", [imputed], "enc_in64", to=TensorProto.DOUBLE)
    else:
        hidden = g.op("Cast", [x_enc], "enc_in64", to=TensorProto.DOUBLE)
        hidden = g.op("Where", [is_nan, g.const(mean64, "enc_mean"), hidden], "enc_imputed")
    layers = encoder.folded_layers()
    for i, (weight, bias) in enumerate(layers):
        w_t = g.const(np.ascontiguousarray(weight.T), "enc_wt")
        b_col = g.const(bias.reshape(-1, 1), "enc_b")
        hidden = g.op("Gemm", [w_t, hidden, b_col], "enc_gemm")
        if i < len(layers) - 1:
            # Max(h, 0) rather than Relu: onnxruntime < 1.17 fuses Gemm+Relu into a
            # float-only FusedGemm and then fails to load a float64 graph.
            hidden = g.op("Max", [hidden, g.const(0.0, "zero", _F64)], "enc_relu")
    emb_t = g.op("Cast", [hidden], "embedding_t", to=TensorProto.FLOAT)
    g.op("Transpose", [emb_t], "embedding", out="embedding", perm=[1, 0])
    return g.op("Concat", [xt, emb_t], "tree_input_t", axis=0)


def _build_graph(
    n_inputs: int,
    encoder: Encoder | None,
    forests: Sequence[ObliviousForest],
    calibrations: Sequence[Calibration],
    explain_horizon: int,
    opset: int,
    ir_version: int,
    *,
    index_mode: str = "matmul",
    mm_group: int = 4,
    value_group: int = 32,
    chunk: int | None = None,
) -> onnx.ModelProto:
    """``build_scoring_model`` on parsed forests (no catboost needed).  Tuning knobs, chosen
    by measurement (bench/score_model.py): ``mm_group`` trees per MatMulInteger block,
    ``value_group`` trees per float32 partial sum, ``chunk`` borders per virtual row."""
    if not forests:
        raise ValueError("need at least one booster")
    if len(calibrations) != len(forests):
        raise ValueError("need one Calibration per booster")
    if not 0 <= explain_horizon < len(forests):
        raise ValueError(f"explain_horizon must be in [0, {len(forests)})")
    n_cols = n_inputs + (encoder.embedding_dim if encoder else 0)
    for idx, forest in enumerate(forests):
        if forest.n_columns != n_cols:
            raise ValueError(
                f"booster {idx} was trained on {forest.n_columns} columns, the graph provides "
                f"{n_cols} (features + embedding)"
            )
    if encoder is not None and (
        encoder.input_columns.min() < 0 or encoder.input_columns.max() >= n_inputs
    ):
        raise ValueError("encoder input_columns out of range")

    g = _GraphBuilder()
    # Feature-major from the start: row Gathers and per-row broadcasts are contiguous.
    xt = g.op("Transpose", ["features"], "features_t", perm=[1, 0])
    if encoder is not None:
        xt = _encoder_rows(g, xt, encoder)
    bits, position, zero_row = _binarize(g, xt, forests, chunk)

    raws: list[str] = []
    for h_idx, forest in enumerate(forests):
        rows = _split_rows(forest, position, zero_row)
        leaves_t, is_uint8 = _leaf_indices(g, bits, rows, index_mode, mm_group)
        if h_idx == explain_horizon:
            _leaf_index_output(g, leaves_t, is_uint8, rows.shape[1])
        raw = _forest_raw(g, leaves_t, is_uint8, forest, value_group)
        raws.append(g.op("Unsqueeze", [raw, g.i64([1], "axis1")], "raw_col"))
    raw_all = g.op("Concat", raws, "raw_all", axis=1) if len(raws) > 1 else raws[0]
    g.op("Cast", [raw_all], "raw_score", out="raw_score", to=TensorProto.FLOAT)
    slope = g.const(np.array([c.a for c in calibrations], _F64), "calib_a")
    offset = g.const(np.array([c.b for c in calibrations], _F64), "calib_b")
    logits = g.op("Add", [g.op("Mul", [raw_all, slope], "calib_mul"), offset], "calib_logit")
    prob = g.op("Sigmoid", [logits], "p64")
    g.op("Cast", [prob], "p_leave", out="p_leave", to=TensorProto.FLOAT)

    n_h = len(forests)
    n_t = forests[explain_horizon].n_trees
    graph = helper.make_graph(
        g.nodes,
        "npf_loyalty_churn",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_inputs])],
        [
            helper.make_tensor_value_info("p_leave", TensorProto.FLOAT, ["N", n_h]),
            helper.make_tensor_value_info("raw_score", TensorProto.FLOAT, ["N", n_h]),
            helper.make_tensor_value_info("leaf_index", TensorProto.INT32, ["N", n_t]),
        ],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version,
        producer_name="npf_loyalty.onnx_export",
        doc_string="Churn risk: encoder + CatBoost trees + Platt calibration (plain ONNX ops).",
    )
    meta = {
        "n_inputs": str(n_inputs),
        "embedding_dim": str(encoder.embedding_dim if encoder else 0),
        "horizons": str(n_h),
        "trees_per_horizon": json.dumps([f.n_trees for f in forests]),
        "explain_horizon": str(explain_horizon),
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_scoring_model(
    n_inputs: int,
    encoder: Encoder | None,
    boosters: Sequence[CatBoostClassifier],
    calibrations: Sequence[Calibration],
    explain_horizon: int = 0,
    opset: int = 17,
    ir_version: int = 8,
    *,
    index_mode: str = "matmul",
) -> onnx.ModelProto:
    """One ONNX model: features [N, n_inputs] → p_leave, raw_score [N, H], leaf_index [N, T].

    The trees' input is concat(features, encoder(features)) when an encoder is given (the
    boosters must have been trained on exactly that column order), else the features.
    ``index_mode="matmul"`` runs on onnxruntime ≥ 1.16; ``"uint8"`` is a little faster but
    needs onnxruntime ≥ 1.21 (uint8 Add/Mul kernels).
    """
    forests = [read_forest(b) for b in boosters]
    return _build_graph(
        n_inputs,
        encoder,
        forests,
        calibrations,
        explain_horizon,
        opset,
        ir_version,
        index_mode=index_mode,
    )


def catboost_native_onnx(booster: CatBoostClassifier, path: Path) -> None:
    """CatBoost's own ONNX export (ai.onnx.ml TreeEnsembleClassifier) — benchmark baseline."""
    booster.save_model(str(path), format="onnx")
