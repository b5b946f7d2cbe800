"""Lifetime value: the CLV metrics by hand, and ``train ltv`` end to end on a CDNOW subset.

The subset (customers 1-2500 of the real CDNOW log shipped with ``lifetimes``) is imported
with ``nextbest data import`` as a user would; the run validates on the holiday quarter of
1997 like benchmarks/ltv_cdnow.py, on a tenth of the customers and two cutoffs.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import lifetimes.datasets
import mlflow
import numpy as np
import pandas as pd
import pytest
from trainingkit import settings_at

from features.build import load_features
from features.segmentation import LIFECYCLE_STAGES
from nextbest.cli import main
from nextbest.errors import DataError
from training.ltv import LtvResult, train_ltv
from training.ltv_model import load_ltv
from training.metrics import evaluate_ltv, normalised_gini, top_share
from training.registry import configure

CDNOW = Path(lifetimes.datasets.__file__).parent / "CDNOW_master.txt"
AS_OF = date(1997, 10, 1)


def test_clv_metrics_by_hand() -> None:
    spend = np.array([0.0, 0.0, 10.0, 30.0, 60.0])
    perfect = evaluate_ltv(spend, spend / 10, spend * 1.1, spend / 10)
    assert perfect.spend_error == pytest.approx(0.1) and perfect.purchases_error == 0
    assert perfect.spearman == pytest.approx(1.0) and perfect.gini == pytest.approx(1.0)
    assert perfect.mae_spend == pytest.approx(10.0 / 5)
    assert top_share(spend, spend) == pytest.approx(0.6)  # the top 1 of 5 users holds 60%
    assert top_share(spend, -spend) == 0.0
    assert normalised_gini(spend, -spend) < 0 < normalised_gini(spend, np.arange(5.0))
    with pytest.raises(DataError, match="no actual spend"):
        evaluate_ltv(np.zeros(3), np.ones(3), np.ones(3), np.ones(3))


@pytest.fixture(scope="module")
def cdnow_run(tmp_path_factory: pytest.TempPathFactory,
              empty_store: Path) -> tuple[Path, LtvResult]:
    root = tmp_path_factory.mktemp("cdnow")
    (root / "mlruns").mkdir()
    shutil.copyfile(empty_store, root / "mlruns/mlflow.db")
    subset = root / "cdnow_subset.txt"
    lines = CDNOW.read_text().splitlines()
    subset.write_text("\n".join([lines[0], *(line for line in lines[1:]
                                             if int(line.split()[0]) <= 2500)]) + "\n")
    config = settings_at(root, cutoffs=2, num_boost_round=200)
    assert main(["--config", str(root / "nextbest.yaml"), "data", "import", "orders",
                 str(subset), "--map", "buyer_id=1,ts=2,amount=4"]) == 0
    return root, train_ltv(config, as_of=AS_OF, horizon=91, say=lambda _: None)


def test_train_ltv_validates_out_of_time_against_bgnbd_gamma_gamma(
        cdnow_run: tuple[Path, LtvResult]) -> None:
    root, result = cdnow_run
    assert result.plan.validation == AS_OF
    # Training windows close by the validation cutoff, the latest exactly at it.
    assert result.plan.training == [date(1997, 6, 2), date(1997, 7, 2)]
    assert result.n_valid == len(pd.read_parquet(root / "data/raw/orders.parquet")
                                 ["buyer_id"].unique())
    model, baseline = result.metrics, result.baseline
    assert model.actual_spend == baseline.actual_spend > 0
    # On this tenth of CDNOW too, the holiday quarter: LightGBM ranks spend better and
    # forecasts both totals closer than the classic model.
    assert model.spearman > baseline.spearman
    assert abs(model.spend_error) < abs(baseline.spend_error)
    assert abs(model.purchases_error) < abs(baseline.purchases_error)
    assert result.gate.promoted and result.version == "1"
    run = configure(settings_at(root)).get_run(result.run_id)
    for name in ("spend_error", "purchases_error", "mae_spend", "spearman",
                 "top_decile_capture", "gini"):
        assert run.data.metrics[name] == pytest.approx(getattr(model, name))
        assert run.data.metrics[f"baseline_bgnbd_gg_{name}"] == pytest.approx(
            getattr(baseline, name))
    assert run.data.params["horizon_days"] == "91"


def test_the_registered_ltv_model_is_a_pyfunc(cdnow_run: tuple[Path, LtvResult]) -> None:
    root, result = cdnow_run
    settings = settings_at(root)
    client = configure(settings)
    version, model = load_ltv(client)
    assert version == result.version
    features = load_features(settings, AS_OF).head(200)
    direct = model.forecast(features)
    via_mlflow = mlflow.pyfunc.load_model("models:/ltv@champion").predict(features)
    pd.testing.assert_frame_equal(pd.DataFrame(via_mlflow).reset_index(drop=True),
                                  direct.reset_index(drop=True))
    assert (direct["spend"] >= 0).all() and direct["spend"].sum() > 0
    assert set(client.get_registered_model("ltv").aliases) == {"champion", "challenger"}


def test_ltv_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(tmp_path / "c.yaml")
    settings_at(tmp_path)
    (tmp_path / "nextbest.yaml").rename(config)
    assert main(["--config", config, "train", "churn", "--horizon-days", "30"]) == 2
    assert "--horizon-days is for `train ltv`" in capsys.readouterr().err
    assert main(["--config", config, "train", "ltv", "--tune", "3"]) == 2
    assert "--tune is not available" in capsys.readouterr().err


def test_score_answers_carry_the_ltv_champions_forecast(
        cdnow_run: tuple[Path, LtvResult]) -> None:
    from features.store import open_store
    from serving.scoring import Scorer
    from training.loader import load_ltv_champion

    root, result = cdnow_run
    settings = settings_at(root)
    features = load_features(settings, AS_OF).head(50)
    with open_store(settings) as store:
        store.write(features, AS_OF)
        scorer = Scorer(settings, store, None)
        assert scorer.answer("nobody", None).ltv_12m is None
        scorer.use_ltv(scorer.load_ltv())
        assert scorer.model_versions()["ltv"] == result.version
        assert scorer.load_ltv() is None  # the served version: nothing to load again
        assert load_ltv_champion(settings, unless="999") is not None
        expected = scorer.ltv.model.forecast(features)["spend"].to_numpy()
        ids = features["user_id"].astype(str).tolist()
        one = [scorer.score(user_id).ltv_12m for user_id in ids[:5]]
        answers = scorer.score_many(ids)
    assert one == pytest.approx(expected[:5])
    assert [a.ltv_12m for a in answers] == pytest.approx(expected)
    assert {a.lifecycle_stage for a in answers} <= set(LIFECYCLE_STAGES)


def test_tiers_can_be_ranked_by_the_ltv_forecast(cdnow_run: tuple[Path, LtvResult]) -> None:
    from features.report import build_report, ltv_tiers
    from nextbest.errors import NotFound
    from training.loader import load_ltv_scorer

    root, _ = cdnow_run
    settings = settings_at(root)
    scorer = load_ltv_scorer(settings)
    by_value = build_report(settings, AS_OF)
    by_ltv = build_report(settings, AS_OF, ltv=scorer, tier_by="ltv")
    assert by_ltv.tier_by == "ltv" and by_ltv.users == by_value.users
    frame = ltv_tiers(load_features(settings, AS_OF), settings, scorer)
    forecast = scorer.score(frame).groupby(frame["tier"]).mean()
    assert forecast["platinum"] > forecast["gold"] > forecast["silver"]
    # The same buyers, ranked by what they will spend rather than what they spent.
    assert [t.users for t in by_ltv.tiers] != [t.users for t in by_value.tiers] or \
        (frame["tier"] != load_features(settings, AS_OF)["tier"]).any()
    with pytest.raises(NotFound, match="train ltv"):
        build_report(settings, AS_OF, tier_by="ltv")
