"""The BIDS validator (schema-based, ``bids-validator-deno``), run once per dataset, offline.

The validator is a JavaScript bundle run by deno. Its PyPI wrapper starts deno with
``--allow-net``, and a dataset naming a HED schema the bundle does not hold makes it download
one; here deno runs the bundle itself with network access denied (``--deny-net``), no
permission prompts, no update check and its cache in the run's work dir (which starts as a
copy of the cache made at install time, :data:`COMPILED_CACHE`). A schema that would
need a download is reported as such (exit 16), with the way round it.

A run with a work dir remembers a valid dataset (:func:`validate_bids_cached`): the same files
(names, sizes, modification times) checked by the same validator are not checked again, so a
rerun does not wait for deno. :func:`start_validation` runs it in a thread while the caller
prepares the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
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


# deno's cache of the validator's compiled bundle (V8's code cache), made once when the
# package is installed (`make`, the Dockerfile: :func:`compile_validator`) and copied into a
# new work dir's cache: a first run there then takes 0.35 s instead of 0.9 s (measured) and
# still writes nothing outside its output and work dirs
COMPILED_CACHE = Path(sys.prefix) / "share" / "bids_brainage" / "deno"


def compile_validator(target: Path = COMPILED_CACHE) -> bool:
    """Run the validator once on an empty dataset with its cache in ``target``, so that deno
    compiles the bundle there; False (and nothing made) when deno or the bundle is missing."""
    import tempfile

    cmd = _validator_command()
    if cmd is None:
        return False
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="bids_brainage_compile_") as tmp:
        dataset = Path(tmp) / "ds"
        dataset.mkdir()
        (dataset / "dataset_description.json").write_text(
            '{"Name": "compile", "BIDSVersion": "1.9.0"}\n')
        staging = Path(tmp) / "deno"
        subprocess.run(cmd + ["--format", "json", str(dataset)], capture_output=True,
                       timeout=600, env=validator_environment(staging), stdin=subprocess.DEVNULL)
        if not staging.is_dir():
            return False
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, target)
    return True


def _seed_cache(cache_dir: Path) -> None:
    """A new work dir's deno cache starts as a copy of :data:`COMPILED_CACHE` (when made)."""
    if cache_dir.exists() or not COMPILED_CACHE.is_dir():
        return
    try:
        shutil.copytree(COMPILED_CACHE, cache_dir)
    except OSError:  # deno compiles again, as without the copy
        shutil.rmtree(cache_dir, ignore_errors=True)


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


def dataset_fingerprint(bids_dir: Path, extra: str = "") -> str:
    """sha256 of every file's path, size and modification time (links followed; a broken
    link counts as missing), and of ``extra``: equal fingerprints, equal validator verdicts.
    Dot entries are left out as the validator leaves them (``.git`` may hold thousands of
    objects), except ``.bidsignore``, which changes what it checks.
    """
    digest = hashlib.sha256(extra.encode())
    root = Path(bids_dir)
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") and not (name == ".bidsignore" and Path(folder) == root):
                continue
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
                stamp = f"{info.st_size} {info.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            digest.update(f"{os.path.relpath(path, root)}\0{stamp}\n".encode())
    return digest.hexdigest()


def _validator_version() -> str:
    bundle = _bundle()
    if bundle is None:
        return ""
    info = bundle.stat()
    return f"{bundle} {info.st_size} {info.st_mtime_ns}"


def validate_bids_cached(bids_dir: Path, work_dir: Path | None,
                         dataset_type: str | None = None) -> list[str]:
    """:func:`validate_bids`, unless this work dir saw the same dataset files pass the same
    validator: then the warnings it gave. Only valid datasets are remembered."""
    if work_dir is None:
        return validate_bids(bids_dir, dataset_type)
    from bids_brainage.io import atomic_write_json

    cache = Path(work_dir) / ".cache"
    key = dataset_fingerprint(bids_dir, f"{_validator_version()}|{dataset_type}")
    record = cache / "validated" / f"{key}.json"
    try:
        return list(json.loads(record.read_text())["warnings"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    _seed_cache(cache / "deno")
    warnings = validate_bids(bids_dir, dataset_type, cache_dir=cache / "deno")
    try:
        atomic_write_json(record, {"bids_dir": str(bids_dir), "warnings": warnings})
    except OSError:  # a read-only work dir: validated, just not remembered
        pass
    return warnings


def start_validation(bids_dir: Path, work_dir: Path | None) -> Future:
    """:func:`validate_bids_cached` in a thread (deno is a process of its own); the future's
    ``result()`` returns the warnings or raises :class:`BIDSError`."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bids-validator")
    future = pool.submit(validate_bids_cached, bids_dir, work_dir)
    pool.shutdown(wait=False)
    return future
