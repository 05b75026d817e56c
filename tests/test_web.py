"""The web service with real parts: redis-server, the web app and a celery worker as
subprocesses on free loopback ports, uploads over HTTP and through the page in Debian's
headless chromium (driven as in test_report_browser.py).

Screenshots of the upload, running and done pages go to ``$WEB_SHOTS_DIR`` when set.
"""
from __future__ import annotations

import base64
import csv
import doctest
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import EXAMPLE

requests = pytest.importorskip("requests")
pytest.importorskip("celery", reason="needs the web extra: pip install -e '.[web]'")

try:
    from tests import _web_services as services
except ImportError:  # tests/ run as a rootdir without a package
    import _web_services as services

SCAN = EXAMPLE / "sub-IXI095" / "anat" / "sub-IXI095_T1w.nii.gz"
needs_redis = pytest.mark.skipif(not Path(services.REDIS).exists(),
                                 reason="needs redis-server (tests/system-deps.txt)")
JOB_TIMEOUT = 900.0  # one job is ~40 s on 2 free cores; the machine is shared


# --- fast: the parts on their own -------------------------------------------------------

def test_doctests():
    from bids_brainage.web import app, jobs, pages, runner, settings, uploads

    for module in (app, jobs, pages, runner, settings, uploads):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0, module


def test_help_names_every_option_and_its_environment_variable(capsys, monkeypatch):
    from bids_brainage.web.cli import main

    monkeypatch.setenv("BIDS_BRAINAGE_WEB_RETENTION_DAYS", "3")
    for command, flags in (("serve", ("--host", "--port", "--max-upload-mb", "--list-days")),
                           ("worker", ("--concurrency", "--threads", "--job-time-limit"))):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for flag in flags + ("--broker", "--data-dir", "--retention-days"):
            assert flag in text
            assert "BIDS_BRAINAGE_WEB_" + flag[2:].replace("-", "_").upper() in text
        assert "default: 3.0" in text  # the environment variable is the default
    assert main(["serve", "--port", "0"]) == 64


def test_queue_order_purge_and_listing(tmp_path):
    from bids_brainage.web.jobs import JobStore, queued_by_time

    store = JobStore(tmp_path)
    now = time.time()
    states = [("done", now - 9 * 86400, now - 9 * 86400), ("failed", now - 3600, now - 3000),
              ("queued", now - 20, None), ("running", now - 30, None), ("queued", now - 10, None)]
    ids = []
    for status, submitted, finished in states:
        job_id, _ = store.create()
        ids.append(job_id)
        store.write({"id": job_id, "status": status, "submitted": submitted,
                     "queued_at": submitted, "finished": finished})
    _, abandoned = store.create()  # an upload that never became a job
    os.utime(abandoned, (now - 2 * 86400, now - 2 * 86400))
    jobs = store.all()
    assert queued_by_time(jobs) == [ids[2], ids[4]]
    assert [j["id"] for j in store.recent(7)] == [ids[4], ids[2], ids[3], ids[1]]
    removed = store.purge(retention_seconds=86400)
    assert sorted(removed) == sorted([ids[0], abandoned.name])  # not the queued or running
    assert store.read(ids[1]) is not None
    assert store.purge(retention_seconds=600) == [ids[1]]
    assert store.read("../../etc") is None


def test_a_killed_holder_releases_the_job_lock(tmp_path):
    from bids_brainage.web.jobs import is_orphaned, job_lock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"),
        str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        running = {"status": "running"}
        with job_lock(tmp_path, wait=0.3) as locked:
            assert not locked  # a live process runs this job
        assert not is_orphaned(running, tmp_path)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert is_orphaned(running, tmp_path)  # the page says its worker stopped
        with job_lock(tmp_path, wait=0.3) as locked:
            assert locked  # and the job can be taken again
    finally:
        holder.kill()
        holder.wait()


def test_a_job_whose_worker_died_twice_is_failed_with_the_stage(tmp_path):
    """The task's own decision, on real job folders (nothing to run: no pipeline starts)."""
    from types import SimpleNamespace

    from bids_brainage.web.jobs import JobStore
    from bids_brainage.web.queue import MAX_ATTEMPTS, _run_job_task
    from bids_brainage.web.settings import WebSettings

    store = JobStore(tmp_path)
    task = SimpleNamespace(app=SimpleNamespace(web_settings=WebSettings(data_dir=tmp_path)))
    job_id, _ = store.create()
    store.write({"id": job_id, "status": "running", "stage": "register",
                 "attempts": MAX_ATTEMPTS, "submitted": 1.0, "notes": []})
    assert _run_job_task(task, job_id) == "failed: worker lost"
    job = store.read(job_id)
    assert job["status"] == "failed" and job["finished"]
    assert f"stopped during 'register' (killed, or out of memory), {MAX_ATTEMPTS} times" in (
        job["error"])
    finished, _ = store.create()
    store.write({"id": finished, "status": "done", "submitted": 1.0})
    assert _run_job_task(task, finished) == "already finished"  # a duplicate message
    assert _run_job_task(task, "../../etc") == "not a job id"


# --- bad uploads over HTTP ----------------------------------------------------------------

def _dicom_series(folder: Path, volume: np.ndarray, number: int, study: str) -> None:
    """Axial slices of ``volume`` as an MR DICOM series (2 mm voxels)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    data = np.clip(volume, 0, 32000).astype("<i2")
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{number}_{k:03d}.dcm"), {}, file_meta=meta,
                         preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SeriesNumber, ds.InstanceNumber, ds.Modality = number, k + 1, "MR"
        ds.PatientName, ds.PatientID = "Phantom^Web", "web-test"
        ds.SeriesDescription = f"T1w_series{number}"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.0
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).tobytes()
        ds.save_as(folder / f"s{number}_{k:03d}.dcm", enforce_file_format=True)


def _zip(path: Path, folder: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            zf.write(file, file.relative_to(folder))
    return path


def bad_files(folder: Path) -> list[tuple[str, Path, str, int, str]]:
    """(case, file, name to upload it as, expected status, words the message must hold)."""
    folder.mkdir(parents=True)
    head = np.asarray(nib.load(SCAN).dataobj, dtype=np.float32)
    affine = nib.load(SCAN).affine
    (folder / "notes.nii").write_text("this is a text file, not an image\n")
    raw = SCAN.read_bytes()
    (folder / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    small = head[::2, ::2, ::2]  # 60 x 60 x 45: under the 2 MB limit with three volumes
    nib.Nifti1Image(np.stack([small] * 3, axis=-1), affine).to_filename(folder / "fmri.nii.gz")
    nib.Nifti1Image(head[:, :, 40], affine).to_filename(folder / "slice.nii.gz")
    (folder / "readme").mkdir()
    (folder / "readme" / "README.txt").write_text("no DICOM in here\n")
    _zip(folder / "nodicom.zip", folder / "readme")
    study = "1.2.826.0.1.3680043.8.498.1"
    _dicom_series(folder / "two" / "a", head[:, :, ::3], 2, study)
    _dicom_series(folder / "two" / "b", head[:, :, 1::3], 3, study)
    _zip(folder / "two_series.zip", folder / "two")
    (folder / "big.nii.gz").write_bytes(os.urandom(int(2.5 * 2**20)))
    (folder / "report.pdf").write_bytes(b"%PDF-1.4\n")
    return [
        ("not NIfTI", folder / "notes.nii", "notes.nii", 422, "cannot read the image"),
        ("truncated gzip", folder / "cut.nii.gz", "cut.nii.gz", 422, "cannot read the image"),
        ("4-D", folder / "fmri.nii.gz", "fmri.nii.gz", 422, "expected a 3-D T1w image, got 4-D"),
        ("2-D", folder / "slice.nii.gz", "slice.nii.gz", 422, "expected a 3-D T1w image, got 2-D"),
        ("zip without DICOM", folder / "nodicom.zip", "nodicom.zip", 422, "no DICOM image"),
        ("zip with two series", folder / "two_series.zip", "two_series.zip", 422,
         "holds 2 DICOM series"),
        ("over the size limit", folder / "big.nii.gz", "big.nii.gz", 413,
         "larger than the upload limit of 2 MB"),
        ("not a scan file", folder / "report.pdf", "report.pdf", 415, "not a .nii, .nii.gz or .zip"),
        ("name with ../", SCAN, "../../outside.nii.gz", 400, "is a path"),
        ("non-ASCII name", SCAN, "scän_T1w.nii.gz", 400, "plain ASCII"),
    ]


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture(scope="module")
def web_no_worker(tmp_path_factory):
    """redis and the web app (2 MB upload limit), no worker: uploads stay queued."""
    base = tmp_path_factory.mktemp("web_bad")
    redis, broker = services.start_redis(base / "redis")
    web = None
    try:
        web, url = services.start_web(broker, base / "data", base / "web.log",
                                      "--max-upload-mb", "2", tmp=base / "tmp")
        yield {"url": url, "data": base / "data", "tmp": base / "tmp", "base": base, "web": web}
    finally:
        if web is not None:
            web.stop()
        redis.stop()


@needs_redis
def test_bad_uploads_are_refused_with_a_reason_and_leave_nothing(web_no_worker):
    url, data, tmp = web_no_worker["url"], web_no_worker["data"], web_no_worker["tmp"]
    cases = bad_files(web_no_worker["base"] / "bad")
    before = _files_under(data)
    table = []
    for case, path, name, status, words in cases:
        with open(path, "rb") as fh:
            reply = requests.post(f"{url}/api/jobs", files={"file": (name, fh)},
                                  data={"age": "30"}, timeout=120)
        table.append((case, name, reply.status_code, reply.json().get("error")))
        assert reply.status_code == status, (case, reply.text)
        assert words in reply.json()["error"], (case, reply.json())
        assert str(data) not in reply.json()["error"]  # no server paths
        assert _files_under(data) == before, case  # the refused job's folder is gone too
        assert _files_under(tmp) == set(), case  # and nothing went to a temporary file
        assert not (web_no_worker["base"] / "outside.nii.gz").exists()
    # the page says the same to a person who submits the form
    with open(cases[2][1], "rb") as fh:
        page = requests.post(f"{url}/jobs", files={"file": ("fmri.nii.gz", fh)}, timeout=120)
    assert page.status_code == 422 and "expected a 3-D T1w image, got 4-D" in page.text
    assert "Upload refused" in page.text
    # a chunked upload (no Content-Length) over the limit is cut while it streams
    def chunks():
        for _ in range(40):
            yield os.urandom(1 << 16)
    body_head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.nii\"\r\n"
                 b"\r\n")
    stream = (part for part in [body_head, *chunks(), b"\r\n--b--\r\n"])
    reply = requests.post(f"{url}/api/jobs", data=stream, timeout=120,
                          headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status_code == 413 and _files_under(data) == before
    for case, name, code, message in table:
        print(f"{case:22s} {name:24s} {code}  {message}")
    # the service still serves, and a good scan is still accepted
    with open(SCAN, "rb") as fh:
        good = requests.post(f"{url}/api/jobs", files={"file": (SCAN.name, fh)},
                             data={"age": "24.9", "sex": "F"}, timeout=60)
    assert good.status_code == 201, good.text
    job = requests.get(f"{url}/api/jobs/{good.json()['id']}", timeout=10).json()
    assert job["status"] == "queued" and job["queue_position"] >= 1
    assert job["age"] == 24.9 and job["label"] == "IXI095"
    assert job["input"]["shape"] == list(nib.load(SCAN).shape)
    assert requests.get(url + "/", timeout=10).status_code == 200


@needs_redis
@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="needs dcm2niix")
def test_a_zip_of_one_dicom_series_is_converted(web_no_worker, tmp_path):
    head = np.asarray(nib.load(SCAN).dataobj, dtype=np.float32)[:, :, ::2]
    _dicom_series(tmp_path / "one", head, 5, "1.2.826.0.1.3680043.8.498.2")
    archive = _zip(tmp_path / "T1w_dicom.zip", tmp_path / "one")
    with open(archive, "rb") as fh:
        reply = requests.post(f"{web_no_worker['url']}/api/jobs",
                              files={"file": ("T1w_dicom.zip", fh)}, timeout=120)
    assert reply.status_code == 201, reply.text
    job = requests.get(f"{web_no_worker['url']}/api/jobs/{reply.json()['id']}", timeout=10).json()
    assert job["input"]["kind"] == "dicom"
    assert sorted(job["input"]["shape"]) == sorted(head.shape)
    assert job["input"]["voxel_mm"] == [2.0, 2.0, 2.0]
    folder = web_no_worker["data"] / "jobs" / job["id"] / "upload"
    assert not (folder / "dicom").exists()  # the unpacked files are removed after conversion


@needs_redis
def test_queue_positions_are_the_brokers_order(web_no_worker):
    url = web_no_worker["url"]
    ids = []
    for _ in range(3):
        with open(SCAN, "rb") as fh:
            ids.append(requests.post(f"{url}/api/jobs", files={"file": (SCAN.name, fh)},
                                     timeout=60).json()["id"])
    positions = [requests.get(f"{url}/api/jobs/{i}", timeout=10).json()["queue_position"]
                 for i in ids]
    assert positions[1:] == [positions[0] + 1, positions[0] + 2]  # no worker: all wait
    listed = {j["id"]: j for j in requests.get(f"{url}/api/jobs", timeout=10).json()["jobs"]}
    assert [listed[i]["queue_position"] for i in ids] == positions
    page = requests.get(f"{url}/jobs/{ids[2]}", timeout=10).text
    assert f"Queued: position {positions[2]} in the queue" in page


@needs_redis
def test_unknown_job_ids_are_not_found(web_no_worker):
    url = web_no_worker["url"]
    for path in ("/api/jobs/0123456789abcdef0123456789abcdef", "/jobs/..%2F..%2Fetc",
                 "/jobs/0123456789abcdef0123456789abcdef/files/brainage.tsv"):
        assert requests.get(url + path, timeout=10).status_code == 404, path


# --- the page in a browser, and a killed worker --------------------------------------------

@pytest.fixture(scope="module")
def web_with_worker(tmp_path_factory):
    base = tmp_path_factory.mktemp("web_run")
    redis, broker = services.start_redis(base / "redis")
    started = [redis]
    try:
        worker = services.start_worker(broker, base / "data", base / "worker.log")
        started.append(worker)
        web, url = services.start_web(broker, base / "data", base / "web.log")
        started.append(web)
        yield {"url": url, "broker": broker, "data": base / "data", "base": base,
               "worker": worker, "web": web, "started": started}
    finally:
        for service in reversed(started):
            service.stop()


def _shot(browser, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WEB_SHOTS_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    size = browser.page("Page.getLayoutMetrics")["cssContentSize"]
    shot = browser.page("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 4000), "scale": 1}})
    path = folder / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _js(browser, expression: str):
    reply = browser.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                              "awaitPromise": True})
    return reply["result"].get("value")


def _read_tsv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.mark.slow
@needs_redis
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium")
def test_upload_through_the_page_shows_the_bids_apps_ages(web_with_worker, example_run,
                                                          tmp_path):
    from test_report_browser import Chromium, _drain, _errors, _wait_for

    code, out, _ = example_run
    expected = _read_tsv(out / "sub-IXI095" / "anat" / "sub-IXI095_brainage.tsv")
    assert code == 0 and expected
    url = web_with_worker["url"]
    browser = Chromium(tmp_path / "profile")
    try:
        for domain in ("Runtime", "Log", "Page", "DOM"):
            browser.page(f"{domain}.enable")
        browser.page("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        browser.page("Page.navigate", {"url": url + "/"})
        _wait_for(browser, "Page.loadEventFired")
        # as a person would: choose the file, type the age, pick the sex, press the button
        node = browser.page("Runtime.evaluate",
                            {"expression": "document.getElementById('file')"})["result"]
        browser.page("DOM.setFileInputFiles", {"files": [str(SCAN)], "objectId": node["objectId"]})
        _js(browser, "document.getElementById('age').value = '24.9';"
                     "document.getElementById('sex').value = 'F';")
        _shot(browser, "web-upload.png", tmp_path)
        events = _drain(browser.events)
        _js(browser, "document.querySelector('form.upload button[type=submit]').click()")
        events += _wait_for(browser, "Page.loadEventFired")
        path = _js(browser, "location.pathname")
        assert path.startswith("/jobs/"), (path, _js(browser, "document.body.innerText"))
        job_id = path.split("/")[2]
        seen, running_shot = [], False
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            status = _js(browser, "document.getElementById('live').dataset.status")
            text = _js(browser, "document.querySelector('#live .state').innerText")
            if not seen or seen[-1] != text:
                seen.append(text)
            if status == "running" and "registering" in text and not running_shot:
                _shot(browser, "web-running.png", tmp_path)
                running_shot = True
            if status in ("done", "failed"):
                break
            time.sleep(0.5)
        events += _drain(browser.events)
        assert status == "done", (seen, _js(browser, "document.body.innerText"),
                                  web_with_worker["worker"].tail())
        # the status changed on the page without a reload: one page load after the submit
        assert sum(e.get("method") == "Page.loadEventFired" for e in events) == 1
        assert any(s.startswith("Running") for s in seen), seen
        time.sleep(1.0)  # the report frame
        _shot(browser, "web-done.png", tmp_path)
        shown = _js(browser, """Array.from(document.querySelectorAll(
            'table.predictions tr[data-model]')).map(tr => [tr.dataset.model,
            tr.querySelector('td.age').innerText, tr.querySelector('td.age').dataset.value])""")
        frame = _js(browser, "document.querySelector('iframe.report').getAttribute('src')")
        errors = _errors(events + _drain(browser.events))
    finally:
        browser.close()
    assert [m for m, _, _ in shown] == [r["model"] for r in expected]
    for (model, text, value), row in zip(shown, expected):
        assert float(value) == float(row["predicted_age"]), model  # the app's own number
        assert text == f"{float(row['predicted_age']):.1f}", model  # shown rounded
    # the report is shown in a sandboxed frame (an origin of its own, closed to this page)
    assert frame == f"/jobs/{job_id}/report"
    report = requests.get(f"{url}/jobs/{job_id}/report", timeout=10)
    assert report.status_code == 200 and "Brain-age report: sub-IXI095" in report.text
    assert errors == []
    # the API and the downloads say the same as the BIDS App's table
    job = requests.get(f"{url}/api/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "done" and job["attempts"] == 1
    for got, row in zip(job["predictions"], expected):
        for key in ("model", "predicted_age", "interval_low", "interval_high", "age",
                    "brain_age_gap"):
            want = row[key] if key == "model" else float(row[key])
            assert got[key] == want, key
    tsv = requests.get(f"{url}/jobs/{job_id}/files/brainage.tsv", timeout=10)
    assert tsv.status_code == 200
    assert tsv.text == (out / "sub-IXI095/anat/sub-IXI095_brainage.tsv").read_text()
    archive = requests.get(f"{url}/jobs/{job_id}/files/derivatives.zip", timeout=30)
    names = zipfile.ZipFile(__import__("io").BytesIO(archive.content)).namelist()
    assert any(n.endswith("sub-IXI095_brainage.json") for n in names)
    assert any(n.endswith("sub-IXI095.html") for n in names)
    folder = web_with_worker["data"] / "jobs" / job_id
    assert not (folder / "work").exists()  # intermediate files are removed


@pytest.mark.slow
@needs_redis
def test_a_killed_worker_and_web_app_lose_no_job(web_with_worker, tmp_path):
    """SIGKILL the worker (its pool process too) mid-job and the web app: after both restart,
    the job is retried and done, never left running."""
    url, data, broker = web_with_worker["url"], web_with_worker["data"], web_with_worker["broker"]
    with open(SCAN, "rb") as fh:
        reply = requests.post(f"{url}/api/jobs", files={"file": ("scan_T1w.nii.gz", fh)},
                              timeout=60)
    job_id = reply.json()["id"]

    def job():
        return requests.get(f"{web_with_worker['url']}/api/jobs/{job_id}", timeout=10).json()

    deadline = time.monotonic() + JOB_TIMEOUT
    while job()["stage"] not in ("n4", "register", "normalize", "predict"):
        assert time.monotonic() < deadline and job()["status"] in ("queued", "running")
        time.sleep(0.3)
    web_with_worker["worker"].kill(signal.SIGKILL)
    web_with_worker["worker"].proc.wait()
    web_with_worker["web"].kill(signal.SIGKILL)
    web_with_worker["web"].proc.wait()
    stopped_in = json.loads((data / "jobs" / job_id / "job.json").read_text())
    assert stopped_in["status"] == "running"
    web, web_with_worker["url"] = services.start_web(broker, data, web_with_worker["base"] / "web2.log")
    web_with_worker["started"].append(web)
    lost = job()
    assert lost["status"] == "running" and lost["worker_lost"]  # the new web app knows
    worker = services.start_worker(broker, data, web_with_worker["base"] / "worker2.log")
    web_with_worker["started"].append(worker)
    while job()["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, (job(), worker.tail())
        time.sleep(1.0)
    final = job()
    assert final["status"] == "done", (final, worker.tail())
    assert final["attempts"] == 2
    assert f"stopped during '{stopped_in['stage']}'" in final["notes"][0]
    assert [r["status"] for r in final["predictions"]] == ["ok"] * len(final["predictions"])
