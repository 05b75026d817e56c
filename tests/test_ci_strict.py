"""In CI a skip is a failure: what CI must have (shared data, chromium, root) cannot go missing
quietly. Checked by running pytest on a one-test file beside a copy of our conftest."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SKIPPING = '''
import pytest

@pytest.mark.skipif(True, reason="needs the thing CI must have")
def test_needs_the_thing():
    pass
'''


@pytest.mark.parametrize("ci,code,words", [
    ("", 0, "SKIPPED [1] test_thing.py:4: needs the thing CI must have"),
    ("1", 1, "skipped in CI, where it must run: needs the thing CI must have"),
    ("true", 1, "skipped in CI, where it must run"),
])
def test_a_skip_fails_in_ci(tmp_path, ci, code, words):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_thing.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = ci
    proc = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
                           "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == code, proc.stdout
    assert words in proc.stdout, proc.stdout
