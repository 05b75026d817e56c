"""The web service under a burst, and a worker killed mid-job.

    python benchmarks/web_burst.py [--jobs 10] [--concurrency 1]
    python benchmarks/web_burst.py --kill child   [--kills 1|2]
    python benchmarks/web_burst.py --kill worker
    python benchmarks/web_burst.py --upload-mb 500

Starts redis-server, a worker and the web app (subprocesses on free loopback ports, a fresh
data folder), then:

- burst: uploads ``--jobs`` scans of the example dataset at once over the JSON API and waits
  until all are done. Prints the total wall time (first upload to last job done), each job's
  queue wait (start - submission) and run time, and the peak resident memory of the worker's
  whole process tree (sampled every 0.2 s from /proc), and of its largest process.
- ``--kill child``: SIGKILLs the pool process running a job (as the OOM killer would), as
  many times as ``--kills``; the worker itself lives on. ``--kill worker``: SIGKILLs the whole
  worker (parent and pool), then starts a new one. Prints what the job's state said at each
  moment and how it ended.
- ``--upload-mb N``: streams N MB (chunked, no Content-Length) as one file to the web app and
  prints its answer, the time and the web app's peak resident memory: an upload goes to disk
  as it arrives, so the memory stays flat whatever N (over the limit, it is cut at the limit).
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import _web_services as services  # noqa: E402

EXAMPLE = ROOT / "examples" / "ds-ixi3"
SCANS = sorted(EXAMPLE.glob("sub-*/anat/sub-*_T1w.nii.gz"))


class PeakRSS(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.total, self.largest = pid, 0.0, 0.0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(0.2):
            total, largest = services.tree_rss_mb(self.pid)
            self.total, self.largest = max(self.total, total), max(self.largest, largest)


def wait_ready(worker, timeout=180.0):
    deadline = time.monotonic() + timeout
    while "ready." not in worker.tail(200):
        if time.monotonic() > deadline or not worker.alive():
            raise RuntimeError(f"the worker did not start:\n{worker.tail()}")
        time.sleep(0.3)


def upload(url: str, scan: Path) -> str:
    with open(scan, "rb") as fh:
        reply = requests.post(f"{url}/api/jobs", files={"file": (scan.name, fh)}, timeout=120)
    reply.raise_for_status()
    return reply.json()["id"]


def state(data: Path, job_id: str) -> dict:
    return json.loads((data / "jobs" / job_id / "job.json").read_text())


def burst(url, data, worker, n_jobs):
    peak = PeakRSS(worker.pid)
    peak.start()
    start = time.time()
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        ids = list(pool.map(lambda i: upload(url, SCANS[i % len(SCANS)]), range(n_jobs)))
    uploaded = time.time() - start
    max_queued = 0
    while True:
        jobs = [state(data, i) for i in ids]
        max_queued = max(max_queued, sum(j["status"] == "queued" for j in jobs))
        if all(j["status"] in ("done", "failed") for j in jobs):
            break
        time.sleep(0.5)
    wall = max(j["finished"] for j in jobs) - start
    peak.stopped.set()
    peak.join()
    print(f"{n_jobs} uploads in {uploaded:.1f} s; all finished {wall:.1f} s after the first "
          f"upload ({wall / n_jobs:.1f} s per job); at most {max_queued} waiting at once")
    print("job  scan                     status  attempts  queue wait s  run s")
    for number, job in enumerate(jobs, 1):
        print(f"{number:3d}  {job['input']['filename']:24s} {job['status']:7s} "
              f"{job['attempts']:8d}  {job['started'] - job['submitted']:12.1f}  "
              f"{job['finished'] - job['started']:5.1f}")
    waits = [j["started"] - j["submitted"] for j in jobs]
    runs = [j["finished"] - j["started"] for j in jobs]
    print(f"queue wait: median {statistics.median(waits):.1f} s, max {max(waits):.1f} s; "
          f"run: median {statistics.median(runs):.1f} s")
    print(f"worker peak RSS: whole process tree {peak.total:.0f} MB, largest process "
          f"{peak.largest:.0f} MB")
    ages = {}
    for job in jobs:
        rows = requests.get(f"{url}/api/jobs/{job['id']}", timeout=10).json().get("predictions")
        ages.setdefault(job["input"]["filename"], set()).add(
            tuple((r["model"], r["predicted_age"]) for r in rows or []))
    same = all(len(v) == 1 for v in ages.values())
    print(f"the same scan gave the same ages in every job: {same}")
    return all(j["status"] == "done" for j in jobs) and same


def kill(url, data, worker, mode, kills, broker, base):
    job_id = upload(url, SCANS[0])
    second = upload(url, SCANS[1])  # queued behind it: must not be lost either
    print(f"job {job_id[:8]} running, job {second[:8]} queued behind it")
    attempt = 0
    for round_ in range(kills):
        # the next attempt, once it is past the skull strip
        while (state(data, job_id).get("attempts", 0) <= attempt
               or state(data, job_id).get("stage") not in ("n4", "register", "normalize")):
            if state(data, job_id)["status"] in ("done", "failed"):
                raise RuntimeError("the job ended before it could be killed")
            time.sleep(0.2)
        job = state(data, job_id)
        attempt = job["attempts"]
        if mode == "child":
            pid = job["owner"]["pid"]
            signal_target = f"pool process {pid}"
            import os

            os.kill(pid, signal.SIGKILL)
        else:
            signal_target = f"worker process group {worker.pid}"
            worker.kill(signal.SIGKILL)
            worker.proc.wait()
        killed = time.time()
        print(f"kill {round_ + 1}: SIGKILL to {signal_target} during '{job['stage']}' "
              f"(attempt {job['attempts']})")
        if mode == "worker":
            time.sleep(3)
            after = requests.get(f"{url}/api/jobs/{job_id}", timeout=10).json()
            print(f"  3 s later, no worker running: status {after['status']}, stage "
                  f"{after['stage']}; the queued job: "
                  f"{requests.get(f'{url}/api/jobs/{second}', timeout=10).json()['status']}")
            worker = services.start_worker(broker, data, base / f"worker{round_ + 2}.log")
            print("  a new worker started")
        time.sleep(1.0)
    while True:
        jobs = [state(data, i) for i in (job_id, second)]
        if all(j["status"] in ("done", "failed") for j in jobs):
            break
        time.sleep(0.5)
    for job in jobs:
        print(f"job {job['id'][:8]}: {job['status']} after {job['attempts']} attempt(s), "
              f"{job['finished'] - killed:.0f} s after the last kill; "
              f"error: {job.get('error')}; notes: {job.get('notes')}")
    return worker, all(j["status"] in ("done", "failed") for j in jobs)


def big_upload(url, web, megabytes):
    peak = PeakRSS(web.pid)
    peak.start()
    idle, _ = services.tree_rss_mb(web.pid)
    block = bytes(range(256)) * 4096  # 1 MB

    def body():
        yield (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.nii\""
               b"\r\n\r\n")
        for _ in range(megabytes):
            yield block
        yield b"\r\n--b--\r\n"

    start = time.time()
    reply = requests.post(f"{url}/api/jobs", data=body(), timeout=600,
                          headers={"Content-Type": "multipart/form-data; boundary=b"})
    seconds = time.time() - start
    time.sleep(0.5)
    peak.stopped.set()
    peak.join()
    print(f"{megabytes} MB streamed in {seconds:.1f} s: HTTP {reply.status_code} "
          f"{reply.json().get('error') or reply.json()}")
    print(f"web app RSS: {idle:.0f} MB before, peak {peak.total:.0f} MB while receiving")
    return reply.status_code in (413, 422)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--kill", choices=("child", "worker"), default=None)
    parser.add_argument("--kills", type=int, default=1)
    parser.add_argument("--upload-mb", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the data here")
    args = parser.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="web_burst_"))
    data = base / "data"
    redis, broker = services.start_redis(base / "redis")
    started = [redis]
    try:
        worker = services.start_worker(broker, data, base / "worker.log",
                                       "--concurrency", str(args.concurrency))
        started.append(worker)
        web, url = services.start_web(broker, data, base / "web.log")
        started.append(web)
        if args.upload_mb:
            ok = big_upload(url, web, args.upload_mb)
            return 0 if ok else 1
        wait_ready(worker)
        if args.kill:
            worker, ok = kill(url, data, worker, args.kill, args.kills, broker, base)
            started.append(worker)
        else:
            ok = burst(url, data, worker, args.jobs)
    finally:
        for service in reversed(started):
            service.stop()
    print(f"logs and data in {base}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
