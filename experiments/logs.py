"""Read a decision log into one normalised frame, whatever system wrote it.

Accepted inputs (documented in the ``evaluate-policy`` and ``abtest`` help):

* the service's SQLite decision log (``settings.paths.decision_log``): table ``decisions``
  joined to table ``rewards`` by ``event_id``;
* a Parquet or CSV file with one row per decision.

Normalised columns (a missing optional column gets its default):

==================  =========================================================  ==========
column              meaning                                                    default
==================  =========================================================  ==========
action              arm shown; empty/null = no action (control group)          required
probability         logging policy's probability of ``action``                 required*
reward              observed reward (or computed from converted/revenue/cost)  required**
converted           0/1 conversion                                             reward > 0
revenue             revenue of the conversion                                  0
cost                arm cost paid                                              from config
control             decision in the control group                              action null
policy              policy / campaign / version that decided                   "logged"
tier                user tier                                                  "unknown"
context columns     any other column (page, item_price, category, hour, ...)
==================  =========================================================  ==========

\\* needed for off-policy evaluation only; \\*\\* or ``converted`` (+ ``revenue``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from decisions.reward import arm_cost, reward_of
from nextbest.config import Settings
from nextbest.errors import DataError

RESERVED = ("event_id", "user_id", "action", "probability", "reward", "converted", "revenue",
            "cost", "control", "policy", "tier", "pmf", "ts", "eligible")
CONTEXT_DEFAULTS = ("page", "item_price", "category", "hour", "channel")


def read_log(path: Path | str, settings: Settings) -> pd.DataFrame:
    """Load and normalise a decision log (see the module docstring for the columns)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"decision log {path} does not exist", field="logs")
    suffix = path.suffix.lower()
    if suffix in (".sqlite", ".db", ".sqlite3"):
        frame = _read_sqlite(path)
    elif suffix == ".parquet" or path.is_dir():
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise DataError(f"{path}: unknown log format {suffix!r} (use .sqlite, .parquet or .csv)",
                        field="logs")
    return normalise(frame, settings, source=str(path))


def _read_sqlite(path: Path) -> pd.DataFrame:
    """The service log: ``decisions`` left-joined to ``rewards`` by ``event_id``."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = {row[0] for row in conn.execute("select name from sqlite_master")}
        if "decisions" not in tables:
            raise DataError(f"{path}: no table 'decisions' (is this a nextbest decision log?)",
                            field="logs")
        decisions = pd.read_sql_query("select * from decisions", conn)
        if "rewards" in tables:
            rewards = pd.read_sql_query("select * from rewards", conn)
            keep = [c for c in rewards.columns if c == "event_id" or c not in decisions.columns]
            decisions = decisions.merge(rewards[keep], on="event_id", how="left")
    # policy_version is "<config fingerprint>.<log seq>": the policy is the fingerprint.
    decisions["policy"] = decisions["policy_version"].astype(str).str.split(".").str[0]
    return _expand_json_columns(decisions)


def _expand_json_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn the logged VW features (``features``: shared namespaces) into context columns.

    Each shared token ``key=value`` becomes a column ``key`` (tags joined by commas into
    ``tags``); the ``features`` column itself is kept for evaluating saved VW models.
    """
    if "features" not in frame.columns:
        return frame
    rows = []
    for raw in frame["features"]:
        parsed = json.loads(raw) if isinstance(raw, str) and raw else {}
        flat: dict[str, str] = {}
        tags: list[str] = []
        for tokens in parsed.get("shared", {}).values():
            for token in tokens:
                key, _, value = token.partition("=")
                if key == "tag":
                    tags.append(value)
                elif value:
                    flat[key] = value
        flat["tags"] = ",".join(tags)
        rows.append(flat)
    expanded = pd.DataFrame(rows, index=frame.index)
    new = [c for c in expanded.columns if c not in frame.columns]
    return pd.concat([frame, expanded[new]], axis=1)


def normalise(frame: pd.DataFrame, settings: Settings, *, source: str = "log") -> pd.DataFrame:
    """Fill defaults and derive reward/cost so every reader sees the same columns."""
    if "action" not in frame.columns:
        raise DataError(f"{source}: required column 'action' is missing", field="action")
    out = frame.copy()
    out["action"] = out["action"].astype("object").where(out["action"].notna(), None)
    out.loc[out["action"].isin(["", "none", "None"]), "action"] = None
    if "control" not in out.columns:
        out["control"] = out["action"].isna()
    out["control"] = out["control"].fillna(False).astype(bool)
    if "converted" not in out.columns and "reward" not in out.columns:
        raise DataError(f"{source}: needs a 'reward' or a 'converted' column", field="reward")
    if "revenue" not in out.columns:
        out["revenue"] = 0.0
    out["revenue"] = pd.to_numeric(out["revenue"], errors="coerce").fillna(0.0)
    if "converted" not in out.columns:
        out["converted"] = pd.to_numeric(out["reward"], errors="coerce").fillna(0) > 0
    out["converted"] = out["converted"].fillna(False).astype(bool)
    if "cost" not in out.columns:
        out["cost"] = _arm_cost(out, settings)
    out["cost"] = pd.to_numeric(out["cost"], errors="coerce").fillna(0.0)
    out.loc[~out["converted"], "cost"] = 0.0
    if "reward" not in out.columns or out["reward"].isna().all():
        out["reward"] = [
            # The cost is the log's own (or _arm_cost's): passed as already deducted.
            reward_of(settings.bandit, None, c, r - k, None)
            for c, r, k in zip(out["converted"], out["revenue"], out["cost"], strict=True)]
    # A decision with no reward row yet is learned with the default reward (decisions/reward.py).
    out["reward"] = pd.to_numeric(out["reward"], errors="coerce").fillna(
        settings.bandit.reward.default)
    if "policy" not in out.columns:
        version = out["policy_version"] if "policy_version" in out.columns else None
        out["policy"] = version if version is not None else "logged"
    if "campaign" in out.columns:
        campaign = out["campaign"].astype("object")
        out["policy"] = campaign.where(campaign.notna(), out["policy"])
    out["policy"] = out["policy"].fillna("logged").astype(str)
    if "tier" not in out.columns:
        out["tier"] = "unknown"
    out["tier"] = out["tier"].fillna("unknown").astype(str)
    if "probability" in out.columns:
        out["probability"] = pd.to_numeric(out["probability"], errors="coerce")
    return out.reset_index(drop=True)


def _arm_cost(frame: pd.DataFrame, settings: Settings) -> np.ndarray:
    """Cost of each logged arm by the service's :func:`decisions.reward.arm_cost` (the item
    price, or the revenue where the log has no price)."""
    revenue = frame["revenue"].to_numpy(float)
    price = (pd.to_numeric(frame["item_price"], errors="coerce").to_numpy(float)
             if "item_price" in frame.columns else np.full(len(frame), np.nan))
    price = np.where(np.isnan(price), revenue, price)
    cost = np.zeros(len(frame))
    for arm in settings.bandit.arms:
        mask = (frame["action"] == arm.name).to_numpy()
        cost[mask] = arm_cost(arm, price[mask], revenue[mask])
    return cost


def context_columns(frame: pd.DataFrame) -> list[str]:
    """Columns usable as context for a reward model: everything not reserved."""
    skip = set(RESERVED) | {"policy_version", "campaign", "personalized", "reason", "features",
                            "context", "learned", "status", "decided_at", "rewarded_at"}
    return [c for c in frame.columns if c not in skip and not c.endswith("_id")]
