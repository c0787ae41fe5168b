# -*- test-case-name: tests.test_bodies -*-
"""
The boto3 side of S3 body storage: one client, made on first use in an upload
thread and shared by all of them, that PUTs each object exactly once per call
(the store does its own retrying).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from majordomo.config import S3Config


def make_client(config: S3Config, connect_timeout: float, read_timeout: float) -> Any:
    """The boto3 S3 client for C{config} (thread-safe once made; making it blocks)."""
    import boto3
    from botocore.config import Config as BotoConfig

    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": {"mode": "standard", "total_max_attempts": 1},  # we retry ourselves
        "max_pool_connections": config.upload_threads,
        # Our arguments are always the same few well-formed strings and
        # bytes; validating them took 13% of an upload's CPU (measured).
        "parameter_validation": False,
    }
    kwargs: dict[str, Any] = {"region_name": config.region or None}
    if config.endpoint:
        kwargs["endpoint_url"] = config.endpoint
        # S3-compatible stores (MinIO, R2, ...) want path-style URLs and may
        # not know the newer default checksums.
        options["s3"] = {"addressing_style": "path"}
        if "request_checksum_calculation" in BotoConfig.OPTION_DEFAULTS:
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
    if config.access_key_id and config.secret_access_key:
        kwargs["aws_access_key_id"] = config.access_key_id
        kwargs["aws_secret_access_key"] = config.secret_access_key
    return boto3.session.Session().client("s3", config=BotoConfig(**options), **kwargs)


def put_body(client: Any, bucket: str, key: str, data: bytes) -> None:
    """PUT one gzip JSON object (blocks: call it in an upload thread)."""
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ContentType="application/json",
        ContentEncoding="gzip",
    )


class SharedClient:
    """One client for all the upload threads, made by C{make} when first needed."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The client, made now if it does not exist yet (in an upload thread)."""
        with self._lock:
            if self._client is None:
                self._client = self._make()
            return self._client

    def close(self) -> None:
        """Close the client's connection pool, if it was made (boto3 >= 1.33)."""
        with self._lock:
            if self._client is not None and hasattr(self._client, "close"):
                self._client.close()
            self._client = None
