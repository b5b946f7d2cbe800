"""nextbest: precision marketing for second-hand marketplaces.

The shared pieces live here: the validated configuration (:mod:`nextbest.config`), the
user-facing errors (:mod:`nextbest.errors`) and the single ``nextbest`` CLI
(:mod:`nextbest.cli`). The work itself is in ``features``, ``training``, ``serving`` and
``experiments``.
"""

__version__ = "0.1.0"
