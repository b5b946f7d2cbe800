"""The dispatcher: claims, signed webhooks to a real receiver, retries, dead letters, crashes."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from webhook_receiver import receiver_in_thread

from campaigns.channels import signature, signature_matches
from campaigns.dispatcher import Dispatcher, DispatchReport, retry_delay
from campaigns.store import CampaignStore, OutboxMessage
from nextbest.cli import main
from nextbest.config import DispatchConfig, Settings, path_overrides
from nextbest.errors import ConfigError
from nextbest.storage import location

SECRET = b"s3cret-for-tests"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def with_webhook(settings: Settings, url: str, *, secret: str | None = SECRET.decode(),
                 secret_env: str | None = None, **dispatch: Any) -> Settings:
    """``settings`` plus a webhook channel ``hook`` at ``url`` and dispatch overrides."""
    data = settings.model_dump()
    data["channels"]["hook"] = {"url": url, "secret": secret, "secret_env": secret_env,
                                "timeout_seconds": 5.0}
    data["dispatch"].update(dispatch)
    return Settings.model_validate(data)


def add_messages(store: CampaignStore, n: int, *, channel: str = "hook",
                 scheduled: datetime = T0, first: int = 0) -> list[OutboxMessage]:
    """``n`` pending messages on ``channel``, due at ``scheduled``."""
    messages = [OutboxMessage(
        message_id=f"m{i:05d}", idempotency_key=f"browse_no_buy|u{i:04d}|event:{i}",
        campaign="browse_no_buy", user_id=f"u{i:04d}", arm="coupon", decision_id=f"d{i}",
        channel=channel, created=scheduled, scheduled=scheduled, status="pending",
        reason=None, trigger=f"event:{i}", tier="silver") for i in range(first, first + n)]
    for message in messages:
        assert store.add_message(message)
    return messages


def statuses(store: CampaignStore) -> Counter[str]:
    return Counter(m.status for m in store.messages(limit=1_000_000))


@pytest.fixture
def settings(settings: Settings, storage, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL (the ``storage`` fixture)."""
    return storage.use(settings, monkeypatch)


@pytest.fixture
def store(settings: Settings) -> Iterator[CampaignStore]:
    opened = CampaignStore(location(settings, "campaign_store"))
    yield opened
    opened.close()


def run_passes(dispatcher: Dispatcher, passes: int, step: timedelta) -> list[DispatchReport]:
    """``passes`` passes at T0, T0 + step, ... (time moves; nothing sleeps)."""
    return [dispatcher.run_once(T0 + i * step) for i in range(passes)]


# -- the store's claims ---------------------------------------------------------------------
def test_a_claim_takes_due_messages_once_and_an_expired_lease_frees_them(
        settings: Settings, store: CampaignStore) -> None:
    add_messages(store, 5)
    add_messages(store, 1, scheduled=T0 + timedelta(hours=1), first=5)  # not due yet
    add_messages(store, 1, channel="elsewhere", first=6)  # no dispatcher of this channel
    other = CampaignStore(location(settings, "campaign_store"))
    try:
        first = store.claim_due(T0, channels=["hook"], limit=3, lease_seconds=60)
        second = other.claim_due(T0, channels=["hook"], limit=10, lease_seconds=60)
    finally:
        other.close()
    claimed = [c.message.message_id for c in first + second]
    assert sorted(claimed) == [f"m{i:05d}" for i in range(5)]  # each once, none twice
    assert [c.attempt for c in first + second] == [1] * 5
    assert store.claim_due(T0 + timedelta(seconds=59), channels=["hook"], limit=10,
                           lease_seconds=60) == []

    again = store.claim_due(T0 + timedelta(seconds=60), channels=["hook"], limit=10,
                            lease_seconds=60)
    assert sorted(c.message.message_id for c in again) == sorted(claimed)
    assert {c.attempt for c in again} == {2}
    # The first claim's dispatcher answers late: its claim is no longer the message's.
    assert not store.mark_sent("m00000", 1, T0)
    assert store.mark_sent("m00000", 2, T0)
    assert store.delivery_of("m00000").status == "sent"
    assert statuses(store) == {"sending": 4, "sent": 1, "pending": 2}


def test_retry_delays_grow_exponentially_with_full_jitter_up_to_the_cap() -> None:
    config = DispatchConfig(backoff_seconds=2.0, backoff_max_seconds=60.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (20, 60.0)]:
        draws = [retry_delay(attempt, config, rng) for _ in range(400)]
        assert all(0.0 < d <= ceiling for d in draws), attempt
        assert max(draws) > 0.9 * ceiling and min(draws) < 0.1 * ceiling, attempt


# -- webhooks -------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_receiver_failing_twice_gets_the_message_three_times_then_it_is_sent(
        settings: Settings, store: CampaignStore) -> None:
    with receiver_in_thread(SECRET, answer=lambda key, nth: 500 if nth <= 2 else 200) as hook:
        config = with_webhook(settings, hook.url)
        [message] = add_messages(store, 1)
        dispatcher = Dispatcher(config, store)
        first = dispatcher.run_once(T0)
        retry = store.delivery_of(message.message_id)
        later = run_passes(dispatcher, 4, timedelta(seconds=config.dispatch.backoff_max_seconds))
        dispatcher.close()

    assert (first.claimed, first.retried) == (1, 1)
    assert retry.status == "pending" and retry.last_error.startswith("HTTP 500")
    assert T0 < retry.scheduled <= T0 + timedelta(seconds=config.dispatch.backoff_seconds)
    assert [r.claimed for r in later] == [0, 1, 1, 0]  # T0 + 600 s: retry; + 1200 s: sent
    assert [(r.retried, r.sent) for r in later[1:3]] == [(1, 0), (0, 1)]

    assert [r.key for r in hook.receipts] == [message.message_id] * 3
    assert all(r.signature_ok for r in hook.receipts)
    assert [r.status for r in hook.receipts] == [500, 500, 200]
    body = hook.receipts[0].body
    bodies = [{k: v for k, v in r.body.items() if k != "scheduled"} for r in hook.receipts]
    assert all(b == bodies[0] for b in bodies)  # the same message; due later on each retry
    due = [datetime.fromisoformat(r.body["scheduled"]) for r in hook.receipts]
    assert due[:2] == [T0, retry.scheduled] and due[1] < due[2]
    assert {k: body[k] for k in ("message_id", "campaign", "user_id", "arm", "channel",
                                 "decision_id")} == {
        "message_id": "m00000", "campaign": "browse_no_buy", "user_id": "u0000",
        "arm": "coupon", "channel": "hook", "decision_id": "d0"}
    assert datetime.fromisoformat(body["scheduled"]) == T0
    assert "secret" not in json.dumps(body)

    record = store.delivery_of(message.message_id)
    assert record.status == "sent" and record.attempts == 3 and record.last_error is None
    assert record.sent == T0 + 2 * timedelta(seconds=config.dispatch.backoff_max_seconds)
    assert [(a.attempt, a.ok, a.status_code) for a in record.history] == [
        (1, False, 500), (2, False, 500), (3, True, 200)]
    assert statuses(store) == {"sent": 1}


@pytest.mark.integration
def test_a_receiver_that_always_fails_makes_the_message_dead_after_max_attempts(
        settings: Settings, store: CampaignStore) -> None:
    with receiver_in_thread(SECRET, answer=lambda key, nth: 503) as hook:
        config = with_webhook(settings, hook.url, max_attempts=3)
        [message] = add_messages(store, 1)
        dispatcher = Dispatcher(config, store)
        reports = run_passes(dispatcher, 5, timedelta(seconds=600))
        dispatcher.close()

    assert [(r.claimed, r.retried, r.dead) for r in reports] == [
        (1, 1, 0), (1, 1, 0), (1, 0, 1), (0, 0, 0), (0, 0, 0)]
    assert hook.keys() == {message.message_id: 3}
    record = store.delivery_of(message.message_id)
    assert record.status == "dead" and record.sent is None
    assert record.last_error.startswith("HTTP 503")
    assert [(a.attempt, a.ok, a.status_code) for a in record.history] == [
        (1, False, 503), (2, False, 503), (3, False, 503)]


def test_an_unreachable_webhook_is_a_failed_attempt_with_its_reason(
        settings: Settings, store: CampaignStore) -> None:
    with receiver_in_thread(SECRET) as hook:
        url = hook.url  # a port that listened once and no longer does
    config = with_webhook(settings, url, max_attempts=1)
    [message] = add_messages(store, 1)
    dispatcher = Dispatcher(config, store)
    report = dispatcher.run_once(T0)
    dispatcher.close()
    assert (report.claimed, report.dead) == (1, 1)
    [attempt] = store.delivery_of(message.message_id).history
    assert not attempt.ok and attempt.status_code is None
    assert url.split("/")[2] in attempt.error  # the host and port it could not reach


@pytest.mark.integration
def test_a_receiver_that_does_not_answer_in_time_is_a_timeout(
        settings: Settings, store: CampaignStore) -> None:
    with receiver_in_thread(SECRET) as hook:
        data = with_webhook(settings, hook.url).model_dump()
        data["channels"]["hook"]["timeout_seconds"] = 0.2
        [message] = add_messages(store, 1)
        dispatcher = Dispatcher(Settings.model_validate(data), store)
        hook.hold()
        report = dispatcher.run_once(T0)
        dispatcher.close()
    assert (report.claimed, report.retried) == (1, 1)
    [attempt] = store.delivery_of(message.message_id).history
    assert (attempt.ok, attempt.status_code, attempt.error) == (False, None,
                                                                "timeout after 0.2 s")


@pytest.mark.integration
def test_two_dispatchers_on_one_outbox_never_send_a_message_twice(
        settings: Settings, store: CampaignStore) -> None:
    n, concurrency = 200, 4
    add_messages(store, n)
    with receiver_in_thread(SECRET) as hook:
        config = with_webhook(settings, hook.url, batch=10, concurrency=concurrency)
        stores = [CampaignStore(location(settings, "campaign_store")) for _ in range(2)]
        dispatchers = [Dispatcher(config, s) for s in stores]
        reports: list[DispatchReport] = []
        hook.hold()
        threads = [threading.Thread(target=lambda d=d: reports.append(d.run_once(T0)))
                   for d in dispatchers]
        for thread in threads:
            thread.start()
        # More requests waiting than one dispatcher may send at once: both are mid-batch.
        hook.wait_for_held(2 * concurrency)
        hook.release()
        for thread in threads:
            thread.join(120)
        for dispatcher, opened in zip(dispatchers, stores, strict=True):
            dispatcher.close()
            opened.close()

    assert len(reports) == 2 and all(r.sent > 0 for r in reports)
    assert sum(r.claimed for r in reports) == sum(r.sent for r in reports) == n
    assert set(hook.keys().values()) == {1} and len(hook.keys()) == n
    assert all(r.signature_ok for r in hook.receipts)
    assert statuses(store) == {"sent": n}


@pytest.mark.integration
def test_a_dispatcher_killed_mid_batch_loses_nothing_and_resends_only_that_batch(
        settings: Settings, store: CampaignStore, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    n, batch = 30, 10
    add_messages(store, n)
    with receiver_in_thread(SECRET) as hook:
        config = with_webhook(settings, hook.url, secret=None, secret_env="HOOK_SECRET",
                              batch=batch, concurrency=batch, lease_seconds=60)
        config_file = tmp_path / "nextbest.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        monkeypatch.setenv("HOOK_SECRET", SECRET.decode())
        start = T0 + timedelta(minutes=1)

        hook.hold()  # a slow receiver: the first batch stays in flight
        proc = subprocess.Popen(
            [sys.executable, "-m", "nextbest.cli", "--config", str(config_file), "dispatch",
             "--once", "--now", start.isoformat()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            hook.wait_for_held(batch)
        finally:
            proc.kill()  # SIGKILL: nothing is settled, nothing is cleaned up
            proc.wait(60)
        in_flight = {m.message_id for m in store.messages(status="sending", limit=n)}
        assert len(in_flight) == batch and statuses(store) == {"sending": batch,
                                                               "pending": n - batch}
        assert set(hook.keys()) == in_flight
        hook.release()

        # A restart within the lease sends everything else and leaves the batch alone...
        dispatch = ["--config", str(config_file), "dispatch", "--once", "--now"]
        assert main([*dispatch, (start + timedelta(seconds=30)).isoformat()]) == 0
        assert statuses(store) == {"sent": n - batch, "sending": batch}
        # ... and once the lease runs out, the batch is claimed again and sent.
        assert main([*dispatch, (start + timedelta(seconds=61)).isoformat()]) == 0

    assert statuses(store) == {"sent": n}
    received = hook.keys()
    assert set(received) == {f"m{i:05d}" for i in range(n)}  # every message, at least once
    assert {key for key, times in received.items() if times > 1} == in_flight
    assert max(received.values()) == 2 and all(r.signature_ok for r in hook.receipts)
    for message_id in in_flight:  # the killed attempt was never recorded; the second was
        record = store.delivery_of(message_id)
        assert record.attempts == 2
        assert [(a.attempt, a.ok) for a in record.history] == [(2, True)]


# -- the JSON-lines channel and the command -------------------------------------------------
def test_dispatch_once_writes_one_json_line_per_message(
        settings: Settings, store: CampaignStore, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in path_overrides(tmp_path).items():
        monkeypatch.setenv(key, value)
    logged = add_messages(store, 4, channel="log")
    in_app = add_messages(store, 1, channel="in_app", first=4)
    add_messages(store, 1, channel="log", scheduled=T0 + timedelta(days=1), first=5)

    now = (T0 + timedelta(minutes=5)).isoformat()
    assert main(["dispatch", "--once", "--now", now]) == 0
    assert "5 claimed: 5 sent, 0 to retry, 0 dead" in capsys.readouterr().out
    assert main(["dispatch", "--once", "--now", now]) == 0  # nothing due is sent again
    assert main(["dispatch", "--interval", "0"]) == 2

    deliveries = settings.paths.data_dir / "deliveries"
    lines = (deliveries / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["message_id"] for line in lines] == [
        m.message_id for m in logged]
    assert json.loads(lines[0])["channel"] == "log"
    [line] = (deliveries / "in_app.jsonl").read_text().splitlines()
    assert json.loads(line)["message_id"] == in_app[0].message_id
    assert statuses(store) == {"sent": 5, "pending": 1}
    assert store.delivery_of(logged[0].message_id).sent == T0 + timedelta(minutes=5)


def test_the_loop_sends_what_becomes_due_between_passes_until_stopped(
        settings: Settings, store: CampaignStore) -> None:
    add_messages(store, 3, channel="log")
    dispatcher = Dispatcher(settings, store)
    stop = threading.Event()
    reports: list[DispatchReport] = []

    def on_pass(report: DispatchReport) -> None:
        reports.append(report)
        if len(reports) == 1:
            add_messages(store, 1, channel="log", first=3)  # fired between two passes
        elif len(reports) == 3:
            stop.set()

    dispatcher.run(stop, 0.01, T0, on_pass=on_pass)
    dispatcher.close()
    assert [r.sent for r in reports] == [3, 1, 0]
    assert statuses(store) == {"sent": 4}


def test_a_disabled_channel_keeps_its_messages_pending(settings: Settings,
                                                       store: CampaignStore) -> None:
    data = settings.model_dump()
    data["channels"]["log"]["enabled"] = False
    add_messages(store, 2, channel="log")
    dispatcher = Dispatcher(Settings.model_validate(data), store)
    assert dispatcher.run_once(T0).claimed == 0
    dispatcher.close()
    assert statuses(store) == {"pending": 2}


def test_a_webhook_without_its_secret_is_a_config_error_naming_it(
        settings: Settings, store: CampaignStore, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"channels\.hook: .* needs a secret"):
        Dispatcher(with_webhook(settings, "http://127.0.0.1:9/hook", secret=None), store)
    with pytest.raises(ConfigError, match="channels.hook.secret_env: .*HOOK_SECRET is not set"):
        Dispatcher(with_webhook(settings, "http://127.0.0.1:9/hook", secret=None,
                                secret_env="HOOK_SECRET"), store, environ={})

    config_file = tmp_path / "nextbest.yaml"
    config_file.write_text(yaml.safe_dump({"channels": {"sms": {
        "url": "http://127.0.0.1:9/sms", "secret_env": "NEXTBEST_TEST_UNSET_SECRET"}}}))
    assert main(["--config", str(config_file), "dispatch", "--once"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "channels.sms.secret_env" in err[0]


def test_the_signature_is_the_hmac_of_the_exact_body() -> None:
    body = b'{"message_id":"m1"}'
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert signature(SECRET, body) == expected
    assert signature_matches(SECRET, body, expected)
    assert not signature_matches(SECRET, body + b" ", expected)
    assert not signature_matches(b"other", body, expected)
    assert not signature_matches(SECRET, body, None)
