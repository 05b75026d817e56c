"""The participant report ``sub-<label>.html``: QC figures and predictions of every image.

``write_reports`` gathers each participant's derivatives after the workflow ran;
``write_participant_report`` draws one page. A report whose inputs (the derivatives it shows,
the report code) are those it was drawn from is not drawn again: a rerun that changed
nothing leaves it as it is (the work dir keeps what each report was drawn from).

One page per participant covering all its sessions and runs, readable by a radiographer in a
browser with no network: figures are PNG data URIs, styles inline, no scripts.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

from bids_brainage import __version__
from bids_brainage.bids.derivatives import output_names
from bids_brainage.io import atomic_write_text
from bids_brainage.preproc.template import T1_BRAIN
from bids_brainage.reports.templates import PARTICIPANT, render

LOGGER = logging.getLogger("bids_brainage.reports")
DPI = 80


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def image_entry(output_dir: Path, image, template_mask: Path) -> dict:
    """The report's description of one image, read back from the derivatives."""
    folder = Path(output_dir) / image.anat_dir
    names = output_names(image.prefix)
    sidecar_path = folder / names["json"]
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
    status = sidecar.get("status", "failed")
    label = image.prefix.split("_", 1)[1] if "_" in image.prefix else ""
    entry = {"label": label, "status": status, "message": sidecar.get("message"),
             "_tables": [sidecar_path, folder / names["tsv"]],
             "predictions": _read_rows(folder / names["tsv"]),
             "timings": sidecar.get("timings", {}), "warnings": sidecar.get("warnings", []),
             "reliability": sidecar.get("reliability") or {},
             "contributions": sidecar.get("contributions"), "contrib": None,
             "t1w": None, "mask": None, "mni": None, "template": str(T1_BRAIN),
             "template_mask": str(template_mask), "histogram": None}
    if status == "ok":
        norm = sidecar.get("normalization", {})
        entry.update(
            t1w=str(folder / names["t1w"]), mask=str(folder / names["mask"]),
            mni=str(folder / names["mni_norm"]),
            contrib=(str(folder / names["contrib"]) if (folder / names["contrib"]).exists()
                     else None),
            histogram={**norm.get("histogram", {}), "normalization": norm.get("method"),
                       "peaks": norm.get("peaks", {})},
        )
    return entry


def write_reports(settings, images) -> list[Path]:
    """One report per participant, covering all its sessions and runs; failures are logged,
    never raised (a report is a view of the outputs, not an output the others depend on)."""
    by_subject = defaultdict(list)
    for image in images:
        by_subject[image.subject].append(image)
    written = []
    for subject, subject_images in sorted(by_subject.items()):
        try:
            written.append(report_participant(settings.output_dir, settings.work_dir, subject,
                                              subject_images))
        except Exception as exc:  # noqa: BLE001 - one report must not stop the others
            LOGGER.warning("report for sub-%s not written: %s: %s", subject,
                           type(exc).__name__, exc)
    return written


def report_participant(output_dir: Path, work_dir: Path, subject: str, images,
                       threads: int = 1) -> Path:
    """Draw ``sub-<subject>.html`` from its images' derivatives (``images``: objects with
    ``prefix`` and ``anat_dir``), unless it is already the report of these derivatives.
    ``threads`` > 1: the run's helper process draws the mask figures and contribution maps
    meanwhile."""
    output_dir, work_dir = Path(output_dir), Path(work_dir)
    template_mask = template_mask_file(work_dir)
    path = output_dir / f"sub-{subject}.html"
    record = work_dir / "reports" / f"sub-{subject}.json"
    entries = [image_entry(output_dir, im, template_mask) for im in images]
    if newer_than_inputs(path, record, entries):
        return path
    key = inputs_key(f"sub-{subject}", entries)
    if not up_to_date(path, record, key):
        write_participant_report(path, participant_id=f"sub-{subject}", images=entries,
                                 threads=threads)
    remember(path, record, key)
    return path


def template_mask_file(work_dir: Path) -> Path:
    """The template's brain mask the registration figure outlines, saved in the work dir."""
    from bids_brainage.preproc.template import save_template_mask

    path = Path(work_dir) / "tpl-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz"
    if not path.exists():
        save_template_mask(path)
    return path


def prepare_registration_figure(work_dir: Path) -> None:
    """Resample the template and its mask onto the 2 mm MNI grid now, into the cache the
    registration figure reads (:func:`figures.prepare_mni_overlay`): 0.26 s the report then
    does not wait for. A process that will draw a report does it while it waits."""
    import nibabel as nib

    from bids_brainage.preproc.template import template_2mm
    from bids_brainage.reports import figures

    grid = nib.as_closest_canonical(template_2mm())
    figures.prepare_mni_overlay(template_mask_file(work_dir), T1_BRAIN, grid.shape, grid.affine)


def _file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inputs_key(participant_id: str, entries: list[dict]) -> str:
    """sha256 of what a report is drawn from: the image entries (sidecar values, predictions,
    paths), the content of every file they name, the app's version and the report code."""
    digest = hashlib.sha256(f"{__version__}|{participant_id}".encode())
    for module in ("participant.py", "figures.py", "templates.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    digest.update(json.dumps(entries, sort_keys=True, default=str).encode())
    for entry in entries:
        for key in ("t1w", "mask", "mni", "contrib", "template", "template_mask"):
            if entry.get(key) and Path(entry[key]).is_file():
                digest.update(f"{key}:{_file_digest(entry[key])}".encode())
    return digest.hexdigest()


def _input_files(entries: list[dict]) -> list[Path]:
    files = []
    for entry in entries:
        files += [Path(entry[k]) for k in ("t1w", "mask", "mni", "contrib") if entry.get(k)]
        files += entry.get("_tables", [])
    return files


def newer_than_inputs(path: Path, record: Path, entries: list[dict]) -> bool:
    """The quick check: the report is the one recorded, and the record was written after
    every file it was drawn from (no hashing; the derivatives are rewritten on reruns, so
    there :func:`up_to_date` compares their content)."""
    try:
        saved = json.loads(record.read_text())
        info, stamp = path.stat(), record.stat().st_mtime_ns
        newest = max((f.stat().st_mtime_ns for f in _input_files(entries)), default=0)
    except (OSError, ValueError):
        return False
    return (saved.get("size"), saved.get("mtime_ns")) == (info.st_size, info.st_mtime_ns) \
        and stamp > newest


def up_to_date(path: Path, record: Path, key: str) -> bool:
    """Whether ``path`` is the report drawn from ``key`` (same inputs; the file untouched)."""
    try:
        saved = json.loads(record.read_text())
        info = path.stat()
    except (OSError, ValueError):
        return False
    return saved == {"key": key, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def remember(path: Path, record: Path, key: str) -> None:
    from bids_brainage.io import atomic_write_json

    info = path.stat()
    try:
        atomic_write_json(record, {"key": key, "size": info.st_size,
                                   "mtime_ns": info.st_mtime_ns})
    except OSError:  # a work dir we cannot write: the report is drawn again next time
        pass


def write_participant_report(path, *, participant_id: str, images: list[dict],
                             threads: int = 1) -> Path:
    """Write the report of one participant (all its images) to ``path``, atomically.

    Each image dict: ``label``, ``t1w``, ``mask``, ``mni``, ``template``, ``template_mask``
    (paths or None), ``histogram`` (values, edges, normalization, peaks), ``predictions``
    (rows of the participant TSV as dicts), ``timings`` ({stage: seconds}), ``warnings``,
    ``status`` ("ok" or "failed") and ``message``. A figure that cannot be drawn is replaced
    by a note saying why; the report itself is still written. With ``threads`` > 1 the
    mask figures and contribution maps (:data:`DRAWN_THERE`) are drawn in the run's helper
    process (:mod:`bids_brainage.helper`) while this one draws the others: the same figures.
    """
    ahead = {number: _figures_ahead(image, threads) for number, image in enumerate(images)}
    prepared = [_prepare(participant_id, image, number, ahead[number])
                for number, image in enumerate(images)]
    html = render(PARTICIPANT, title=f"{participant_id}: brain-age report",
                  participant_id=participant_id, version=__version__, images=prepared)
    return atomic_write_text(path, html)


MASK_CAPTION = "Brain mask on the T1w"
CONTRIB_CAPTION = "Why this age: contributions of each place of the brain"


def prepare_figures() -> None:
    """Load what drawing the first figure loads (:func:`figures.prepare`), this module and
    the report's compiled template: a process that will draw a report does it ahead, while
    it waits for something else."""
    from bids_brainage.reports import figures
    from bids_brainage.reports.templates import compiled

    figures.prepare()
    compiled(PARTICIPANT)


def mask_figure(t1w: str, mask: str) -> dict:
    """The embedded mask figure (the helper process draws it), or the one
    :func:`draw_mask_figure_ahead` drew from files of the same content."""
    from bids_brainage.reports import figures

    if _DRAWN_AHEAD:  # only then are the files worth hashing (two sha256s of the head)
        drawn = _DRAWN_AHEAD.pop((_file_digest(t1w), _file_digest(mask)), None)
        if drawn is not None:
            return drawn
    return _embed(figures.mask_outline_figure(t1w, mask), MASK_CAPTION)


# mask figures drawn ahead in this process, by the content of the files they show
_DRAWN_AHEAD: dict[tuple[str, str], dict] = {}


def draw_mask_figure_ahead(t1w: str, mask: str) -> None:
    """Draw the mask figure of ``t1w`` and ``mask`` (the work folder's files the derivatives
    will be byte copies of) now, for :func:`mask_figure` in this process to return when it
    is given files of the same content. The registration step asks the helper for it: the
    helper is idle while this process registers, and the report then waits 0.6 s less for
    the 1 mm head's figure. A figure that cannot be drawn now is drawn (or fails) later."""
    from bids_brainage.reports import figures

    try:
        key = (_file_digest(t1w), _file_digest(mask))
        drawn = _embed(figures.mask_outline_figure(t1w, mask), MASK_CAPTION)
    except Exception as exc:  # noqa: BLE001 - the report draws it again, and says why not
        LOGGER.debug("mask figure not drawn ahead: %s: %s", type(exc).__name__, exc)
        return
    while len(_DRAWN_AHEAD) >= 4:
        _DRAWN_AHEAD.pop(next(iter(_DRAWN_AHEAD)))
    _DRAWN_AHEAD[key] = drawn


def contributions_figure(mni: str, contrib: str) -> dict:
    """The embedded contribution map (the helper process draws it)."""
    from bids_brainage.reports import figures

    return _embed(figures.contribution_figure(mni, contrib), CONTRIB_CAPTION)


# the figures the run's helper draws while this process draws the others (the largest:
# the full-resolution head, then the map): caption -> (function of this module, its inputs)
DRAWN_THERE = {MASK_CAPTION: (mask_figure, ("t1w", "mask")),
               CONTRIB_CAPTION: (contributions_figure, ("mni", "contrib"))}


def _figures_ahead(image: dict, threads: int) -> dict:
    """The image's :data:`DRAWN_THERE` figures begun in the helper (``threads`` > 1):
    caption -> a function giving the figure (empty: all drawn here, in turn)."""
    if threads <= 1:
        return {}
    from bids_brainage import helper

    ahead = {}
    for caption, (function, keys) in DRAWN_THERE.items():
        if all(_available(image, key) for key in keys):
            args = tuple(str(image[key]) for key in keys)
            ahead[caption] = helper.run_there(threads, functools.partial(function, *args),
                                              __name__, function.__name__, *args)
    return ahead


def _prepare(participant_id: str, image: dict, number: int, ahead=None) -> dict:
    label = image.get("label") or ""
    title = f"{participant_id}_{label}" if label else participant_id
    status = image.get("status") or "ok"
    todo, problems = [], []  # (caption, a function drawing it); problems in figure order
    for name, make, needs in _figure_specs(image):
        missing = [key for key in needs if not _available(image, key)]
        if "contrib" in missing:
            continue  # no linear tissue model among the models run: nothing to map
        if missing:
            if status == "ok":
                problems.append((len(todo), f"{name}: not shown, {', '.join(missing)} not "
                                            f"available"))
            continue
        if name in (ahead or {}):
            todo.append((name, ahead[name]))
        elif name in DRAWN_THERE:  # here, by the function the helper would have run
            function, keys = DRAWN_THERE[name]
            todo.append((name, functools.partial(function, *(str(image[k]) for k in keys))))
        else:
            todo.append((name, lambda make=make, name=name: _embed(make(), name)))
    drawn = {}
    # the figures drawn here first, then those the helper drew meanwhile
    for index in sorted(range(len(todo)), key=lambda i: todo[i][0] in (ahead or {})):
        name, draw = todo[index]
        try:
            drawn[index] = draw()
        except Exception as exc:  # one broken figure must not cost the whole report
            LOGGER.warning("%s: the %s figure failed: %s", title, name, exc)
            problems.append((index, f"{name}: could not be drawn ({type(exc).__name__}: "
                                     f"{exc})"))
    figures = [drawn[index] for index in sorted(drawn)]
    problems = [text for _, text in sorted(problems, key=lambda item: item[0])]
    timings = {k: v for k, v in (image.get("timings") or {}).items()}
    return {
        "title": title,
        "anchor": re.sub(r"[^A-Za-z0-9_-]", "-", title) or f"image-{number}",
        "status": status,
        "message": image.get("message"),
        "warnings": [str(w) for w in image.get("warnings") or []],
        "predictions": [dict(r) for r in image.get("predictions") or []
                        if (r.get("model") not in (None, "", "n/a"))],
        "figures": figures,
        "figure_problems": problems,
        "timings": timings,
        "total_time": sum(_seconds(v) for v in timings.values()),
        "flag": _flag(image),
        "reliability": image.get("reliability") or {},
        "contributions": image.get("contributions"),
    }


def _flag(image: dict) -> str:
    """The image's flag: ok, or its reasons (the same on every row of its TSV)."""
    flags = {r.get("flag") for r in image.get("predictions") or [] if r.get("flag")}
    flags.discard("n/a")
    return ";".join(sorted(flags)) if flags else "n/a"


def _figure_specs(image: dict):
    """(caption, maker, required keys) of each figure; makers import matplotlib lazily."""
    from bids_brainage.reports import figures

    def mask():
        return figures.mask_outline_figure(image["t1w"], image["mask"])

    def mni():
        template = image.get("template") if _available(image, "template") else None
        return figures.mni_overlay_figure(image["mni"], image["template_mask"], template)

    def histogram():
        return figures.histogram_figure(image["histogram"])

    def predictions():
        return figures.prediction_figure(image["predictions"], _age(image["predictions"]))

    def contributions():
        return figures.contribution_figure(image["mni"], image["contrib"])

    return (
        (MASK_CAPTION, mask, ("t1w", "mask")),
        ("Registration to MNI space", mni, ("mni", "template_mask")),
        ("Normalised intensity histogram with tissue peaks", histogram, ("histogram",)),
        ("Predicted age of each model with its interval", predictions, ("predictions",)),
        (CONTRIB_CAPTION, contributions, ("mni", "contrib")),
    )


def _available(image: dict, key: str) -> bool:
    value = image.get(key)
    if key == "predictions":
        return any(_number(r.get("predicted_age")) is not None for r in value or [])
    if key == "histogram":
        return bool(value) and bool(value.get("values")) and bool(value.get("edges"))
    return value is not None and Path(value).is_file()


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _age(predictions: list[dict]) -> float | None:
    for row in predictions:
        age = _number(row.get("age"))
        if age is not None:
            return age
    return None


def _seconds(value) -> float:
    return _number(value) or 0.0


def _embed(fig, caption: str) -> dict:
    from bids_brainage.reports.figures import to_data_uri

    width, height = (fig.get_size_inches() * DPI).round().astype(int)
    return {"uri": to_data_uri(fig, dpi=DPI), "alt": caption, "caption": caption,
            "width": int(width), "height": int(height)}
