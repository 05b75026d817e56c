"""A test hook: stop a run at a named point, so that a test can kill it there (not by timing luck).

``BIDS_BRAINAGE_TEST_PAUSE_AT=<point>[,<point>...]`` makes the process that reaches one of the
points write ``BIDS_BRAINAGE_TEST_PAUSE_MARKER`` (a path; ``<point> <pid>``) and then sleep
until it is killed. Points:

- ``SkullStrip``, ``Register``, ``Predict``, ... (an interface's class name): the step has
  done its work in its node folder, and nipype has not yet recorded the result;
- ``write:<file name>``: an atomic write has written its temporary file and not yet renamed it
  onto ``<file name>`` (``write:dataset_description.json``, ``write:sub-01.html``, ...).

Unset (always, outside the tests) the hook costs one dictionary lookup.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

ENV_POINTS = "BIDS_BRAINAGE_TEST_PAUSE_AT"
ENV_MARKER = "BIDS_BRAINAGE_TEST_PAUSE_MARKER"


def pause_point(name: str) -> None:
    """Sleep forever here if the test hook asks for ``name``; return at once otherwise."""
    wanted = os.environ.get(ENV_POINTS)
    if not wanted or name not in wanted.split(","):
        return
    marker = os.environ.get(ENV_MARKER)
    if marker:
        # written aside and renamed: the test polls for the path and reads it at once, and a
        # plain write_text lets it see the file created but still empty
        path = Path(marker)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(f"{name} {os.getpid()}\n")
        os.replace(temporary, path)
    while True:  # the test kills the process group now
        time.sleep(3600)
