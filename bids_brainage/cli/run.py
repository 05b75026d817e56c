"""``bids_brainage`` entry point: ``main(argv=None) -> int`` with BIDS-Apps exit codes.

0 ok · 1 some participants failed (others written) · 16 invalid BIDS dataset ·
17 unknown analysis level · 18 no T1w matched the filters · 64 usage · 66 input missing ·
73 output not writable.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from bids_brainage.timeline import mark

EXIT_OK, EXIT_FAILED = 0, 1
EXIT_INVALID_BIDS, EXIT_UNKNOWN_LEVEL, EXIT_NO_MATCH = 16, 17, 18
EXIT_USAGE, EXIT_NO_INPUT, EXIT_CANT_WRITE = 64, 66, 73
LEVELS = ("participant", "group")

LOG = logging.getLogger("bids_brainage")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(level)
    LOG.propagate = False
    # other libraries' warnings (matplotlib building its font cache, ...) only with -v
    logging.getLogger().setLevel(logging.WARNING if verbose else logging.ERROR)


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
        return True
    except OSError:
        return False


def check_paths(settings) -> int | None:
    """Exit code for unusable paths (None when all is well); messages name the path."""
    if not settings.bids_dir.is_dir():
        LOG.error("input folder %s %s", settings.bids_dir,
                  "is a file, not a folder" if settings.bids_dir.exists() else "does not exist")
        return EXIT_NO_INPUT
    if settings.analysis_level == "participant" and not (
        settings.bids_dir / "dataset_description.json"
    ).exists():
        LOG.error("%s has no dataset_description.json: not a BIDS dataset", settings.bids_dir)
        return EXIT_INVALID_BIDS
    for name, folder in (("output_dir", settings.output_dir), ("work dir", settings.work_dir)):
        if _is_within(folder, settings.bids_dir):
            LOG.error("%s %s is the input dataset or inside it: bids_brainage never writes "
                      "into bids_dir", name, folder)
            return EXIT_USAGE
        if not _writable(folder):
            LOG.error("%s %s is not writable", name, folder)
            return EXIT_CANT_WRITE
    return None


def main(argv: list[str] | None = None) -> int:
    from bids_brainage.cli.parser import get_parser

    mark("main")
    parser = get_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    _setup_logging(args.verbose)
    mark("parsed")
    try:
        code = _main(args)
        mark("exit", code=code)
        return code
    except KeyboardInterrupt:
        LOG.error("interrupted; rerun the same command to resume (finished steps are reused)")
        return 130
    except Exception as exc:  # noqa: BLE001 - a message, not a traceback, unless -v
        LOG.error("%s: %s", type(exc).__name__, exc, exc_info=args.verbose > 0)
        if not args.verbose:
            LOG.error("this is a bug or an input we did not foresee; rerun with -v for the "
                      "traceback and report it")
        return EXIT_FAILED


def _main(args) -> int:
    if args.analysis_level not in LEVELS:
        LOG.error("unknown analysis level %r; choose participant or group", args.analysis_level)
        return EXIT_UNKNOWN_LEVEL

    from bids_brainage.config import (
        Settings,
        apply_offline_environment,
        apply_thread_environment,
    )

    settings = Settings.from_args(args)
    if args.work_dir is None and settings.work_dir.parent != settings.output_dir.parent:
        LOG.warning("no --work-dir and %s is not writable: intermediate results go to %s "
                    "(give -w to keep them and resume)", settings.output_dir.parent,
                    settings.work_dir)
    code = check_paths(settings)
    if code is not None:
        return code
    apply_thread_environment(settings)
    apply_offline_environment(settings)
    mark("checked")
    if settings.analysis_level == "group":
        from bids_brainage.levels.group import run_group

        return run_group(settings)
    return _participant(settings)


def _participant(settings) -> int:
    from bids_brainage.bids.layout import NoMatchError, find_t1w
    from bids_brainage.bids.validate import start_validation

    # the validator is a process of its own, started first: while it reads the dataset, this
    # one finds the images, checks the model files and, when it will run the steps itself,
    # loads ahead
    validation = (None if settings.skip_bids_validation
                  else start_validation(settings.bids_dir, settings.work_dir))
    from bids_brainage.levels.participant import (
        run_participant,
        runs_in_this_process,
        start_forkserver,
        steps_pending,
    )

    images, not_found = None, None
    try:
        images = find_t1w(settings.bids_dir, settings.participant_label,
                          settings.session_label)
    except Exception as exc:  # noqa: BLE001 - raised below, after the validator's verdict
        not_found = exc
    warm = None
    # loading ahead pays only when steps will run (a rerun that reuses them all loads nothing)
    if images and steps_pending(settings, images):
        if runs_in_this_process(settings, images):
            from bids_brainage.levels.warmup import start_warm_up

            warm = start_warm_up(settings)
        else:
            start_forkserver(settings)
    code = _check_validation(validation)
    if code is None:
        code = _check_models(settings)  # refuse a bad model directory before preprocessing
    if code is None and isinstance(not_found, NoMatchError):
        LOG.error("%s", not_found)
        code = EXIT_NO_MATCH
    if code is not None or not_found is not None:
        if warm is not None:
            warm.stop()
        if code is not None:
            return code
        raise not_found
    return run_participant(settings, images=images, warm=warm)


def _check_validation(validation) -> int | None:
    """Exit code 16 for a dataset the validator refused (its messages logged), else None."""
    from bids_brainage.bids.validate import BIDSError

    if validation is None:
        return None
    try:
        warnings = validation.result()
    except BIDSError as exc:
        LOG.error("%s", exc)
        return EXIT_INVALID_BIDS
    if warnings:
        LOG.warning("BIDS validator: %d warning(s), e.g. %s", len(warnings),
                    "; ".join(warnings[:3]))
    mark("validated")
    return None


def _check_models(settings) -> int | None:
    """Exit code 64 for an unknown model name or an altered or malformed model directory."""
    from bids_brainage.models.registry import ModelError, load_cards, select_models, verify_all

    try:
        cards = load_cards(settings.model_dir)
        select_models(cards, settings.models)  # unknown names are refused here
        verify_all(cards, list(cards))  # every file: an altered directory is not trusted
    except ModelError as exc:
        LOG.error("%s", exc)
        return EXIT_USAGE
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a card without a name...
        from bids_brainage.models.registry import CARD_FILE, model_dir_or_default

        LOG.error("%s is malformed (%s: %s); not a usable model card",
                  model_dir_or_default(settings.model_dir) / CARD_FILE, type(exc).__name__, exc)
        return EXIT_USAGE
    mark("models_verified")
    return None


def console_main() -> None:
    """The ``bids_brainage`` command: :func:`main`, then exit without the interpreter's
    teardown, which spent ~1 s freeing what torch, ITK and nipype had loaded (the operating
    system frees a process's memory at once). The exit handlers still run (7 ms: logging's
    flush, multiprocessing's temporary folder and forkserver), output is flushed; every file
    was written atomically and closed before :func:`main` returned; worker pools were shut
    down by then."""
    import atexit

    code = main()
    atexit._run_exitfuncs()  # noqa: SLF001 - what a normal exit runs, without the teardown
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
