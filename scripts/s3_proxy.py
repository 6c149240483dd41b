#!/usr/bin/env python3
"""A counting, delaying HTTP proxy in front of an S3 server (for benchmarks and tests).

    s3_proxy.py UPSTREAM_URL [--latency-ms N] [--port-file FILE]

Every request waits ``--latency-ms`` before it is forwarded, which is what a
far-away object store adds per request (the round trips of a request and its
first response bytes); bandwidth is not limited.  Requests are counted per
S3 operation kind (put, part, get, range_get, list, head, delete, ...) and
the bytes in each direction; ``GET /_proxy/stats`` returns the counts as
JSON, ``POST /_proxy/reset`` zeroes them.  Nothing here is drtool code: both
drtool and restic are measured through it in one bench run.
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "expect",
               "content-length"}
COPY_CHUNK = 1 << 20


def classify(method: str, target: str, has_range: bool) -> str:
    """The S3 operation of a path-style request, coarse enough for cost accounting."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    segments = parts.path.lstrip("/").split("/", 1)
    has_key = len(segments) == 2 and segments[1] != ""
    if method == "PUT":
        if "partNumber" in query:
            return "part"
        return "put" if has_key else "bucket"
    if method == "POST":
        if "uploadId" in query:
            return "complete"
        if "uploads" in query:
            return "initiate"
        return "restore" if "restore" in query else "post"
    if method == "GET":
        if not has_key:
            return "list"
        return "range_get" if has_range else "get"
    if method == "HEAD":
        return "head" if has_key else "head_bucket"
    if method == "DELETE":
        return "abort" if "uploadId" in query else "delete"
    return method.lower()


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0

    def add(self, kind: str, up: int, down: int) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.bytes_up += up
            self.bytes_down += down

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {"requests": dict(self.requests), "bytes_up": self.bytes_up,
                    "bytes_down": self.bytes_down}

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_up = self.bytes_down = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 80)
    latency = 0.0
    stats = Stats()
    local = threading.local()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/_proxy/"):
            self._control()
        else:
            self._forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _control(self) -> None:
        if self.path == "/_proxy/reset":
            self.stats.reset()
        body = json.dumps(self.stats.snapshot()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(*self.upstream, timeout=300)
        return conn

    def _forward(self) -> None:
        body = self._body()
        kind = classify(self.command, self.path, "range" in {k.lower() for k in self.headers})
        if self.latency:
            time.sleep(self.latency)
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    if key.lower() not in HOP_HEADERS:
                        conn.putheader(key, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        self.send_response_only(resp.status)
        length = resp.getheader("Content-Length")
        for key, value in resp.getheaders():
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        down = 0
        if self.command == "HEAD" or length is not None:
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            while self.command != "HEAD":
                chunk = resp.read(COPY_CHUNK)
                if not chunk:
                    break
                self.wfile.write(chunk)
                down += len(chunk)
            resp.read()
        else:
            data = resp.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            down = len(data)
        self.wfile.flush()
        self.stats.add(kind, len(body), down)


def serve(upstream: str, latency_ms: float, port: int = 0) -> ThreadingHTTPServer:
    """A started proxy server (serving on a daemon thread); its port is ``server_address[1]``."""
    up = urlsplit(upstream)
    handler = type("BoundHandler", (Handler,), {
        "upstream": (up.hostname or "127.0.0.1", up.port or 80), "latency": latency_ms / 1000.0,
        "stats": Stats(), "local": threading.local()})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("upstream")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--port-file", type=Path, help="write the listening port here once serving")
    args = ap.parse_args(argv)
    server = serve(args.upstream, args.latency_ms)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_address[1]))
        tmp.rename(args.port_file)
    else:
        print(server.server_address[1], flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
