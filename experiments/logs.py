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
earned              what the platform keeps of the revenue (written here: all  derived
                    of it, or ``commission_rate`` of it at a seller point)
control             decision in the control group                              action null
policy              policy / campaign / version that decided                   "logged"
tier                user tier                                                  "unknown"
context columns     see :func:`context_columns`
==================  =========================================================  ==========

\\* needed for off-policy evaluation only; \\*\\* or ``converted`` (+ ``revenue``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from decisions.reward import arm_cost, earned, reward_of
from nextbest.config import DEFAULT_POINT, Settings
from nextbest.errors import DataError

# What the request and the user looked like when the decision was made: the context a
# reward model may learn from. The service's log adds the shared-feature tokens it sent VW.
CONTEXT = ("page", "item_price", "category", "hour", "channel", "tier", "segment", "tags")
# What a log says about the logging itself (who decided, when, with which probability, how
# the reward arrived): never context. A reward model shown ``source`` learns that a
# timeout means no conversion and predicts each decision's own logged reward for every arm.
METADATA = ("event_id", "user_id", "action", "probability", "pmf", "eligible", "reward",
            "converted", "revenue", "cost", "control", "policy", "policy_version",
            "campaign", "personalized", "learnable", "learned", "reason", "features",
            "reward_model", "context", "status", "seq", "source", "ts", "decided_at", "rewarded_at")


def read_log(path: Path | str, settings: Settings) -> pd.DataFrame:
    """Load and normalise the decisions of the settings' decision point from a decision log
    (see the module docstring for the columns); a log without a ``decision_point`` column
    (older, or exported by a platform) is all the default point's."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"decision log {path} does not exist", field="logs")
    suffix = path.suffix.lower()
    if suffix not in (".sqlite", ".db", ".sqlite3", ".parquet", ".csv") and not path.is_dir():
        raise DataError(f"{path}: unknown log format {suffix!r} (use .sqlite, .parquet or .csv)",
                        field="logs")
    try:
        if suffix in (".sqlite", ".db", ".sqlite3"):
            frame = _read_sqlite(path)
        elif suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except (OSError, ValueError, sqlite3.DatabaseError) as exc:  # empty, truncated, not a log
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot read it as a decision log ({reason})",
                        field="logs") from exc
    if "decision_point" in frame.columns:
        frame = frame[frame["decision_point"].fillna(DEFAULT_POINT) == settings.decision_point]
    elif settings.decision_point != DEFAULT_POINT:
        frame = frame.iloc[:0]
    return normalise(frame.reset_index(drop=True), settings, source=str(path))


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
    expanded = pd.DataFrame([shared_tokens(raw) for raw in frame["features"]], index=frame.index)
    new = [c for c in expanded.columns if c not in frame.columns]
    return pd.concat([frame, expanded[new]], axis=1)


def shared_tokens(raw: object) -> dict[str, str]:
    """The shared-feature tokens of one logged ``features`` value as ``{key: value}``
    (``tag=`` tokens joined by commas into ``tags``); ``{}`` plus tags for no features."""
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
    return flat


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
    out["earned"] = earned(settings.bandit.reward, out["revenue"].to_numpy(float))
    if "reward" not in out.columns or out["reward"].isna().all():
        out["reward"] = [
            # The cost is the log's own (or _arm_cost's).
            reward_of(settings.bandit, None, c, r, None) - (
                k if c and settings.bandit.reward.kind != "conversion" else 0.0)
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
    """The columns a reward model may use as context, never the log's :data:`METADATA`.

    The service's log (it has the logged VW ``features``): the columns of :data:`CONTEXT`
    and of the shared-feature tokens, nothing else. Another system's log: every column but
    the metadata, identifiers (``*_id``) and times (``*_ts``, ``*_at``).
    """
    if "features" in frame.columns:
        tokens = set().union(*(shared_tokens(raw) for raw in frame["features"]))
        return [c for c in frame.columns if c in CONTEXT or c in tokens]
    return [c for c in frame.columns
            if c not in METADATA and not c.endswith(("_id", "_ts", "_at"))]
