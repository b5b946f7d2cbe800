"""Bounded caches of the most recent entries (an ``OrderedDict`` used least recently first)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


def keep(cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Put ``value`` in ``cache`` under a ``key`` it does not hold, as its most recent
    entry, the least recently used out past ``limit`` entries (0: keep nothing)."""
    if limit:
        cache[key] = value
        if len(cache) > limit:
            cache.popitem(last=False)
