"""The reward definition: what an arm costs and what a decision earned.

One place for the arithmetic that the engine, the learner, the simulator, offline
evaluation and the A/B analysis all use, so a reward means the same number everywhere:

- an arm's cost on a conversion is ``cost + cost_rate x item price`` (the revenue stands in
  for the price when the decision had no item);
- ``reward.kind: profit``: converted x (revenue - arm cost); ``conversion``: 1 or 0;
  ``commission`` (seller decision points): converted x (commission_rate x revenue - arm
  cost), the revenue being the sold value of the seller's listings within the window;
- a decision without an arm (the control group) has no arm cost, so its profit is the
  plain revenue: that is what lift is measured against;
- what is learned from one feedback is that reward clipped to
  ``[reward.clip_min, reward.clip_max]`` (:func:`clip_reward`), so one answer, honest or
  not, moves the model a bounded amount.
"""

from __future__ import annotations

from nextbest.config import ArmConfig, BanditConfig, RewardConfig


def arm_cost(arm: ArmConfig, item_price: float | None, revenue: float) -> float:
    """What the arm costs on a conversion: ``cost + cost_rate * item_price``.

    Without an item price (a home page decision) the revenue stands in for it. Works on
    numpy arrays as well as on floats (the simulator prices whole streams at once).
    """
    price = item_price if item_price is not None else revenue
    return arm.cost + arm.cost_rate * price


def reward_of(config: BanditConfig, arm: str | None, converted: bool, revenue: float,
              item_price: float | None) -> float:
    """The reward of a decision that chose ``arm`` (None: no action), per ``reward.kind``.

    Raises :class:`~nextbest.errors.Conflict` when ``arm`` is no longer configured.
    """
    if config.reward.kind == "conversion":
        return 1.0 if converted else 0.0
    if not converted:
        return 0.0
    cost = 0.0 if arm is None else arm_cost(config.arm(arm), item_price, revenue)
    return earned(config.reward, revenue) - cost


def earned(config: RewardConfig, revenue: float) -> float:
    """What a conversion's ``revenue`` earns the platform before arm costs: all of it
    (``profit``), or ``commission_rate`` of it (``commission``: the revenue a seller decision
    reports is the sold value of the seller's listings, the platform keeps its commission)."""
    return config.commission_rate * revenue if config.kind == "commission" else revenue


def revenue_of(config: BanditConfig, arm: ArmConfig, reward: float,
               item_price: float | None) -> float | None:
    """The revenue a converted decision under ``arm`` reported, read back from its
    ``reward`` (:func:`reward_of` inverted); None when the reward does not tell
    (``reward.kind: conversion``)."""
    if config.reward.kind == "conversion":
        return None
    rate = config.reward.commission_rate if config.reward.kind == "commission" else 1.0
    if item_price is not None:
        return (reward + arm_cost(arm, item_price, 0.0)) / rate
    # without an item price the cost is a share of the revenue itself
    kept = rate - arm.cost_rate
    return (reward + arm.cost) / kept if kept > 0 else None


def margin(config: BanditConfig, arm: ArmConfig, value: float | None) -> float:
    """The reward of a conversion under ``arm`` on a decision worth ``value``
    (:func:`reward_of` with the revenue equal to the value; ``reward.scale`` when unknown)."""
    if config.reward.kind == "conversion":
        return 1.0
    value = config.reward.scale if value is None else value
    return earned(config.reward, value) - arm_cost(arm, value, value)


def clip_reward(config: RewardConfig, reward: float) -> float:
    """``reward`` clipped to ``[clip_min, clip_max]``: the reward a feedback is learned with."""
    return min(max(reward, config.clip_min), config.clip_max)
