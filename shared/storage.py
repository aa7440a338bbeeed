"""S3-compatible object storage (AWS S3, MinIO, ...) through boto3."""

from __future__ import annotations

import logging
import math

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import NotFound, Unavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


class Storage:
    """Puts and gets job images. One client per process; boto3 clients are thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self._create_bucket = settings.s3_create_bucket
        self._region = settings.s3_region
        # Outputs and inputs live as long as their job record, rounded up to whole days.
        self._expire_days = max(1, math.ceil(settings.job_ttl_seconds / 86400))
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=settings.s3_secret_access_key or None,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=256,  # a gevent gateway stores many inputs at once
                s3={"addressing_style": "path"},
            ),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket when missing (and allowed), then set the retention rule."""
        self._create_if_missing()
        self._set_expiry()

    def _create_if_missing(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _MISSING_CODES or not self._create_bucket:
                raise Unavailable(f"storage: bucket {self.bucket!r} is not usable") from exc
        except BotoCoreError as exc:
            raise Unavailable("storage is unreachable") from exc
        log.info("creating bucket %s", self.bucket)
        kwargs: dict[str, object] = {"Bucket": self.bucket}
        if self._region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise Unavailable(f"storage: cannot create bucket {self.bucket!r}") from exc

    def _set_expiry(self) -> None:
        """Expire ``jobs/`` objects with their job records; servers without lifecycle support are logged."""
        rule = {
            "ID": "img2img-job-retention",
            "Filter": {"Prefix": "jobs/"},
            "Status": "Enabled",
            "Expiration": {"Days": self._expire_days},
        }
        try:
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": [rule]}
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning(
                "storage: cannot set the %d-day expiry rule on %s: %s", self._expire_days, self.bucket, exc
            )

    def expiry_days(self) -> int | None:
        """The retention rule now on the bucket, if any."""
        try:
            rules = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except (BotoCoreError, ClientError):
            return None
        for rule in rules:
            if rule.get("ID") == "img2img-job-retention":
                return int(rule["Expiration"]["Days"])
        return None

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"storage: cannot write {key}") from exc

    def get(self, key: str) -> bytes:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=key)
            body: bytes = reply["Body"].read()
            return body
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise NotFound(f"no object {key}") from exc
            raise Unavailable(f"storage: cannot read {key}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"storage: cannot read {key}") from exc

    def ping(self) -> bool:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError):
            return False
        return True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
