"""Job records in a real Redis: claims hand out the record, success is fenced by attempt,
images wait in Redis until S3 holds them, and inputs travel with the job."""

from __future__ import annotations

import time

from shared.jobs import JobStatus
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import ClaimOutcome, JobStore, SubmitOutcome
from tests.helpers import create_job, input_copy, queue_length, raw_redis, reference_body

KEYS = ["jobs/j/0.jpg", "jobs/j/1.jpg"]
IMAGES = [b"\xff\xd8\xff first", b"\xff\xd8\xff second"]


def new_job(store: JobStore, settings: Settings, job_id: str = "j", image: bytes | None = None) -> None:
    params = parse_request(reference_body(samples=2), settings).params
    create_job(store, job_id, params, [1, 2], image=image)


def test_repeated_calls_change_nothing(isolated_settings: Settings) -> None:
    """The Redis client retries a call whose connection failed; the call may have run."""
    from shared.keys import KeyStore

    store, keys = JobStore(isolated_settings), KeyStore(isolated_settings)
    _, payer = keys.create("payer", 1_000)
    params = parse_request(reference_body(), isolated_settings).params
    first = store.jobs.submit("r", params, [1], owner=payer.id, cost_milli=600)
    again = store.jobs.submit("r", params, [1], owner=payer.id, cost_milli=600)
    assert (first.outcome, again.outcome) == (SubmitOutcome.QUEUED, SubmitOutcome.QUEUED)
    assert keys.balance(payer.id) == 400  # charged once
    claim = store.jobs.claim("r", "w1", 30, 3)
    repeat = store.jobs.claim("r", "w1", 30, 3)
    assert repeat.started and repeat.attempt == claim.attempt == 1
    assert store.counters.all()["jobs_running"] == 1
    assert store.jobs.claim("r", "w2", 30, 3).outcome is ClaimOutcome.BUSY  # another worker's claim


def test_a_claim_returns_the_started_record(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    new_job(store, isolated_settings)
    claim = store.jobs.claim("j", "w1", 30, 3)
    assert claim.started and claim.attempt == 1
    assert claim.job is not None
    assert claim.job.status is JobStatus.RUNNING and claim.job.worker == "w1"
    assert claim.job.seeds == (1, 2) and claim.job.started_at is not None
    assert store.counters.all()["jobs_running"] == 1
    again = store.jobs.claim("j", "w2", 30, 3)
    assert not again.started and again.outcome == "busy" and again.job is None


def test_only_the_attempt_that_owns_the_job_may_succeed(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    new_job(store, isolated_settings)
    assert store.jobs.claim("j", "w1", 0.05, 3).attempt == 1
    time.sleep(0.1)  # w1's lease lapses: w2 takes over
    assert store.jobs.claim("j", "w2", 30, 3).attempt == 2
    assert not store.jobs.succeed("j", 1, KEYS, IMAGES, 0.5, 30)
    assert store.blobs.result("j", 0) is None  # a refused success writes nothing
    assert store.jobs.succeed("j", 2, KEYS, IMAGES, 0.5, 30)
    job = store.jobs.get("j")
    assert job is not None and job.status is JobStatus.SUCCEEDED and list(job.outputs) == KEYS
    counted = store.counters.all()["jobs_succeeded"]
    assert store.jobs.succeed("j", 2, KEYS, IMAGES, 0.5, 30)  # its reply was lost: the same answer again
    assert store.counters.all()["jobs_succeeded"] == counted  # and nothing written twice
    assert not store.jobs.succeed("j", 1, KEYS, IMAGES, 0.5, 30)


def test_images_stay_in_redis_until_uploaded(isolated_settings: Settings) -> None:
    settings = isolated_settings.replace(result_cache_seconds=60)
    store = JobStore(settings)
    new_job(store, settings)
    store.jobs.claim("j", "w1", 30, 3)
    assert store.jobs.succeed("j", 1, KEYS, IMAGES, 0.5, upload_seconds=0.05)
    assert [store.blobs.result("j", i) for i in range(2)] == IMAGES
    assert raw_redis(settings).ttl(store.keys.result("j", 0)) > 3600  # no short expiry yet
    assert store.uploads.pending() == 1
    assert store.uploads.lapsed() == []
    time.sleep(0.1)
    assert store.uploads.lapsed() == ["j"]
    assert store.jobs.claim("j", "w2", 30, 3).outcome == "upload"  # a worker finishes the upload
    store.uploads.retry_in("j", 60)
    assert store.uploads.lapsed() == []

    store.uploads.done("j", 2)
    assert store.uploads.pending() == 0
    assert 0 < raw_redis(settings).ttl(store.keys.result("j", 0)) <= 60
    assert store.jobs.claim("j", "w2", 30, 3).outcome == "succeeded"
    assert [store.blobs.result("j", i) for i in range(2)] == IMAGES


def test_without_a_result_cache_uploaded_images_leave_redis(isolated_settings: Settings) -> None:
    settings = isolated_settings.replace(result_cache_seconds=0)
    store = JobStore(settings)
    new_job(store, settings)
    store.jobs.claim("j", "w1", 30, 3)
    store.jobs.succeed("j", 1, KEYS, IMAGES, 0.5, 30)
    assert store.blobs.result("j", 1) == IMAGES[1]  # until S3 has it
    store.uploads.done("j", 2)
    assert store.blobs.result("j", 0) is None and store.blobs.result("j", 1) is None


def test_the_input_copy_outlives_the_queue_until_s3_holds_the_input(isolated_settings: Settings) -> None:
    settings = isolated_settings.replace(input_cache_seconds=5)
    store = JobStore(settings)
    new_job(store, settings, image=b"\x89PNG input")
    key = store.keys.input("j")
    assert input_copy(settings, "j") == b"\x89PNG input"
    assert raw_redis(settings).ttl(key) > 3600  # as long as the job, while S3 may not have it
    assert store.jobs.claim("j", "w1", 30, 3).image == b"\x89PNG input"  # the claim hands it out
    store.blobs.input_stored("j")
    assert 0 < raw_redis(settings).ttl(key) <= 5
    dropped = JobStore(settings.replace(input_cache_seconds=0))
    dropped.blobs.input_stored("j")
    assert input_copy(settings, "j") is None


def test_fail_queued_leaves_a_started_job_alone(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    new_job(store, isolated_settings, "queued")
    new_job(store, isolated_settings, "started")
    store.jobs.claim("started", "w1", 30, 3)
    assert store.jobs.fail_queued("queued", "storage unavailable")
    assert not store.jobs.fail_queued("started", "storage unavailable")
    assert store.jobs.get("queued").status is JobStatus.FAILED  # type: ignore[union-attr]
    assert store.jobs.get("started").status is JobStatus.RUNNING  # type: ignore[union-attr]


def test_submit_charges_and_records_in_one_step_or_not_at_all(isolated_settings: Settings) -> None:
    from shared.keys import KeyStore

    store, keys = JobStore(isolated_settings), KeyStore(isolated_settings)
    _, payer = keys.create("payer", 1_000)
    params = parse_request(reference_body(), isolated_settings).params

    def submit(job_id: str, owner: str, cost: int, depth: int = 0) -> str:
        submitted = store.jobs.submit(
            job_id, params, [1], owner=owner, cost_milli=cost, max_queue_depth=depth
        )
        queued = submitted.outcome is SubmitOutcome.QUEUED
        assert (submitted.job is not None) == queued
        assert (store.jobs.get(job_id) is not None) == queued  # recorded exactly when charged
        return f"{submitted.outcome} {submitted.balance_milli}"

    assert submit("a", payer.id, 600) == "queued 400"
    job = store.jobs.get("a")
    assert job is not None and job.owner == payer.id and job.cost_milli == 600
    assert queue_length(isolated_settings) == 1
    assert submit("b", payer.id, 600) == "credits 400"  # 400 left, nothing taken
    assert submit("c", payer.id, 100, depth=1) == "full 0"  # the queue holds one job already
    assert submit("d", "nobody", 100) == "revoked 0"
    keys.revoke(payer.id)
    assert submit("e", payer.id, 100) == "revoked 0"
    assert keys.balance(payer.id) == 400
    assert submit("f", "", 100, depth=2) == "queued 0"  # nobody pays without an owner
    assert queue_length(isolated_settings) == 2
    store.jobs.fail_queued("a", "boom")
    assert keys.balance(payer.id) == 1_000  # a failed job's charge comes back


def test_a_watch_returns_the_ended_job_with_its_images_and_balance(isolated_settings: Settings) -> None:
    import threading

    from shared.keys import KeyStore

    store, keys = JobStore(isolated_settings), KeyStore(isolated_settings)
    _, payer = keys.create("watcher", 5_000)
    params = parse_request(reference_body(samples=2), isolated_settings).params
    assert store.jobs.submit("w", params, [1, 2], owner=payer.id, cost_milli=1_000).job is not None
    attempt = store.jobs.claim("w", "w1", 30, 3).attempt

    succeeded: list[bool] = []

    def finish() -> None:
        time.sleep(0.2)
        succeeded.append(store.jobs.succeed("w", attempt, KEYS, IMAGES, 0.1, 30))

    finisher = threading.Thread(target=finish)
    finisher.start()
    watched = store.waits.watch("w", 10, images=2, owner=payer.id)
    finisher.join()
    assert succeeded == [True]
    assert watched.job is not None and watched.job.status is JobStatus.SUCCEEDED
    assert watched.images == IMAGES and watched.balance_milli == 4_000
    early = store.waits.watch("w", 0, images=1)  # no time left: the job as it stands
    assert early.images == IMAGES[:1] and early.balance_milli is None
    missing = store.waits.watch("none", 0.2)
    assert missing.job is None and missing.images == []


def test_a_stale_attempt_cannot_fail_or_cancel_the_job_its_successor_runs(
    isolated_settings: Settings,
) -> None:
    from shared.keys import KeyStore

    store, keys = JobStore(isolated_settings), KeyStore(isolated_settings)
    _, payer = keys.create("payer", 1_000)
    params = parse_request(reference_body(), isolated_settings).params
    assert store.jobs.submit("j", params, [1], owner=payer.id, cost_milli=600).job is not None
    assert store.jobs.claim("j", "w1", 0.05, 3).attempt == 1
    time.sleep(0.1)  # w1's lease lapses: w2 takes over
    assert store.jobs.claim("j", "w2", 30, 3).attempt == 2
    assert not store.jobs.fail("j", 1, "generation failed: the stale worker woke up")
    assert not store.jobs.finish_canceled("j", 1)
    assert keys.balance(payer.id) == 400  # nothing refunded
    assert store.jobs.succeed("j", 2, KEYS[:1], IMAGES[:1], 0.5, 30)
    job = store.jobs.get("j")
    assert job is not None and job.status is JobStatus.SUCCEEDED and not job.refunded


def test_an_expired_job_leaves_every_set_at_its_next_claim(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    new_job(store, isolated_settings, "gone")
    store.jobs.claim("gone", "w1", 0.01, 3)
    deadline = time.monotonic() + 3
    while not store.jobs.lapsed_leases() and time.monotonic() < deadline:  # whole seconds of Redis time
        time.sleep(0.05)
    assert store.jobs.lapsed_leases() == ["gone"]
    raw = raw_redis(isolated_settings)
    raw.delete(store.keys.job("gone"))  # its record expired while it was running
    assert store.jobs.claim("gone", "w2", 30, 3).outcome is ClaimOutcome.MISSING
    assert store.jobs.lapsed_leases() == []  # the sweeper stops sending it
    for name in (store.keys.queued, store.keys.running, store.keys.sent, store.keys.uploads):
        assert raw.zscore(name, "gone") is None


def test_the_webhook_state_of_an_expired_job_does_not_bring_it_back(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    new_job(store, isolated_settings, "hooked")
    store.webhooks.set("hooked", "delivered")
    store.webhooks.set("hooked", "failed: late")
    assert store.webhooks.get("hooked") == "delivered"  # once
    raw = raw_redis(isolated_settings)
    raw.delete(store.keys.job("hooked"))
    store.webhooks.set("hooked", "delivered")
    assert not raw.exists(store.keys.job("hooked"))


def test_workers_that_stopped_beating_leave_the_set(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    raw_redis(isolated_settings).zadd(store.keys.workers, {"host:killed": time.time() - 120})
    store.workers.ready("host:alive", forget_after=60)
    assert store.workers.fresh(max_age=3600) == ["host:alive"]
