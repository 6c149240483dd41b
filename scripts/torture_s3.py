#!/usr/bin/env python3
"""The S3 side of ``scripts/torture``: a moto server on a free port and a fresh bucket.

Split out of scripts/torture.py to keep each module under 600 lines; the torture
run's S3 phase starts its server and buckets here (no pytest: tests/s3server.py
does the same for the test suite).
"""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_EC2_METADATA_DISABLED": "true"}


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free port (as tests/s3server.py, without pytest)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(work / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log, env={**os.environ, **AWS_ENV})
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"torture: moto server did not start (see {work / 'moto.log'})")


def create_bucket(endpoint: str) -> str:
    import boto3

    bucket = f"torture-{random.SystemRandom().randrange(16 ** 10):010x}"
    boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1").client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return bucket
