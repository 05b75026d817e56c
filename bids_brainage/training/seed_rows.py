"""The original project's histogram rows (``seed-histograms/rep2.json``) as training rows.

The pool is one scanner. The original thesis left 100-bin histograms of GMM-normalised
intensities (WM peak at 1, 0-1.5) of 1,616 people from 21 sites: IXI and 20 FCP-1000 sites.
A forest on our GMM histogram trained on the pool alone reads ds000011 30 years old; with
the 20 sites' rows beside the pool's it reads it 0.8 years young (docs/models.md). Our
pipeline reproduces rep2 only loosely, so the rows teach the forest which histogram
differences are sites, not what our own histogram of a site looks like.

Which rows: every FCP-1000 row, always a training row (none of those people is in the
pool); an IXI row only of a pool participant, and only where that participant is a training
row (it is another pipeline's histogram of the same image, so it follows its participant
into every fold, like a training copy). IXI rows of people outside the pool are never read:
``../shared/data/README.md`` holds those people out on purpose.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from bids_brainage.features.histogram import HIST_BINS, HIST_RANGE

# the forest's input: our GMM histogram in rep2's form, on the whole brain mask as rep2 was,
# read in its log-quantile form (features.histogram.gmm_to_logquantile), the seed rows the
# same. GMM histograms moved 8 years under a gamma change of the image, their log-quantile
# form 1.5. Inside the template's brain mask the forest moved less under a loose strip, but
# the ensemble lost 0.23 year of nested-CV MAE (5.54 -> 5.77): the brain's edge is where
# its age shows (docs/models.md)
SITES_INPUT = {"feature": "histogram", "normalization": "gmm", "bins": HIST_BINS,
               "form": "logquantile"}
OWN_SITE = "IXI"


@dataclasses.dataclass
class SeedRows:
    """``x``/``ages`` of the other sites' rows (always training rows), and ``own_x`` of the
    pool's own participants with ``own_of``, the index of the image each belongs to."""

    x: np.ndarray
    ages: np.ndarray
    sites: list[str]
    own_x: np.ndarray
    own_of: np.ndarray
    source: dict


def density(counts) -> np.ndarray:
    """A seed histogram as our density (integrating to one over 0-1.5).

    >>> float((density([1, 3] + [0] * 98) * 0.015).sum())
    1.0
    """
    counts = np.asarray(counts, float)
    lo, hi = HIST_RANGE["gmm"]
    return counts / (counts.sum() * (hi - lo) / counts.size)


def participant_of(name: str) -> str:
    """The IXI participant of a seed row's file name.

    >>> participant_of("IXI191.nii.gz"), participant_of("IXI012-HH-1211-T1.nii.gz")
    ('IXI191', 'IXI012')
    """
    return name.split(".")[0].split("-")[0]


def load_seed_rows(path: Path, participant_ids, spec: dict | None = None) -> SeedRows:
    """The rows of ``path`` (rep2.json) for images of ``participant_ids`` (``sub-`` labels,
    one per image, in the member's row order), in the ``form`` of the input ``spec``
    (default :data:`SITES_INPUT`), as ``model_inputs`` makes our images'."""
    from bids_brainage.models.predict import histogram_form

    spec = SITES_INPUT if spec is None else spec

    def density_of(counts):
        return histogram_form(density(counts), spec)

    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable seed-histogram file ({err})") from err
    ids = [str(p).removeprefix("sub-") for p in participant_ids]
    x, ages, sites, own_x, own_of = [], [], [], [], []
    for site, rows in table.items():
        for row in rows:
            hist = row.get("hist")
            if hist is None or len(hist) != HIST_BINS or row.get("age") is None:
                raise ValueError(f"{path}: site {site}, row {row.get('name')!r} needs 'age' "
                                 f"and a {HIST_BINS}-bin 'hist'")
            if site == OWN_SITE:
                pid = participant_of(row["name"])
                for i in (i for i, p in enumerate(ids) if p == pid):
                    own_x.append(density_of(hist))
                    own_of.append(i)
                continue
            x.append(density_of(hist))
            ages.append(float(row["age"]))
            sites.append(site)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = {"file": path.name, "sha256": digest, "rows": len(x),
              "sites": sorted(set(sites)), "own_site_rows": len(own_of),
              "own_site": f"{OWN_SITE} rows of training participants only, in their folds",
              "form": spec.get("form") or "as stored"}
    return SeedRows(np.array(x).reshape(-1, HIST_BINS), np.array(ages, float), sites,
                    np.array(own_x).reshape(-1, HIST_BINS), np.array(own_of, int), source)
