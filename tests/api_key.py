"""The API key of the test services (configured in their nextbest.yaml by its hash only)."""

from __future__ import annotations

import hashlib

TEST_KEY = "nb_the_test_services_key_with_every_scope"
HEADERS = {"Authorization": f"Bearer {TEST_KEY}"}


def key_config(scopes: tuple[str, ...] = ("platform", "operator", "admin")) -> dict:
    """The ``auth.keys`` entry of the test key."""
    return {"id": "tests", "sha256": hashlib.sha256(TEST_KEY.encode()).hexdigest(),
            "scopes": list(scopes)}
