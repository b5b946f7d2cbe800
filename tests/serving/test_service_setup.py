"""How the service module sets up its app, checked without a server."""

from __future__ import annotations

import asyncio
import importlib
import inspect


def test_routes_get_the_service_instance_on_the_loop_not_in_a_thread() -> None:
    """BentoML's dependency handing each route its service instance is a plain function,
    which FastAPI would run in a worker thread per request; the service overrides it with
    a coroutine (FastAPI awaits those on the loop)."""
    service = importlib.import_module("serving.service")
    bentoml_lookup = importlib.import_module("_bentoml_sdk.service").get_current_service
    override = service.app.dependency_overrides[bentoml_lookup]
    assert inspect.iscoroutinefunction(override)
    sentinel = object()
    module = importlib.import_module("_bentoml_sdk.service")
    previous, module._current_service = module._current_service, sentinel
    try:
        assert asyncio.run(override()) is sentinel
    finally:
        module._current_service = previous
