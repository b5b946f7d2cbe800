"""Each user's best hour to be contacted, in their own time zone (send-time optimisation).

The engines compute, point-in-time, the UTC hour of day each user is most active in over the
last year (``best_hour_utc``: orders and events other than logins) and how many active
moments that rests on (``active_events``). Here that hour moves into the user's time zone
(``users.timezone``; UTC when unknown or not a zone), at the offset the zone has on the
``as_of`` date. A user with fewer than ``features.best_hour_min_events`` moments gets the
platform's best hour: the most common best local hour of the users who have enough history.
``best_hour_source`` says which (``own``, ``platform``), so an explanation can say why.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

DEFAULT_HOUR = 19  # the platform's hour when nobody has enough history yet
OWN, PLATFORM = "own", "platform"


@lru_cache(maxsize=1024)
def utc_offset_hours(zone: str | None, on: date) -> float:
    """The zone's offset from UTC in hours at noon UTC on ``on`` (0 for an unknown zone)."""
    if not zone:
        return 0.0
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return 0.0
    moment = datetime(on.year, on.month, on.day, 12, tzinfo=UTC)
    offset = moment.astimezone(tz).utcoffset()
    return 0.0 if offset is None else offset.total_seconds() / 3600


def best_hours(frame: pd.DataFrame, as_of: date, min_events: int) -> pd.DataFrame:
    """``best_hour`` (local, 0-23) and ``best_hour_source`` for every row of ``frame``
    (columns ``best_hour_utc``, ``active_events``, ``timezone``)."""
    zones = frame["timezone"].astype(object).where(frame["timezone"].notna(), None)
    offsets = np.array([utc_offset_hours(z, as_of) for z in zones], dtype=float)
    local = np.round(frame["best_hour_utc"].to_numpy(dtype=float) + offsets) % 24
    own = (frame["active_events"].to_numpy() >= min_events) & ~np.isnan(local)
    if own.any():
        counts = np.bincount(local[own].astype(int), minlength=24)
        platform = int(np.argmax(counts))  # ties: the earlier hour
    else:
        platform = DEFAULT_HOUR
    return pd.DataFrame({"best_hour": np.where(own, local, platform).astype("int64"),
                         "best_hour_source": np.where(own, OWN, PLATFORM)},
                        index=frame.index)
