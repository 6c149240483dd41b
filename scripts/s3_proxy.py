#!/usr/bin/env python3
"""The counting, delaying HTTP proxy in front of the bench's S3 server, as a process.

    s3_proxy.py UPSTREAM_URL [--latency-ms N] [--port-file FILE]

This is tests/fault_proxy.py's FaultProxy (the proxy the fault tests inject
failures with) with no fault rules: every request waits ``--latency-ms``
before it is forwarded, which is what a far-away object store adds per
request; bandwidth is not limited.  Requests are counted per S3 operation
kind (put, put_if_absent, part, get, range_get, list, head, delete, ...)
with the bytes each way; ``GET /_proxy/stats`` returns the counts as JSON,
``POST /_proxy/reset`` zeroes them.  Both drtool and restic are measured
through it in one bench run.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fault_proxy import FaultProxy  # noqa: E402  (one proxy for the fault tests and the bench)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("upstream")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--port-file", type=Path, help="write the listening port here once serving")
    args = ap.parse_args(argv)
    proxy = FaultProxy(args.upstream, latency_ms=args.latency_ms).start()
    port = proxy.url.rsplit(":", 1)[1]
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(port)
        tmp.rename(args.port_file)
    else:
        print(port, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
