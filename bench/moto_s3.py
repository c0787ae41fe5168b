"""
The S3 phase of bench/run.py (`make bench`): moto's server on a loopback
port with one bucket, a gateway with S3 body storage turned on by the
environment (as tests/test_bodies_gateway.py does), wrk at each concurrency,
then counts of rows, objects in the bucket and bodies still parked in the
spool after the gateway's shutdown.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
import harness

ACCESS_KEY, SECRET_KEY = "bench-access-key", "bench-secret-key"
BUCKET = "majordomo-bench"


def _client(port: int) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def start_moto(bench: Any, bucket: str) -> harness.Proc:
    port = harness.free_port()
    cmd = [f"{harness.BIN}/moto_server", "-H", "127.0.0.1", "-p", str(port)]
    moto = bench.start("moto", cmd, f"http://127.0.0.1:{port}/", bench.load_cpus)
    moto.port = port
    _client(port).create_bucket(Bucket=bucket)
    return moto


def env(port: int, bucket: str) -> dict[str, str]:
    return {
        "MAJORDOMO_LOGGING_BODY_STORAGE": "s3",
        "MAJORDOMO_S3_ENABLED": "true",
        "MAJORDOMO_S3_BUCKET": bucket,
        "MAJORDOMO_S3_REGION": "us-east-1",
        "MAJORDOMO_S3_ENDPOINT": f"http://127.0.0.1:{port}",
        "MAJORDOMO_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "MAJORDOMO_S3_SECRET_ACCESS_KEY": SECRET_KEY,
    }


def count_objects(port: int, bucket: str) -> int:
    pages = _client(port).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(page.get("KeyCount", 0) for page in pages)


def parked_bodies(spool_dir: str) -> int:
    """Bodies waiting in the spool for S3 (spool_dir/bodies/<owner>/<n>.body)."""
    total = 0
    for _, _, files in os.walk(os.path.join(spool_dir, "bodies")):
        total += sum(name.endswith(".body") for name in files)
    return total


def phase(bench: Any, non_200_before: int) -> str:
    """Runs the S3 measurements; returns a sentence about rows and objects."""
    moto = start_moto(bench, BUCKET)
    before = bench.count()
    s3_env = env(moto.port, BUCKET)
    bench.results["s3_env"] = bench.env_line(s3_env)
    gw = bench.gateway("gateway-s3", bench.target_cpus, **s3_env)
    answered = bench.throughput("gateway_s3", gw.port, gw)
    gw.stop(timeout=120)
    rows = harness.wait_rows(before + answered) - before
    with_key = bench.count("s3_key IS NOT NULL")
    objects = count_objects(moto.port, BUCKET)
    parked = parked_bodies(bench.env["MAJORDOMO_STORAGE_SPOOL_DIR"])
    moto.stop()
    bad = bench.count("status_code <> 200") - non_200_before
    return (
        f"gateway with S3 bodies {rows:,} rows for {answered:,} answered requests "
        f"({bad} with a status other than 200), {with_key:,} rows name an S3 object, "
        f"{objects:,} objects in the bucket after shutdown, {parked:,} bodies parked in the spool"
    )
