"""What a worker process loads once and keeps: torch, deepbet, nipype, the model cards and the
models themselves.

The BIDS App's Predict node reads each model's weights when it runs
(:func:`bids_brainage.models.predict.load_predictor`); a worker process runs many jobs, so
:func:`~bids_brainage.levels.warmup.keep_models_loaded` (shared with the BIDS App's own
worker processes) makes that function return the model already in memory. The cache is keyed
by the card's sha256, and the file on disk is still checked against it at every call
(:func:`~bids_brainage.models.registry.verified_file`, 30 ms): a changed or altered weight
file is never answered from memory.
"""
from __future__ import annotations

import logging
import os
import time

from bids_brainage.levels.warmup import keep_models_loaded

LOG = logging.getLogger("bids_brainage.web")


def warm_up(threads: int) -> None:
    """Run once in each worker process before its first job."""
    from bids_brainage.config import Settings

    environment = Settings(bids_dir=".", output_dir=".", analysis_level="participant",
                           work_dir=".", omp_nthreads=threads).thread_environment()
    os.environ.update(environment)  # before torch and ITK read them
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    start = time.perf_counter()
    from bids_brainage.workflows import participant  # noqa: F401 - nipype and the interfaces

    if threads > 1:  # deepbet and the tissue warp run in the helper process with the threads
        from bids_brainage.helper import helper

        helper(threads).call("bids_brainage.preproc.skullstrip", "prepare_deepbet", threads)
        helper(threads).call("bids_brainage.features.tissue", "prepare_warp")
    else:
        from bids_brainage.preproc.skullstrip import prepare_deepbet

        prepare_deepbet(threads)
    names = keep_models_loaded(threads)
    LOG.info("worker process %d ready in %.1f s: deepbet and models %s loaded, %d thread(s)",
             os.getpid(), time.perf_counter() - start, ", ".join(names), threads)
