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
                                    queue_position)
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


def job_summary(store: JobStore, job: dict, jobs: list[dict] | None = None) -> dict:
    """What the API and the pages say about a job."""
    from bids_brainage.web.runner import predictions

    jobs = store.all() if jobs is None and job["status"] == QUEUED else jobs or []
    summary = {k: job.get(k) for k in ("id", "status", "stage", "submitted", "started",
                                        "finished", "attempts", "error", "notes", "input",
                                        "label", "age", "sex", "options")}
    summary["input"] = {k: v for k, v in (job.get("input") or {}).items() if k != "nifti"}
    summary["stage_label"] = STAGE_LABELS.get(job.get("stage"), job.get("stage"))
    summary["queue_position"] = queue_position(job, jobs) if job["status"] == QUEUED else None
    summary["worker_lost"] = is_orphaned(job, store.folder(job["id"]))
    summary["url"] = f"/jobs/{job['id']}"
    if job["status"] == "done":
        summary["predictions"] = predictions(store.folder(job["id"]), job)
        summary["downloads"] = {name: f"/jobs/{job['id']}/files/{name}" for name in DOWNLOADS}
        summary["report"] = f"/jobs/{job['id']}/report"
    return summary


def create_app(settings, celery_app=None):
    """The ASGI app for ``settings``; ``celery_app`` sends the jobs (made from the settings
    when not given)."""
    import asyncio
    import contextlib

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect
    from starlette.responses import (FileResponse, HTMLResponse, JSONResponse,
                                     RedirectResponse, Response)
    from starlette.routing import Route

    from bids_brainage.web.queue import make_celery, send_job

    store = JobStore(settings.data_dir)
    celery_app = celery_app or make_celery(settings)
    models = model_choices()
    model_names = [m["name"] for m in models]
    retention = (f"{settings.retention_days:g} days" if settings.retention_days >= 1
                 else f"{settings.retention_days * 24:g} hours")

    def html(name, status=200, **context):
        body = pages.render(name, list_days=settings.list_days, **context)
        return HTMLResponse(body, status, headers={"Content-Security-Policy": PAGE_CSP})

    def index_page(error=None, status=200, form=None):
        recent = store.recent(settings.list_days) if settings.list_days else []
        for job in recent:
            rows = job_summary(store, job, []).get("predictions") or [{}]
            main = next((r for r in rows if r.get("model") == "ensemble"), rows[0])
            job["main_age"] = main.get("predicted_age")
            job["main_model"] = main.get("model")
        form = form or {"models": [m["name"] for m in models if m["default"]]}
        return html("index", status, title="Upload a scan", error=error, jobs=recent,
                    models=models, sexes=SEXES, form=form, retention=retention,
                    limit_mb=f"{settings.max_upload_mb:g}",
                    limit_bytes=settings.max_upload_bytes)

    async def accept(request) -> str:
        """Stream, check and queue one upload; returns the job id or raises UploadError."""
        job_id, folder = store.create()
        try:
            upload = await receive_upload(request, folder / "upload", settings.max_upload_bytes)
            fields = parse_fields(upload.fields, upload.filename, model_names)
            scan = await run_in_threadpool(check_scan, upload, folder / "upload")
        except (UploadError, ClientDisconnect):
            store.remove(job_id)
            raise
        except OSError as exc:  # a full disk, mostly
            store.remove(job_id)
            LOG.error("upload: %s", exc)
            raise UploadError(507, f"the server could not store the upload ({exc.strerror})")
        except Exception:
            store.remove(job_id)
            LOG.exception("upload")
            raise UploadError(500, "the server could not read this upload; see its log")
        now = time.time()
        store.write({
            "id": job_id, "status": QUEUED, "stage": None, "submitted": now,
            "queued_at": now, "attempts": 0, "notes": [], **fields,
            "input": {"filename": upload.filename, "bytes": upload.size, "kind": scan["kind"],
                      "nifti": str(scan["nifti"].relative_to(folder)),
                      "shape": scan["shape"], "voxel_mm": scan["voxel_mm"]},
        })
        try:
            await run_in_threadpool(send_job, celery_app, job_id)
        except Exception as exc:  # noqa: BLE001 - the broker's errors vary
            LOG.error("job %s: could not queue: %s", job_id, exc)
            store.update(job_id, status=FAILED, finished=time.time(),
                         error=f"the job queue could not be reached ({type(exc).__name__}); "
                               "please upload again later")
            raise UploadError(503, "the job queue (redis) could not be reached: the upload was "
                                   "checked but not queued; please try again later") from exc
        LOG.info("job %s queued: %s", job_id, upload.filename)
        return job_id

    async def index(request):
        return index_page()

    async def submit_form(request):
        try:
            job_id = await accept(request)
        except UploadError as exc:
            return index_page(error=exc.message, status=exc.status)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    async def submit_api(request):
        try:
            job_id = await accept(request)
        except UploadError as exc:
            return JSONResponse({"error": exc.message}, exc.status)
        return JSONResponse({"id": job_id, "url": f"/jobs/{job_id}"}, 201,
                            headers={"Location": f"/api/jobs/{job_id}"})

    def find(request) -> dict | None:
        return store.read(request.path_params["job_id"])

    def not_found(api=False):
        message = "no such job: the link is wrong, or the job was deleted after its retention time"
        if api:
            return JSONResponse({"error": message}, 404)
        return html("error", 404, title="Not found", message=message)

    def live_context(job):
        summary = job_summary(store, job)
        return {"job": job, "position": summary["queue_position"],
                "stage_label": summary["stage_label"] or "starting",
                "worker_lost": summary["worker_lost"], "stages": pages.stages(job.get("stage")),
                "predictions": summary.get("predictions", []),
                "flag_columns": _flag_columns(summary.get("predictions", []))}

    async def job_page(request):
        job = find(request)
        if job is None:
            return not_found()
        return html("job", title=job["input"]["filename"], **live_context(job))

    async def job_live(request):
        job = find(request)
        if job is None:
            return not_found()
        body = pages.environment().get_template("live").render(**live_context(job))
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    async def job_api(request):
        job = find(request)
        if job is None:
            return not_found(api=True)
        return JSONResponse(job_summary(store, job), headers={"Cache-Control": "no-store"})

    async def jobs_api(request):
        if not settings.list_days:
            return JSONResponse({"error": "the job list is turned off (--list-days 0)"}, 404)
        jobs = store.all()
        recent = store.recent(settings.list_days)
        return JSONResponse({"days": settings.list_days,
                             "jobs": [job_summary(store, j, jobs) for j in recent]})

    async def report(request):
        job = find(request)
        if job is None or job.get("status") != "done":
            return not_found()
        path = store.folder(job["id"]) / job["outputs"]["report"]
        if not path.exists():
            return html("error", 404, title="No report", message="this job has no report")
        return FileResponse(path, media_type="text/html",
                            headers={"Content-Security-Policy": REPORT_CSP})

    async def download(request):
        job = find(request)
        name = request.path_params["name"]
        if job is None or job.get("status") != "done" or name not in DOWNLOADS:
            return not_found()
        key, media = DOWNLOADS[name]
        path = store.folder(job["id"]) / job["outputs"][key]
        filename = path.name if key != "zip" else f"sub-{job['label']}_derivatives.zip"
        return FileResponse(path, media_type=media, filename=filename)

    async def script(request):
        return Response(pages.SCRIPT, media_type="text/javascript")

    async def purge_forever():
        while True:
            with contextlib.suppress(Exception):
                removed = await run_in_threadpool(store.purge, settings.retention_seconds)
                if removed:
                    LOG.info("deleted %d job(s) past the retention time", len(removed))
            await asyncio.sleep(PURGE_SECONDS)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        store.root.mkdir(parents=True, exist_ok=True)
        task = asyncio.create_task(purge_forever())
        yield
        task.cancel()

    job = "/jobs/{job_id:str}"
    routes = [
        Route("/", index), Route("/jobs", submit_form, methods=["POST"]),
        Route(job, job_page), Route(f"{job}/live", job_live), Route(f"{job}/report", report),
        Route(f"{job}/files/{{name:str}}", download),
        Route("/api/jobs", submit_api, methods=["POST"]), Route("/api/jobs", jobs_api),
        Route("/api/jobs/{job_id:str}", job_api), Route("/static/page.js", script),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _flag_columns(rows: list[dict]) -> list[str]:
    """Columns of the predictions table beyond the standard ones (e.g. a reliability flag)."""
    standard = {"participant_id", "session_id", "run", "model", "predicted_age",
                "interval_low", "interval_high", "age", "brain_age_gap", "status", "message"}
    return [k for k in (rows[0] if rows else {}) if k not in standard]
