"""The sbatch scripts of a submission, readable and reusable by hand.

``participant.sbatch`` runs one participant per array task: the task's line of a labels file
(its first argument) names the participant, each task has its own work folder
``<work>/sub-<label>``, and the dataset was validated once before submitting
(``--skip-bids-validation``). ``group.sbatch`` runs the group level once. ``submit.sh``
submits them again: the arrays, then the group job with ``--dependency=afterany`` on them.
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

# container paths of the bound folders (as in the README's Singularity example)
DATA, OUT, WORK = "/data", "/out", "/work"


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each job asks SLURM for. Defaults: benchmarks/slurm_resources.py measured one
    participant at 20-55 s and 1.3 GiB peak (process tree, 2 processes), 2 mm and 1 mm alike;
    benchmarks/slurm_startup.py the group level of 1,000 participants at 3 s and 0.15 GiB."""

    cpus_per_task: int = 2
    mem: str = "3G"
    time: str = "00:20:00"
    group_mem: str = "2G"
    group_time: str = "00:30:00"
    partition: str | None = None
    account: str | None = None
    throttle: int = 50  # array tasks running at once (%N); 0: no limit
    extra: tuple[str, ...] = ()  # more #SBATCH options, e.g. --qos=normal


@dataclasses.dataclass(frozen=True)
class Runner:
    """How a job starts the app: the installed command (an absolute path), or a SIF image
    through ``apptainer run`` / ``singularity run`` with the folders bound."""

    app: str | None = None
    image: Path | None = None
    runtime: str = "singularity"

    def command(self, bids_dir: Path, output_dir: Path, work: str, level: str) -> str:
        """The start of the app's command line; ``work`` is a shell word (may hold ``$work``)."""
        if self.image is None:
            return f"{shlex.quote(self.app)} {_q(bids_dir)} {_q(output_dir)} {level} -w {work}"
        return (f"{self.runtime} run --cleanenv -B {_q(f'{bids_dir}:{DATA}:ro')} "
                f"-B {_q(f'{output_dir}:{OUT}')} -B {work}:{WORK} \\\n    {_q(self.image)} "
                f"{DATA} {OUT} {level} -w {WORK}")


def _q(value) -> str:
    return shlex.quote(str(value))


def _header(name: str, log: Path, cpus: int, mem: str, time: str,
            resources: Resources) -> list[str]:
    lines = [f"#SBATCH --job-name={name}", f"#SBATCH --cpus-per-task={cpus}",
             f"#SBATCH --mem={mem}", f"#SBATCH --time={time}", f"#SBATCH --output={log}"]
    if resources.partition:
        lines.append(f"#SBATCH --partition={resources.partition}")
    if resources.account:
        lines.append(f"#SBATCH --account={resources.account}")
    lines += [f"#SBATCH {option}" for option in resources.extra]
    return lines


def _app_args(app_args) -> str:
    return " ".join(_q(a) for a in app_args)


def participant_script(*, folder: Path, bids_dir: Path, output_dir: Path, work_dir: Path,
                       runner: Runner, resources: Resources, app_args=()) -> str:
    """The array script: one participant per task, its label on the task's line."""
    extra = _app_args(app_args)
    command = runner.command(bids_dir, output_dir, '"$work"', "participant")
    return "\n".join([
        "#!/bin/bash",
        "# bids_brainage participant level, one participant per array task",
        "# (written by bids_brainage-slurm; submit.sh beside it submits it again).",
        "# By hand: sbatch --array=1-N%50 participant.sbatch LABELS_FILE",
        "# where line i of LABELS_FILE is the participant label of task i.",
        *_header("bids_brainage", folder / "participant-%A_%a.log", resources.cpus_per_task,
                 resources.mem, resources.time, resources),
        "set -euo pipefail",
        'labels=${1:?usage: sbatch --array=1-N participant.sbatch LABELS_FILE}',
        'label=$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$labels")',
        '[[ -n $label ]] || { echo "no line $SLURM_ARRAY_TASK_ID in $labels" >&2; exit 64; }',
        f"work={_q(work_dir)}/sub-$label",
        'mkdir -p "$work"',
        'echo "sub-$label: task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname),'
        ' ${SLURM_CPUS_PER_TASK:-1} CPUs, work folder $work"',
        f"exec {command} \\",
        '    --participant-label "$label" --nprocs "${SLURM_CPUS_PER_TASK:-1}" '
        f"--skip-bids-validation{' ' + extra if extra else ''}",
        "",
    ])


def group_script(*, folder: Path, bids_dir: Path, output_dir: Path, work_dir: Path,
                 runner: Runner, resources: Resources, app_args=()) -> str:
    """The group-level script: collects every participant's table once the array is over."""
    extra = _app_args(app_args)
    command = runner.command(bids_dir, output_dir, '"$work"', "group")
    return "\n".join([
        "#!/bin/bash",
        "# bids_brainage group level (written by bids_brainage-slurm). Submitted after the",
        "# participant array with --dependency=afterany, so it also runs when some",
        "# participants failed: group_brainage.tsv lists them with status failed.",
        *_header("bids_brainage-group", folder / "group-%j.log", 1, resources.group_mem,
                 resources.group_time, resources),
        "set -euo pipefail",
        f"work={_q(work_dir)}/group",
        'mkdir -p "$work"',
        f"exec {command} --nprocs 1{' ' + extra if extra else ''}",
        "",
    ])


def array_commands(folder: Path, label_files: list[tuple[str, int]],
                   throttle: int) -> list[list[str]]:
    """``sbatch`` argument lists of the participant arrays, one per labels file (its name in
    ``folder`` and its number of lines)."""
    limit = f"%{throttle}" if throttle else ""
    return [["sbatch", "--parsable", f"--array=1-{n}{limit}", str(folder / "participant.sbatch"),
             str(folder / name)] for name, n in label_files]


def group_command(folder: Path, array_ids: list[str]) -> list[str]:
    """``sbatch`` arguments of the group job, started once every array has ended."""
    return ["sbatch", "--parsable", f"--dependency=afterany:{':'.join(array_ids)}",
            str(folder / "group.sbatch")]


def submit_script(label_files: list[tuple[str, int]], throttle: int) -> str:
    """``submit.sh``: the same submission, by hand (``bash submit.sh``)."""
    lines = ["#!/bin/bash", "# Submit this submission again: bash submit.sh",
             "# (participant arrays, then the group job once they have all ended)",
             "set -euo pipefail", 'cd "$(dirname "$0")"']
    names = []
    for i, argv in enumerate(array_commands(Path("."), label_files, throttle), start=1):
        lines.append(f"array{i}=$({' '.join(_q(a) for a in argv)})")
        names.append(f"${{array{i}%%;*}}")
    lines.append(f"group=$(sbatch --parsable --dependency=afterany:{':'.join(names)} "
                 "group.sbatch)")
    lines.append(f'echo "participant array(s): {" ".join(names)}; group job: $group"')
    return "\n".join(lines) + "\n"
