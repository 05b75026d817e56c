"""The queue: celery on redis, the ``run_job`` task, worker start-up and recovery.

Never out of memory: a worker runs ``--concurrency`` jobs at once (one process each, about
1.2-2.5 GB); every other job waits in redis. Never lost:

- ``acks_late``: a job's message is acknowledged only when the job has ended, and
  ``reject_on_worker_lost`` puts it back on the queue when the process running it dies
  (SIGKILL, the OOM killer): the next process retries it; a job whose worker died
  :data:`MAX_ATTEMPTS` times is marked failed with the stage it died in;
- a worker that starts (and every :data:`SWEEP_SECONDS` after) sends again what a dead
  worker left behind: jobs ``running`` whose lock is free, and ``queued`` jobs whose message
  is neither waiting in redis nor held by a worker (redis restarted without its data);
- duplicates are harmless: a task takes the job's lock and reads its state first, so a job
  that is running elsewhere or finished is left alone.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

from bids_brainage.web.jobs import FAILED, FINISHED, QUEUED, RUNNING, JobStore, job_lock

LOG = logging.getLogger("bids_brainage.web")
TASK_NAME = "bids_brainage.web.run_job"
QUEUE = "bids_brainage"
MAX_ATTEMPTS = 2
SWEEP_SECONDS = 300.0
# a queued job whose message is missing is sent again only once it is this old (the web app
# writes job.json just before it sends the message)
RESEND_AFTER = 30.0
MEMORY_PER_JOB_GB = 2.5


def make_celery(settings):
    """The celery app for ``settings`` (broker, data folder, limits); no task runs here."""
    from celery import Celery

    app = Celery("bids_brainage_web", broker=settings.broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a free process takes one job; the rest stay queued
        task_ignore_result=True,  # the job's state lives in its folder
        task_serializer="json", accept_content=["json"],
        task_default_queue=QUEUE,
        task_soft_time_limit=settings.job_time_limit,
        # a message held by a worker that vanished returns to the queue after this long;
        # the start-up sweep resends such jobs at once, so this only needs to exceed a job
        broker_transport_options={"visibility_timeout": max(7200, 2 * settings.job_time_limit)},
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,  # nipype needs a real stderr (faulthandler)
        worker_proc_alive_timeout=300,  # a pool process loads torch and the models first
    )
    app.web_settings = settings
    app.task(name=TASK_NAME, bind=True)(_run_job_task)
    return app


def send_job(app, job_id: str) -> None:
    """Put a job on the queue (fails fast when redis cannot be reached)."""
    app.send_task(TASK_NAME, args=[job_id], task_id=f"{job_id}-{secrets.token_hex(4)}",
                  queue=QUEUE, retry=True,
                  retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})


def _run_job_task(task, job_id: str) -> str:
    from bids_brainage.web import runner

    settings = task.app.web_settings
    store = JobStore(settings.data_dir)
    try:
        folder = store.folder(job_id)
    except KeyError:
        return "not a job id"
    if not folder.is_dir():
        return "gone (deleted)"
    with job_lock(folder) as locked:
        if not locked:
            return "running in another process"
        job = store.read(job_id)
        if job is None or job["status"] in FINISHED:
            return "already finished"
        notes = list(job.get("notes", []))
        if job["status"] == RUNNING:  # the process that ran it is gone: it died
            stage = job.get("stage") or "starting"
            lost = (f"the worker process running this job stopped during '{stage}' "
                    "(killed, or out of memory)")
            if job.get("attempts", 0) >= MAX_ATTEMPTS:
                store.write({**job, "status": FAILED, "stage": None, "finished": time.time(),
                             "error": f"{lost}, {job['attempts']} times; not retried again"})
                return "failed: worker lost"
            notes.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {lost}; retried")
        now = time.time()
        job.update(status=RUNNING, stage="starting", started=now, heartbeat=now, notes=notes,
                   attempts=job.get("attempts", 0) + 1,
                   owner={"host": socket.gethostname(), "pid": os.getpid()})
        store.write(job)
        LOG.info("job %s: attempt %d", job_id, job["attempts"])
        final = runner.run_job(store, job, settings.threads_per_job, settings.job_time_limit)
        return final["status"]


def waiting_job_ids(app) -> set[str] | None:
    """Ids of the jobs whose message is in redis (queued, or held unacknowledged by a
    worker); None when that cannot be read (then every queued job counts as missing)."""
    try:
        with app.connection_for_read() as conn:
            client = conn.default_channel.client
            raw = list(client.lrange(QUEUE, 0, -1))
            raw += [json.dumps(json.loads(v)[0]) for v in client.hvals("unacked")]
        return {json.loads(m)["headers"]["id"].rsplit("-", 1)[0] for m in raw}
    except Exception as exc:  # noqa: BLE001 - kombu's redis layout is not a public API
        LOG.warning("could not list the queue's messages (%s); resending queued jobs", exc)
        return None


def queued_order(app) -> list[str] | None:
    """Ids of the jobs waiting in redis, the next one first (kombu pushes on the left and
    workers pop on the right); None when the queue cannot be read."""
    try:
        with app.connection_for_read() as conn:
            raw = conn.default_channel.client.lrange(QUEUE, 0, -1)
        ids = [json.loads(m)["headers"]["id"].rsplit("-", 1)[0] for m in reversed(raw)]
        return list(dict.fromkeys(ids))
    except Exception:  # noqa: BLE001 - kombu's redis layout is not a public API
        return None


def sweep(app) -> dict:
    """Delete expired jobs; send again the jobs a dead worker or a lost message left behind."""
    settings = app.web_settings
    store = JobStore(settings.data_dir)
    removed = store.purge(settings.retention_seconds)
    waiting = waiting_job_ids(app)
    resent = []
    now = time.time()
    for job in store.all():
        if job["status"] == QUEUED:
            missing = waiting is None or job["id"] not in waiting
            if missing and now - job.get("queued_at", 0.0) > RESEND_AFTER:
                resent.append(job["id"])
        elif job["status"] == RUNNING:
            with job_lock(store.folder(job["id"]), wait=1) as free:
                if free:  # nobody holds it: its worker died
                    resent.append(job["id"])
    for job_id in resent:
        with job_lock(store.folder(job_id), wait=1) as locked:
            job = store.read(job_id)
            if locked and job and job["status"] not in FINISHED:
                store.write({**job, "queued_at": time.time()})
        send_job(app, job_id)
    if removed or resent:
        LOG.info("sweep: %d expired job(s) deleted, %d job(s) sent again: %s", len(removed),
                 len(resent), ", ".join(resent))
    return {"removed": removed, "resent": resent}


def _sweep_forever(app, first_delay: float = 0.0):
    time.sleep(first_delay)
    while True:
        try:
            sweep(app)
        except Exception:  # noqa: BLE001 - the next sweep tries again
            LOG.exception("sweep failed")
        time.sleep(SWEEP_SECONDS)


def run_worker(settings) -> int:
    """``bids_brainage-web worker``: celery's prefork worker on the job queue."""
    from celery import signals

    app = make_celery(settings)
    _check_memory(settings.concurrency)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    @signals.worker_process_init.connect(weak=False)
    def _init_process(**_):
        from bids_brainage.web.preload import warm_up

        try:
            warm_up(settings.threads_per_job)
        except Exception:  # noqa: BLE001 - jobs then fail with the reason, the pool lives
            LOG.exception("worker process %d could not preload the models", os.getpid())

    @signals.worker_ready.connect(weak=False)
    def _ready(**_):
        threading.Thread(target=_sweep_forever, args=(app,), daemon=True,
                         name="sweep").start()

    app.worker_main([
        "worker", f"--concurrency={settings.concurrency}", "--pool=prefork",
        f"--queues={QUEUE}", "--loglevel=INFO", "--hostname=bids_brainage@%h",
        "--without-gossip", "--without-mingle",
    ])
    return 0


def _check_memory(concurrency: int) -> None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return
    if concurrency * MEMORY_PER_JOB_GB > total:
        LOG.warning("--concurrency %d needs up to %.1f GB; this machine has %.1f GB: lower it",
                    concurrency, concurrency * MEMORY_PER_JOB_GB, total)
