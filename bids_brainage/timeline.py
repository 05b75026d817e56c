"""A benchmark hook: wall-clock markers of a run, so its time can be broken down, not guessed.

``BIDS_BRAINAGE_TIMELINE=<file>`` makes every process of a run (the main one and nipype's
workers) append one JSON line per marker to ``<file>``: ``{"t": <time.time()>, "pid": ...,
"event": ..., ...}``. Markers: ``main`` (the entry point was reached), ``parsed``,
``checked`` (settings and paths), ``validated``, ``models_verified``, ``indexed`` (T1w found,
description written), ``workflow_start`` / ``workflow_end``, ``node_start`` / ``node_end``
(the main process hands a step to nipype / sees its result), ``run_start`` / ``run_end`` (the
step's own work, in the process that does it), ``worker_start`` / ``worker_ready`` (a worker
process's set-up), ``warm_up_start`` / ``warm_up_end`` (each item loaded ahead,
:mod:`bids_brainage.levels.warmup`), ``helper_start`` / ``helper_end`` (each request the
run's helper process answers, :mod:`bids_brainage.helper`), ``reports_end`` and ``exit``.
``benchmarks/participant.py`` reads them.

Unset (always, outside the benchmarks) the hook costs one dictionary lookup.
"""
from __future__ import annotations

import json
import os
import time

ENV_FILE = "BIDS_BRAINAGE_TIMELINE"


def mark(event: str, **fields) -> None:
    """Append the marker ``event`` (and ``fields``) to the timeline file, if one is set."""
    path = os.environ.get(ENV_FILE)
    if not path:
        return
    record = {"t": time.time(), "pid": os.getpid(), "event": event, **fields}
    # one short write on an O_APPEND file: lines of concurrent processes do not interleave
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
