"""Erasure everywhere: the one place that knows every store a user's data is kept in.

``nextbest data erase`` and ``DELETE /users/{id}`` both come here. The store and file parts
are :mod:`features.erasure`; the decision log is opened directly (no learner lock, so a
running service or learner keeps its own).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from campaigns.store import CampaignStore
from decisions.decision_log import DecisionLog
from features.erasure import ErasureReport, erase_users
from features.store import open_store, unique_user_ids
from nextbest.config import Settings
from nextbest.storage import exists, location


def erase_everywhere(settings: Settings, user_ids: Iterable[str], *,
                     pending: bool = False, now: datetime | None = None) -> ErasureReport:
    """``nextbest data erase``: the users (plus, with ``pending``, everyone on the store's
    erasure list) from every place under ``settings.paths``.

    The decision log is only opened when its file exists."""
    with open_store(settings) as store:
        ids = unique_user_ids(user_ids)
        if pending:
            ids = list(dict.fromkeys([*ids, *(e.user_id for e in store.erasures())]))
        paths = settings.paths
        dirs = {"raw_dir": paths.raw_dir, "features_dir": paths.features_dir,
                "latent_dir": paths.latent_dir}
        if exists(location(settings, "campaign_store")):
            campaigns = CampaignStore(location(settings, "campaign_store"))
            try:
                for user_id in ids:
                    campaigns.erase_user(user_id)
            finally:
                campaigns.close()
        if not exists(location(settings, "decision_log")):
            return erase_users(ids, store=store, now=now, **dirs)
        log = DecisionLog(location(settings, "decision_log"),
                          synchronous=settings.bandit.log_synchronous)
        try:
            return erase_users(ids, store=store, decisions=log, now=now, **dirs)
        finally:
            log.close()
