"""Champion and challengers: candidate policies, the promoted (live) one, and shadow mode.

- A *candidate* (``policies.candidates``) is a fixed policy (``random``, ``static``, ...) or
  a learning configuration: overrides of the ``bandit`` section
  (:func:`candidate_settings`).
- ``nextbest policies promote NAME`` (experiments/lifecycle.py) records the promoted
  candidate in ``bandit_dir/live_policy.json``; a durable engine applies it over the
  configured bandit (:func:`live_choice`) when it starts. A new configuration has a new
  fingerprint, so its learner does not reuse the old checkpoint: it replays the log.
- *Shadow* (``policies.shadow``): :class:`ShadowPolicy` sees every bandit decision the
  engine makes, logs what it would have chosen and with which probability in the table
  ``shadow_decisions`` of the decision log, and never acts: the engine returns the live
  decision only. It learns from the live log's rewards in log order (its own in-memory
  :class:`decisions.learner.Learner` on the same log).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from decisions.choosers import ChooserSpec
from decisions.decision_log import DecisionLog, to_epoch
from decisions.encoding import DecisionInput
from decisions.learner import Learner
from decisions.policy import normalise_pmf, sample_arm
from nextbest.config import BanditConfig, CandidatePolicyConfig, Settings
from nextbest.errors import NotFound, ValidationFailed

LIVE_FILE = "live_policy.json"
SHADOW_CHOOSERS = ("random", "static")  # the fixed policies a shadow may be


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, nested dicts merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (_merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def candidate(settings: Settings, name: str) -> CandidatePolicyConfig:
    """The candidate called ``name``; NotFound listing the configured ones."""
    found = settings.policies.candidates.get(name)
    if found is None:
        raise NotFound(f"no candidate policy {name!r}; policies.candidates has "
                       f"{', '.join(sorted(settings.policies.candidates)) or 'none'}",
                       field="policy")
    return found


def candidate_settings(settings: Settings, name: str) -> Settings:
    """``settings`` with the candidate's bandit overrides applied (validated)."""
    overrides = candidate(settings, name).bandit
    if not overrides:
        return settings
    try:
        bandit = BanditConfig.model_validate(_merge(settings.bandit.model_dump(), overrides))
    except ValueError as exc:
        raise ValidationFailed(f"candidate {name!r}: bad bandit overrides: "
                               f"{' '.join(str(exc).split())}", field="policies.candidates"
                               ) from exc
    return settings.model_copy(update={"bandit": bandit})


def candidate_spec(settings: Settings, name: str) -> ChooserSpec:
    """The chooser of a candidate: the bandit (learning configurations) or a fixed one."""
    fixed = candidate(settings, name).policy
    if fixed is None:
        return ChooserSpec("bandit")
    if fixed not in SHADOW_CHOOSERS:
        raise ValidationFailed(f"candidate {name!r}: only {', '.join(SHADOW_CHOOSERS)} or "
                               "bandit overrides can decide live or in shadow; "
                               f"{fixed!r} can only be evaluated offline", field="policy")
    return ChooserSpec(fixed)


# ------------------------------------------------------------------------------- promoted

def live_file(settings: Settings) -> Path:
    return Path(settings.paths.bandit_dir) / LIVE_FILE


def live_policy(settings: Settings) -> dict[str, Any] | None:
    """The promotion record (name, bandit overrides, when, why), or None."""
    path = live_file(settings)
    return json.loads(path.read_text()) if path.is_file() else None


def live_choice(settings: Settings, spec: ChooserSpec) -> tuple[Settings, ChooserSpec]:
    """The settings and chooser a durable engine runs: the promoted candidate's (its bandit
    overrides, or its fixed chooser) if one was promoted, else ``settings`` and ``spec``."""
    record = live_policy(settings)
    if not record:
        return settings, spec
    if record.get("policy"):
        return settings, ChooserSpec(record["policy"])
    bandit = BanditConfig.model_validate(_merge(settings.bandit.model_dump(),
                                                record.get("bandit") or {}))
    return settings.model_copy(update={"bandit": bandit}), spec


def record_promotion(settings: Settings, name: str, evidence: dict[str, Any]) -> Path:
    """Make ``name`` the live policy from the next start of the service."""
    path = live_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    chosen = candidate(settings, name)
    body = {"name": name, "policy": chosen.policy, "bandit": chosen.bandit,
            "promoted_at": datetime.now(UTC).isoformat(), "evidence": evidence}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------- shadow

@dataclass
class ShadowRecord:
    """What the shadow would have done on one decision."""

    event_id: str
    policy: str
    action: str | None
    probability: float
    pmf: dict[str, float]


class ShadowPolicy:
    """A candidate deciding beside the live policy, logged, never acting (module docstring).

    Belongs to one engine, which serialises access (it shares the engine's log connection).
    """

    def __init__(self, settings: Settings, name: str, log: DecisionLog):
        self.name = name
        self.settings = candidate_settings(settings, name)
        self.spec = candidate_spec(settings, name)
        self.log = log
        self.learner = Learner(self.settings, log, store=None, spec=self.spec)
        self.learner.catch_up()
        self.rng = random.Random(f"shadow:{name}:{self.settings.bandit.seed}")

    @property
    def version(self) -> str:
        return f"{self.name}:{self.learner.policy_version}"

    def observe(self, event_id: str, decision: DecisionInput, ts: datetime) -> ShadowRecord:
        """Choose as the live policy would, with the shadow's chooser, and log it."""
        pmf = normalise_pmf(decision.arms, self.learner.chooser.pmf(decision))
        arm = sample_arm(pmf, self.rng)
        record = ShadowRecord(event_id=event_id, policy=self.name, action=arm,
                              probability=pmf.get(arm, 1.0) if arm else 1.0, pmf=pmf)
        self.log.conn.execute(
            "INSERT OR REPLACE INTO shadow_decisions (event_id, policy, action, probability, "
            "pmf, policy_version, reward_model, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, self.name, arm, record.probability, json.dumps(pmf), self.version,
             getattr(self.learner.chooser, "reward_model_version", None), to_epoch(ts)))
        self.log._wrote()
        return record

    def catch_up(self) -> None:
        """Learn the rewards the live log gained since the last call (in log order)."""
        self.learner.catch_up()

    def close(self) -> None:
        self.learner.stop_refits()
        self.learner.chooser.close()
