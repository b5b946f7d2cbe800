"""``nextbest train sentiment``: rate review texts that came without a rating.

Some reviews carry only a text. A small model trained on the platform's own rated reviews
(TF-IDF of words and word pairs, then a multinomial logistic regression over the 1-5 stars)
estimates each unrated text's rating as the expected stars under its predicted
distribution. Nothing is downloaded: the vocabulary is the platform's own.

One MLflow run (experiment ``sentiment``): the model is fit on a seeded 80% of the rated
reviews and scored on the other 20% (accuracy, mean absolute error of the expected rating
against the stars given, and the same for a baseline that always says the mean rating),
then refit on all of them, logged as an MLflow sklearn model and registered as
``sentiment``.

The estimates are written to ``raw_dir/review_scores.parquet`` (``user_id, ts, rating``,
one row per unrated review with a text); the feature build reads that table, when present,
into ``rating_mean_365d`` beside the ratings users gave. Review ratings are not a model
input of churn, propensity or LTV.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import sklearn
from pydantic import BaseModel
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from nextbest.config import Settings
from nextbest.errors import DataError
from training.labels import SENTIMENT_MODEL, raw_table
from training.registry import configure, experiment_id, register_version

Say = Callable[[str], None]
SCORES_FILE = "review_scores.parquet"
MIN_RATED = 50
TEST_SHARE = 0.2


class SentimentResult(BaseModel):
    """What one ``train sentiment`` run produced."""

    version: str
    run_id: str
    rated: int
    scored: int
    accuracy: float
    mae: float
    baseline_mae: float
    scores_path: Path


def review_texts(raw_dir: Path) -> pd.DataFrame:
    """Reviews with a text: ``user_id, ts, rating`` (NaN when unrated) and ``text``."""
    path = raw_table(raw_dir, "events")
    columns = ["user_id", "ts", "type", "rating", "text"]
    if path is None:
        raise DataError(f"{Path(raw_dir) / 'events.parquet'} is missing: reviews are events",
                        field="events")
    import pyarrow.parquet as pq

    present = set(pq.ParquetFile(path).schema_arrow.names)
    if not {"rating", "text"} <= present:
        raise DataError("the events table has no rating or text column: there are no review "
                        "texts to learn from", field="text")
    events = pd.read_parquet(path, columns=columns, filters=[("type", "==", "review")])
    texts = events[events["text"].notna() & (events["text"].str.strip() != "")]
    return texts.drop(columns="type").reset_index(drop=True)


def sentiment_pipeline(seed: int) -> Pipeline:
    """TF-IDF of words and word pairs, then a multinomial logistic regression over stars."""
    return Pipeline([
        ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
        ("classify", LogisticRegression(C=4.0, max_iter=1000, random_state=seed)),
    ])


def expected_rating(model: Pipeline, texts: pd.Series) -> np.ndarray:
    """The expected stars of each text under the model's distribution over ratings."""
    probabilities = model.predict_proba(texts.astype(str))
    return probabilities @ model.classes_.astype(float)


def train_sentiment(settings: Settings, *, say: Say = print) -> SentimentResult:
    """Train, evaluate, log and register the sentiment model; write the estimated ratings."""
    raw_dir = Path(settings.paths.raw_dir)
    reviews = review_texts(raw_dir)
    rated = reviews[reviews["rating"].notna()].reset_index(drop=True)
    unrated = reviews[reviews["rating"].isna()].reset_index(drop=True)
    if len(rated) < MIN_RATED or rated["rating"].nunique() < 2:
        raise DataError(f"{len(rated)} rated reviews with a text (at least {MIN_RATED} with two "
                        "different ratings are needed to learn from)", field="rating")
    seed = settings.training.seed
    test = np.random.default_rng(seed).random(len(rated)) < TEST_SHARE
    stars = rated["rating"].astype(int).to_numpy()
    held = sentiment_pipeline(seed).fit(rated.loc[~test, "text"], stars[~test])
    accuracy = float(np.mean(held.predict(rated.loc[test, "text"]) == stars[test]))
    mae = float(np.mean(np.abs(expected_rating(held, rated.loc[test, "text"]) - stars[test])))
    baseline_mae = float(np.mean(np.abs(stars[~test].mean() - stars[test])))
    say(f"[1/2] sentiment: {len(rated):,} rated texts; on the held-out {int(test.sum()):,}: "
        f"accuracy {accuracy:.3f}, MAE {mae:.3f} stars (always the mean: {baseline_mae:.3f})")
    model = sentiment_pipeline(seed).fit(rated["text"], stars)
    scores = unrated[["user_id", "ts"]].assign(
        rating=expected_rating(model, unrated["text"]) if len(unrated) else np.empty(0))
    scores_path = raw_dir / SCORES_FILE
    scores.to_parquet(scores_path, index=False)

    client = configure(settings)
    with mlflow.start_run(experiment_id=experiment_id(settings, client, SENTIMENT_MODEL),
                          run_name=f"sentiment-{len(rated)}-rated") as run:
        mlflow.log_params({"model_name": SENTIMENT_MODEL, "n_rated": len(rated),
                           "n_unrated": len(unrated), "test_share": TEST_SHARE,
                           "ngram_range": "1,2", "C": 4.0, "seed": seed})
        mlflow.log_metrics({"accuracy": accuracy, "mae": mae, "baseline_mean_mae": baseline_mae})
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=["love it, fast shipping"],
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
        version = register_version(client, SENTIMENT_MODEL, info.model_uri, run.info.run_id,
                                   info.model_id)
    say(f"[2/2] registered sentiment version {version}; {len(scores):,} unrated texts rated "
        f"-> {scores_path}")
    return SentimentResult(version=version, run_id=run.info.run_id, rated=len(rated),
                           scored=len(scores), accuracy=accuracy, mae=mae,
                           baseline_mae=baseline_mae, scores_path=scores_path)
