"""Both reports opened in a real headless browser (Debian's chromium).

The browser is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
JSON messages ending in NUL on file descriptors 3 and 4), so no websocket client or
Selenium is needed. Each page must load with no console error, every image must decode, no
request may leave the file (self-contained, opens offline), and a screenshot is saved
(to ``$REPORT_SHOTS_DIR`` when set, e.g. /tmp/reports-shots, else the test's tmp folder).
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import subprocess
import threading
from pathlib import Path

import pytest

try:
    from tests import _report_data as data
except ImportError:  # tests/ run as a rootdir without a package
    import _report_data as data

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium; "
           "listed in tests/system-deps.txt)",
)
TIMEOUT = 30.0


def _high(fd: int) -> int:
    """The same pipe end on a descriptor number of 10 or more (close-on-exec)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Chromium:
    """A headless chromium with one page, driven over the DevTools pipe."""

    def __init__(self, profile: Path):
        # above fd 4, so that the dup2 onto 3 and 4 in the child never meets itself
        to_browser_r, self._to_browser = (_high(fd) for fd in os.pipe())
        self._from_browser, from_browser_w = (_high(fd) for fd in os.pipe())

        def wire_fds():  # in the child: the protocol lives on fds 3 (in) and 4 (out)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--disable-component-update", "--mute-audio", f"--user-data-dir={profile}",
             "about:blank"],
            preexec_fn=wire_fds, close_fds=False,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: queue.Queue = queue.Queue()
        self._lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]

    def _read(self):
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._replies[message["id"]] = message
                        self._lock.notify_all()
                else:
                    self.events.put(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None):
        self._next_id += 1
        number = self._next_id
        message = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: number in self._replies, timeout=TIMEOUT):
                raise TimeoutError(f"chromium did not answer {method}")
            reply = self._replies.pop(number)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def page(self, method: str, params: dict | None = None):
        return self.send(method, params, session=self.session)

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


IMAGE_CHECK = """Promise.all(Array.from(document.images).map(img => img.decode().then(
    () => ({ok: img.naturalWidth > 0 && img.naturalHeight > 0, width: img.naturalWidth,
            height: img.naturalHeight, src: img.src.slice(0, 30)}),
    error => ({ok: false, error: String(error), src: img.src.slice(0, 30)}))))"""


def _drain(events: queue.Queue) -> list[dict]:
    found = []
    while True:
        try:
            found.append(events.get_nowait())
        except queue.Empty:
            return found


def _wait_for(browser: Chromium, method: str) -> list[dict]:
    seen = []
    while True:
        event = browser.events.get(timeout=TIMEOUT)
        seen.append(event)
        if event.get("method") == method and event.get("sessionId") == browser.session:
            return seen


def open_report(browser: Chromium, path: Path, screenshot: Path) -> dict:
    """Load ``path``; return console errors, outside requests, image checks and page text."""
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.page(f"{domain}.enable")
    browser.page("Emulation.setDeviceMetricsOverride",
                 {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    _drain(browser.events)
    browser.page("Page.navigate", {"url": path.resolve().as_uri()})
    events = _wait_for(browser, "Page.loadEventFired")
    images = browser.page("Runtime.evaluate", {"expression": IMAGE_CHECK, "awaitPromise": True,
                                               "returnByValue": True})["result"]["value"]
    text = browser.page("Runtime.evaluate", {"expression": "document.body.innerText",
                                             "returnByValue": True})["result"]["value"]
    size = browser.page("Page.getLayoutMetrics")["cssContentSize"]
    shot = browser.page("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 12000), "scale": 1},
    })
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    events += _drain(browser.events)
    return {"errors": _errors(events), "requests": _outside_requests(events, path),
            "images": images, "text": text}


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(str(details.get("exception", {}).get("description")
                              or details.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(str(params.get("args")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", ""))
    return errors


def _outside_requests(events: list[dict], path: Path) -> list[str]:
    own = path.resolve().as_uri()
    return [
        event["params"]["request"]["url"] for event in events
        if event.get("method") == "Network.requestWillBeSent"
        and not event["params"]["request"]["url"].startswith(("data:", own))
    ]


def _shot_path(tmp_path: Path, name: str) -> Path:
    folder = os.environ.get("REPORT_SHOTS_DIR")
    return Path(folder) / name if folder else tmp_path / name


def _assert_clean(result: dict, n_images: int) -> None:
    assert result["errors"] == []
    assert result["requests"] == []
    assert len(result["images"]) == n_images
    assert all(image["ok"] for image in result["images"]), result["images"]


def test_participant_report_in_chromium(browser, tmp_path):
    from bids_brainage.reports.participant import write_participant_report

    files = data.make_image_files(tmp_path / "img")
    age = data.participant_ages()["sub-IXI095"]
    ok = dict(files, label="ses-1", predictions=data.prediction_rows("sub-IXI095", age),
              timings={"skull_strip": 7.5, "n4": 5.1, "register": 2.0, "predict": 0.4},
              warnings=["the image looked skull-stripped already"], status="ok", message=None)
    failed = {"label": "ses-2", "status": "failed", "message": "skull strip: empty mask",
              "predictions": [], "timings": {"conform": 0.3}, "warnings": []}
    report = write_participant_report(tmp_path / "sub-IXI095.html",
                                      participant_id="sub-IXI095", images=[ok, failed])
    result = open_report(browser, report, _shot_path(tmp_path, "sub-IXI095.png"))
    _assert_clean(result, n_images=4)
    assert "skull strip: empty mask" in result["text"]
    assert "the image looked skull-stripped already" in result["text"]


def test_group_report_in_chromium(browser, tmp_path):
    from bids_brainage.levels import group
    from bids_brainage.reports.group import write_group_report

    ages = data.participant_ages()
    out = tmp_path / "out"
    for number, (sub, age) in enumerate(sorted(ages.items())):
        data.write_tsv(out, data.prediction_rows(sub, age, models=(("rf", 2.0 + number),
                                                                    ("resnet34", -1.5 * number))))
    data.write_tsv(out, data.prediction_rows("sub-IXI999", None, failed="registration diverged"))
    data.write_tsv(out, data.prediction_rows("sub-IXI500", 88.0))
    table = group.join_participants(group.collect(out), data.EXAMPLE)
    cards = {"rf": {"training": {"age_min": 20, "age_max": 82},
                    "bias_correction": {"slope": 0.8, "intercept": 9.0, "fitted_on": "test"}}}
    table, summary = group.analyse(table, cards, "model")
    report = write_group_report(tmp_path / "group_report.html", table, summary)
    result = open_report(browser, report, _shot_path(tmp_path, "group_report.png"))
    _assert_clean(result, n_images=3)
    assert "registration diverged" in result["text"]
    assert "sub-IXI500" in result["text"]  # outside the training ages: flagged, not hidden


@pytest.mark.slow
def test_flagged_image_with_its_contribution_map_in_chromium(browser, example_run, tmp_path):
    """A real participant run whose model card's limits flag the image (the distance limit
    set to 0: every image is 'unlike training'): the report shows the reasons, the interval
    caveat and the contribution map, in a real browser, with no console error."""
    import shutil

    from bids_brainage.cli.run import main as app
    from bids_brainage.models.registry import BUNDLED_DIR

    _, _, work = example_run
    models = tmp_path / "models"
    shutil.copytree(BUNDLED_DIR, models)
    registry = json.loads((models / "models.json").read_text())
    for card in registry["models"]:
        if card["name"] == "ensemble":
            card["reliability"]["distance_limit"] = 0.0
    (models / "models.json").write_text(json.dumps(registry))
    out = tmp_path / "out"
    assert app([str(data.EXAMPLE), str(out), "participant", "-w", str(work), "--nprocs", "2",
                "--participant-label", "IXI095", "--model-dir", str(models)]) == 0
    tsv = (out / "sub-IXI095/anat/sub-IXI095_brainage.tsv").read_text()
    assert "unlike_training" in tsv
    assert (out / "sub-IXI095/anat/sub-IXI095_space-MNI152NLin2009aSym_desc-contrib_brainage"
                  ".nii.gz").exists()
    result = open_report(browser, out / "sub-IXI095.html", _shot_path(tmp_path, "flagged.png"))
    _assert_clean(result, n_images=5)  # mask, registration, histogram, predictions, map
    assert "Flagged: unlike_training" in result["text"]
    assert "Why this age" in result["text"] and "older-looking" in result["text"]
