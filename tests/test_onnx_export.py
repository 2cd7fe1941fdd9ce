"""The exported ONNX graph reproduces CatBoost (and the encoder) numerically."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("catboost")

from catboost import CatBoostClassifier, Pool

from npf_loyalty.onnx_export import (
    Calibration,
    Encoder,
    _build_graph,
    build_scoring_model,
    catboost_native_onnx,
    forest_from_catboost_json,
    read_forest,
)
from npf_loyalty.onnx_runtime import make_session, run_in_batches

N_FEATURES = 12
TOL = 1e-5


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[:, 4] = rng.integers(0, 5, size=n)  # a discrete column: many rows sit on one value
    x[rng.random(x.shape) < 0.1] = np.nan
    z = np.nan_to_num(x)
    logit = z[:, 0] + z[:, 1] * z[:, 2] - 0.5 * z[:, 4] + 1.5 * np.isnan(x[:, 3])
    y = (logit + rng.logistic(size=n) > 0).astype(int)
    return x, y


def _encoder(seed: int = 7) -> Encoder:
    rng = np.random.default_rng(seed)
    cols = np.array([0, 1, 2, 3, 5, 6, 7, 9], dtype=np.int64)
    sizes = [cols.shape[0], 6, 4]
    return Encoder(
        mean=rng.normal(size=(cols.shape[0],)).astype(np.float32),
        scale=rng.uniform(0.5, 2.0, size=(cols.shape[0],)).astype(np.float32),
        input_columns=cols,
        weights=[rng.normal(size=(a, b)).astype(np.float32) for a, b in itertools.pairwise(sizes)],
        biases=[rng.normal(size=b).astype(np.float32) for b in sizes[1:]],
    )


def _fit(x: np.ndarray, y: np.ndarray, **params: object) -> CatBoostClassifier:
    model = CatBoostClassifier(
        verbose=0, thread_count=2, random_seed=0, allow_writing_files=False, **params
    )
    model.fit(x, y)
    return model


def _tree_input(x: np.ndarray, encoder: Encoder | None) -> np.ndarray:
    return x if encoder is None else np.hstack([x, encoder.transform(x)])


def _run(model: onnx.ModelProto, x: np.ndarray, **kwargs: Any) -> dict[str, np.ndarray]:
    return run_in_batches(make_session(model.SerializeToString(), threads=1), x, **kwargs)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = _data(1600, seed=1)
    return x[:1100], y[:1100], x[1100:]


@pytest.fixture(scope="module")
def boosters(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[CatBoostClassifier]:
    """Two horizons on the raw features: default nan_mode (Min) and nan_mode=Max."""
    x, y, _ = data
    return [
        _fit(x, y, iterations=120, depth=6),
        _fit(x, np.roll(y, 7), iterations=80, depth=5, nan_mode="Max"),
    ]


@pytest.fixture(scope="module")
def enc_boosters(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[Encoder, list[CatBoostClassifier]]:
    x, y, _ = data
    enc = _encoder()
    xt = _tree_input(x, enc)
    return enc, [_fit(xt, y, iterations=100, depth=6), _fit(xt, 1 - y, iterations=60, depth=4)]


CALIBS = [Calibration(1.3, -0.4), Calibration(0.7, 0.2)]


def _assert_matches_catboost(
    out: dict[str, np.ndarray], models: list[CatBoostClassifier], xt: np.ndarray
) -> None:
    for h, booster in enumerate(models):
        raw = booster.predict(xt, prediction_type="RawFormulaVal")
        proba = booster.predict_proba(xt)[:, 1]
        assert np.max(np.abs(out["raw_score"][:, h] - raw)) <= TOL
        assert np.max(np.abs(_sigmoid(out["raw_score"][:, h].astype(np.float64)) - proba)) <= TOL


def test_raw_scores_match_catboost_without_encoder(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], boosters: list[CatBoostClassifier]
) -> None:
    _, _, x_test = data
    model = build_scoring_model(N_FEATURES, None, boosters, CALIBS)
    out = _run(model, x_test, batch_rows=128)
    assert out["raw_score"].shape == (x_test.shape[0], 2)
    assert out["raw_score"].dtype == np.float32 and out["p_leave"].dtype == np.float32
    _assert_matches_catboost(out, boosters, x_test)


def test_raw_scores_match_catboost_with_encoder(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    enc_boosters: tuple[Encoder, list[CatBoostClassifier]],
) -> None:
    _, _, x_test = data
    enc, models = enc_boosters
    model = build_scoring_model(N_FEATURES, enc, models, CALIBS)
    out = _run(model, x_test)
    _assert_matches_catboost(out, models, _tree_input(x_test, enc))


def test_uint8_index_mode_gives_the_same_scores(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], boosters: list[CatBoostClassifier]
) -> None:
    """The faster uint8 Horner variant needs onnxruntime ≥ 1.21 (uint8 Add/Mul kernels)."""
    _, _, x_test = data
    forests = [read_forest(b) for b in boosters]
    portable = _build_graph(N_FEATURES, None, forests, CALIBS, 0, 17, 8)
    fast = _build_graph(N_FEATURES, None, forests, CALIBS, 0, 17, 8, index_mode="uint8")
    try:
        got = _run(fast, x_test)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        pytest.skip(f"onnxruntime {ort.__version__} has no uint8 Add/Mul")
    want = _run(portable, x_test)
    for name in ("raw_score", "p_leave", "leaf_index"):
        np.testing.assert_array_equal(got[name], want[name])


def test_calibrated_output_is_sigmoid_of_a_raw_plus_b(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], boosters: list[CatBoostClassifier]
) -> None:
    _, _, x_test = data
    out = _run(build_scoring_model(N_FEATURES, None, boosters, CALIBS), x_test)
    for h, c in enumerate(CALIBS):
        raw = np.array([b.predict(x_test, prediction_type="RawFormulaVal") for b in boosters])[h]
        np.testing.assert_allclose(out["p_leave"][:, h], _sigmoid(c.a * raw + c.b), atol=2e-6)
        np.testing.assert_allclose(
            out["p_leave"][:, h],
            _sigmoid(c.a * out["raw_score"][:, h].astype(np.float64) + c.b),
            atol=2e-6,
        )


def test_graph_encoder_equals_numpy_transform(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    enc_boosters: tuple[Encoder, list[CatBoostClassifier]],
) -> None:
    x, _, x_test = data
    enc, models = enc_boosters
    model = build_scoring_model(N_FEATURES, enc, models, CALIBS)
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, None)
    )
    rows = np.vstack([x, x_test])
    got = _run(model, rows, outputs=["embedding"])["embedding"]
    want = enc.transform(rows)
    assert got.shape == (rows.shape[0], enc.embedding_dim)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # Both compute in float64 and round once: equal bit for bit in practice.
    assert np.mean(got == want) > 0.999


def test_graph_encoder_with_float64_means(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    enc_boosters: tuple[Encoder, list[CatBoostClassifier]],
) -> None:
    """Means that are not float32 values are imputed after widening to float64."""
    _, _, x_test = data
    enc, models = enc_boosters
    wide = Encoder(
        mean=enc.mean.astype(np.float64) + 1e-9,
        scale=enc.scale.astype(np.float64),
        input_columns=enc.input_columns,
        weights=enc.weights,
        biases=enc.biases,
    )
    model = _build_graph(N_FEATURES, wide, [read_forest(models[0])], CALIBS[:1], 0, 17, 8)
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, None)
    )
    got = _run(model, x_test, outputs=["embedding"])["embedding"]
    np.testing.assert_allclose(got, wide.transform(x_test), rtol=1e-6, atol=1e-6)


def test_encoder_transform_standardises_and_imputes_means() -> None:
    enc = _encoder()
    x = np.full((1, N_FEATURES), np.nan, dtype=np.float32)
    x[0, enc.input_columns] = enc.mean  # NaN → mean, so both rows must embed identically
    nan_row = np.full((1, N_FEATURES), np.nan, dtype=np.float32)
    np.testing.assert_array_equal(enc.transform(x), enc.transform(nan_row))
    h = np.zeros(enc.input_columns.shape[0])
    for i, (w, b) in enumerate(zip(enc.weights, enc.biases, strict=True)):
        h = h @ w.astype(np.float64) + b
        if i < len(enc.weights) - 1:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(enc.transform(nan_row)[0], h, rtol=1e-6)


def test_leaf_index_matches_catboost(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], boosters: list[CatBoostClassifier]
) -> None:
    _, _, x_test = data
    for h, booster in enumerate(boosters):
        model = build_scoring_model(N_FEATURES, None, boosters, CALIBS, explain_horizon=h)
        out = _run(model, x_test)
        assert out["leaf_index"].dtype == np.int32
        assert out["leaf_index"].shape == (x_test.shape[0], booster.tree_count_)
        np.testing.assert_array_equal(out["leaf_index"], booster.calc_leaf_indexes(Pool(x_test)))


@pytest.mark.parametrize("nan_mode", ["Min", "Max"])
def test_borders_nan_and_infinities_follow_catboost(nan_mode: str) -> None:
    """Split = x > border (a value equal to the border goes left); NaN goes left for
    nan_mode=Min (AsFalse) and right for Max (AsTrue); ±inf are ordinary extremes."""
    x, y = _data(900, seed=3)
    booster = _fit(x, y, iterations=40, depth=4, nan_mode=nan_mode)
    forest = read_forest(booster)
    assert forest.split_nan_true.any() == (nan_mode == "Max")
    rng = np.random.default_rng(5)
    probe = np.tile(x[:50], (4, 1))
    used = forest.depths > 0
    cols = forest.split_columns[used, 0]
    borders = forest.split_borders[used, 0]
    for i in range(probe.shape[0]):  # rows sitting exactly on borders
        j = rng.integers(0, cols.shape[0], size=4)
        probe[i, cols[j]] = borders[j]
    probe[50:60] = np.nan
    probe[60:70, :6] = np.inf
    probe[70:80, 6:] = -np.inf
    model = build_scoring_model(N_FEATURES, None, [booster], [Calibration(1.0, 0.0)])
    out = _run(model, probe)
    raw = booster.predict(probe, prediction_type="RawFormulaVal")
    assert np.max(np.abs(out["raw_score"][:, 0] - raw)) <= TOL
    np.testing.assert_array_equal(out["leaf_index"], booster.calc_leaf_indexes(Pool(probe)))
    np.testing.assert_array_equal(out["leaf_index"], forest.leaf_indices(probe))


def test_deep_trees_use_the_int32_path() -> None:
    x, y = _data(700, seed=4)
    booster = _fit(x, y, iterations=15, depth=9)
    model = build_scoring_model(N_FEATURES, None, [booster], [Calibration(1.0, 0.0)])
    out = _run(model, x)
    assert (
        np.max(np.abs(out["raw_score"][:, 0] - booster.predict(x, prediction_type="RawFormulaVal")))
        <= TOL
    )
    np.testing.assert_array_equal(out["leaf_index"], booster.calc_leaf_indexes(Pool(x)))


def test_model_is_opset17_ir8_and_valid(boosters: list[CatBoostClassifier], tmp_path: Path) -> None:
    model = build_scoring_model(N_FEATURES, None, boosters, CALIBS)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    session = make_session(path)
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == ["p_leave", "raw_score", "leaf_index"]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["trees_per_horizon"]) == [b.tree_count_ for b in boosters]


# Op types (and, below, element types) of the default graph, all checked to load and give
# identical outputs on onnxruntime 1.16.3, the oldest the Lambda may have.
ORT_116_OPS = {
    "Add", "Cast", "Concat", "Gather", "GatherElements", "Gemm", "Greater", "IsNaN", "Max",
    "MatMulInteger", "Mul", "Pad", "ReduceSum", "Reshape", "Sigmoid", "Slice", "Transpose",
    "Unsqueeze", "Where", "And",
}  # fmt: skip


def test_default_graph_sticks_to_ops_that_onnxruntime_116_runs(
    enc_boosters: tuple[Encoder, list[CatBoostClassifier]],
) -> None:
    enc, models = enc_boosters
    model = build_scoring_model(N_FEATURES, enc, models, CALIBS)
    ops = {n.op_type for n in model.graph.node}
    assert ops <= ORT_116_OPS, ops - ORT_116_OPS
    # onnxruntime 1.16 fuses Gemm+Relu into a float-only kernel; the encoder runs in float64
    assert "Relu" not in ops
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for node in inferred.graph.node:
        if node.op_type in ("Add", "Mul"):
            assert types.get(node.output[0]) != onnx.TensorProto.UINT8  # needs onnxruntime ≥ 1.21


def test_mixed_depths_and_stumps_from_json() -> None:
    """Trees shallower than the deepest one (and a split-less one) pad with a constant-0
    bit; checked against the numpy reference of the parsed forest."""
    split = {"split_type": "FloatFeature"}
    model = {
        "features_info": {
            "float_features": [
                {"feature_index": i, "flat_feature_index": i, "nan_value_treatment": t}
                for i, t in enumerate(["AsFalse", "AsTrue", "AsFalse"])
            ]
        },
        "oblivious_trees": [
            {
                "leaf_values": [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8],
                "leaf_weights": [5, 0, 3, 2, 1, 1, 4, 2],
                "splits": [
                    {**split, "float_feature_index": 0, "border": 0.5},
                    {**split, "float_feature_index": 1, "border": -0.25},
                    {**split, "float_feature_index": 0, "border": -1.0},
                ],
            },
            {"leaf_values": [0.05], "leaf_weights": [18], "splits": []},
            {
                "leaf_values": [-0.3, 0.3],
                "leaf_weights": [9, 9],
                "splits": [{**split, "float_feature_index": 2, "border": 0.0}],
            },
        ],
        "scale_and_bias": [1.5, [0.25]],
    }
    forest = forest_from_catboost_json(model)
    assert forest.depths.tolist() == [3, 0, 1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:5, 0], x[5:10, 2] = 0.5, 0.0  # exactly on borders
    graph = _build_graph(3, None, [forest], [Calibration(2.0, -1.0)], 0, 17, 8)
    out = _run(graph, x)
    np.testing.assert_array_equal(out["leaf_index"], forest.leaf_indices(x))
    np.testing.assert_allclose(out["raw_score"][:, 0], forest.raw_score(x), atol=1e-6)
    np.testing.assert_allclose(
        out["p_leave"][:, 0], _sigmoid(2.0 * forest.raw_score(x) - 1.0), atol=1e-6
    )


def test_bad_arguments_are_rejected(boosters: list[CatBoostClassifier]) -> None:
    with pytest.raises(ValueError, match="Calibration"):
        build_scoring_model(N_FEATURES, None, boosters, CALIBS[:1])
    with pytest.raises(ValueError, match="explain_horizon"):
        build_scoring_model(N_FEATURES, None, boosters, CALIBS, explain_horizon=2)
    with pytest.raises(ValueError, match="columns"):
        build_scoring_model(N_FEATURES - 1, None, boosters, CALIBS)


def test_unsupported_models_are_rejected() -> None:
    x, y = _data(400, seed=6)
    depthwise = _fit(x, y, iterations=5, depth=3, grow_policy="Depthwise")
    with pytest.raises(ValueError, match="oblivious"):
        read_forest(depthwise)
    cat_x = np.empty((x.shape[0], 4), dtype=object)
    cat_x[:, :3] = np.nan_to_num(x[:, :3])
    cat_x[:, 3] = np.where(np.nan_to_num(x[:, 4]) > 1, "a", "b")
    with_cats = _fit(cat_x, y, iterations=5, depth=3, cat_features=[3])
    with pytest.raises(ValueError, match="categorical"):
        read_forest(with_cats)
    with pytest.raises(ValueError, match="float32"):
        forest_from_catboost_json(
            {
                "features_info": {
                    "float_features": [{"feature_index": 0, "flat_feature_index": 0}]
                },
                "oblivious_trees": [
                    {
                        "leaf_values": [0.0, 1.0],
                        "splits": [
                            {"float_feature_index": 0, "border": 0.1, "split_type": "FloatFeature"}
                        ],
                    }
                ],
            }
        )


def test_run_in_batches_is_batch_and_thread_invariant(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], boosters: list[CatBoostClassifier]
) -> None:
    _, _, x_test = data
    model = build_scoring_model(N_FEATURES, None, boosters, CALIBS).SerializeToString()
    whole = run_in_batches(make_session(model, threads=1), x_test, batch_rows=10_000)
    for batch, workers, threads in [(1, 1, 1), (37, 2, 1), (64, 1, 2)]:
        got = run_in_batches(make_session(model, threads=threads), x_test, batch, workers=workers)
        for name, value in whole.items():
            np.testing.assert_array_equal(got[name], value)
    only = run_in_batches(make_session(model), x_test[:5], outputs=["p_leave"])
    assert list(only) == ["p_leave"] and only["p_leave"].shape == (5, 2)
    empty = run_in_batches(make_session(model), x_test[:0])
    assert empty["leaf_index"].shape == (0, boosters[0].tree_count_)


def test_catboost_native_export_loads(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    boosters: list[CatBoostClassifier],
    tmp_path: Path,
) -> None:
    _, _, x_test = data
    path = tmp_path / "native.onnx"
    catboost_native_onnx(boosters[0], path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: np.nan_to_num(x_test[:20])})
    assert len(outputs) >= 1
