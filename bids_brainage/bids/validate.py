"""The BIDS validator (schema-based, ``bids-validator-deno``), run once per dataset, offline.

The validator is a JavaScript bundle run by deno. Its PyPI wrapper starts deno with
``--allow-net``, and a dataset naming a HED schema the bundle does not hold makes it download
one; here deno runs the bundle itself with network access denied (``--deny-net``), no
permission prompts, no update check and its cache in the run's work dir. A schema that would
need a download is reported as such (exit 16), with the way round it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


class BIDSError(RuntimeError):
    """The input is not a valid BIDS dataset (exit code 16)."""


# read the dataset and the environment; nothing else (no network, no writes, no subprocesses)
DENO_PERMISSIONS = ("--allow-read", "--allow-env", "--deny-net", "--deny-write", "--deny-run",
                    "--no-prompt")


def _bundle() -> Path | None:
    try:
        import bids_validator_deno
    except ImportError:
        return None
    path = Path(bids_validator_deno.__file__).parent / "bids-validator.js"
    return path if path.is_file() else None


def _deno() -> str | None:
    try:
        from deno import find_deno_bin

        return os.fsdecode(find_deno_bin())
    except (ImportError, FileNotFoundError, OSError):
        here = Path(sys.executable).parent / "deno"
        return str(here) if here.exists() else shutil.which("deno")


def _validator_command() -> list[str] | None:
    """deno running the validator's bundle with network access denied; None if not installed."""
    deno, bundle = _deno(), _bundle()
    if deno is None or bundle is None:
        return None
    return [deno, "run", *DENO_PERMISSIONS, str(bundle)]


def validator_environment(cache_dir: Path | None = None) -> dict[str, str]:
    """The environment deno runs in: no update check, its cache where we say."""
    env = dict(os.environ, DENO_NO_UPDATE_CHECK="1", NO_COLOR="1")
    if cache_dir is not None:
        env["DENO_DIR"] = str(cache_dir)
    return env


def validate_bids(bids_dir: Path, dataset_type: str | None = None,
                  cache_dir: Path | None = None) -> list[str]:
    """Run the BIDS validator (schema-based, offline) and return its warnings.

    Raises :class:`BIDSError` with the validator's error messages when the dataset is invalid.
    ``cache_dir``: deno's cache (default: deno's own, under the home folder).
    """
    cmd = _validator_command()
    if cmd is None:
        raise BIDSError("the BIDS validator (bids-validator-deno) is not installed; "
                        "install it or pass --skip-bids-validation")
    args = cmd + ["--format", "json", "--ignoreNiftiHeaders", str(bids_dir)]
    if dataset_type:
        args[-1:-1] = ["--datasetTypes", dataset_type]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env=validator_environment(cache_dir), stdin=subprocess.DEVNULL)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BIDSError(f"the BIDS validator failed on {bids_dir}: "
                        f"{proc.stderr.strip()[:2000]}") from exc
    errors, warnings = [], []
    for issue in report.get("issues", {}).get("issues", []):
        code = issue.get("code", "?") + (f"/{issue['subCode']}" if issue.get("subCode") else "")
        text = f"{code} {issue.get('location') or ''}".strip()
        if issue.get("severity") == "error":
            detail = (issue.get("issueMessage") or "").strip().splitlines()
            if "SCHEMA_LOAD_FAILED" in code or "SCHEMA_LOAD_FAILED" in " ".join(detail[:1]):
                detail = [_offline_schema_message(detail)]
            errors.append(f"{text}: {detail[0]}" if detail else text)
        else:
            warnings.append(text)
    if errors:
        raise BIDSError(f"{bids_dir} is not a valid BIDS dataset:\n  " + "\n  ".join(errors[:50]))
    return warnings


def _offline_schema_message(detail: list[str]) -> str:
    """The validator suggests --allow-net; we never download: say what to do instead.

    >>> _offline_schema_message(['Could not load HED schema "{"prefix":"","version":"9.9.9",'
    ...                          '"library":"","localPath":""}" from remote repository'])[:40]
    'the dataset asks for HED schema 9.9.9, w'
    """
    first = detail[0] if detail else ""
    version = re.search(r'"version":"([^"]*)"', first)
    library = re.search(r'"library":"([^"]+)"', first)
    schema = "a HED schema"
    if version:
        schema = f"HED schema {library.group(1) + '_' if library else ''}{version.group(1)}"
    return (f"the dataset asks for {schema}, which the bundled validator does not hold, and "
            "bids_brainage never downloads; check HEDVersion in dataset_description.json, or "
            "pass --skip-bids-validation")
