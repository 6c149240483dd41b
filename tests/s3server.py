"""A real HTTP S3 endpoint for tests: moto's server in a subprocess on 127.0.0.1.

We run moto as a separate server rather than ``mock_aws`` in-process because
the point is to exercise the real wire path (HTTP, retries, timeouts, the
fault proxy) and because nothing may be monkey-patched.  Import the fixtures
into a test module (``from s3server import moto_server, s3_bucket``).

However many modules import the fixtures (pytest then sees one session
fixture per module), only one moto server runs per test session: the
fixtures share a module-level singleton, stopped at interpreter exit.  The
module registers itself under both import names (``s3server`` and
``tests.s3server``) so the singleton is never duplicated by import paths.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    """A running moto server; ``url`` is its endpoint."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_moto(timeout: float = 30.0) -> MotoServer:
    """Start moto on a free port and wait until it answers HTTP."""
    port = free_port()
    env = dict(os.environ, **DUMMY_ENV)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    server = MotoServer(proc, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(f"{server.url}/moto-api/", timeout=1).close()
            return server
        except urllib.error.HTTPError:
            return server  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("moto server did not start in time")


_SHARED: list[MotoServer] = []
sys.modules.setdefault("s3server", sys.modules[__name__])
sys.modules.setdefault("tests.s3server", sys.modules[__name__])


def shared_moto() -> MotoServer:
    """The session's one moto server, started on first use (restarted if it died)."""
    if _SHARED and _SHARED[0].process.poll() is None:
        return _SHARED[0]
    server = start_moto()
    _SHARED[:] = [server]
    atexit.register(server.stop)
    return server


def client_env(endpoint: str) -> dict[str, str]:
    """Environment for a drtool process (or DrEnv.run) talking to ``endpoint`` with dummy keys."""
    return {**DUMMY_ENV, "AWS_ENDPOINT_URL": endpoint, "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


_CLIENTS: dict[str, object] = {}


def make_client(endpoint: str):  # type: ignore[no-untyped-def]
    """A plain boto3 client for test setup (outside drtool's own S3 code); cached per endpoint."""
    import boto3

    if endpoint not in _CLIENTS:
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name="us-east-1")
        _CLIENTS[endpoint] = session.client("s3", endpoint_url=endpoint)
    return _CLIENTS[endpoint]


def create_bucket(endpoint: str, name: str | None = None, *, object_lock: bool = False) -> str:
    """Create a uniquely named bucket (optionally Object Lock enabled); returns its name."""
    bucket = name or f"drtool-test-{uuid.uuid4().hex[:12]}"
    kwargs: dict[str, object] = {"Bucket": bucket}
    if object_lock:
        kwargs["ObjectLockEnabledForBucket"] = True
    make_client(endpoint).create_bucket(**kwargs)
    return bucket


def set_dummy_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Dummy credentials and endpoint so boto3's standard chain finds them."""
    for key, value in DUMMY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_server() -> MotoServer:
    return shared_moto()


@pytest.fixture
def s3_bucket(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket per test, with the environment pointing boto3 at moto."""
    set_dummy_env(monkeypatch, moto_server.url)
    return create_bucket(moto_server.url)


@pytest.fixture
def s3_lock_bucket(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Object-Lock-enabled bucket per test."""
    set_dummy_env(monkeypatch, moto_server.url)
    return create_bucket(moto_server.url, object_lock=True)
