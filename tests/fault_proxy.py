"""A fault-injecting HTTP proxy between S3Backend and the moto server.

The failures that corrupt backups happen on the wire (resets, stalls,
truncated bodies, 200 responses carrying errors), so they are injected on the
wire, not by patching botocore.  Rules select a request *kind* (put, part,
complete, get, range_get, list, delete, head, ...) and a *fault*; each
applies to a number of matching requests (or at a seeded random rate), and
everything injected is recorded for the test to assert on.

The same proxy serves the S3 bench (``scripts/s3_proxy.py`` runs it as a
process): ``latency_ms`` is added to every request, requests are counted per
kind with the bytes each way, and ``GET /_proxy/stats`` / ``POST
/_proxy/reset`` read and zero those counts from another process.
"""
from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

FAULTS = ("500", "503", "403", "501", "reset", "stall", "truncate", "error200")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "expect"}

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "403": (403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist."),
    "501": (501, "NotImplemented", "A header you provided implies functionality that is not implemented."),
    "error200": (200, "InternalError", "We encountered an internal error. Please try again."),
}


def classify(method: str, target: str, headers: dict[str, str]) -> str:
    """Name the S3 operation of a path-style request."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    segments = parts.path.lstrip("/").split("/", 1)
    has_key = len(segments) == 2 and segments[1] != ""
    if method == "PUT":
        if "partNumber" in query:
            return "part"
        if "retention" in query:
            return "retention"
        if not has_key:
            return "bucket"
        return "put_if_absent" if "if-none-match" in headers else "put"
    if method == "POST":
        if "uploadId" in query:
            return "complete"
        if "restore" in query:
            return "restore"
        return "initiate" if "uploads" in query else "post"
    if method == "GET":
        if not has_key:
            return "list" if "list-type" in query or not query else "bucket"
        return "range_get" if "range" in headers else "get"
    if method == "HEAD":
        return "head" if has_key else "head_bucket"
    if method == "DELETE":
        return "abort" if "uploadId" in query else "delete"
    return method.lower()


@dataclass
class Rule:
    kind: str  # a request kind or "*"
    fault: str
    count: int = 1  # how many matching requests to hit; 0 = unlimited
    skip: int = 0  # let this many matching requests through first
    rate: float | None = None  # instead of count: hit with this probability
    seen: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)


class FaultProxy:
    """Threaded proxy on 127.0.0.1; ``url`` is the endpoint to give S3Backend."""

    def __init__(self, upstream: str, *, stall_seconds: float = 3.0, seed: int = 0,
                 latency_ms: float = 0.0, port: int = 0) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.stall_seconds = stall_seconds
        self.latency = latency_ms / 1000.0  # added before every request is forwarded
        self.kinds: Counter[str] = Counter()  # requests per kind since the last reset
        self.bytes_up = self.bytes_down = 0
        self.rules: list[Rule] = []
        self.injected: list[tuple[str, str, str]] = []  # (kind, fault, method + path)
        self.requests: list[tuple[str, str]] = []  # (kind, method + path), every request
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._server.daemon_threads = True
        self._server.request_queue_size = 128
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, kind: str, fault: str, count: int = 1, *, skip: int = 0,
            rate: float | None = None) -> Rule:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        rule = Rule(kind, fault, count, skip, rate)
        with self._lock:
            self.rules.append(rule)
        return rule

    def reset(self) -> None:
        with self._lock:
            self.rules.clear()
            self.injected.clear()
            self.requests.clear()
            self.kinds.clear()
            self.bytes_up = self.bytes_down = 0

    def stats(self) -> dict[str, object]:
        """Requests per kind and bytes each way since the last reset (the bench's counts)."""
        with self._lock:
            return {"requests": dict(self.kinds), "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    def moved(self, up: int, down: int) -> None:
        with self._lock:
            self.bytes_up += up
            self.bytes_down += down

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for k, _ in self.requests if k == kind)

    def choose(self, kind: str, what: str) -> str | None:
        """Record the request and pick the fault to inject, if any."""
        with self._lock:
            self.requests.append((kind, what))
            self.kinds[kind] += 1
            for rule in self.rules:
                if rule.kind not in ("*", kind):
                    continue
                rule.seen += 1
                if rule.rate is not None:
                    hit = self._random.random() < rule.rate
                else:
                    hit = rule.seen > rule.skip and (rule.count == 0 or rule.hits < rule.count)
                if hit:
                    rule.hits += 1
                    self.injected.append((kind, rule.fault, what))
                    return rule.fault
            return None


def _error_body(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>FAULTPROXY</RequestId></Error>").encode()


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.proxy = proxy
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:  # then optional trailers, up to a blank line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _handle(self) -> None:
        if self.path.startswith("/_proxy/"):
            self._control()
            return
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        kind = classify(self.command, self.path, headers)
        fault = self.proxy.choose(kind, f"{self.command} {self.path}")
        if self.proxy.latency:
            time.sleep(self.proxy.latency)
        if fault in _ERRORS:
            status, code, message = _ERRORS[fault]
            self._send(status, [("Content-Type", "application/xml")], _error_body(code, message))
        elif fault == "reset":
            self._reset()
        else:
            status, resp_headers, resp_body = self._forward(body)
            self.proxy.moved(len(body), len(resp_body))
            if fault == "stall":
                time.sleep(self.proxy.stall_seconds)
                self._reset()
            elif fault == "truncate":
                self._send_truncated(status, resp_headers, resp_body)
            else:
                self._send(status, resp_headers, resp_body)

    def _control(self) -> None:
        """``/_proxy/stats`` (GET) and ``/_proxy/reset`` (POST): the counts, as JSON."""
        if self.path == "/_proxy/reset":
            self.proxy.reset()
        self._send(200, [("Content-Type", "application/json")], json.dumps(self.proxy.stats()).encode())

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.proxy.upstream, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                    conn.putheader(key, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_HEADERS]
            return resp.status, headers, data
        finally:
            conn.close()

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        for key, value in headers:
            if key.lower() not in ("content-length", "date", "server"):
                self.send_header(key, value)
        self.send_header("Date", self.date_time_string())
        if self.command == "HEAD":
            length = next((v for k, v in headers if k.lower() == "content-length"), "0")
            self.send_header("Content-Length", length)
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_truncated(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Promise the whole body, deliver half of it, hang up."""
        self.send_response_only(status)
        for key, value in headers:
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if body else 64))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        self._reset()

    def _reset(self) -> None:
        """Abort the TCP connection with RST, like a dying load balancer."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
