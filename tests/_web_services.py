"""Real services for the web tests and benchmarks/web_burst.py: redis-server, the web app and
a worker, each a subprocess on a free loopback port, plus the memory of a process tree.

Every process starts in its own session, so that stopping it (SIGTERM, or SIGKILL to play
a crash) reaches its children too, by the process group id we started.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """One subprocess, its log in ``log``; ``stop()`` ends its whole process group."""

    def __init__(self, name: str, command: list[str], log: Path, env: dict | None = None):
        self.name, self.command, self.log_path = name, command, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL) -> None:
        """Signal the whole process group (the worker's pool processes too)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait()
        self.kill(signal.SIGKILL)  # anything of the group that outlived its leader
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def start_redis(folder: Path) -> tuple[Service, str]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    service = Service("redis", [REDIS, "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(folder)],
                      folder / "redis.log")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return service, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"redis-server did not start:\n{service.tail()}")


def web_env(tmp: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", NIPYPE_NO_ET="1", MPLBACKEND="Agg")
    if tmp is not None:  # the service's own temporary folder, to see that nothing lands there
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bids_brainage.web.cli", *args]


def start_web(broker: str, data_dir: Path, log: Path, *extra: str,
              tmp: Path | None = None) -> tuple[Service, str]:
    port = free_port()
    service = Service("web", command("serve", "--broker", broker, "--data-dir", str(data_dir),
                                     "--port", str(port), *extra), log, env=web_env(tmp))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not service.alive():
            break
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as reply:
                if reply.status == 200:
                    return service, url
        except OSError:
            time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"the web app did not start:\n{service.tail()}")


def start_worker(broker: str, data_dir: Path, log: Path, *extra: str,
                 tmp: Path | None = None) -> Service:
    return Service("worker", command("worker", "--broker", broker, "--data-dir", str(data_dir),
                                     *extra), log, env=web_env(tmp))


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(sum over the process and all its descendants, largest single process) in MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as fh:
                kb = next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = kb / 1024
    total, largest, todo = 0.0, 0.0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0.0)
        largest = max(largest, rss.get(current, 0.0))
        todo.extend(children.get(current, []))
    return total, largest
