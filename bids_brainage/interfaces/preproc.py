"""Thin nipype interfaces over the pure preprocessing functions.

Each interface reads its inputs from files, calls one function from ``bids_brainage.preproc``
and writes its outputs into the node's working directory. ``seconds`` reports the time of the
step itself (the sidecar's per-stage timings).
"""
from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    TraitedSpec,
    traits,
)

from bids_brainage.interfaces.base import TimedInterface
from bids_brainage.preproc.bias import LOG_SPREAD


def _load(path):
    import nibabel as nib

    return nib.load(str(path))


def _save(data, like, path: Path, dtype=None) -> str:
    import nibabel as nib
    import numpy as np

    data = np.asarray(data, dtype=dtype or np.float32)
    img = nib.Nifti1Image(data, like.affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.to_filename(str(path))
    return str(path)


class _ConformInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the T1w image as found in the dataset")


class _ConformOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="RAS+, float32, native resolution")
    seconds = traits.Float()


class Conform(TimedInterface):
    """Check the input (readable, 3-D, finite, non-empty, sane affine) and conform it."""

    input_spec = _ConformInputSpec
    output_spec = _ConformOutputSpec

    def _run(self, cwd):
        from bids_brainage.io import load_t1w
        from bids_brainage.preproc.conform import as_int16_if_lossless, conform

        img = as_int16_if_lossless(conform(load_t1w(self.inputs.in_file)))
        # uncompressed: a step's input, never a derivative (gzip took 1.2 s of a 1 mm
        # float32 head's run, and every reader paid 0.3 s to unpack it)
        out = cwd / "conformed.nii"
        img.to_filename(str(out))
        self._results["out_file"] = str(out)


class _SkullStripInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    method = traits.Enum("auto", "deepbet", "none", "restrip", usedefault=True)
    threads = traits.Int(1, usedefault=True, nohash=True)


class _SkullStripOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="raw brain mask")
    method_used = traits.Str()
    seconds = traits.Float()


class SkullStrip(TimedInterface):
    """Brain mask by deepbet; for an already stripped image, deepbet's inside its non-zero
    voxels, or those voxels (``preproc.skullstrip.raw_mask``)."""

    input_spec = _SkullStripInputSpec
    output_spec = _SkullStripOutputSpec

    def _run(self, cwd):
        import numpy as np

        from bids_brainage.preproc.skullstrip import raw_mask

        img = _load(self.inputs.in_file)
        mask, method = raw_mask(img, self.inputs.method, threads=self.inputs.threads)
        if not mask.any():
            # the conformed copy in the work dir is not the user's file: the caller names that
            raise ValueError(f"skull stripping ({method}) found no brain")
        self._results["out_mask"] = _save(mask, img, cwd / "mask_raw.nii.gz", np.uint8)
        self._results["method_used"] = method


class _MaskInputSpec(BaseInterfaceInputSpec):
    in_mask = File(exists=True, mandatory=True)


class _MaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True)
    seconds = traits.Float()


class LargestComponent(TimedInterface):
    """Keep the largest connected component of the mask and fill its holes."""

    input_spec = _MaskInputSpec
    output_spec = _MaskOutputSpec

    def _run(self, cwd):
        import numpy as np

        from bids_brainage.preproc.mask import largest_component

        img = _load(self.inputs.in_mask)
        mask = largest_component(np.asanyarray(img.dataobj) > 0)
        self._results["out_mask"] = _save(mask, img, cwd / "mask.nii.gz", np.uint8)


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    in_mask = File(exists=True, mandatory=True)
    # part of the cache key: derivatives made by the earlier shrink-4 N4 are not reused
    log_spread = traits.Float(LOG_SPREAD, usedefault=True, desc="log-spread the fit is scaled to")
    threads = traits.Int(1, usedefault=True, nohash=True)


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected head, native space")
    out_brain = File(exists=True, desc="bias-corrected brain (zero outside the mask)")
    seconds = traits.Float()


class N4(TimedInterface):
    """N4 bias-field correction inside the brain mask, fitted on a coarse copy (~8 mm)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run(self, cwd):
        import numpy as np

        from bids_brainage.io import compress_ahead
        from bids_brainage.preproc.bias import n4_correct

        img = _load(self.inputs.in_file)
        mask = np.asanyarray(_load(self.inputs.in_mask).dataobj) > 0
        corrected, _field = n4_correct(img, mask, threads=self.inputs.threads,
                                       log_spread_target=self.inputs.log_spread)
        data = np.asarray(corrected.dataobj, np.float32)
        # the head is a derivative: written plain here, compressed by the run's helper
        # while this process registers (bids_brainage.io.compress_ahead)
        self._results["out_file"] = _save(data, img, cwd / "n4.nii")
        compress_ahead(self._results["out_file"], self.inputs.threads)
        self._results["out_brain"] = _save(np.where(mask, data, 0), img, cwd / "n4_brain.nii")


class _RegisterInputSpec(BaseInterfaceInputSpec):
    in_brain = File(exists=True, mandatory=True)
    in_mask = File(exists=True, mandatory=True)
    method = traits.Enum("affine", "syn", usedefault=True)
    threads = traits.Int(1, usedefault=True, nohash=True)
    tissue_warp_threads = traits.Int(
        0, usedefault=True, nohash=True,
        desc="> 1: the helper process with this many threads loads the tissue warp now, on "
             "the core this single-threaded registration leaves idle (bids_brainage.helper)")
    begin_tissue = traits.Bool(
        False, usedefault=True, nohash=True,
        desc="with tissue_warp_threads > 1: begin the tissue model's features as soon as the "
             "MNI brain exists (the warp in the helper), for the prediction step of this "
             "process to finish (features.tissue.begin_tissue_features)")
    report_threads = traits.Int(
        0, usedefault=True, nohash=True,
        desc="> 1: the helper with this many threads loads the report's plotting now "
             "(matplotlib, its fonts: ~1 s) and, given report_head, draws the mask figure")
    report_head = File(
        nohash=True,
        desc="the N4 head (.nii), whose compressed copy (.nii.gz, made by the helper) "
             "becomes the derivative: the helper draws its mask figure during registration")


class _RegisterOutputSpec(TraitedSpec):
    mni = File(exists=True, desc="brain on the 2 mm MNI grid, not normalised")
    mni_mask = File(exists=True)
    affine_file = File(exists=True, desc="ITK affine, T1w -> MNI")
    warp_file = File(desc="SyN displacement field (syn only)")
    mni_affine = File(exists=True, desc="brain through the affine alone: the models' input")
    mni_affine_mask = File(exists=True)
    seconds = traits.Float()


class Register(TimedInterface):
    """Register to MNI152NLin2009aSym (antspyx) and resample onto the 2 mm grid."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run(self, cwd):
        import numpy as np

        from bids_brainage.preproc.register import register_to_template

        if self.inputs.tissue_warp_threads > 1:  # the helper loads what the warp needs
            from bids_brainage.helper import load_ahead

            load_ahead(self.inputs.tissue_warp_threads, "bids_brainage.features.tissue",
                       "prepare_warp")
        if self.inputs.report_threads > 1:
            from nipype.interfaces.base import isdefined

            from bids_brainage.helper import load_ahead

            load_ahead(self.inputs.report_threads, "bids_brainage.reports.participant",
                       "prepare_figures")
            if isdefined(self.inputs.report_head):  # compressed by the helper before this
                load_ahead(self.inputs.report_threads, "bids_brainage.reports.participant",
                           "draw_mask_figure_ahead", f"{self.inputs.report_head}.gz",
                           str(self.inputs.in_mask))

        brain = _load(self.inputs.in_brain)
        mask = np.asanyarray(_load(self.inputs.in_mask).dataobj) > 0
        reg = register_to_template(brain, mask, method=self.inputs.method, out_dir=cwd,
                                   threads=self.inputs.threads)
        if self.inputs.begin_tissue:  # what the models read: the affine image
            from bids_brainage.features.tissue import begin_tissue_features

            begin_tissue_features(reg["mni_affine"].get_fdata(dtype=np.float32),
                                  reg["mni_affine_mask"], self.inputs.tissue_warp_threads)
        self._results["mni"] = _save(reg["mni"].get_fdata(dtype=np.float32), reg["mni"],
                                     cwd / "mni.nii.gz")
        self._results["mni_mask"] = _save(reg["mni_mask"], reg["mni"], cwd / "mni_mask.nii.gz",
                                          np.uint8)
        self._results["affine_file"] = str(reg["affine_file"])
        self._results["mni_affine"] = self._results["mni"]
        self._results["mni_affine_mask"] = self._results["mni_mask"]
        if reg["warp_file"]:
            self._results["warp_file"] = str(reg["warp_file"])
            self._results["mni_affine"] = _save(
                reg["mni_affine"].get_fdata(dtype=np.float32), reg["mni_affine"],
                cwd / "mni_affine.nii.gz")
            self._results["mni_affine_mask"] = _save(
                reg["mni_affine_mask"], reg["mni_affine"], cwd / "mni_affine_mask.nii.gz",
                np.uint8)


class _NormalizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    in_mask = File(exists=True, mandatory=True)
    method = traits.Enum("gmm", "zscore", "whitestripe", "fcm", "twopoint", usedefault=True)


class _NormalizeOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_json = File(exists=True, desc="method, affine map and tissue peaks, plus histogram")
    seconds = traits.Float()


class Normalize(TimedInterface):
    """Intensity normalisation of the MNI-space brain, and its 100-bin histogram."""

    input_spec = _NormalizeInputSpec
    output_spec = _NormalizeOutputSpec

    def _run(self, cwd):
        import numpy as np

        from bids_brainage.features.histogram import intensity_histogram
        from bids_brainage.preproc.normalize import normalize_intensity

        img = _load(self.inputs.in_file)
        mask = np.asanyarray(_load(self.inputs.in_mask).dataobj) > 0
        out, info = normalize_intensity(img.get_fdata(dtype=np.float32), mask, self.inputs.method)
        values, edges = intensity_histogram(out, mask, self.inputs.method)
        info["histogram"] = {"values": values.tolist(), "edges": edges.tolist()}
        self._results["out_file"] = _save(out, img, cwd / "mni_norm.nii.gz")
        path = cwd / "normalization.json"
        path.write_text(json.dumps(info))
        self._results["out_json"] = str(path)
