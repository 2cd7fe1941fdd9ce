"""Per-leaf SHAP tables + leaf indices from the ONNX graph reproduce CatBoost's ShapValues."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npf_loyalty.explain import ShapTables, explain

N_FEATURES = 10


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    z = np.nan_to_num(x)
    y = (z[:, 0] - z[:, 1] * z[:, 2] + np.isnan(x[:, 3]) + rng.logistic(size=n) > 0).astype(int)
    return x, y


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest) -> dict[str, object]:
    catboost = pytest.importorskip("catboost")
    from npf_loyalty.onnx_export import Calibration, Encoder, build_scoring_model, leaf_shap_tables
    from npf_loyalty.onnx_runtime import make_session, run_in_batches

    x, y = _data(1500, seed=11)
    rng = np.random.default_rng(2)
    enc = Encoder(
        mean=np.zeros(4, np.float32),
        scale=np.ones(4, np.float32),
        input_columns=np.array([0, 1, 2, 5], np.int64),
        weights=[rng.normal(size=(4, 3)).astype(np.float32)],
        biases=[np.zeros(3, np.float32)],
    )
    xt = np.hstack([x, enc.transform(x)])
    train, test = slice(0, 1000), slice(1000, None)
    boosters = []
    for i, (depth, nan_mode) in enumerate([(6, "Min"), (5, "Max")]):
        b = catboost.CatBoostClassifier(
            iterations=150 - 50 * i,
            depth=depth,
            nan_mode=nan_mode,
            verbose=0,
            thread_count=2,
            random_seed=i,
            allow_writing_files=False,
        )
        b.fit(xt[train], np.roll(y, i)[train])
        boosters.append(b)
    model = build_scoring_model(
        N_FEATURES, enc, boosters, [Calibration(1.0, 0.0)] * 2, explain_horizon=1
    )
    out = run_in_batches(make_session(model.SerializeToString(), threads=1), x[test])
    return {
        "x_tree": xt[test],
        "booster": boosters[1],
        "out": out,
        "tables": leaf_shap_tables(boosters[1]),
        "first_tables": leaf_shap_tables(boosters[0]),
        "first": boosters[0],
        "pool": catboost.Pool,
    }


def test_explain_matches_catboost_shap_values(case: dict[str, object]) -> None:
    booster, tables, out = case["booster"], case["tables"], case["out"]
    assert isinstance(tables, ShapTables) and isinstance(out, dict)
    x_tree = case["x_tree"]
    assert isinstance(x_tree, np.ndarray)
    n_cols = x_tree.shape[1]
    want = booster.get_feature_importance(data=case["pool"](x_tree), type="ShapValues")  # type: ignore[attr-defined, operator]
    got = explain(out["leaf_index"], tables, n_cols)
    assert got.shape == (x_tree.shape[0], n_cols) and got.dtype == np.float64
    assert np.max(np.abs(got - want[:, :-1])) <= 1e-4
    assert abs(tables.expected_value - want[0, -1]) <= 1e-9
    # rows + base value = the raw score (of the graph and of catboost)
    total = got.sum(axis=1) + tables.expected_value
    assert np.max(np.abs(total - out["raw_score"][:, 1])) <= 1e-5
    raw = booster.predict(x_tree, prediction_type="RawFormulaVal")  # type: ignore[attr-defined]
    assert np.max(np.abs(total - raw)) <= 1e-5  # float32 accumulation: ~1e-7 in practice


def test_tables_of_a_default_nan_mode_model_match_too(case: dict[str, object]) -> None:
    """Leaf indices computed by catboost itself, the other horizon's (deeper) trees."""
    booster, tables, x_tree = case["first"], case["first_tables"], case["x_tree"]
    assert isinstance(tables, ShapTables) and isinstance(x_tree, np.ndarray)
    pool = case["pool"](x_tree)  # type: ignore[operator]
    leaves = booster.calc_leaf_indexes(pool)  # type: ignore[attr-defined]
    want = booster.get_feature_importance(data=pool, type="ShapValues")  # type: ignore[attr-defined]
    got = explain(leaves, tables, x_tree.shape[1], batch_rows=97, workers=2)
    assert np.max(np.abs(got - want[:, :-1])) <= 1e-4


def test_save_load_roundtrip(case: dict[str, object], tmp_path: Path) -> None:
    tables = case["tables"]
    assert isinstance(tables, ShapTables)
    path = tmp_path / "shap.npz"
    tables.save(path)
    back = ShapTables.load(path)
    assert back.expected_value == tables.expected_value
    assert len(back.tree_values) == len(tables.tree_values)
    for a, b in zip(back.tree_features, tables.tree_features, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.int64
    for a, b in zip(back.tree_values, tables.tree_values, strict=True):
        np.testing.assert_array_equal(a, b)


def _brute_force_shap(cols: list[int], values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Shapley values of the path-dependent game, straight from the definition: root = last
    split; at a split on a feature outside S, average the children by cover."""
    depth = len(cols)
    feats = sorted(set(cols))
    leaves = np.arange(1 << depth)

    def cover(mask: int, bits: int) -> float:
        return float(weights[(leaves & mask) == bits].sum())

    def v(
        leaf: int, subset: set[int], level: int = depth - 1, mask: int = 0, bits: int = 0
    ) -> float:
        if level < 0:
            return float(values[bits])
        m2 = mask | (1 << level)
        if cols[level] in subset:
            b = bits | (leaf & (1 << level))
            return v(leaf, subset, level - 1, m2, b) if cover(m2, b) > 0 else 0.0
        c0, c1 = cover(m2, bits), cover(m2, bits | (1 << level))
        if c0 + c1 == 0:
            return 0.0
        v0 = v(leaf, subset, level - 1, m2, bits)
        v1 = v(leaf, subset, level - 1, m2, bits | (1 << level))
        return (c0 * v0 + c1 * v1) / (c0 + c1)

    m = len(feats)
    phi = np.zeros((1 << depth, m))
    for leaf in range(1 << depth):
        for i, f in enumerate(feats):
            others = [g for g in feats if g != f]
            for k in range(m):
                for sub in itertools.combinations(others, k):
                    w = math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m)
                    phi[leaf, i] += w * (v(leaf, {*sub, f}) - v(leaf, set(sub)))
    return phi


def test_tables_equal_brute_force_shapley_with_repeats_empty_leaves_and_scale() -> None:
    from npf_loyalty.onnx_export import forest_from_catboost_json, shap_tables_from_forest

    rng = np.random.default_rng(4)
    cols = [1, 0, 1, 2]  # feature 1 used twice
    weights = rng.integers(0, 4, size=16).astype(float)  # some empty leaves
    values = np.where(weights > 0, rng.normal(size=16), 0.0)
    split = {"split_type": "FloatFeature"}
    model = {
        "features_info": {
            "float_features": [{"feature_index": i, "flat_feature_index": i} for i in range(3)]
        },
        "oblivious_trees": [
            {
                "leaf_values": values.tolist(),
                "leaf_weights": weights.tolist(),
                "splits": [
                    {**split, "float_feature_index": c, "border": float(np.float32(0.1 * d))}
                    for d, c in enumerate(cols)
                ],
            },
            {"leaf_values": [0.5], "leaf_weights": [weights.sum()], "splits": []},
        ],
        "scale_and_bias": [1.5, [0.25]],
    }
    tables = shap_tables_from_forest(forest_from_catboost_json(model))
    np.testing.assert_array_equal(tables.tree_features[0], [0, 1, 2])
    np.testing.assert_allclose(
        tables.tree_values[0], 1.5 * _brute_force_shap(cols, values, weights), atol=1e-12
    )
    assert tables.tree_values[1].shape == (1, 0)
    mean = float(weights @ values / weights.sum())
    assert tables.expected_value == pytest.approx(1.5 * (mean + 0.5) + 0.25)
    # efficiency: base + contributions = raw score, for every leaf of a non-empty path
    full = tables.expected_value + tables.tree_values[0].sum(axis=1)
    raw = 1.5 * (values + 0.5) + 0.25
    np.testing.assert_allclose(full[weights > 0], raw[weights > 0], atol=1e-12)


def _toy_tables() -> ShapTables:
    # tree 0: depth 2 on features 0 and 3; tree 1: depth 1 on feature 2; tree 2: no split
    return ShapTables(
        expected_value=0.5,
        tree_features=[np.array([0, 3]), np.array([2]), np.zeros(0, np.int64)],
        tree_values=[
            np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]),
            np.array([[-1.0], [1.0]]),
            np.zeros((1, 0)),
        ],
    )


def test_explain_on_toy_tables_and_batching() -> None:
    tables = _toy_tables()
    leaves = np.array([[0, 0, 0], [3, 1, 0], [2, 0, 0]], dtype=np.int32)
    want = np.array([[1.0, 0, -1.0, 10.0, 0], [4.0, 0, 1.0, 40.0, 0], [3.0, 0, -1.0, 30.0, 0]])
    np.testing.assert_array_equal(explain(leaves, tables, 5), want)
    many = np.tile(leaves, (1000, 1))
    for batch, workers in [(7, 1), (256, 2), (100_000, 2)]:
        np.testing.assert_array_equal(
            explain(many, tables, 5, batch_rows=batch, workers=workers), np.tile(want, (1000, 1))
        )
    assert explain(leaves[:0], tables, 5).shape == (0, 5)


def test_explain_rejects_mismatched_inputs() -> None:
    tables = _toy_tables()
    with pytest.raises(ValueError, match="one column per tree"):
        explain(np.zeros((2, 2), np.int32), tables, 5)
    with pytest.raises(ValueError, match="out of range"):
        explain(np.array([[4, 0, 0]], np.int32), tables, 5)
    with pytest.raises(ValueError, match="out of range"):
        explain(np.array([[0, 0, 1]], np.int32), tables, 5)
    with pytest.raises(ValueError, match="out of range"):
        explain(np.array([[-1, 0, 0]], np.int32), tables, 5)
    with pytest.raises(ValueError, match="out of range"):
        explain(np.array([[2**32 + 1, 0, 0]], np.int64), tables, 5)
    np.testing.assert_array_equal(  # other integer types are fine
        explain(np.array([[3, 1, 0]], np.uint8), tables, 5),
        explain(np.array([[3, 1, 0]], np.int64), tables, 5),
    )
    with pytest.raises(ValueError, match="n_features"):
        explain(np.zeros((1, 3), np.int32), tables, 3)
    with pytest.raises(TypeError):
        explain(np.zeros((1, 3), np.float32), tables, 5)
    with pytest.raises(ValueError):
        ShapTables(0.0, [np.array([0])], [np.zeros((3, 1))])  # 3 leaves is not 2^depth


def test_scoring_side_modules_do_not_need_catboost() -> None:
    code = (
        "import sys; sys.modules['catboost'] = None\n"
        "import npf_loyalty.explain, npf_loyalty.onnx_runtime\n"
        "assert 'catboost' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
