"""The job store: everything the farm keeps in Redis, one module per concern.

:class:`JobStore` holds one part per concern, all on the same two connection pools:

- ``jobs`` (:mod:`.jobs`): job records and their transitions, the state machine;
- ``waits`` (:mod:`.waits`): waiting on a job's events;
- ``idempotency`` (:mod:`.idempotency`): Idempotency-Keys bound to jobs;
- ``shapes`` (:mod:`.shapes`): queued jobs of each shape, for batching;
- ``blobs`` (:mod:`.blobs`): input and output images kept in Redis;
- ``uploads`` (:mod:`.uploads`): succeeded jobs whose outputs S3 does not hold yet;
- ``workers`` (:mod:`.workers`): worker heartbeats;
- ``counters`` (:mod:`.counters`): farm-wide counters, run-time average, histograms;
- ``locks`` (:mod:`.locks`): farm-wide locks that lapse;
- ``webhooks`` (:mod:`.webhooks`): how each job's webhook delivery ended;
- ``broker`` (:mod:`.broker`): what the Celery queues hold.

Key names have one owner, :class:`.keys.RedisKeys`; Redis scripts live in ``lua/`` and are
called with named keys and arguments (:mod:`.scripts`).
"""

from __future__ import annotations

import redis

from shared.settings import Settings
from shared.store.blobs import Blobs
from shared.store.broker import BrokerQueues
from shared.store.clients import Clients
from shared.store.counters import Counters
from shared.store.idempotency import Idempotency, IdempotencyKeys
from shared.store.jobs import Claim, ClaimOutcome, Jobs, SubmitOutcome, Submitted
from shared.store.keys import RedisKeys
from shared.store.locks import Locks
from shared.store.shapes import ShapeLists
from shared.store.uploads import Uploads
from shared.store.waits import Waits, Watched
from shared.store.webhooks import WebhookStates
from shared.store.workers import Workers

__all__ = [
    "Claim",
    "ClaimOutcome",
    "Idempotency",
    "JobStore",
    "RedisKeys",
    "SubmitOutcome",
    "Submitted",
    "Watched",
]


class JobStore:
    """The parts of the store, sharing one pair of clients. Thread-safe."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        clients = Clients.connect(settings, client)
        self.keys = clients.keys
        self.jobs = Jobs(clients, settings.job_ttl_seconds)
        self.waits = Waits(clients)
        self.idempotency = IdempotencyKeys(clients)
        self.shapes = ShapeLists(clients)
        self.blobs = Blobs(clients, settings.input_cache_seconds)
        self.uploads = Uploads(clients, settings.result_cache_seconds)
        self.workers = Workers(clients)
        self.counters = Counters(clients)
        self.locks = Locks(clients)
        self.webhooks = WebhookStates(clients)
        self.broker = BrokerQueues(clients.text)
        self._text = clients.text

    def ping(self) -> bool:
        return bool(self._text.ping())
