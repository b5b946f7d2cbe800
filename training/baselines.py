"""Baselines scored on the same validation rows as the model, so each run shows what LightGBM adds.

- RFM-recency heuristic: the training cutoffs' event rate in each (recency, frequency) cell,
  looked up for the validation rows. No learning beyond a table a marketer could draw.
- Seller recency (seller churn): the training cutoffs' event rate in each bucket of days
  since the seller's last listing (:func:`seller_recency_scores`): "a seller who has not
  listed for a while has gone", as a table.
- BG/NBD (Fader, Hardie and Lee 2005, via ``lifetimes``): fit on completed orders before the
  validation cutoff. The expected number of purchases ``E`` in the horizon gives, with a
  Poisson approximation, P(no purchase) = exp(-E) (churn) and P(a purchase) = 1 - exp(-E)
  (propensity). Probability-alive alone would call every one-time buyer alive.
- BG/NBD + Gamma-Gamma (Fader, Hardie and Lee 2005b) for lifetime value: BG/NBD's expected
  purchases in the horizon times Gamma-Gamma's expected spend per purchase (fit on repeat
  buyers' mean spend per repeat purchase day), the classic CLV model.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter

from nextbest.config import TrainingConfig
from training.labels import activity_sql, midnight, orders_path

RECENCY_EDGES = np.array([7, 30, 60, 90, 180, 365])
FREQUENCY_EDGES = np.array([1, 2, 3, 6, 11])
_SMOOTHING = 10.0


def _cells(frame: pd.DataFrame) -> np.ndarray:
    """RFM cell of each row: recency bucket x frequency bucket (no purchase is its own bucket)."""
    recency = frame["recency_days"].to_numpy(dtype=float)
    r = np.where(np.isnan(recency), len(RECENCY_EDGES) + 1, np.digitize(recency, RECENCY_EDGES))
    freq = np.nan_to_num(frame["frequency_total"].to_numpy(dtype=float))
    return r * 10 + np.digitize(freq, FREQUENCY_EDGES)


def rfm_scores(train: pd.DataFrame, valid: pd.DataFrame) -> np.ndarray:
    """Smoothed training event rate of each validation row's RFM cell, shape ``(len(valid),)``.

    Needs ``recency_days``, ``frequency_total`` and ``label`` (train). A cell seen rarely in
    training is pulled towards the overall rate with a pseudo-count of 10.
    """
    return _bucket_rates(_cells(train), train["label"].to_numpy(), _cells(valid))


def _listing_buckets(frame: pd.DataFrame) -> np.ndarray:
    """Bucket of days since the last listing of each row (never listed is its own bucket)."""
    days = frame["days_since_listing"].to_numpy(dtype=float)
    return np.where(np.isnan(days), len(RECENCY_EDGES) + 1, np.digitize(days, RECENCY_EDGES))


def seller_recency_scores(train: pd.DataFrame, valid: pd.DataFrame) -> np.ndarray:
    """Smoothed training event rate of each validation row's listing-recency bucket, shape
    ``(len(valid),)``; needs ``days_since_listing`` and ``label`` (train)."""
    return _bucket_rates(_listing_buckets(train), train["label"].to_numpy(),
                         _listing_buckets(valid))


def _bucket_rates(train_cells: np.ndarray, labels: np.ndarray, valid_cells: np.ndarray
                  ) -> np.ndarray:
    """Each validation cell's training event rate, pulled towards the overall rate with a
    pseudo-count of 10."""
    prior = float(labels.mean())
    table = (pd.DataFrame({"cell": train_cells, "label": labels})
             .groupby("cell")["label"].agg(["sum", "count"]))
    rates = (table["sum"] + _SMOOTHING * prior) / (table["count"] + _SMOOTHING)
    return pd.Series(valid_cells).map(rates).fillna(prior).to_numpy(dtype=float)


def purchase_summary(raw_dir: Path, cutoff: date) -> pd.DataFrame:
    """BG/NBD inputs per active user before ``cutoff``, in days at day granularity.

    ``frequency`` = repeat purchase days, ``recency`` = first to last purchase day,
    ``T`` = first purchase day to the cutoff, ``monetary_value`` = mean spend of the repeat
    purchase days (0 without a repeat; Gamma-Gamma's input). Users who never bought get
    frequency = recency = 0 and ``T`` = days since their first activity, i.e. "observed, no
    repeat".
    """
    sql = f"""
        WITH buys AS (
            SELECT buyer_id AS user_id, CAST(ts AS DATE) AS day, sum(amount) AS spend
            FROM read_parquet('{orders_path(raw_dir)}')
            WHERE status = 'completed' AND ts < $cutoff
            GROUP BY buyer_id, CAST(ts AS DATE)
        ), per_user AS (
            SELECT user_id, count(*) - 1 AS frequency, min(day) AS first_day,
                   max(day) AS last_day,
                   (sum(spend) - arg_min(spend, day)) / greatest(count(*) - 1, 1)
                       AS monetary_value
            FROM buys GROUP BY user_id
        ), seen AS (
            SELECT user_id, min(CAST(ts AS DATE)) AS first_seen
            FROM ({activity_sql(raw_dir)}) WHERE ts < $cutoff GROUP BY user_id
        )
        SELECT s.user_id,
               coalesce(p.frequency, 0) AS frequency,
               coalesce(date_diff('day', p.first_day, p.last_day), 0) AS recency,
               date_diff('day', coalesce(p.first_day, s.first_seen), CAST($cutoff AS DATE)) AS T,
               coalesce(p.monetary_value, 0) AS monetary_value
        FROM seen s LEFT JOIN per_user p USING (user_id)
    """
    with duckdb.connect() as con:
        frame = con.execute(sql, {"cutoff": midnight(cutoff)}).df()
    frame["user_id"] = frame["user_id"].astype(str)
    return frame.astype({"frequency": float, "recency": float, "T": float,
                         "monetary_value": float})


def fit_bgnbd(summary: pd.DataFrame, config: TrainingConfig) -> BetaGeoFitter:
    """Fit BG/NBD on a seeded sample of at most ``config.bgnbd_sample`` buyers."""
    buyers = summary[summary["T"] > 0]
    if len(buyers) > config.bgnbd_sample:
        buyers = buyers.sample(config.bgnbd_sample, random_state=config.seed)
    model = BetaGeoFitter(penalizer_coef=config.bgnbd_penalizer)
    return model.fit(buyers["frequency"], buyers["recency"], buyers["T"])


def bgnbd_scores(raw_dir: Path, cutoff: date, user_ids: pd.Series, horizon: int, event: str,
                 config: TrainingConfig) -> np.ndarray:
    """BG/NBD probability of ``event`` ("churn" or "propensity") for ``user_ids`` at ``cutoff``."""
    summary = purchase_summary(raw_dir, cutoff)
    rows = _summary_rows(summary, user_ids)
    p_none = np.exp(-_expected_purchases(fit_bgnbd(summary, config), rows, horizon))
    return p_none if event == "churn" else 1.0 - p_none


def _expected_purchases(model: BetaGeoFitter, rows: pd.DataFrame, horizon: int) -> np.ndarray:
    """BG/NBD's expected purchase days in ``horizon`` days for each row (0 where undefined)."""
    expected = model.conditional_expected_number_of_purchases_up_to_time(
        horizon, rows["frequency"], rows["recency"], rows["T"]).to_numpy(dtype=float)
    return np.clip(np.nan_to_num(expected, nan=0.0), 0.0, None)


def _summary_rows(summary: pd.DataFrame, user_ids: pd.Series) -> pd.DataFrame:
    """The summary rows of ``user_ids`` in their order; unseen users as "no repeat, T=1"."""
    rows = pd.DataFrame({"user_id": user_ids.astype(str)}).merge(summary, on="user_id",
                                                                 how="left")
    rows = rows.fillna({"frequency": 0.0, "recency": 0.0, "T": 1.0, "monetary_value": 0.0})
    rows["T"] = rows["T"].clip(lower=1.0)
    return rows


def bgnbd_gg_forecast(raw_dir: Path, cutoff: date, user_ids: pd.Series, horizon: int,
                      config: TrainingConfig) -> pd.DataFrame:
    """BG/NBD + Gamma-Gamma forecast for ``user_ids`` at ``cutoff`` over ``horizon`` days.

    Returns ``purchases`` (expected purchase days) and ``spend`` (purchases times the
    Gamma-Gamma expected spend per purchase; a user without a repeat purchase gets the
    population mean), one row per user id in order. Both models are fit on the completed
    orders before ``cutoff`` (BG/NBD on a seeded sample, as :func:`fit_bgnbd`).
    """
    summary = purchase_summary(raw_dir, cutoff)
    rows = _summary_rows(summary, user_ids)
    purchases = _expected_purchases(fit_bgnbd(summary, config), rows, horizon)
    repeat = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    gamma = GammaGammaFitter(penalizer_coef=config.bgnbd_penalizer)
    gamma.fit(repeat["frequency"], repeat["monetary_value"])
    per_purchase = gamma.conditional_expected_average_profit(
        rows["frequency"], rows["monetary_value"].where(rows["monetary_value"] > 0, 1.0)
    ).to_numpy(dtype=float)
    prior = float(gamma.conditional_expected_average_profit(
        pd.Series([0.0]), pd.Series([1.0])).iloc[0])
    per_purchase = np.where(rows["frequency"].to_numpy() > 0, per_purchase, prior)
    return pd.DataFrame({"purchases": purchases, "spend": purchases * per_purchase})
