"""Gather each participant's derivatives and write its HTML report (``sub-<label>.html``)."""
from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from pathlib import Path

from bids_brainage.outputs import output_names
from bids_brainage.template import T1_BRAIN

LOG = logging.getLogger("bids_brainage.reports")


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
             "predictions": _read_rows(folder / names["tsv"]),
             "timings": sidecar.get("timings", {}), "warnings": sidecar.get("warnings", []),
             "t1w": None, "mask": None, "mni": None, "template": str(T1_BRAIN),
             "template_mask": str(template_mask), "histogram": None}
    if status == "ok":
        norm = sidecar.get("normalization", {})
        entry.update(
            t1w=str(folder / names["t1w"]), mask=str(folder / names["mask"]),
            mni=str(folder / names["mni_norm"]),
            histogram={**norm.get("histogram", {}), "normalization": norm.get("method"),
                       "peaks": norm.get("peaks", {})},
        )
    return entry


def write_reports(settings, images) -> list[Path]:
    """One report per participant, covering all its sessions and runs; failures are logged,
    never raised (a report is a view of the outputs, not an output the others depend on)."""
    try:
        from bids_brainage.reports.participant import write_participant_report
    except ImportError as exc:  # pragma: no cover - the reports package ships with the app
        LOG.warning("reports unavailable: %s", exc)
        return []
    from bids_brainage.template import save_template_mask

    template_mask = settings.work_dir / "tpl-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz"
    if not template_mask.exists():
        save_template_mask(template_mask)
    by_subject = defaultdict(list)
    for image in images:
        by_subject[image.subject].append(image)
    written = []
    for subject, subject_images in sorted(by_subject.items()):
        path = settings.output_dir / f"sub-{subject}.html"
        try:
            entries = [image_entry(settings.output_dir, im, template_mask) for im in subject_images]
            written.append(write_participant_report(path, participant_id=f"sub-{subject}",
                                                    images=entries))
        except Exception as exc:  # noqa: BLE001 - one report must not stop the others
            LOG.warning("report for sub-%s not written: %s: %s", subject,
                        type(exc).__name__, exc)
    return written
