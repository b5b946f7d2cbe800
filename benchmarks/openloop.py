"""An open-loop HTTP load generator: requests at a fixed rate, whatever the server does.

The send times are computed before the run (``constant``: one every ``1 / rate`` seconds;
``poisson``: exponential gaps, seeded), and each request goes out at its time on a free
keep-alive connection, or a new one: the generator never waits for a response before
sending the next request, so a slow server does not slow it down (up to
``--max-connections`` open at once; beyond that a request waits for a connection, and that
wait counts in its latency). Latency is measured from the *scheduled* send time to the end
of the response, which corrects for coordinated omission: a request that could not go out
on time because the server (or the generator) was busy is charged the delay.

One process, one asyncio loop, raw HTTP/1.1 over ``asyncio`` streams (a few tens of
microseconds of CPU per request, so it leaves the server its CPU). ``dispatch_lag`` is how
late the generator itself got to each request (on this shared 2-core host a bare asyncio
loop already wakes ~4 ms late at p99: see ``--capacity``); ``send_lag`` adds the wait for a
free connection when all ``--max-connections`` are busy (an overloaded server).

Request bodies (``--kind``): ``noop`` and ``score`` (``{"user_id"}``), ``decide`` (user and
context; the event ids answered are written to ``--event-ids-out``), ``feedback`` (one
per event id of ``--event-ids``, in order, cycling; converted on every fourth id, the same
each time an id comes round again) and ``events`` (one
``view`` behaviour event each, for ``POST /events``: a user of the pool of ``--users`` and
one of a few categories, at a distinct moment one second apart from ``--events-start``, so
each is a new event and users who view one category five times fire ``browse_no_buy``;
the events accepted and the outbox messages answered are counted from the replies).
``--header "Name: value"`` adds a header to every request (an API key).

    python benchmarks/openloop.py --url http://127.0.0.1:3000 --path /score --kind score \\
        --rate 300 --seconds 5 [--arrivals poisson] [--users 2000] [--out result.json]

Prints the result as JSON (and writes it to ``--out``). ``--capacity`` measures how far the
generator itself goes: it drives a trivial HTTP server (another process, answering at once)
at rising rates and writes benchmarks/results/openloop_capacity.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

CONTEXT = {"channel": "web", "page": "item", "item_id": "i1", "item_price": 120.0,
           "category": "bags", "hour": 14}
EVENT_CATEGORIES = ("bags", "shoes", "watches")
EVENTS_START = "2026-01-05T08:00:00+00:00"
_EVENT_ID = re.compile(rb'"event_id":"([^"]+)"')
_ACCEPTED = re.compile(rb'"accepted":(\d+)')
_MESSAGE = re.compile(rb'"message_id":')


def schedule(rate: float, seconds: float, arrivals: str, seed: int) -> np.ndarray:
    """Send times in seconds from the start: ``rate`` per second on average."""
    if arrivals == "constant":
        return np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, int(rate * seconds * 1.2) + 100)
    times = np.cumsum(gaps) - gaps[0]
    return times[times < seconds]


def bodies(kind: str, count: int, users: int, seed: int,
           event_ids: list[str] | None = None, events_start: str = EVENTS_START) -> list[bytes]:
    """The JSON body of each request, in send order."""
    rng = random.Random(seed)
    if kind == "events":
        start = datetime.fromisoformat(events_start)
        out = []
        for i in range(count):
            user = rng.randrange(users)
            category = EVENT_CATEGORIES[rng.randrange(len(EVENT_CATEGORIES))]
            out.append(json.dumps({
                "user_id": f"u{user:06d}", "type": "view",
                "ts": (start + timedelta(seconds=i)).isoformat(),
                "item_id": f"i{rng.randrange(5000)}", "category": category,
                "price": round(rng.uniform(20, 900), 2)}).encode())
        return out
    if kind == "feedback":
        if not event_ids:
            raise SystemExit("--kind feedback needs --event-ids with at least one id")
        out = []
        for i in range(count):
            # by the id's place, so an id sent again (a run longer than the ids) repeats
            # its first feedback: a duplicate, not a contradicting 409
            converted = i % len(event_ids) % 4 == 3
            out.append(json.dumps({"event_id": event_ids[i % len(event_ids)],
                                   "converted": converted,
                                   "revenue": 80.0 if converted else 0.0}).encode())
        return out
    ids = [f"u{rng.randrange(users):06d}" for _ in range(count)]
    if kind == "decide":
        return [json.dumps({"user_id": u, "context": CONTEXT}).encode() for u in ids]
    return [json.dumps({"user_id": u}).encode() for u in ids]


@dataclass
class Outcome:
    """What happened to every request, by index."""

    scheduled: np.ndarray
    started: np.ndarray = field(init=False)  # the request's task began (the generator's lag)
    sent: np.ndarray = field(init=False)     # it went out (after waiting for a connection)
    done: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    event_ids: list[bytes] = field(default_factory=list)
    accepted: int = 0  # events kind: events the replies say were kept
    messages: int = 0  # events kind: outbox messages (or suppressions) in the replies

    def __post_init__(self) -> None:
        n = len(self.scheduled)
        self.started = np.full(n, np.nan)
        self.sent = np.full(n, np.nan)
        self.done = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int32)  # 0: no answer (timeout or socket error)


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """Send one POST, read the whole response; its status and body."""
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", header)
        if length is not None:
            return status, await self.reader.readexactly(int(length.group(1)))
        if re.search(rb"(?i)\r\ntransfer-encoding: *chunked", header) is None:
            raise ConnectionError("response without content-length or chunked encoding")
        chunks = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunks.append(await self.reader.readexactly(size + 2))
            if size == 0:
                return status, b"".join(c[:-2] for c in chunks)

    def close(self) -> None:
        self.writer.close()


async def run(url: str, path: str, payloads: list[bytes], when: np.ndarray,
              max_connections: int, timeout: float, keep_event_ids: bool,
              headers: list[str] | None = None, count_events: bool = False) -> Outcome:
    """Send ``payloads[i]`` at ``when[i]`` seconds after the start; wait for the answers
    (at most ``timeout`` seconds after the last send). ``headers`` (``"Name: value"``) go
    with every request; ``count_events`` counts the events and messages of the replies."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{h}\r\n" for h in headers or [])
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
            "Content-Type: application/json\r\nContent-Length: ").encode()
    outcome = Outcome(when)
    idle: list[Connection] = []
    slots = asyncio.Semaphore(max_connections)
    clock = time.perf_counter

    async def connect() -> Connection:
        return Connection(*await asyncio.open_connection(host, port))

    async def one(i: int, start: float) -> None:
        outcome.started[i] = clock() - start
        async with slots:
            conn = None
            try:
                # An idle connection the server closed (its keep-alive timeout) is retried
                # once on a new one, as any client pool does.
                for attempt in (0, 1):
                    fresh = not idle or attempt == 1
                    conn = await connect() if fresh else idle.pop()
                    if conn.reader.at_eof() and not fresh:
                        conn.close()
                        continue
                    if np.isnan(outcome.sent[i]):
                        outcome.sent[i] = clock() - start
                    try:
                        status, body = await conn.request(head, payloads[i])
                        break
                    except (asyncio.IncompleteReadError, ConnectionError):
                        conn.close()
                        if fresh:
                            raise
                else:
                    return
            except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                if conn is not None:
                    conn.close()
                return
            outcome.done[i] = clock() - start
            outcome.status[i] = status
            if keep_event_ids and status == 200:
                found = _EVENT_ID.search(body)
                if found:
                    outcome.event_ids.append(found.group(1))
            if count_events and status == 200:
                accepted = _ACCEPTED.search(body)
                outcome.accepted += int(accepted.group(1)) if accepted else 0
                outcome.messages += len(_MESSAGE.findall(body))
            idle.append(conn)

    # Open a few connections before the clock starts, as a client pool would have.
    for _ in range(min(8, max_connections)):
        idle.append(await connect())
    tasks = []
    start = clock()
    for i, at in enumerate(when):
        delay = at - (clock() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, start)))
    _, pending = await asyncio.wait(tasks, timeout=timeout) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    for conn in idle:
        conn.close()
    return outcome


def summarise(outcome: Outcome, rate: float, seconds: float, warmup: float) -> dict:
    """Latency percentiles from the scheduled times (ms), throughput and errors; requests
    scheduled in the first ``warmup`` seconds are left out of the latencies."""
    answered = ~np.isnan(outcome.done)
    ok = answered & (outcome.status >= 200) & (outcome.status < 300)
    measured = outcome.scheduled >= warmup
    latency = (outcome.done - outcome.scheduled)[measured & answered] * 1e3
    lag = (outcome.sent - outcome.scheduled)[~np.isnan(outcome.sent)] * 1e3
    dispatch = (outcome.started - outcome.scheduled)[~np.isnan(outcome.started)] * 1e3
    last = np.nanmax(outcome.done) if answered.any() else seconds

    def pct(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 3) if len(values) else None

    return {
        "offered_rps": rate, "scheduled": len(outcome.scheduled),
        "completed": int(answered.sum()), "ok": int(ok.sum()),
        "errors": int(len(outcome.scheduled) - ok.sum()),
        "unanswered": int((~answered).sum()),
        "status_counts": {str(s): int(c) for s, c in zip(
            *np.unique(outcome.status[answered], return_counts=True), strict=True)},
        "achieved_rps": round(float(ok.sum() / max(last, seconds)), 1),
        "p50_ms": pct(latency, 50), "p90_ms": pct(latency, 90), "p95_ms": pct(latency, 95),
        "p99_ms": pct(latency, 99),
        "p999_ms": pct(latency, 99.9), "max_ms": pct(latency, 100),
        "dispatch_lag_p99_ms": pct(dispatch, 99), "send_lag_p99_ms": pct(lag, 99),
        "send_lag_max_ms": pct(lag, 100),
    }


async def _trivial_server(port: int) -> None:
    """Answer every request at once with a small JSON body (the capacity test's server)."""
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n"
              b"\r\n{\"ok\":true}")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", header)
                await reader.readexactly(int(length.group(1)) if length else 0)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _run_trivial_server(port: int) -> None:
    asyncio.run(_trivial_server(port))


def capacity(rates: list[float], seconds: float) -> dict:
    """The generator against a trivial server at each rate: does it keep its schedule?"""
    import multiprocessing
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = multiprocessing.Process(target=_run_trivial_server, args=(port,), daemon=True)
    server.start()
    time.sleep(0.5)
    runs = []
    try:
        for rate in rates:
            when = schedule(rate, seconds, "poisson", 1)
            payloads = bodies("noop", len(when), 1000, 1)
            outcome = asyncio.run(run(f"http://127.0.0.1:{port}", "/noop", payloads, when, 256,
                                      30.0, keep_event_ids=False))
            runs.append(summarise(outcome, rate, seconds, 0.5))
            print(f"{rate:7.0f}/s: achieved {runs[-1]['achieved_rps']:7.0f}/s, dispatch lag p99 "
                  f"{runs[-1]['dispatch_lag_p99_ms']} ms, p99 {runs[-1]['p99_ms']} ms",
                  file=sys.stderr)
    finally:
        server.terminate()
    kept = [r["offered_rps"] for r in runs
            if r["achieved_rps"] >= 0.97 * r["offered_rps"] and not r["errors"]]
    return {"benchmark": "openloop_capacity", "seconds_per_rate": seconds,
            "server": "a trivial asyncio HTTP server in another process",
            "highest_rate_kept_rps": max(kept) if kept else None,
            "kept": "at least 97% of the offered rate answered, no errors",
            "timer_floor": asyncio.run(timer_floor(500.0, seconds)), "runs": runs}


async def timer_floor(rate: float, seconds: float) -> dict[str, float]:
    """How late a bare asyncio loop on this host wakes for the same kind of schedule (no
    HTTP at all): the part of every send lag the generator cannot do better than."""
    when = schedule(rate, seconds, "poisson", 2)
    lag = np.empty(len(when))
    start = time.perf_counter()
    for i, at in enumerate(when):
        delay = at - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        lag[i] = time.perf_counter() - start - at
    return {"rate_rps": rate, "lag_p50_ms": round(float(np.percentile(lag, 50)) * 1e3, 3),
            "lag_p99_ms": round(float(np.percentile(lag, 99)) * 1e3, 3),
            "lag_max_ms": round(float(lag.max()) * 1e3, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if "--capacity" in (sys.argv[1:] if argv is None else argv):
        result = capacity([500, 1000, 2000, 3000, 4000, 6000], 4.0)
        out = Path(__file__).resolve().parent / "results" / "openloop_capacity.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
        return 0
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--kind", choices=["noop", "score", "decide", "feedback", "events"],
                        required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="seconds at the start left out of the latencies")
    parser.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for answers after the last send")
    parser.add_argument("--event-ids", type=Path, help="feedback: the event ids to reward")
    parser.add_argument("--event-ids-out", type=Path, help="decide: where to write event ids")
    parser.add_argument("--events-start", default=EVENTS_START,
                        help="events: the moment of the first event (one second apart)")
    parser.add_argument("--header", action="append", default=[],
                        help="'Name: value' sent with every request (repeatable)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    when = schedule(args.rate, args.seconds, args.arrivals, args.seed)
    ids = args.event_ids.read_text().split() if args.event_ids else None
    payloads = bodies(args.kind, len(when), args.users, args.seed, ids, args.events_start)
    outcome = asyncio.run(run(args.url, args.path, payloads, when, args.max_connections,
                              args.timeout, keep_event_ids=args.event_ids_out is not None,
                              headers=args.header, count_events=args.kind == "events"))
    if args.event_ids_out is not None:
        args.event_ids_out.write_bytes(b"".join(e + b"\n" for e in outcome.event_ids))
    result = {"path": args.path, "arrivals": args.arrivals, "seconds": args.seconds,
              **summarise(outcome, args.rate, args.seconds, args.warmup)}
    if args.kind == "events":
        result |= {"events_accepted": outcome.accepted, "messages_answered": outcome.messages}
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
