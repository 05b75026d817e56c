"""The BIDS validator (schema-based, ``bids-validator-deno``), run once per dataset."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path


class BIDSError(RuntimeError):
    """The input is not a valid BIDS dataset (exit code 16)."""



def _validator_command() -> list[str] | None:
    """The validator beside this interpreter (a venv run without activating it), else on PATH."""
    import sys

    here = Path(sys.executable).parent / "bids-validator-deno"
    if here.exists():
        return [str(here)]
    exe = shutil.which("bids-validator-deno")
    return [exe] if exe else None


def validate_bids(bids_dir: Path, dataset_type: str | None = None) -> list[str]:
    """Run the BIDS validator (schema-based, offline) and return its warnings.

    Raises :class:`BIDSError` with the validator's error messages when the dataset is invalid.
    """
    cmd = _validator_command()
    if cmd is None:
        raise BIDSError("the BIDS validator (bids-validator-deno) is not installed; "
                        "install it or pass --skip-bids-validation")
    args = cmd + ["--format", "json", "--ignoreNiftiHeaders", str(bids_dir)]
    if dataset_type:
        args[-1:-1] = ["--datasetTypes", dataset_type]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BIDSError(f"the BIDS validator failed on {bids_dir}: {proc.stderr.strip()[:2000]}") from exc
    errors, warnings = [], []
    for issue in report.get("issues", {}).get("issues", []):
        code = issue.get("code", "?") + (f"/{issue['subCode']}" if issue.get("subCode") else "")
        text = f"{code} {issue.get('location') or ''}".strip()
        if issue.get("severity") == "error":
            detail = (issue.get("issueMessage") or "").strip().splitlines()
            errors.append(f"{text}: {detail[0]}" if detail else text)
        else:
            warnings.append(text)
    if errors:
        raise BIDSError(f"{bids_dir} is not a valid BIDS dataset:\n  " + "\n  ".join(errors[:50]))
    return warnings
