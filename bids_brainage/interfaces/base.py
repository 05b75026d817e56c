"""What every interface of ours shares: a step timed into its ``seconds`` output."""
from __future__ import annotations

import time
from pathlib import Path

from nipype.interfaces.base import SimpleInterface

from bids_brainage.pause import pause_point
from bids_brainage.timeline import mark


class TimedInterface(SimpleInterface):
    """A SimpleInterface whose ``_run`` is timed into the ``seconds`` output."""

    def _run_interface(self, runtime):
        mark("run_start", step=type(self).__name__, cwd=runtime.cwd)
        start = time.perf_counter()
        self._run(Path(runtime.cwd))
        self._results["seconds"] = round(time.perf_counter() - start, 3)
        mark("run_end", step=type(self).__name__, cwd=runtime.cwd)
        pause_point(type(self).__name__)  # kill-and-resume tests stop a run here
        return runtime

    def _run(self, cwd: Path):  # pragma: no cover - abstract
        raise NotImplementedError
