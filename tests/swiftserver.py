"""A throwaway OpenStack Swift all-in-one for tests, from Debian's packages.

swift-proxy, -account, -container and -object servers (installed by
scripts/test), one replica, one device in a temporary directory, tempauth
(user ``test:tester``, key ``testing``) and the s3api middleware, each server
on a free loopback port.  The servers read their ``swift.conf`` from the
temporary directory (``swift_dir``), run as the current user, and log to
files there (shown when start-up fails).  A memcached on a free port
holds tempauth's tokens (the native Swift API needs them; S3 signatures
do not).

The servers run under Debian's /usr/bin/python3 (the packages' own
interpreter), not the test virtualenv.
"""
from __future__ import annotations

import getpass
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from s3server import free_port

KINDS = ("account", "container", "object")
ACCESS_KEY, SECRET_KEY = "test:tester", "drtool-swift-s3cr3t"


@dataclass
class SwiftServer:
    base: Path
    ports: dict[str, int]
    processes: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy']}"

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.base.glob("*.log")))


def _common(base: Path, port: int) -> str:
    return (f"[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {port}\nuser = {getpass.getuser()}\n"
            f"devices = {base}/srv\nmount_check = false\nswift_dir = {base}\nworkers = 1\n"
            f"disable_fallocate = true\n")


def write_config(base: Path, ports: dict[str, int]) -> None:
    """Rings (one device, one replica) and the four servers' configuration files in ``base``."""
    (base / "srv" / "sdb1").mkdir(parents=True)
    (base / "swift.conf").write_text("[swift-hash]\nswift_hash_path_suffix = drtooltest\n"
                                     "swift_hash_path_prefix = drtooltest\n"
                                     "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
    for kind in KINDS:
        (base / f"{kind}-server.conf").write_text(
            _common(base, ports[kind]) + f"[pipeline:main]\npipeline = {kind}-server\n"
            f"[app:{kind}-server]\nuse = egg:swift#{kind}\n"
            f"[{kind}-replicator]\n[{kind}-updater]\n[{kind}-auditor]\n")
        builder = str(base / f"{kind}.builder")
        env = _env()
        subprocess.run(["swift-ring-builder", builder, "create", "4", "1", "1"], check=True,
                       capture_output=True, env=env)
        subprocess.run(["swift-ring-builder", builder, "add", f"r1z1-127.0.0.1:{ports[kind]}/sdb1", "1"],
                       check=True, capture_output=True, env=env)
        # exit 1 is "rebalanced with warnings" (one device cannot satisfy dispersion): fine here
        done = subprocess.run(["swift-ring-builder", builder, "rebalance"], capture_output=True, env=env)
        assert done.returncode in (0, 1), done.stdout
    (base / "proxy-server.conf").write_text(
        _common(base, ports["proxy"])
        + "[pipeline:main]\npipeline = catch_errors healthcheck proxy-logging cache s3api tempauth "
          "proxy-logging proxy-server\n"
          f"[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{ports['memcached']}\n"
          "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n"
          f"[filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = {SECRET_KEY} .admin\n"
          "[filter:s3api]\nuse = egg:swift#s3api\n"
          "[filter:healthcheck]\nuse = egg:swift#healthcheck\n"
          "[filter:catch_errors]\nuse = egg:swift#catch_errors\n"
          "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n")


def _env() -> dict[str, str]:
    """Debian's interpreter with its own packages: nothing of the test virtualenv leaks in."""
    return {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


def start_swift(base: Path, timeout: float = 120.0) -> SwiftServer:
    ports = {kind: free_port() for kind in (*KINDS, "proxy", "memcached")}
    write_config(base, ports)
    processes = [subprocess.Popen(["memcached", "-l", "127.0.0.1", "-p", str(ports["memcached"]), "-U", "0",
                                   "-m", "16", "-u", getpass.getuser()], env=_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for kind in (*KINDS, "proxy"):
        log = open(base / f"{kind}.log", "wb")  # noqa: SIM115 - handed to the child
        processes.append(subprocess.Popen([f"/usr/bin/swift-{kind}-server", str(base / f"{kind}-server.conf"),
                                           "--verbose"], stdout=log, stderr=subprocess.STDOUT, env=_env()))
        log.close()
    server = SwiftServer(base, ports, processes)
    deadline = time.monotonic() + timeout
    waiting = [*KINDS, "proxy"]
    while waiting and time.monotonic() < deadline:
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            server.stop()
            raise RuntimeError(f"a Swift server exited at start-up:\n{server.logs()}")
        kind = waiting[0]
        try:
            if kind == "proxy":
                urllib.request.urlopen(f"{server.url}/healthcheck", timeout=1).close()
            else:
                urllib.request.urlopen(f"http://127.0.0.1:{ports[kind]}/recon/", timeout=1).close()
            waiting.pop(0)
        except urllib.error.HTTPError:
            waiting.pop(0)  # an HTTP answer: the server is serving
        except OSError:
            time.sleep(0.2)
    if waiting:
        server.stop()
        raise RuntimeError(f"Swift servers {waiting} did not start in {timeout:.0f} s:\n{server.logs()}")
    return server
