"""``bids_brainage-slurm``: submit a cohort to SLURM, one participant per array task, then
the group level once (``--dependency=afterany``).

    bids_brainage-slurm bids_dir output_dir [options] [-- app options]

Exit codes: 0 submitted (or nothing to submit) · 16 invalid BIDS dataset · 18 no T1w matched
the labels · 64 usage (also: app options the command sets itself) · 66 input missing ·
69 sbatch missing or refused a job · 73 output not writable.
"""
from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
from pathlib import Path

from bids_brainage import __version__
from bids_brainage.cli.run import (
    EXIT_INVALID_BIDS, EXIT_NO_INPUT, EXIT_NO_MATCH, EXIT_OK, EXIT_USAGE,
)
from bids_brainage.slurm.scripts import Resources

EXIT_UNAVAILABLE = 69
LOG = logging.getLogger("bids_brainage")
_MEM = re.compile(r"^\d+[KMGT]?$")
# SLURM time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$")
DEFAULTS = Resources()


def _pattern(regex: re.Pattern, what: str):
    def check(value: str) -> str:
        if not regex.match(value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a SLURM {what}")
        return value
    return check


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def get_parser() -> argparse.ArgumentParser:
    from bids_brainage.cli.parser import _label, _positive_int

    parser = argparse.ArgumentParser(
        prog="bids_brainage-slurm",
        usage="%(prog)s bids_dir output_dir [options] [-- app options]",
        description=(
            "Run bids_brainage on a SLURM cluster: validate the dataset once, submit an array "
            "of one participant per task and a group job that starts when the array has "
            "ended (afterany). Participants whose outputs are complete are skipped. The "
            "scripts are written to output_dir/logs/slurm/<stamp>/ (submit.sh there submits "
            "them again). Options of bids_brainage go after '--', e.g. "
            "'-- --models rf,morph --registration syn'."
        ),
    )
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="where the derivatives are written")
    parser.add_argument("--version", action="version",
                        version=f"bids_brainage-slurm {__version__}")
    sel = parser.add_argument_group("Whom to submit")
    sel.add_argument("--participant-label", "--participant_label", dest="participant_label",
                     nargs="+", type=_label, metavar="LABEL",
                     help="participants to consider (with or without 'sub-'); default: all")
    redo = sel.add_mutually_exclusive_group()
    redo.add_argument("--rerun-failed", dest="mode", action="store_const",
                      const="rerun-failed", default="default",
                      help="also resubmit participants whose outputs say failed (by default "
                      "only those without outputs are submitted)")
    redo.add_argument("--rerun-all", dest="mode", action="store_const", const="rerun-all",
                      help="submit every selected participant, even those already ok")
    sel.add_argument("--skip-bids-validation", action="store_true",
                     help="do not validate the dataset before submitting (the tasks never do)")

    res = parser.add_argument_group(
        "Resources (defaults: measured per participant, benchmarks/slurm_resources.py)")
    res.add_argument("--cpus-per-task", type=_positive_int, default=DEFAULTS.cpus_per_task,
                     help="cores per participant; also the app's --nprocs (default: %(default)s)")
    res.add_argument("--mem", type=_pattern(_MEM, "memory size"), default=DEFAULTS.mem,
                     help="memory per participant (default: %(default)s; peak measured: 1.3 GiB; "
                     "add 2G for --registration syn)")
    res.add_argument("--time", type=_pattern(_TIME, "time"), default=DEFAULTS.time,
                     help="time limit per participant (default: %(default)s; measured: 20-55 s on "
                     "2 cores)")
    res.add_argument("--group-mem", type=_pattern(_MEM, "memory size"),
                     default=DEFAULTS.group_mem, help="memory of the group job (default: %(default)s)")
    res.add_argument("--group-time", type=_pattern(_TIME, "time"),
                     default=DEFAULTS.group_time, help="time limit of the group job (default: %(default)s)")
    res.add_argument("--partition", help="SLURM partition of every job")
    res.add_argument("--account", help="SLURM account charged for every job")
    res.add_argument("--throttle", type=_count, default=DEFAULTS.throttle, metavar="N",
                     help="at most N participants at once (sbatch --array=...%%N); 0: no limit "
                     "(default: %(default)s)")
    res.add_argument("--sbatch-option", dest="extra", action="append", default=[],
                     metavar="OPTION", help="one more #SBATCH line for every job, e.g. "
                     "--sbatch-option=--qos=normal (repeatable)")
    res.add_argument("--max-array-size", type=_positive_int, default=1000, metavar="N",
                     help="split larger cohorts into arrays of N tasks (default: %(default)s, "
                     "SLURM's default MaxArraySize minus one)")

    run = parser.add_argument_group("How each task runs the app")
    run.add_argument("-w", "--work-dir", dest="work_dir", type=Path,
                     help="work folders, one per task (<work-dir>/sub-<label>); put it on "
                     "scratch (default: output_dir/../bids_brainage_work)")
    run.add_argument("--image", type=Path, metavar="SIF",
                     help="run the app from this Singularity/Apptainer image instead of the "
                     "installed command (the dataset, outputs and work folder are bound to "
                     "/data, /out and /work)")
    run.add_argument("--runtime", choices=("apptainer", "singularity"),
                     help="container runtime for --image (default: apptainer when installed "
                     "here, else singularity)")
    run.add_argument("--dry-run", action="store_true",
                     help="write and print the scripts and sbatch commands, submit nothing")
    return parser


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """The command's own arguments and the app's (after the first ``--``)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def app_settings(args, app_args: list[str]):
    """The participant-level settings the tasks will run with; None (logged) when the app
    options are invalid or set what this command controls."""
    from bids_brainage.cli.parser import get_parser as app_parser
    from bids_brainage.config import Settings

    parser = app_parser()
    parser.set_defaults(nprocs=None)
    try:
        ns = parser.parse_args([str(args.bids_dir), str(args.output_dir), "participant",
                                *app_args])
    except SystemExit:
        LOG.error("invalid bids_brainage options after '--': %s", " ".join(app_args))
        return None
    owned = {"participant_label": ("--participant-label", "give it before '--'"),
             "work_dir": ("-w/--work-dir", "give it before '--'"),
             "nprocs": ("--nprocs", "use --cpus-per-task")}
    for name, (option, hint) in owned.items():
        if getattr(ns, name) is not None:
            LOG.error("bids_brainage-slurm sets the app's %s itself: remove it from the "
                      "options after '--' (%s)", option, hint)
            return None
    ns.nprocs = args.cpus_per_task
    ns.work_dir = args.work_dir
    return Settings.from_args(ns)


def _runner(args):
    from bids_brainage.slurm.scripts import Runner

    if args.image is not None:
        runtime = args.runtime or ("apptainer" if shutil.which("apptainer") else "singularity")
        return Runner(image=args.image.expanduser().resolve(), runtime=runtime)
    # the command beside this interpreter: a job's PATH need not have the venv on it
    here = Path(sys.executable).absolute().parent / "bids_brainage"
    app = str(here) if here.exists() else shutil.which("bids_brainage")
    return Runner(app=app) if app else None


def _check_once(settings, skip_validation: bool, check_models: bool) -> int | None:
    """What every task would otherwise find out on its own: a dataset or model problem
    (the models only when the tasks run this installation, not an image's)."""
    from bids_brainage.bids.validate import BIDSError, validate_bids
    from bids_brainage.models.registry import ModelError, load_cards, select_models, verify_all

    if not skip_validation:
        try:
            warnings = validate_bids(settings.bids_dir)
        except BIDSError as exc:
            LOG.error("%s", exc)
            return EXIT_INVALID_BIDS
        print(f"BIDS validator: {settings.bids_dir} is valid"
              + (f" ({len(warnings)} warning(s))" if warnings else ""))
    if not check_models:
        return None
    try:
        cards = load_cards(settings.model_dir)
        select_models(cards, settings.models)
        verify_all(cards, list(cards))
    except ModelError as exc:
        LOG.error("%s", exc)
        return EXIT_USAGE
    return None


def main(argv: list[str] | None = None) -> int:
    own, app_args = _split(list(sys.argv[1:] if argv is None else argv))
    try:
        args = get_parser().parse_args(own)
    except SystemExit as exc:
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    _setup_logging()
    settings = app_settings(args, app_args)
    if settings is None:
        return EXIT_USAGE
    from bids_brainage.cli.run import check_paths

    code = check_paths(settings)
    if code is not None:
        return code
    runner = _runner(args)
    if runner is None:
        LOG.error("the bids_brainage command is not installed beside %s nor on PATH; "
                  "install the app or give --image", sys.executable)
        return EXIT_UNAVAILABLE
    if runner.image is not None and not runner.image.is_file():
        LOG.error("image %s does not exist", runner.image)
        return EXIT_NO_INPUT
    code = _check_once(settings, args.skip_bids_validation, check_models=runner.image is None)
    if code is not None:
        return code
    return _submit(args, settings, runner, app_args)


def _submit(args, settings, runner, app_args: list[str]) -> int:
    from bids_brainage.bids.layout import NoMatchError
    from bids_brainage.slurm import status
    from bids_brainage.slurm.submit import SubmitError, record, submit, write_submission

    try:
        states = status.participant_states(settings.bids_dir, settings.output_dir,
                                           args.participant_label or (),
                                           settings.session_label)
    except NoMatchError as exc:
        LOG.error("%s", exc)
        return EXIT_NO_MATCH
    labels = status.to_submit(states, args.mode)
    counts = status.count(states)
    print(f"{len(states)} participant(s): {counts['ok']} ok, {counts['failed']} failed, "
          f"{counts['missing']} without outputs; submitting {len(labels)}")
    if args.mode == "default" and counts["failed"]:
        failed = [label for label, s in states.items() if s == status.FAILED]
        print(f"not resubmitted (add --rerun-failed): {', '.join(failed[:20])}"
              + (" ..." if len(failed) > 20 else ""))
    if not labels:
        print("nothing to submit")
        return EXIT_OK
    resources = Resources(
        cpus_per_task=args.cpus_per_task, mem=args.mem, time=args.time,
        group_mem=args.group_mem, group_time=args.group_time, partition=args.partition,
        account=args.account, throttle=args.throttle, extra=tuple(args.extra))
    submission = write_submission(
        bids_dir=settings.bids_dir, output_dir=settings.output_dir, work_dir=settings.work_dir,
        labels=labels, runner=runner, resources=resources, app_args=app_args,
        max_array_size=args.max_array_size)
    folder = submission.folder
    print(f"wrote {folder}/: participant.sbatch, group.sbatch, submit.sh, "
          + ", ".join(name for name, _ in submission.label_files))
    if args.dry_run:
        for name in ("participant.sbatch", "group.sbatch", "submit.sh"):
            print(f"\n--- {folder / name}\n{(folder / name).read_text()}", end="")
        print("\ndry run: nothing submitted; to submit: bash " + str(folder / "submit.sh"))
        record(submission, states, dry_run=True)
        return EXIT_OK
    try:
        submit(submission)
    except SubmitError as exc:
        LOG.error("%s", exc)
        if submission.array_ids:
            LOG.error("already submitted: participant array(s) %s; cancel them with "
                      "scancel %s", ", ".join(submission.array_ids),
                      " ".join(submission.array_ids))
        record(submission, states, dry_run=False)
        return EXIT_UNAVAILABLE
    record(submission, states, dry_run=False)
    ids = ",".join([*submission.array_ids, submission.group_id])
    for job_id, (name, n) in zip(submission.array_ids, submission.label_files):
        print(f"participant array job {job_id}: {n} task(s) ({folder / name})")
    print(f"group job {submission.group_id}: after the array(s) end (afterany)")
    print(f"logs in {folder}/; follow with: squeue -j {ids}   sacct -j {ids}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
