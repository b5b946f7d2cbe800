"""Benchmark: dispatcher throughput to a local webhook receiver, against bare HTTP loops.

A fast receiver (aiohttp, tests/webhook_receiver.py) runs in its own process on 127.0.0.1
and checks every signature. Each round puts ``--messages`` pending messages into the
outbox and times one ``Dispatcher.run_once`` sending them all (claims, JSON bodies, HMAC
signatures, attempts and settling in SQLite). The references, in the same rounds, POST the
same bodies with the same headers, precomputed, to the same receiver at the same
concurrency with nothing else to do: a bare ``httpx.AsyncClient`` loop (the issue's
reference) and a bare ``aiohttp`` loop (the dispatcher's own transport, so the floor of
its overhead). Rounds alternate the three; the medians are reported. Prints and writes
``benchmarks/results/dispatch.json``.

    .venv/bin/python benchmarks/dispatch.py --messages 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests"))

from webhook_receiver import PATH, receiver_process  # noqa: E402

from campaigns.channels import (  # noqa: E402
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    USER_AGENT,
    message_body,
    signature,
)
from campaigns.dispatcher import Dispatcher  # noqa: E402
from campaigns.store import CampaignStore, OutboxMessage  # noqa: E402
from nextbest.config import Settings, load_settings, path_overrides  # noqa: E402
from nextbest.storage import location  # noqa: E402

RESULTS = _HERE / "results" / "dispatch.json"
SECRET = b"benchmark-secret"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def outbox_messages(n: int, first: int) -> list[OutboxMessage]:
    return [OutboxMessage(
        message_id=f"m{i:08d}", idempotency_key=f"browse_no_buy|u{i:08d}|event:{i}",
        campaign="browse_no_buy", user_id=f"u{i:08d}", arm="coupon", decision_id=f"d{i:08d}",
        channel="hook", created=T0, scheduled=T0, status="pending", reason=None,
        trigger=f"event:{i}", tier="silver") for i in range(first, first + n)]


async def bare_httpx(url: str, requests: list[tuple[bytes, dict[str, str]]],
                     concurrency: int) -> int:
    """POST every (body, headers) with ``concurrency`` workers on one client; 2xx count."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    pending = iter(requests)
    ok = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ok
        for body, headers in pending:
            response = await client.post(url, content=body, headers=headers)
            ok += response.is_success

    async with httpx.AsyncClient(timeout=5.0, limits=limits, headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT}) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return ok


async def bare_aiohttp(url: str, requests: list[tuple[bytes, dict[str, str]]],
                       concurrency: int) -> int:
    """The same loop on one aiohttp session."""
    pending = iter(requests)
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for body, headers in pending:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                ok += 200 <= response.status < 300

    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=5.0),
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT}) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ok


BARE = {"bare_httpx": bare_httpx, "bare_aiohttp": bare_aiohttp}


def receiver_stats(base: str) -> dict[str, int]:
    return httpx.get(f"{base}/stats").json()


def one_round(settings: Settings, base: str, messages: list[OutboxMessage],
              kind: str) -> dict[str, float]:
    """Send ``messages`` once, by the dispatcher or a bare loop; throughput and checks."""
    httpx.post(f"{base}/reset")
    concurrency = settings.dispatch.concurrency
    if kind in BARE:
        arms = {arm.name: arm for arm in settings.bandit.arms}
        requests = []
        for m in messages:
            body = message_body(m, arms)
            requests.append((body, {IDEMPOTENCY_HEADER: m.message_id,
                                    SIGNATURE_HEADER: signature(SECRET, body)}))
        began, began_cpu = time.perf_counter(), time.process_time()
        sent = asyncio.run(BARE[kind](base + PATH, requests, concurrency))
    else:
        store = CampaignStore(location(settings, "campaign_store"))
        with store.transaction():
            for m in messages:
                store.add_message(m)
        dispatcher = Dispatcher(settings, store)
        began, began_cpu = time.perf_counter(), time.process_time()
        sent = dispatcher.run_once(T0).sent
        dispatcher.close()
        store.close()
    seconds, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    stats = receiver_stats(base)
    assert sent == len(messages), f"{kind}: {sent} of {len(messages)} sent"
    assert stats == {"received": len(messages), "bad_signatures": 0,
                     "distinct_keys": len(messages)}, f"{kind}: receiver saw {stats}"
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "messages_per_second": round(len(messages) / seconds),
            "cpu_us_per_message": round(cpu / len(messages) * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    kinds = ("bare_httpx", "dispatcher", "bare_aiohttp")
    rounds: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="nextbest-dispatch-bench-") as tmp, \
            receiver_process(SECRET) as base:
        data = load_settings(None, environ=path_overrides(tmp)).model_dump()
        data["channels"]["hook"] = {"url": base + PATH, "secret": SECRET.decode()}
        settings = Settings.model_validate(data)
        for r in range(args.rounds):
            messages = outbox_messages(args.messages, first=r * args.messages)
            for kind in kinds:
                rounds[kind].append(one_round(settings, base, messages, kind))

    median = {kind: statistics.median(x["messages_per_second"] for x in runs)
              for kind, runs in rounds.items()}
    cpu = {kind: statistics.median(x["cpu_us_per_message"] for x in runs)
           for kind, runs in rounds.items()}
    result = {
        "benchmark": "dispatch", "messages": args.messages, "rounds": args.rounds,
        "batch": settings.dispatch.batch, "concurrency": settings.dispatch.concurrency,
        "receiver": "aiohttp in its own process, checking every signature",
        "references": "bare loops POSTing the same bodies and headers, precomputed, at the "
                      "same concurrency: httpx.AsyncClient, and aiohttp (the dispatcher's "
                      "transport)",
        "dispatcher_messages_per_second": round(median["dispatcher"]),
        "bare_httpx_messages_per_second": round(median["bare_httpx"]),
        "bare_aiohttp_messages_per_second": round(median["bare_aiohttp"]),
        "ratio_to_bare_httpx": round(median["dispatcher"] / median["bare_httpx"], 3),
        "ratio_to_bare_aiohttp": round(median["dispatcher"] / median["bare_aiohttp"], 3),
        # CPU of the sending process per message (less sensitive to a busy machine).
        "cpu_us_per_message": cpu,
        "goal_messages_per_second": 1000,
        "per_round": rounds,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
