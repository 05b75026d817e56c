"""The web app (Starlette): the upload page, the job pages and the JSON API.

Routes::

    GET  /                          upload form and the list of recent jobs
    POST /jobs                      the form's upload -> 303 to /jobs/{id}, or the form with why
    GET  /jobs/{id}                 the job page (live status, then ages, report, downloads)
    GET  /jobs/{id}/live            the page's status fragment, which the page polls
    GET  /jobs/{id}/report          the participant report (self-contained HTML)
    GET  /jobs/{id}/files/{name}    brainage.tsv, brainage.json, derivatives.zip
    POST /api/jobs                  multipart (file, age, sex[, skull_stripped, models, label])
                                    -> 201 {"id", "url"}; 4xx {"error"} when refused
    GET  /api/jobs/{id}             status, stage, queue position, predictions when done
    GET  /api/jobs                  the jobs of the last --list-days days

The app holds no job state: each request reads the job folders, so a restart loses nothing.
"""
from __future__ import annotations

import logging
import re
import time

from bids_brainage.web import pages
from bids_brainage.web.jobs import (FAILED, QUEUED, STAGE_LABELS, JobStore, is_orphaned,
                                    queued_by_time)
from bids_brainage.web.uploads import UploadError, check_scan, receive_upload

LOG = logging.getLogger("bids_brainage.web")
SEXES = (("", "not given"), ("F", "female"), ("M", "male"), ("O", "other"))
DOWNLOADS = {"brainage.tsv": ("tsv", "text/tab-separated-values"),
             "brainage.json": ("json", "application/json"),
             "derivatives.zip": ("zip", "application/zip")}
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; "
            "script-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'self'")
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
PURGE_SECONDS = 600.0


KINDS = {"forest": "random forest on the brain's intensity histogram",
         "ridge": "ridge regression on deformation (SyN) features",
         "resnet": "3D ResNet on the brain in MNI space",
         "ensemble": "weighted mean of the other models"}


def model_choices() -> list[dict]:
    """The bundled models for the form: name, what it is, its test error, default or not."""
    from bids_brainage.models.registry import default_models, load_cards

    cards = load_cards()
    defaults = default_models(cards)
    choices = []
    for name, card in cards.items():
        about = KINDS.get(card.get("kind"), (card.get("architecture") or "")[:60])
        mae = ((card.get("validation") or {}).get("test") or {}).get("mae")
        if isinstance(mae, (int, float)):
            about = f"{about}; test MAE {mae:.1f} years"
        choices.append({"name": name, "about": about, "default": name in defaults})
    return choices


def parse_fields(fields: dict[str, list[str]], filename: str, known_models) -> dict:
    """The form's fields as job options, or an :class:`UploadError` saying which is wrong.

    >>> parse_fields({"age": ["24.9"], "sex": ["f"], "models": ["rf,ensemble"]},
    ...              "sub-IXI095_T1w.nii.gz", ["rf", "morph", "ensemble"])["label"]
    'IXI095'
    """
    def one(name):
        values = fields.get(name) or [""]
        return values[-1].strip()

    age = one("age")
    if age:
        try:
            age = float(age)
        except ValueError:
            raise UploadError(400, f"age {age!r} is not a number of years") from None
        if not 0 < age < 130:
            raise UploadError(400, f"age {age:g} is not between 0 and 130 years")
    sex = one("sex").upper()[:1] if one("sex").lower() not in ("", "n/a") else ""
    if sex and sex not in ("F", "M", "O"):
        raise UploadError(400, f"sex {one('sex')!r}: give F, M, O or leave it empty")
    models = [m.strip() for v in fields.get("models", []) for m in v.split(",") if m.strip()]
    unknown = [m for m in models if m not in known_models]
    if unknown:
        raise UploadError(400, f"unknown model(s) {', '.join(unknown)}; available: "
                               f"{', '.join(known_models)}")
    label = one("label")
    if label.startswith("sub-"):
        label = label[4:]
    if label and not (label.isascii() and label.isalnum() and len(label) <= 64):
        raise UploadError(400, f"participant label {label!r}: letters and digits only")
    if not label:  # sub-XYZ_T1w.nii.gz keeps its label; anything else is sub-scan
        match = re.match(r"sub-([A-Za-z0-9]{1,64})[_.]", filename)
        label = match.group(1) if match else "scan"
    return {"age": age or None, "sex": sex or None, "label": label,
            "options": {"skull_stripped": one("skull_stripped").lower() in
                        ("1", "on", "yes", "true"), "models": models}}


def job_summary(store: JobStore, job: dict, position: int | None = None) -> dict:
    """What the API and the pages say about a job (``position``: its place in the queue)."""
    from bids_brainage.web.runner import predictions

    summary = {k: job.get(k) for k in ("id", "status", "stage", "submitted", "started",
                                        "finished", "attempts", "error", "notes", "input",
                                        "label", "age", "sex", "options")}
    summary["input"] = {k: v for k, v in (job.get("input") or {}).items() if k != "nifti"}
    summary["stage_label"] = STAGE_LABELS.get(job.get("stage"), job.get("stage"))
    summary["queue_position"] = position if job["status"] == QUEUED else None
    summary["worker_lost"] = is_orphaned(job, store.folder(job["id"]))
    summary["url"] = f"/jobs/{job['id']}"
    if job["status"] == "done":
        summary["predictions"] = predictions(store.folder(job["id"]), job)
        summary["downloads"] = {name: f"/jobs/{job['id']}/files/{name}" for name in DOWNLOADS}
        summary["report"] = f"/jobs/{job['id']}/report"
    return summary


class WebApp:
    """The handlers; each request reads the job folders afresh (no state in memory)."""

    def __init__(self, settings, celery_app):
        self.settings, self.celery_app = settings, celery_app
        self.store = JobStore(settings.data_dir)
        self.models = model_choices()
        days = settings.retention_days
        self.retention = f"{days:g} days" if days >= 1 else f"{days * 24:g} hours"

    # -- responses ------------------------------------------------------------------------
    def html(self, name: str, status: int = 200, **context):
        from starlette.responses import HTMLResponse

        body = pages.render(name, list_days=self.settings.list_days, **context)
        return HTMLResponse(body, status, headers={"Content-Security-Policy": PAGE_CSP})

    def not_found(self, api: bool = False):
        from starlette.responses import JSONResponse

        message = ("no such job: the link is wrong, or the job was deleted after its "
                   "retention time")
        if api:
            return JSONResponse({"error": message}, 404)
        return self.html("error", 404, title="Not found", message=message)

    def index_page(self, error: str | None = None, status: int = 200):
        settings = self.settings
        recent = self.store.recent(settings.list_days) if settings.list_days else []
        for job in recent:
            rows = job_summary(self.store, job).get("predictions") or [{}]
            main = next((r for r in rows if r.get("model") == "ensemble"), rows[0])
            job["main_age"], job["main_model"] = main.get("predicted_age"), main.get("model")
        form = {"models": [m["name"] for m in self.models if m["default"]]}
        return self.html("index", status, title="Upload a scan", error=error, jobs=recent,
                         models=self.models, sexes=SEXES, form=form, retention=self.retention,
                         limit_mb=f"{settings.max_upload_mb:g}",
                         limit_bytes=settings.max_upload_bytes)

    def live_context(self, job: dict) -> dict:
        summary = self.summary(job)
        rows = summary.get("predictions", [])
        return {"job": job, "position": summary["queue_position"],
                "stage_label": summary["stage_label"] or "starting",
                "worker_lost": summary["worker_lost"], "stages": pages.stages(job.get("stage")),
                "predictions": rows, "flag_columns": _flag_columns(rows)}

    def queue_order(self) -> list[str]:
        """Queued job ids, next first: as the broker holds them, else by time of queueing."""
        from bids_brainage.web.queue import queued_order

        order = queued_order(self.celery_app)
        return queued_by_time(self.store.all()) if order is None else order

    def summary(self, job: dict, order: list[str] | None = None) -> dict:
        position = None
        if job["status"] == QUEUED:
            order = self.queue_order() if order is None else order
            # not in the queue: a worker has taken it and is about to start
            position = order.index(job["id"]) + 1 if job["id"] in order else 1
        return job_summary(self.store, job, position)

    def find(self, request) -> dict | None:
        return self.store.read(request.path_params["job_id"])

    # -- uploads --------------------------------------------------------------------------
    async def accept(self, request) -> str:
        """Stream, check and queue one upload; returns the job id or raises UploadError."""
        from starlette.concurrency import run_in_threadpool

        job_id, folder = self.store.create()
        try:
            upload = await receive_upload(request, folder / "upload",
                                          self.settings.max_upload_bytes)
            fields = parse_fields(upload.fields, upload.filename,
                                  [m["name"] for m in self.models])
            scan = await run_in_threadpool(check_scan, upload, folder / "upload")
        except OSError as exc:  # a full disk, mostly
            self.store.remove(job_id)
            LOG.error("upload: %s", exc)
            raise UploadError(507, f"the server could not store the upload ({exc.strerror})")
        except BaseException:  # refused, the client left, or a bug: keep nothing of it
            self.store.remove(job_id)
            raise
        now = time.time()
        self.store.write({
            "id": job_id, "status": QUEUED, "stage": None, "submitted": now,
            "queued_at": now, "attempts": 0, "notes": [], **fields,
            "input": {"filename": upload.filename, "bytes": upload.size, "kind": scan["kind"],
                      "nifti": str(scan["nifti"].relative_to(folder)),
                      "shape": scan["shape"], "voxel_mm": scan["voxel_mm"]},
        })
        await run_in_threadpool(self.queue, job_id)
        LOG.info("job %s queued: %s", job_id, upload.filename)
        return job_id

    def queue(self, job_id: str) -> None:
        from bids_brainage.web.queue import send_job

        try:
            send_job(self.celery_app, job_id)
        except Exception as exc:  # noqa: BLE001 - the broker's errors vary
            LOG.error("job %s: could not queue: %s", job_id, exc)
            self.store.update(job_id, status=FAILED, finished=time.time(),
                              error=f"the job queue could not be reached "
                                    f"({type(exc).__name__}); please upload again later")
            raise UploadError(503, "the job queue (redis) could not be reached: the upload "
                                   "was checked but not queued; please try again later") from exc

    # -- routes ---------------------------------------------------------------------------
    async def index(self, request):
        return self.index_page()

    async def submit_form(self, request):
        from starlette.responses import RedirectResponse

        try:
            job_id = await self.accept(request)
        except UploadError as exc:
            return self.index_page(error=exc.message, status=exc.status)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    async def submit_api(self, request):
        from starlette.responses import JSONResponse

        try:
            job_id = await self.accept(request)
        except UploadError as exc:
            return JSONResponse({"error": exc.message}, exc.status)
        return JSONResponse({"id": job_id, "url": f"/jobs/{job_id}"}, 201,
                            headers={"Location": f"/api/jobs/{job_id}"})

    async def job_page(self, request):
        job = self.find(request)
        if job is None:
            return self.not_found()
        return self.html("job", title=job["input"]["filename"], **self.live_context(job))

    async def job_live(self, request):
        from starlette.responses import HTMLResponse

        job = self.find(request)
        if job is None:
            return self.not_found()
        body = pages.environment().get_template("live").render(**self.live_context(job))
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    async def job_api(self, request):
        from starlette.responses import JSONResponse

        job = self.find(request)
        if job is None:
            return self.not_found(api=True)
        return JSONResponse(self.summary(job), headers={"Cache-Control": "no-store"})

    async def jobs_api(self, request):
        from starlette.responses import JSONResponse

        days = self.settings.list_days
        if not days:
            return JSONResponse({"error": "the job list is turned off (--list-days 0)"}, 404)
        order = self.queue_order()
        return JSONResponse({"days": days, "jobs": [self.summary(j, order)
                                                    for j in self.store.recent(days)]})

    async def report(self, request):
        from starlette.responses import FileResponse

        job = self.find(request)
        if job is None or job.get("status") != "done":
            return self.not_found()
        path = self.store.folder(job["id"]) / job["outputs"]["report"]
        if not path.exists():
            return self.html("error", 404, title="No report", message="this job has no report")
        return FileResponse(path, media_type="text/html",
                            headers={"Content-Security-Policy": REPORT_CSP})

    async def download(self, request):
        from starlette.responses import FileResponse

        job, name = self.find(request), request.path_params["name"]
        if job is None or job.get("status") != "done" or name not in DOWNLOADS:
            return self.not_found()
        key, media = DOWNLOADS[name]
        path = self.store.folder(job["id"]) / job["outputs"][key]
        filename = path.name if key != "zip" else f"sub-{job['label']}_derivatives.zip"
        return FileResponse(path, media_type=media, filename=filename)

    async def script(self, request):
        from starlette.responses import Response

        return Response(pages.SCRIPT, media_type="text/javascript")

    async def purge_forever(self):
        import asyncio

        from starlette.concurrency import run_in_threadpool

        while True:
            try:
                removed = await run_in_threadpool(self.store.purge,
                                                  self.settings.retention_seconds)
                if removed:
                    LOG.info("deleted %d job(s) past the retention time", len(removed))
            except Exception:  # noqa: BLE001 - the next round tries again
                LOG.exception("purge")
            await asyncio.sleep(PURGE_SECONDS)


def create_app(settings, celery_app=None):
    """The ASGI app for ``settings``; ``celery_app`` sends the jobs (made from the settings
    when not given)."""
    import asyncio
    import contextlib

    from starlette.applications import Starlette
    from starlette.routing import Route

    from bids_brainage.web.queue import make_celery

    web = WebApp(settings, celery_app or make_celery(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        web.store.root.mkdir(parents=True, exist_ok=True)
        task = asyncio.create_task(web.purge_forever())
        yield
        task.cancel()

    job = "/jobs/{job_id:str}"
    routes = [
        Route("/", web.index), Route("/jobs", web.submit_form, methods=["POST"]),
        Route(job, web.job_page), Route(f"{job}/live", web.job_live),
        Route(f"{job}/report", web.report), Route(f"{job}/files/{{name:str}}", web.download),
        Route("/api/jobs", web.submit_api, methods=["POST"]), Route("/api/jobs", web.jobs_api),
        Route("/api/jobs/{job_id:str}", web.job_api), Route("/static/page.js", web.script),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _flag_columns(rows: list[dict]) -> list[str]:
    """Columns of the predictions table beyond the standard ones (a reliability flag, say),
    and ``message`` when a row has one (a warning on an ``ok`` row).

    >>> _flag_columns([{"model": "rf", "flag": "outside ages", "message": None}])
    ['flag']
    """
    standard = {"participant_id", "session_id", "run", "model", "predicted_age",
                "interval_low", "interval_high", "age", "brain_age_gap", "status", "message"}
    extra = [k for k in (rows[0] if rows else {}) if k not in standard]
    return extra + (["message"] if any(r.get("message") for r in rows) else [])
