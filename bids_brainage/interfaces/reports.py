"""The ParticipantReport node: a participant's HTML report, drawn in a worker process as soon
as all its images are written (rather than one after another in the main process at the end).
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

LOG = logging.getLogger("bids_brainage.reports")


class _ReportInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True)
    work_dir = traits.Str(mandatory=True)
    subject = traits.Str(mandatory=True, desc="participant label, without sub-")
    prefixes = traits.List(traits.Str, mandatory=True, desc="its images' output prefixes")
    anat_dirs = traits.List(traits.Str, mandatory=True, desc="their folders in output_dir")
    tables = traits.List(File(exists=True), desc="the images' _brainage.tsv: the report "
                                                 "waits for them")
    threads = traits.Int(1, usedefault=True, nohash=True,
                         desc="> 1: the run's helper draws the mask figures and contribution "
                              "maps meanwhile")


class _ReportOutputSpec(TraitedSpec):
    out_html = File(desc="the report (absent when it could not be drawn)")


class ParticipantReport(SimpleInterface):
    """Draw ``sub-<label>.html``; a report that fails is logged, never raised (the main
    process tries again at the end and says why)."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        from bids_brainage.reports.participant import report_participant
        from bids_brainage.timeline import mark

        i = self.inputs
        images = [SimpleNamespace(prefix=p, anat_dir=Path(d))
                  for p, d in zip(i.prefixes, i.anat_dirs)]
        mark("run_start", step="ParticipantReport", cwd=runtime.cwd)
        try:
            self._results["out_html"] = str(report_participant(
                Path(i.output_dir), Path(i.work_dir), i.subject, images, threads=i.threads))
        except Exception as exc:  # noqa: BLE001 - a report is a view, not an output
            LOG.debug("report of sub-%s: %s: %s", i.subject, type(exc).__name__, exc)
        mark("run_end", step="ParticipantReport", cwd=runtime.cwd)
        return runtime
