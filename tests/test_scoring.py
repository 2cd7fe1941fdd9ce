"""Scoring: the promoted ONNX model scores every active account, with reasons, for the bot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from npf_loyalty import model as md
from npf_loyalty.events import s3_put_event
from npf_loyalty.ingest import ingest_object
from npf_loyalty.scoring import load_current_model, score_current
from npf_loyalty.settings import Settings
from npf_loyalty.storage import Keys, LocalStore, S3Store, Store
from npf_loyalty.synth import SynthConfig, generate, write_fund
from tests.conftest import TEST_BUCKET

ROOT = Path(__file__).parents[1]
FAST = md.TrainConfig(
    depths=(4,),
    learning_rates=(0.1,),
    iterations=60,
    early_stopping_rounds=20,
    recipe_iterations=30,
    embeddings="never",
)


def build_fund(store: Store, settings: Settings, folder: Path) -> None:
    """A small fund ingested and a model trained on it and promoted: what scoring starts from."""
    fund = generate(SynthConfig(accounts=700, seed=11, quarters=20))
    for name, path in write_fund(fund, folder).items():
        if name != "truth":
            key = f"{Keys.uploads}2023Q1/{path.name}"
            store.put_file(key, path)
            ingest_object(store, key, settings)
    md.train_from_store(store, settings, config=FAST, force=True)


@pytest.fixture(scope="module")
def scored_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, Settings]:
    root = tmp_path_factory.mktemp("scoring")
    (root / "work").mkdir()
    settings = Settings(store=str(root / "bucket"), work_dir=root / "work")
    store = LocalStore(root / "bucket")
    build_fund(store, settings, root / "dumps")
    score_current(store, settings, load_current_model(store, settings.work_dir))
    return store, settings


def read_scores(store: LocalStore) -> dict[str, np.ndarray]:
    folder = store.current_dir(Keys.scores)
    assert folder is not None
    path = store.local_path(folder + "scores.parquet")
    scores: dict[str, np.ndarray] = duckdb.sql(f"SELECT * FROM '{path}'").fetchnumpy()
    return scores


def test_every_scoring_row_gets_one_score(scored_store: tuple[LocalStore, Settings]) -> None:
    store, _ = scored_store
    features = store.current(Keys.features)
    assert features is not None
    scores = read_scores(store)
    assert len(scores["npo_account_id"]) == features["summary"]["scoring_rows"]
    assert len(set(scores["npo_account_id"])) == len(scores["npo_account_id"])


def test_probabilities_bands_and_relative_risk_agree(
    scored_store: tuple[LocalStore, Settings],
) -> None:
    scores = read_scores(scored_store[0])
    p_q, p_4q = scores["p_leave_next_q"], scores["p_leave_next_4q"]
    assert ((p_q > 0) & (p_q < 1)).all() and ((p_4q > 0) & (p_4q < 1)).all()
    assert np.allclose(scores["loyalty_next_4q"], 1 - p_4q)
    expected = np.where(p_4q > 0.8, "низкая", np.where(p_4q > 0.2, "средняя", "высокая"))
    assert (scores["band"] == expected).all()
    assert scores["relative_risk"].mean() == pytest.approx(1.0)
    assert p_q[scores["risk_rank"] == 1][0] == p_q.max()


def test_each_account_has_three_worded_reasons(scored_store: tuple[LocalStore, Settings]) -> None:
    scores = read_scores(scored_store[0])
    for k in (1, 2, 3):
        assert all(isinstance(t, str) and t for t in scores[f"reason_{k}"])
    strength = np.abs(np.column_stack([scores[f"reason_{k}_contribution"] for k in (1, 2, 3)]))
    assert (np.diff(strength, axis=1) <= 1e-12).all()  # strongest first
    assert len(set(scores["reason_1"])) > 1  # per account, not one global list


def test_the_bot_lookup_is_sharded_by_client(scored_store: tuple[LocalStore, Settings]) -> None:
    store, _ = scored_store
    folder = store.current_dir(Keys.lookup)
    assert folder is not None
    keys = store.list(folder)
    shards = {k.split("shard=")[1][:2] for k in keys if "/client/shard=" in k}
    scores = read_scores(store)
    assert shards == {c[2:4] for c in scores["client_id"]}
    assert folder + "top.parquet" in keys and folder + "stats.json" in keys
    stats = json.loads(store.get_bytes(folder + "stats.json"))
    assert stats["accounts_scored"] == len(scores["npo_account_id"])
    assert stats["expected_leavers_next_q"] == pytest.approx(scores["p_leave_next_q"].sum())


def test_scoring_the_same_features_with_the_same_model_twice_changes_nothing(
    scored_store: tuple[LocalStore, Settings],
) -> None:
    store, settings = scored_store
    before = store.list("")
    again = score_current(store, settings, load_current_model(store, settings.work_dir))
    assert not again.built
    assert store.list("") == before


def test_the_scoring_path_runs_without_catboost(scored_store: tuple[LocalStore, Settings]) -> None:
    store, settings = scored_store
    script = f"""
import importlib.abc, sys
class NoCatboost(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("catboost", "pandas", "pyarrow"):
            raise ImportError(name + " imported on the scoring path")
sys.meta_path.insert(0, NoCatboost())
from npf_loyalty.scoring import load_current_model, score_rows
from npf_loyalty.storage import LocalStore
store = LocalStore(__import__("pathlib").Path({str(store.root)!r}))
model = load_current_model(store, __import__("pathlib").Path({str(settings.work_dir)!r}))
import numpy as np
rows = {{c: np.zeros(3) for c in model.input_columns}}
rows.update(npo_account_id=np.array(["0x1"] * 3), client_id=np.array(["0x2"] * 3),
            quarter=np.array(["2023Q1"] * 3))
print(len(score_rows(rows, model)["p_leave_next_q"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_the_score_handler_scores_on_the_features_pointer_event(
    s3_store: S3Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from npf_loyalty.edges import load_handler
    from npf_loyalty.settings import get_settings

    work = tmp_path / "work"
    work.mkdir()
    settings = Settings(store=f"s3://{TEST_BUCKET}", work_dir=work)
    build_fund(s3_store, settings, tmp_path / "dumps")
    monkeypatch.setenv("NPF_STORE", f"s3://{TEST_BUCKET}")
    monkeypatch.setenv("NPF_WORK_DIR", str(work))
    get_settings.cache_clear()
    handler = load_handler("score")

    skipped = handler.handler(s3_put_event(TEST_BUCKET, "features/abc/quarter=2023Q1/x.parquet"))
    result = handler.handler(s3_put_event(TEST_BUCKET, Keys.pointer(Keys.features)))

    assert "skipped" in skipped
    assert result["built"] is True and result["accounts"] > 0
    assert s3_store.current(Keys.scores) is not None
    get_settings.cache_clear()
