"""The decision engine: policy layer -> chooser -> decision log <- reward join -> learner.

This is the whole Decision Service loop of docs/ARCHITECTURE.md as a plain Python object;
the BentoML service is a thin adapter over it, the campaign layer asks it for every
message's arm, and the simulator drives the very same object in-process with each policy it
compares as its chooser (:mod:`decisions.choosers`), so simulated and live decisions
cannot drift apart.

Roles (one engine per process):

- ``"inline"``: decides and learns in this process, each reward the moment its feedback is
  accepted (no thread). Holds the learner lock when ``durable``. For a single-process
  service, and with ``durable=False`` on a scratch log for the simulator (batched commits,
  no lock, no checkpoints: fast, but a crash loses the run).
- ``"learner"``: scores with the published model like a scorer, and runs the one learner in
  a background thread (tails the log, sweeps timed-out decisions, checkpoints).
- ``"scorer"``: decides and records feedback; learning happens in the learner process, whose
  checkpoints it reloads (looking at most every ``reload_seconds``).
- ``"auto"``: ``"learner"`` if the learner lock is free, else ``"scorer"`` (several workers).

Every public method is thread-safe (one lock per engine: a VW workspace is single-threaded).
The engine keeps its last ``decision_cache_size`` decisions in memory, so feedback for a
decision made here joins without reading it back from the log (the log stays the truth:
feedback for any other event_id is read from it).
"""

from __future__ import annotations

import math
import os
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from decisions.choosers import BANDIT, Chooser, ChooserSpec
from decisions.decision_log import (
    ROW_USER_ID,
    Decision,
    DecisionLog,
    DecisionRow,
    FeedbackResult,
    LoggedDecision,
    Offer,
    RewardRow,
    logged_from_row,
)
from decisions.encoding import (
    BanditExample,
    DecisionInput,
    build_example,
    check_encoder,
    encode_arms,
)
from decisions.learner import (
    CheckpointStore,
    Learner,
    LearnerThread,
    Lease,
    ModelWatcher,
    open_checkpoints,
)
from decisions.lifecycle import ShadowPolicy, live_choice
from decisions.policy import (
    ContactCounts,
    ContextValues,
    CreditRule,
    PlanKind,
    PolicyLayer,
    PolicyPlan,
    RequestContext,
    UserView,
    eligibility_rules,
    normalise_pmf,
    reason_for,
    sample_arm,
)
from decisions.reward import clip_reward, reward_of
from features.build import available_as_of, partition_dir
from features.comparables import COMPARABLE_DAYS, MIN_SALES, Comparable, read_comparables
from nextbest.caches import keep
from nextbest.config import Settings
from nextbest.errors import Conflict, NotFound, ValidationFailed
from nextbest.storage import Target, WriteGate, location

__all__ = ["Decision", "DecisionEngine", "FeedbackResult", "RequestContext", "Role", "UserView"]

Role = Literal["scorer", "learner", "inline", "auto"]


PRICING_KIND = "pricing"  # ArmConfig.features["kind"] of an arm that suggests a price
# How often a durable SQLite decision log's WAL is copied into the file from a thread of its
# own, so that decisions' commits on the event loop rarely checkpoint themselves.
WAL_CHECKPOINT_SECONDS = 0.5


def utc(now: datetime | None) -> datetime:
    """``now`` as an aware UTC datetime (naive means UTC); the wall clock when None."""
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


@dataclass(frozen=True)
class Choice:
    """A decision chosen and not logged yet (:meth:`DecisionEngine.choose`): ``logged`` is
    its log row to be (None: an answer that is never logged), ``shadowed`` what the shadow
    policy sees of it (None: no shadow, or not a bandit decision)."""

    decision: Decision
    logged: LoggedDecision | None = None
    shadowed: DecisionInput | None = None


class DecisionEngine:
    """Decide, log, join rewards and learn: the public API of the serving loop."""

    def __init__(self, settings: Settings, *, log_path: Target | None = None,
                 role: Role = "inline", durable: bool = True, bandit_dir: Path | None = None,
                 chooser: ChooserSpec = BANDIT):
        """Open the decision log and the model for ``role`` (see the module docstring).

        ``log_path`` defaults to the decision log of the settings (``storage.url`` or
        ``paths.decision_log``) and ``bandit_dir`` to ``settings.paths.bandit_dir`` (with
        ``storage.url``, checkpoints and the learner lease live in that database).
        ``durable=False`` only goes with ``role="inline"``.
        ``chooser`` picks the policy (default: the configured VW bandit).
        Raises Conflict when ``role="learner"`` (or durable inline) finds another learner.
        """
        if not durable and role != "inline":
            raise ValidationFailed("durable=False is only for role='inline' (a scratch log)",
                                   field="durable")
        if durable and chooser == BANDIT:  # a promoted candidate (nextbest policies)
            settings, chooser = live_choice(settings, chooser)
        self.settings = settings
        self.config = settings.bandit
        self.spec = chooser
        check_encoder(self.config, settings.policy)
        self.point = settings.decision_point
        self.policy = PolicyLayer(self.config, CreditRule.from_settings(settings),
                                  eligibility_rules(self.config, settings))
        self.context_values = ContextValues.from_settings(settings)
        self.arm_tokens = encode_arms(self.config)
        # One public offer per arm, built once from config: never personalised.
        self.offers = {arm.name: Offer.of(arm) for arm in self.config.arms}
        self.pricing = {arm.name for arm in self.config.arms
                        if arm.features.get("kind") == PRICING_KIND}
        self.comparables: dict[str, Comparable] = {}
        if self.pricing:
            self.load_comparables()
        self.log_path = log_path or location(settings, "decision_log")
        self.log = DecisionLog(self.log_path, durable=durable,
                               synchronous=self.config.log_synchronous, point=self.point,
                               checkpoint_seconds=WAL_CHECKPOINT_SECONDS)
        self.rng = random.Random(self.config.seed)  # re-seeded per process for shared roles
        self._lock = threading.RLock()
        self._lock_file: Lease | None = None
        self._learner: Learner | None = None
        self._watcher: ModelWatcher | None = None
        self._thread: LearnerThread | None = None
        self.lazy_sweeps = True  # inline role: decide() sweeps when sweep_seconds passed
        self._sweeper: DecisionLog | None = None  # sweep_rows' own connection
        self._last_sweep: datetime | None = None
        # event_id -> decision made here, newest last: feedback joins without a log read.
        # Kept as the log rows written (plain values: untracked by the garbage collector,
        # whose pauses 20,000 decisions as objects lengthened to 100-300 ms).
        self._recent: OrderedDict[str, DecisionRow] = OrderedDict()
        store = open_checkpoints(settings, bandit_dir) if durable else None
        self._store = store
        self.role = self._start(role, store)
        # A shadow policy (policies.shadow) decides beside this one, logged, never acting.
        self.shadow = (ShadowPolicy(settings, settings.policies.shadow, self.log)
                       if settings.policies.shadow else None)
        self._shadow_caught_up = 0.0
        if self.role != "inline":
            # Several scorer processes must not draw the same numbers in lockstep.
            self.rng = random.Random(f"{self.config.seed}:{os.getpid()}")

    def _start(self, role: Role, store: CheckpointStore | None) -> Role:
        """Take the learner lock if the role needs it, load the model, replay the log."""
        if role in ("inline", "learner", "auto") and store is not None:
            lock = store.lease()
            try:
                lock.acquire()
                self._lock_file = lock
            except Conflict:
                if role != "auto":
                    self.log.close()
                    store.close()
                    raise
                role = "scorer"
        if role == "auto":
            role = "learner"
        if role == "inline":
            self._learner = Learner(self.settings, self.log, store=store, spec=self.spec,
                                    publish_in_background=True)
            self._learner.catch_up()
        elif role == "learner":
            assert store is not None  # durable=False was refused above
            self._thread = LearnerThread(self.settings, self.log_path, store, spec=self.spec,
                                         lease=self._lock_file)
            self._thread.start()
            self._watcher = ModelWatcher(self.settings, store, self.spec)
        else:
            assert store is not None
            self._watcher = ModelWatcher(self.settings, store, self.spec)
        return role

    # -- the model in use ------------------------------------------------------------------
    def _model(self) -> tuple[Chooser, str]:
        """The chooser that decides now and its policy version (reloading a newer
        checkpoint)."""
        if self._learner is not None:
            return self._learner.chooser, self._learner.policy_version
        assert self._watcher is not None
        self._watcher.refresh()
        return self._watcher.chooser, self._watcher.policy_version

    @property
    def policy_version(self) -> str:
        """The version of the model deciding now: ``<config fingerprint>.<log seq>``."""
        with self._lock:
            return self._model()[1]

    # -- decide ----------------------------------------------------------------------------
    def decide(self, user: UserView, context: RequestContext, *, now: datetime | None = None,
               campaign: str | None = None, arms: Sequence[str] | None = None,
               counts: ContactCounts | None = None, record: bool = True) -> Decision:
        """Choose the next-best action for ``user`` in ``context`` and log it durably.

        ``campaign`` names the campaign the decision is for, ``arms`` the only arms it may
        use (default: every arm), ``counts`` the user's recent campaign messages per arm for
        the arms' weekly caps (None, an in-page answer: no caps). ``record`` False: the
        answer is given but neither logged nor remembered (an erased user's call, about whom
        nothing may be stored), so it cannot be learned from. The returned ``pmf`` covers
        the eligible arms and sums to 1; ``probability`` is the chosen arm's entry (1.0 when
        there is no action); ``offer`` the chosen arm's public terms. The decision is in the
        log (committed, when durable) before this returns. Raises ValidationFailed naming
        ``context.channel`` or ``context.page`` when it is not a configured value.
        """
        choice = self.choose(user, context, now=now, campaign=campaign, arms=arms,
                             counts=counts, record=record)
        return self.record(choice)

    def choose(self, user: UserView, context: RequestContext, *, now: datetime | None = None,
               campaign: str | None = None, arms: Sequence[str] | None = None,
               counts: ContactCounts | None = None, record: bool = True) -> Choice:
        """The first half of :meth:`decide`: the decision, not logged yet. The service
        chooses, then awaits the log's gate (:attr:`gate`) for :meth:`record` only, so a
        decision asked for while the WAL restarts is computed meanwhile."""
        self.context_values.check(context)
        ts = utc(now)
        with self._lock:
            self._maybe_sweep(ts)
            plan = self.policy.plan(user, counts, arms, context)
            chooser, version = self._model()
            example = (build_example(self.arm_tokens, user, context, plan.eligible,
                                     self.context_values)
                       if user.personalization else BanditExample())
            arm, pmf = self._choose(plan, chooser, DecisionInput(user, context, example))
        probability = pmf.get(arm, 1.0) if arm is not None else 1.0
        decision = Decision(
            event_id=secrets.token_urlsafe(16), user_id=user.user_id, action=arm,
            probability=probability, pmf=pmf,
            personalized=plan.kind is PlanKind.BANDIT, control=plan.kind is PlanKind.CONTROL,
            reason=reason_for(plan, user, algorithm=self._algorithm, action=arm,
                              probability=probability),
            policy_version=version, eligible=plan.eligible, ts=ts, campaign=campaign,
            learnable=plan.learnable and record, decision_point=self.point,
            offer=self._offer(arm, context))
        if not record:
            return Choice(decision)
        logged = LoggedDecision(
            decision=decision, tier=user.tier, features=example.model_dump(),
            item_price=context.item_price,
            reward_model=getattr(chooser, "reward_model_version", None)
            if plan.kind is PlanKind.BANDIT else None)
        shadowed = (DecisionInput(user, context, example)
                    if self.shadow is not None and plan.kind is PlanKind.BANDIT else None)
        return Choice(decision, logged, shadowed)

    def record(self, choice: Choice) -> Decision:
        """The second half of :meth:`decide`: log the chosen decision (committed, when
        durable), remember it for its feedback, and let the shadow see it."""
        if choice.logged is None:
            return choice.decision
        with self._lock:
            self._remember(choice.decision.event_id, self.log.record_decision(choice.logged))
            if choice.shadowed is not None:
                self._observe_shadow(choice.decision.event_id, choice.shadowed,
                                     choice.decision.ts)
        return choice.decision

    @property
    def gate(self) -> WriteGate:
        """The gate of this engine's log: the service enters ``gate.writing()`` around the
        synchronous calls that write it (:meth:`record`, :meth:`feedback`)."""
        return self.log.gate

    def _observe_shadow(self, event_id: str, decision: DecisionInput, ts: datetime) -> None:
        """Let the shadow choose on this decision and log it (it never acts). Outside the
        inline role it learns the log's new rewards at most every ``reload_seconds``."""
        assert self.shadow is not None
        if self.role != "inline":
            now = time.monotonic()
            if now - self._shadow_caught_up >= self.config.reload_seconds:
                self.shadow.catch_up()
                self._shadow_caught_up = now
        self.shadow.observe(event_id, decision, ts)

    def _remember(self, event_id: str, row: DecisionRow) -> None:
        """Keep the decision's log row for its feedback, dropping the oldest past the cache
        size."""
        keep(self._recent, event_id, row, self.config.decision_cache_size)

    def load_comparables(self) -> int:
        """Read the newest features build's sold comparables (what ``price_suggestion``
        answers with); categories loaded. Safe off the event loop."""
        built = available_as_of(self.settings)
        self.comparables = read_comparables(
            partition_dir(Path(self.settings.paths.features_dir), built[-1])) if built else {}
        return len(self.comparables)

    def _offer(self, arm: str | None, context: RequestContext) -> Offer | None:
        """The arm's public terms; a pricing arm's with the category's sold comparables."""
        if arm is None:
            return None
        offer = self.offers[arm]
        if arm not in self.pricing:
            return offer
        found = self.comparables.get(context.category or "")
        if found is None:
            return offer.model_copy(update={"evidence": (
                f"no sold comparables for category {context.category!r} (at least "
                f"{MIN_SALES} sales in {COMPARABLE_DAYS} days are needed)")})
        return offer.model_copy(update={
            "suggested_price": found.median,
            "evidence": f"median of {found.sales} {found.category} sales in the last "
                        f"{found.days} days (middle half {found.p25:g} to {found.p75:g})"})

    def remembers(self, event_id: str) -> bool:
        """Whether the decision ``event_id`` was made here and awaits its feedback."""
        return event_id in self._recent

    def _logged(self, event_id: str) -> LoggedDecision | None:
        """The decision of ``event_id``: from memory when it was made here, else the log."""
        row = self._recent.get(event_id)
        return logged_from_row(row) if row is not None else self.log.get_decision(event_id)

    @property
    def _algorithm(self) -> str:
        """How the chooser picks, for the decision's reason: VW's explorer or the chooser."""
        if self.spec.kind == "bandit":
            return self.config.exploration.algorithm
        return self.spec.kind

    def _choose(self, plan: PolicyPlan, chooser: Chooser,
                decision: DecisionInput) -> tuple[str | None, dict[str, float]]:
        """The arm and pmf for a plan: sampled from the chooser's pmf on the bandit path."""
        if plan.kind is PlanKind.OPT_OUT:
            return plan.eligible[0], {plan.eligible[0]: 1.0}
        if plan.kind is not PlanKind.BANDIT:
            return None, {}
        pmf = normalise_pmf(plan.eligible, chooser.pmf(decision))
        return sample_arm(pmf, self.rng), pmf

    # -- feedback --------------------------------------------------------------------------
    def feedback(self, event_id: str, converted: bool, revenue: float = 0.0, *,
                 now: datetime | None = None, key_id: str | None = None,
                 logged: LoggedDecision | None = None) -> FeedbackResult:
        """Join a reward to its decision: accepted once, duplicates and late ones said so.

        Raises NotFound for an unknown ``event_id``; ValidationFailed for a negative or
        non-finite ``revenue``, a revenue without a conversion, or a revenue above the
        decision's limit (``bandit.reward.max_revenue_multiple`` x its item price, or
        ``max_revenue`` without one); and Conflict for feedback that contradicts the one
        already accepted (the first answer counts). The reward stored and learned is
        clipped to ``[reward.clip_min, reward.clip_max]``. ``key_id`` (the API key that
        sent it) is stored with the feedback. In the inline role an accepted reward is
        learned at once. ``logged``: the decision, when the caller read it from the log
        already (else it is looked up here).
        """
        if not math.isfinite(revenue) or revenue < 0:
            raise ValidationFailed(f"revenue must be a finite number >= 0, got {revenue}",
                                   field="revenue")
        if revenue > 0 and not converted:
            raise ValidationFailed(f"revenue {revenue:g} with converted false: a decision "
                                   "that did not convert earns nothing; send converted true "
                                   "or revenue 0", field="revenue")
        ts = utc(now)
        with self._lock:
            logged = logged or self._logged(event_id)
            if logged is None:
                raise NotFound(f"no decision with event_id {event_id!r}", field="event_id")
            decision = logged.decision
            if decision.decision_point != self.point:
                raise Conflict(f"event {event_id!r} is a decision of decision point "
                               f"{decision.decision_point!r}, not {self.point!r}",
                               field="decision_point")
            limit, why = self.config.reward.revenue_limit(logged.item_price)
            if revenue > limit:
                raise ValidationFailed(
                    f"revenue {revenue:g} is above the limit {limit:g} for this decision "
                    f"({why})", field="revenue")
            raw = reward_of(self.config, decision.action, converted, revenue,
                            logged.item_price)
            reward = clip_reward(self.config.reward, raw)
            result = FeedbackResult(event_id=event_id, status="accepted", reward=reward,
                                    learnable=decision.learnable, detail="",
                                    action=decision.action, tier=logged.tier,
                                    decision_point=self.point)
            window = timedelta(days=self.config.reward.window_days)
            if ts - decision.ts > window:
                return self._late(result, converted, revenue, ts, window, key_id)
            seq = self.log.insert_reward(RewardRow(
                event_id=event_id, converted=converted, revenue=revenue, reward=reward,
                source="feedback", ts=ts, learnable=decision.learnable, key_id=key_id,
                decision_point=self.point))
            if seq is None:
                return self._already(result, converted, revenue, ts, window, key_id)
            self._recent.pop(event_id, None)  # rewarded: later feedback is a duplicate
            if self._learner is not None:
                self._learner.learn_next(seq, logged, reward, converted)
                if self.shadow is not None:
                    self.shadow.catch_up()
            detail = ("reward accepted and learned" if decision.learnable else
                      f"reward accepted, not learned: {decision.reason}")
            if decision.learnable and self._learner is None:
                detail = "reward accepted; the learner will learn it"
            if reward != raw:
                detail += (f" (reward {raw:g} clipped to {reward:g}: bandit.reward.clip_min "
                           "and clip_max)")
            return result.model_copy(update={"detail": detail})

    def _late(self, result: FeedbackResult, converted: bool, revenue: float, ts: datetime,
              window: timedelta, key_id: str | None) -> FeedbackResult:
        """Record feedback that missed the reward window; never learned."""
        new = self.log.record_late(result.event_id, converted, revenue, result.reward or 0.0,
                                   ts, key_id)
        again = "" if new else " (already recorded once)"
        return result.model_copy(update={
            "status": "late", "learnable": False,
            "detail": f"feedback arrived after the reward window of {_duration(window)}: "
                      f"recorded, not learned{again}"})

    def _already(self, result: FeedbackResult, converted: bool, revenue: float, ts: datetime,
                 window: timedelta, key_id: str | None) -> FeedbackResult:
        """The decision already has a reward: a duplicate (refused when it contradicts the
        first), or late if the sweeper gave the default reward already."""
        existing = self.log.get_reward(result.event_id)
        if existing is None:  # erased between the insert and now
            raise NotFound(f"no decision with event_id {result.event_id!r}", field="event_id")
        if existing.source == "timeout":
            return self._late(result, converted, revenue, ts, window, key_id)
        if (existing.converted, existing.revenue) != (converted, revenue):
            raise Conflict(
                f"feedback for {result.event_id} was already accepted with converted="
                f"{str(existing.converted).lower()}, revenue {existing.revenue:g}; this one "
                f"says converted={str(converted).lower()}, revenue {revenue:g}: the first "
                "answer counts", field="event_id")
        return result.model_copy(update={
            "status": "duplicate", "reward": existing.reward, "learnable": existing.learnable,
            "detail": "the same feedback for this event was already accepted; counted once"})

    # -- sweeping --------------------------------------------------------------------------
    def sweep(self, now: datetime | None = None) -> int:
        """Give the default reward to decisions whose window closed without feedback.

        The learner role does this in its thread every ``sweep_seconds``; the inline role
        does it lazily inside ``decide`` (by the ``now`` it is given, so simulated time
        works); call it directly to force one. Returns the rewards added.
        """
        ts = utc(now)
        with self._lock:
            self._last_sweep = ts
            if self._learner is not None:
                added = self._learner.sweep(ts)
                if added and self.shadow is not None:
                    self.shadow.catch_up()
                return added
            return self.log.sweep_closed(ts, self.config.reward)

    def learn_in_steps(self, step: int) -> None:
        """Serve with bounded work per call (the service): no sweep inside ``decide``, and
        a reward that finds a backlog learns at most ``step`` of it; the owner sweeps with
        :meth:`sweep_rows` off the event loop and learns the backlog with
        :meth:`learn_pending`, ``step`` rewards at a time."""
        self.lazy_sweeps = False
        if self._learner is not None:
            self._learner.step_limit = step

    def sweep_rows(self, now: datetime | None = None) -> int:
        """Inline role: write the default rewards of decisions whose window closed, on a
        connection of its own and without the engine's lock (safe in a worker thread; a
        feedback racing it is kept by the log's unique event id, as against the learner
        role's thread). Learning them is :meth:`learn_pending`'s. Returns the rows added."""
        if self.role != "inline":
            return 0
        ts = utc(now)
        self._last_sweep = ts
        if self._sweeper is None:
            self._sweeper = DecisionLog(self.log_path, synchronous=self.config.log_synchronous,
                                        point=self.point)
        return self._sweeper.sweep_closed(ts, self.config.reward)

    def learn_pending(self, limit: int) -> int:
        """Inline role: learn at most ``limit`` rewards of the log not learned yet, in order;
        how many were learned (fewer than ``limit``: none is left)."""
        with self._lock:
            if self._learner is None:
                return 0
            learned = self._learner.catch_up(limit=limit)
            if learned and self.shadow is not None:
                self.shadow.catch_up()
            return learned

    def checkpoint_if_due(self) -> None:
        """Inline role: checkpoint when there is unsaved learning older than
        ``checkpoint_seconds`` (the service's housekeeping calls this, so a quiet service
        still saves what it learned; the learner role's thread does it itself)."""
        with self._lock:
            if self._learner is not None:
                self._learner.checkpoint_if_due()

    def _maybe_sweep(self, ts: datetime) -> None:
        """Inline role: sweep when ``sweep_seconds`` of (possibly simulated) time passed
        (unless its owner sweeps: :meth:`learn_in_steps`)."""
        if self.role != "inline" or not self.lazy_sweeps:
            return
        if self._last_sweep is None:
            self._last_sweep = ts
        elif (ts - self._last_sweep).total_seconds() >= self.config.sweep_seconds:
            self.sweep(ts)

    # -- admin -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Decisions logged, rewards learned, arm shares and mean reward per arm, overall and
        per tier, and the policy version."""
        with self._lock:
            rows = self.log.arm_summary()
            version = self._model()[1]
            learned = self._learned_count()
            return {"decisions": sum(r["decisions"] for r in rows),
                    "rewards": sum(r["rewards"] for r in rows),
                    "rewards_learned": learned,
                    "arms": _arm_table(rows),
                    "tiers": {tier: _arm_table([r for r in rows if r["tier"] == tier])
                              for tier in sorted({r["tier"] for r in rows})},
                    "policy_version": version, "role": self.role,
                    "decision_point": self.point, "subject": self.config.subject}

    def learner_lag(self) -> int:
        """Rewards in the log that the deciding model does not cover yet."""
        with self._lock:
            version = self._model()[1]
            covered = int(version.rsplit(".", 1)[1])
            return max(self.log.last_seq() - covered, 0)

    def _learned_count(self) -> int:
        """Rewards the deciding model has learned (the inline learner or the checkpoint)."""
        if self._learner is not None:
            return self._learner.meta.rewards_learned
        assert self._watcher is not None
        return self._watcher.meta.rewards_learned

    def erase_user(self, user_id: str) -> int:
        """Delete every decision and reward of ``user_id`` from the log; decisions deleted."""
        with self._lock:
            self.forget_user(user_id)
            return self.log.erase_user(user_id)

    def forget_user(self, user_id: str) -> int:
        """Drop the user's decisions kept in memory for their feedback (an erasure made by
        another worker); returns how many were dropped."""
        with self._lock:
            gone = [e for e, row in self._recent.items() if row[ROW_USER_ID] == user_id]
            for event_id in gone:
                del self._recent[event_id]
            return len(gone)

    def remembered_users(self) -> set[str]:
        """Users with decisions kept in memory (what :meth:`forget_user` may drop)."""
        with self._lock:
            return {row[ROW_USER_ID] for row in self._recent.values()}

    def export_user(self, user_id: str) -> list[dict[str, Any]]:
        """Every logged decision about ``user_id`` with its reward (privacy export)."""
        with self._lock:
            self.log.flush()
            return self.log.export_user(user_id)

    def flush(self) -> None:
        """Commit batched log writes (``durable=False``) so other readers see them."""
        with self._lock:
            self.log.flush()

    def close(self) -> None:
        """Checkpoint (inline), stop the learner thread, close the log, release the lock."""
        with self._lock:
            if self.shadow is not None:
                self.shadow.close()
                self.shadow = None
            if self._learner is not None:
                self._learner.close()  # checkpoints and waits until it is published
                self._learner = None
            if self._thread is not None:
                self._thread.stop()
                self._thread = None
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
            if self._sweeper is not None:
                self._sweeper.close()
                self._sweeper = None
            self.log.close()
            if self._lock_file is not None:
                self._lock_file.release()
                self._lock_file = None
            if self._store is not None:
                self._store.close()
                self._store = None

    @property
    def lease_lost(self) -> bool:
        """Whether the learner thread stopped because its lease was lost (many hosts)."""
        return self._thread is not None and self._thread.lost.is_set()

    def __enter__(self) -> DecisionEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(span: timedelta) -> str:
    """``7 days``, ``4 hours``, ``30 seconds``: the largest whole unit of ``span``."""
    seconds = span.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"




def _arm_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Share of decisions and mean reward per action ("none" for no action) over ``rows``."""
    total = sum(r["decisions"] for r in rows) or 1
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        name = row["action"] or "none"
        entry = table.setdefault(name, {"decisions": 0, "rewards": 0, "reward_sum": 0.0})
        entry["decisions"] += row["decisions"]
        entry["rewards"] += row["rewards"]
        entry["reward_sum"] += row["reward_sum"]
    return {name: {"decisions": e["decisions"], "share": e["decisions"] / total,
                   "mean_reward": e["reward_sum"] / e["rewards"] if e["rewards"] else None}
            for name, e in sorted(table.items())}
