"""The Predict node: every selected model and the ensemble on one MNI-space brain."""
from __future__ import annotations

import json

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_brainage.interfaces.base import TimedInterface


class _PredictInputSpec(BaseInterfaceInputSpec):
    mni = File(exists=True, mandatory=True, desc="un-normalised brain, 2 mm MNI grid")
    mni_mask = File(exists=True, mandatory=True)
    model_dir = traits.Str("", usedefault=True, desc="empty: the bundled models")
    models = traits.List(traits.Str, desc="model names; empty: the card's defaults")
    cards_sha256 = traits.Str("", usedefault=True,
                              desc="sha256 of the model directory's models.json: part of the "
                                   "node's cache key, so models retrained into the same "
                                   "directory are never answered from a cached prediction")
    threads = traits.Int(1, usedefault=True, nohash=True)
    age = traits.Either(None, traits.Float, default=None, usedefault=True,
                        desc="the known age (flags an age outside the training ages)")


class _PredictOutputSpec(TraitedSpec):
    out_json = File(exists=True, desc="rows and the cards used")
    contrib_map = File(desc="the ensemble members' contributions (years), 2 mm MNI grid")
    seconds = traits.Float()


class Predict(TimedInterface):
    """Predict age with each selected model (sha256-verified weights) and the ensemble."""

    input_spec = _PredictInputSpec
    output_spec = _PredictOutputSpec

    def _run(self, cwd):
        import nibabel as nib
        import numpy as np

        from bids_brainage.models.predict import predict_ages
        from bids_brainage.models.registry import load_cards, select_models

        cards = load_cards(self.inputs.model_dir or None)
        names = select_models(cards, self.inputs.models if isdefined(self.inputs.models) else [])
        mni = nib.load(self.inputs.mni).get_fdata(dtype=np.float32)
        mask = np.asanyarray(nib.load(self.inputs.mni_mask).dataobj) > 0
        age = self.inputs.age if isdefined(self.inputs.age) else None
        rows, details = predict_ages(mni, mask, cards, names, threads=self.inputs.threads,
                                     age=age, explain=True)
        explanation = details.get("contributions")
        if explanation is not None:
            img = nib.Nifti1Image(explanation.pop("map").astype(np.float32),
                                  nib.load(self.inputs.mni).affine)
            img.header.set_xyzt_units("mm")
            img.to_filename(str(cwd / "contributions.nii.gz"))
            self._results["contrib_map"] = str(cwd / "contributions.nii.gz")
        used = {n: {k: cards[n].get(k) for k in ("version", "architecture", "file", "sha256",
                                                 "input", "training", "interval")
                    if cards[n].get(k) is not None} for n in names}
        out = cwd / "predictions.json"
        out.write_text(json.dumps({"rows": rows, "models": used,
                                   "reliability": details["reliability"],
                                   "contributions": explanation,
                                   "cards_sha256": self.inputs.cards_sha256}))
        self._results["out_json"] = str(out)
