"""Batch scoring: ``nextbest score --all`` and ``/score`` with ``user_ids`` score many users at
once, and give each the answer ``/score`` gives it alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from features.store import open_store
from nextbest.config import path_overrides
from serving.scoring import SCORE_COLUMNS, Scorer
from training.loader import load_champions

pytestmark = pytest.mark.integration


def nextbest(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``nextbest ARGS``."""
    return subprocess.run([sys.executable, "-m", "nextbest.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_score_all_writes_every_user_as_score_answers_them(world, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "scores.parquet"
    done = nextbest(["score", "--all", "--out", str(out), "--chunk-rows", "128"], world.env,
                    world.root)
    assert done.returncode == 0, done.stderr
    assert f"-> {out}" in done.stdout
    table = pq.read_table(out)
    assert tuple(table.column_names) == SCORE_COLUMNS
    rows = table.to_pandas()
    with open_store(world.settings) as store:
        champions = load_champions(world.settings)
        scorer = Scorer(world.settings, store, champions)
        assert len(rows) == rows["user_id"].nunique() == store.meta()["users"]
        assert table.schema.metadata[b"churn_version"].decode() == champions.versions["churn"]
        for row in rows.itertuples(index=False):
            alone = scorer.score(row.user_id)
            assert (row.tier, row.segment, list(row.tags), row.features_as_of) == (
                alone.tier, alone.segment, alone.tags, alone.features_as_of), row.user_id
            assert row.churn_probability == pytest.approx(alone.churn_probability, abs=1e-12)
            assert row.purchase_propensity == pytest.approx(alone.purchase_propensity,
                                                            abs=1e-12)
    assert rows["churn_probability"].between(0, 1).all()


def test_score_batch_answers_what_each_single_score_answers(client: httpx.Client,
                                                            world) -> None:
    with open_store(world.settings) as store:
        records = store.get_many([f"u{i:06d}" for i in range(60)])
    ids = sorted(records)[:40]
    tagged = next(u for u in ids if records[u].get("tags"))
    removed = client.delete(f"/users/{tagged}/tags/{records[tagged]['tags'][0]}")
    assert removed.status_code == 200, removed.text
    asked = [ids[3], "stranger", *ids, ids[3]]
    batch = client.post("/score", json={"user_ids": asked})
    assert batch.status_code == 200, batch.text
    singles = [client.post("/score", json={"user_id": u}).json() for u in asked]
    assert batch.json() == singles
    assert [row["known"] for row in batch.json()][:2] == [True, False]


def test_score_all_without_models_says_what_to_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST")}
    proc = nextbest(["score", "--all"], env | path_overrides(tmp_path), tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nextbest train churn" in lines[0], proc.stderr
    assert not (tmp_path / "data" / "scores.parquet").exists()


def test_warm_scores_cache_what_each_user_scores_alone(world) -> None:
    """A service fills its score cache at start (``warm_scores`` in a thread, ``fill`` on the
    loop): every store user's cached scores are the ones a cold lookup computes, a lookup
    afterwards is a cache hit, ``limit`` bounds the users, and scores of models no longer
    served are not put in."""
    with open_store(world.settings) as store:
        champions = load_champions(world.settings)
        cold = Scorer(world.settings, store, champions)
        warmed = Scorer(world.settings, store, champions)
        warm = warmed.warm_scores()
        assert warm is not None
        users = store.meta()["users"]
        assert len(warm.entries) == users and warmed.fill(warm, 0, 10) == 10
        assert warmed.fill(warm, 10) == users - 10
        assert len(warmed.cached_users()) == users
        ids = sorted(warmed.cached_users())[::25]
        for user_id in ids:
            record, _ = store.get_with_preferences(user_id)
            churn, propensity = warmed.scores(user_id, record)
            alone = cold.scores(user_id, record)
            assert churn == pytest.approx(alone[0], abs=1e-12), user_id
            assert propensity == pytest.approx(alone[1], abs=1e-12), user_id
        assert len(warmed._cache) == users  # every lookup above was a hit: nothing added
        assert len(Scorer(world.settings, store, champions).warm_scores(limit=7).entries) == 7
        later = Scorer(world.settings, store, champions)
        stale = later.warm_scores()
        later.use(load_champions(world.settings))  # models changed while it computed
        assert later.fill(stale) == 0 and not later.cached_users()
        assert Scorer(world.settings, store, None).warm_scores() is None


def test_a_users_view_is_reused_while_their_store_row_is_unchanged(world) -> None:
    """``user_view`` reads the user's row on every call and reuses the view built from an
    unchanged one (the same object, equal to a fresh build); a consent change shows in the
    very next view, a model change and an erasure's ``forget`` drop the kept views, and
    ``serving.view_cache_size`` 0 keeps none."""
    with open_store(world.settings) as store:
        champions = load_champions(world.settings)
        scorer = Scorer(world.settings, store, champions)
        user_id = sorted(store.get_many([f"u{i:06d}" for i in range(50)]))[0]
        first = scorer.user_view(user_id)
        assert scorer.user_view(user_id) is first
        assert first == Scorer(world.settings, store, champions).user_view(user_id)
        assert first.personalization and user_id in scorer.cached_users()
        store.update_preferences(user_id, {"personalization": False})
        try:
            opted_out = scorer.user_view(user_id)
            assert opted_out is not first and not opted_out.personalization
            assert scorer.user_view(user_id) is opted_out
        finally:
            store.update_preferences(user_id, {"personalization": True})
        assert scorer.user_view(user_id).personalization
        kept = scorer.user_view(user_id)
        scorer.use(champions)
        assert scorer.user_view(user_id) is not kept
        assert scorer.forget(user_id) >= 1 and user_id not in scorer._views
        unknown = scorer.user_view("nobody-at-all")
        assert not unknown.known and "nobody-at-all" not in scorer._views
        none_kept = Scorer(world.settings.model_copy(update={"serving": world.settings.serving
                           .model_copy(update={"view_cache_size": 0})}), store, champions)
        assert none_kept.user_view(user_id) is not none_kept.user_view(user_id)
        assert not none_kept._views
