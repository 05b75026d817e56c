"""The DerivativesSink node: the last node of an image's workflow writes its BIDS Derivatives."""
from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _SinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True)
    prefix = traits.Str(mandatory=True, desc="sub-X[_ses-Y][_acq-Z][_run-N]")
    anat_dir = traits.Str(mandatory=True, desc="relative folder of the outputs")
    participant_id = traits.Str(mandatory=True)
    session_id = traits.Str("n/a", usedefault=True)
    run = traits.Str("n/a", usedefault=True)
    age = traits.Either(None, traits.Float, default=None, usedefault=True)
    source = traits.Str(mandatory=True, desc="the input file, relative to bids_dir")
    settings = traits.Dict(desc="the resolved settings, for the sidecar")
    mask = File(exists=True, mandatory=True)
    t1w = File(exists=True, mandatory=True, desc="N4-corrected head, native space")
    mni_norm = File(exists=True, mandatory=True)
    mni_mask = File(exists=True, mandatory=True)
    affine_file = File(exists=True, mandatory=True)
    warp_file = File()
    normalization_json = File(exists=True, mandatory=True)
    predictions_json = File(exists=True)
    contrib_map = File(desc="the contribution map (years), 2 mm MNI grid")
    skull_strip_method = traits.Str("")
    timings = traits.Dict(desc="stage -> seconds")


class _SinkOutputSpec(TraitedSpec):
    out_tsv = File(desc="the _brainage.tsv written")


class DerivativesSink(SimpleInterface):
    """Write an image's BIDS Derivatives atomically (temporary name, then rename)."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        from bids_brainage.bids.derivatives import write_image_outputs
        from bids_brainage.timeline import mark

        mark("run_start", step="DerivativesSink", cwd=runtime.cwd)

        i = self.inputs
        files = {
            "mask": i.mask, "t1w": i.t1w, "mni_norm": i.mni_norm, "mni_mask": i.mni_mask,
            "affine": i.affine_file, "warp": i.warp_file if isdefined(i.warp_file) else None,
            "contrib": i.contrib_map if isdefined(i.contrib_map) else None,
        }
        predictions = (json.loads(Path(i.predictions_json).read_text())
                       if isdefined(i.predictions_json) else {"rows": [], "models": {}})
        self._results["out_tsv"] = str(write_image_outputs(
            output_dir=Path(i.output_dir), anat_dir=i.anat_dir, prefix=i.prefix,
            entities={"participant_id": i.participant_id, "session_id": i.session_id,
                      "run": i.run},
            age=i.age, source=i.source, settings=i.settings, files=files,
            normalization=json.loads(Path(i.normalization_json).read_text()),
            predictions=predictions, skull_strip_method=i.skull_strip_method,
            timings=i.timings,
        ))
        mark("run_end", step="DerivativesSink", cwd=runtime.cwd)
        return runtime
