"""Shared fixtures: the embedded example dataset and the labelled IXI pool in ../shared."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ds-ixi3"
SHARED_DATA = Path(os.environ.get("BIDS_BRAINAGE_SHARED_DATA", ROOT.parent / "shared" / "data"))
IXI_POOL = SHARED_DATA / "ixi-hh-2mm"

os.environ.setdefault("NIPYPE_NO_ET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# In CI (.ci/run sets CI=1; hosted CI sets CI=true) nothing may be skipped: a skip there means
# something CI must have (the shared data, chromium, root) is missing, and the run fails.
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {reason}"


def pytest_collection_modifyitems(config, items):
    # the labelled pool lives beside the project (read-only); tests that need it say so
    if IXI_POOL.exists():
        return
    skip = pytest.mark.skip(reason=f"labelled IXI pool not found at {IXI_POOL}")
    for item in items:
        if "ixi_pool" in item.fixturenames:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ixi_pool() -> Path:
    return IXI_POOL


@pytest.fixture(scope="session")
def example_dir() -> Path:
    return EXAMPLE


def copy_dataset(src: Path, dst: Path, subjects=None) -> Path:
    """A writable copy of a BIDS dataset (optionally only some subjects)."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name.startswith("sub-"):
            if subjects is None or item.name in subjects:
                shutil.copytree(item, dst / item.name)
        elif item.is_file():
            shutil.copy(item, dst / item.name)
    return dst


@pytest.fixture(scope="session")
def example_run(tmp_path_factory):
    """Participant level on the embedded example, run once for the session: (code, out, work)."""
    from bids_brainage.cli.run import main

    base = tmp_path_factory.mktemp("example_run")
    out, work = base / "out", base / "work"
    code = main([str(EXAMPLE), str(out), "participant", "-w", str(work), "--nprocs", "2"])
    return code, out, work
