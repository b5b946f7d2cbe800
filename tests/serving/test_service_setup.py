"""How the service module sets up its app, checked without a server."""

from __future__ import annotations

import asyncio
import importlib
import inspect


def test_routes_get_the_service_instance_on_the_loop_not_in_a_thread() -> None:
    """BentoML's dependency handing each route its service instance is a plain function,
    which FastAPI would run in a worker thread per request; every route's ``self`` depends
    on a coroutine instead (FastAPI awaits those on the loop), written into the route
    itself, not as an override FastAPI resolves again per request."""
    service = importlib.import_module("serving.service")
    module = importlib.import_module("_bentoml_sdk.service")
    assert service.app.dependency_overrides == {}
    routes = {name: fn.__signature__.parameters["self"].default.dependency
              for name, fn in vars(service.NextBest.inner).items()
              if "self" in getattr(getattr(fn, "__signature__", None), "parameters", {})}
    assert {"score", "next_best_action", "feedback"} <= set(routes)
    assert set(routes.values()) == {service._current_service_on_the_loop}
    assert inspect.iscoroutinefunction(service._current_service_on_the_loop)
    assert module.get_current_service is service._current_service  # BentoML's, restored
    sentinel = object()
    previous, module._current_service = module._current_service, sentinel
    try:
        assert asyncio.run(service._current_service_on_the_loop()) is sentinel
    finally:
        module._current_service = previous


def test_start_up_builds_the_routes_before_the_first_request() -> None:
    """FastAPI builds every route's request handling when it matches its first request (a
    60-80 ms stall of the event loop under that request); ``warm_routes``, run at start-up,
    builds it before (the service's start-up hook calls it). Reads FastAPI's cache of built
    routes: if a FastAPI upgrade changes it, this says so."""
    service = importlib.import_module("serving.service")
    routers = [route for route in service.app.routes
               if hasattr(route, "_effective_candidates_version")]
    assert routers, "FastAPI no longer keeps built routes where warm_routes expects them"
    for router in routers:  # as a fresh worker has them
        router._effective_candidates_version = None
    service.warm_routes(service.app)
    assert all(router._effective_candidates_version is not None for router in routers)
