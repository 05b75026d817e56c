"""Participant and group reports: self-contained HTML with decodable embedded figures."""
from __future__ import annotations

import base64
import doctest
import io
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bids_brainage.levels import group
from bids_brainage.reports import figures, templates
from bids_brainage.reports.group import write_group_report
from bids_brainage.reports.participant import write_participant_report

try:
    from tests import _report_data as data
except ImportError:  # tests/ run as a rootdir without a package
    import _report_data as data

PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    return data.make_image_files(tmp_path_factory.mktemp("images"))


def _ok_image(files, **extra):
    age = data.participant_ages()["sub-IXI095"]
    image = dict(files, label="", predictions=data.prediction_rows("sub-IXI095", age),
                 timings={"skull_strip": 7.5, "n4": 5.0, "predict": 0.5},
                 warnings=["low contrast"], status="ok", message=None)
    image.update(extra)
    return image


def _embedded_pngs(html: str) -> list[Image.Image]:
    decoded = []
    for payload in PNG_URI.findall(html):
        picture = Image.open(io.BytesIO(base64.b64decode(payload)))
        picture.load()  # raises on a truncated or corrupt image
        decoded.append(picture)
    return decoded


def _assert_self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>")
    for outside in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert outside not in html, outside
    sources = re.findall(r'src="([^"]*)"', html)
    assert all(src.startswith("data:image/png;base64,") for src in sources)


def test_doctests():
    assert doctest.testmod(templates).failed == 0
    assert doctest.testmod(figures).failed == 0


@pytest.fixture(scope="module")
def participant_html(image_files, tmp_path_factory):
    """One report, two sessions: ses-1 ok, ses-2 failed with no files at all."""
    failed = {"label": "ses-2", "t1w": None, "mask": None, "mni": None, "template": None,
              "template_mask": None, "histogram": None, "predictions": [], "timings": {},
              "warnings": [], "status": "failed",
              "message": "skull strip: <b>empty</b> mask & no brain"}
    path = tmp_path_factory.mktemp("report") / "sub-IXI095.html"
    write_participant_report(path, participant_id="sub-IXI095",
                             images=[_ok_image(image_files, label="ses-1"), failed])
    return path.read_text()


def test_participant_report_has_every_figure_and_table(participant_html):
    html = participant_html
    _assert_self_contained(html)
    pictures = _embedded_pngs(html)
    assert len(pictures) == 4  # mask, MNI, histogram, predictions
    assert pictures[0].size == (720, 720) and pictures[1].size == (720, 720)
    for text in ("sub-IXI095_ses-1", "27.9", "22.9", "skull_strip", "13.0", "low contrast",
                 "rf", "resnet34"):
        assert text in html, text


def test_failed_image_shows_its_message_instead_of_figures(participant_html):
    html = participant_html
    ses2 = html[html.index('id="sub-IXI095_ses-2"'):]
    assert not PNG_URI.search(ses2)  # only the ok image has figures
    assert "skull strip: &lt;b&gt;empty&lt;/b&gt; mask &amp; no brain" in ses2  # escaped
    assert "not available" not in html


def test_a_missing_file_costs_one_figure_not_the_report(image_files, tmp_path):
    image = _ok_image(image_files, mni=str(tmp_path / "gone.nii.gz"))
    broken_mask = tmp_path / "broken.nii.gz"
    broken_mask.write_bytes(b"not a nifti")
    image["mask"] = str(broken_mask)
    html = write_participant_report(tmp_path / "r.html", participant_id="sub-IXI095",
                                    images=[image]).read_text()
    assert len(_embedded_pngs(html)) == 2  # histogram and predictions
    assert "Registration to MNI space: not shown, mni not available" in html
    assert "Brain mask on the T1w: could not be drawn" in html


def test_the_helper_draws_the_same_mask_figure(image_files, participant_html, tmp_path):
    """With two threads the run's helper draws the mask figure while this process draws the
    others: the same report, to the byte; a mask it cannot read still costs one figure."""
    from bids_brainage import helper

    failed = {"label": "ses-2", "t1w": None, "mask": None, "mni": None, "template": None,
              "template_mask": None, "histogram": None, "predictions": [], "timings": {},
              "warnings": [], "status": "failed",
              "message": "skull strip: <b>empty</b> mask & no brain"}
    try:
        html = write_participant_report(
            tmp_path / "two.html", participant_id="sub-IXI095", threads=2,
            images=[_ok_image(image_files, label="ses-1"), failed]).read_text()
        assert html == participant_html
        broken_mask = tmp_path / "broken.nii.gz"
        broken_mask.write_bytes(b"not a nifti")
        image = _ok_image(image_files, mask=str(broken_mask))
        html = write_participant_report(tmp_path / "r.html", participant_id="sub-IXI095",
                                        images=[image], threads=2).read_text()
        assert len(_embedded_pngs(html)) == 3
        assert "Brain mask on the T1w: could not be drawn (RuntimeError: ImageFileError: " in html
    finally:
        helper.stop_helpers()


def test_mask_outline_follows_the_mask(image_files):
    fig = figures.mask_outline_figure(image_files["t1w"], image_files["mask"])
    assert len(fig.axes) == 9
    contours = [c for ax in fig.axes for c in ax.collections]
    assert len(contours) == 9  # one outline per slice


def test_resampling_onto_another_orientation_is_exact(image_files):
    img = nib.load(image_files["mask"])  # the example's PSR orientation
    ras = nib.as_closest_canonical(img)
    assert ras.shape != img.shape
    moved = figures.resample_to(image_files["mask"], ras.shape, ras.affine, order=0)
    assert np.array_equal(moved, np.asarray(ras.dataobj, dtype=np.float32))


def test_group_report_lists_failures_ranges_and_metrics(tmp_path):
    out = tmp_path / "out"
    ages = data.participant_ages()
    for sub, age in ages.items():
        data.write_tsv(out, data.prediction_rows(sub, age))
    data.write_tsv(out, data.prediction_rows("sub-IXI900", 88.0))
    data.write_tsv(out, data.prediction_rows("sub-IXI901", None, failed="N4 <did not> converge"))
    cards = {"rf": {"training": {"age_min": 20, "age_max": 82},
                    "bias_correction": {"slope": 0.8, "intercept": 9.0}}}
    table, summary = group.analyse(group.join_participants(group.collect(out), data.EXAMPLE),
                                   cards, "cohort")
    html = write_group_report(tmp_path / "group_report.html", table, summary).read_text()
    _assert_self_contained(html)
    assert len(_embedded_pngs(html)) == 3  # predicted vs age, gap distribution, Bland-Altman
    assert "REFITTED ON THIS COHORT" in html
    assert "N4 &lt;did not&gt; converge" in html
    assert re.search(r"<td>sub-IXI900</td><td>rf</td>", html)
    mae = summary["models"]["rf"]["overall"]["raw"]["MAE"]
    assert f"{mae:.2f}" in html


def test_figures_work_with_a_read_only_home(tmp_path):
    # a home below a regular file can never be created, even by root (chmod would not stop it)
    (tmp_path / "file").write_text("")
    home = tmp_path / "file" / "home"
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env["HOME"] = str(home)
    code = ("import os, bids_brainage.reports.figures as f; "
            "fig = f.Figure(); fig.subplots().plot([1, 2]); f.to_data_uri(fig); "
            "print(os.environ['MPLCONFIGDIR'])")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    assert "bids_brainage-mpl-" in result.stdout
    assert "is not a writable directory" not in result.stderr


def test_a_mask_figure_drawn_ahead_is_used_only_for_files_of_the_same_content(
        image_files, participant_html, tmp_path):
    """The registration step has the helper draw the mask figure from the work folder's
    files; the report (given the derivatives, byte copies of them) then uses it: the same
    report to the byte. A derivative whose content differs is drawn again."""
    import shutil

    from bids_brainage.reports import participant

    work = {key: tmp_path / f"work_{key}.nii.gz" for key in ("t1w", "mask")}
    for key, path in work.items():
        shutil.copy(image_files[key], path)
    participant.draw_mask_figure_ahead(str(work["t1w"]), str(work["mask"]))
    assert len(participant._DRAWN_AHEAD) == 1
    failed = {"label": "ses-2", "t1w": None, "mask": None, "mni": None, "template": None,
              "template_mask": None, "histogram": None, "predictions": [], "timings": {},
              "warnings": [], "status": "failed",
              "message": "skull strip: <b>empty</b> mask & no brain"}
    html = write_participant_report(tmp_path / "ahead.html", participant_id="sub-IXI095",
                                    images=[_ok_image(image_files, label="ses-1"), failed])
    assert html.read_text() == participant_html
    assert not participant._DRAWN_AHEAD  # taken

    participant.draw_mask_figure_ahead(str(work["t1w"]), str(work["mask"]))
    other = nib.load(image_files["mask"])
    shrunk = np.asanyarray(other.dataobj).copy()
    shrunk[: shrunk.shape[0] // 2] = 0
    nib.save(nib.Nifti1Image(shrunk, other.affine, other.header), tmp_path / "other.nii.gz")
    expected = participant._embed(figures.mask_outline_figure(
        image_files["t1w"], str(tmp_path / "other.nii.gz")), participant.MASK_CAPTION)
    assert participant.mask_figure(image_files["t1w"], str(tmp_path / "other.nii.gz")) \
        == expected
    participant._DRAWN_AHEAD.clear()
    # files it cannot read: nothing drawn ahead, and no error (the report says why later)
    participant.draw_mask_figure_ahead(str(tmp_path / "gone.nii.gz"), str(work["mask"]))
    assert not participant._DRAWN_AHEAD


def test_the_registration_figure_reads_the_template_resampled_ahead(tmp_path):
    """prepare_registration_figure resamples the template and its mask onto the MNI grid
    the outputs are on; the figure of a real output then finds both in the cache."""
    from bids_brainage.preproc.template import T1_BRAIN, template_2mm
    from bids_brainage.reports import participant

    mni = tmp_path / "mni.nii.gz"
    nib.save(template_2mm(), mni)  # an output on the MNI grid, as Register writes it
    figures._template_cache.cache_clear()
    participant.prepare_registration_figure(tmp_path)
    before = figures._template_cache.cache_info()
    assert before.misses == 2
    figures.mni_overlay_figure(mni, participant.template_mask_file(tmp_path), str(T1_BRAIN))
    after = figures._template_cache.cache_info()
    assert (after.hits - before.hits, after.misses) == (2, 2)


@pytest.mark.parametrize("in_process", [True, False])
def test_the_mask_figure_is_drawn_ahead_only_for_a_report_this_process_draws(in_process,
                                                                             tmp_path):
    """With several threads the registration step gives the helper the N4 head, for the mask
    figure; not when the steps run in worker processes (whose helpers no report asks)."""
    from bids_brainage.bids.layout import T1wImage
    from bids_brainage.config import Settings
    from bids_brainage.workflows.participant import init_image_wf

    bids = tmp_path / "bids"
    image = T1wImage(path=bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", subject="01")
    settings = Settings(bids_dir=bids, output_dir=tmp_path / "out", analysis_level="participant",
                        work_dir=tmp_path / "work", omp_nthreads=2)
    workflow = init_image_wf(image=image, settings=settings, age=30.0, predict=False,
                             name="sub01_wf", in_process=in_process)
    preproc = workflow.get_node("preproc_wf")
    register = preproc.get_node("register")
    fed = {field for _, node, data in preproc._graph.in_edges(data=True) if node is register
           for _, field in data["connect"]}
    assert register.inputs.report_threads == 2
    assert ("report_head" in fed) is in_process
