"""One submission: its files in ``output_dir/logs/slurm/<stamp>/``, then sbatch.

The folder holds ``participants.txt`` (one label a line; ``participants-<k>.txt`` when the
cohort is split into several arrays), ``participant.sbatch``, ``group.sbatch``, ``submit.sh``
and, once submitted, ``submission.json`` (job ids, labels, the states before submitting);
the jobs write their logs there too.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
import subprocess
from pathlib import Path

from bids_brainage.io import atomic_write_json, atomic_write_text
from bids_brainage.slurm.scripts import (
    Resources, Runner, array_commands, group_command, group_script, participant_script,
    submit_script,
)

# SLURM's default MaxArraySize is 1001: task indices 1..1000
MAX_ARRAY_SIZE = 1000


class SubmitError(RuntimeError):
    """sbatch is missing or refused a job (exit code 69)."""


@dataclasses.dataclass
class Submission:
    folder: Path
    labels: list[str]
    label_files: list[tuple[str, int]]
    throttle: int
    array_ids: list[str] = dataclasses.field(default_factory=list)
    group_id: str | None = None

    def array_commands(self) -> list[list[str]]:
        return array_commands(self.folder, self.label_files, self.throttle)

    def group_command(self) -> list[str]:
        return group_command(self.folder, self.array_ids or ["<array ids>"])


def new_folder(output_dir: Path) -> Path:
    """``output_dir/logs/slurm/<YYYYmmdd-HHMMSS>[-k]``, created, never an existing one."""
    base = Path(output_dir) / "logs" / "slurm"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        folder = base / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free submission folder under {base}")


def write_submission(*, bids_dir: Path, output_dir: Path, work_dir: Path, labels: list[str],
                     runner: Runner, resources: Resources, app_args=(),
                     max_array_size: int = MAX_ARRAY_SIZE) -> Submission:
    """Write the labels file(s) and the scripts of a submission of ``labels``."""
    folder = new_folder(output_dir)
    chunks = [labels[i:i + max_array_size] for i in range(0, len(labels), max_array_size)]
    label_files = []
    for k, chunk in enumerate(chunks, start=1):
        name = "participants.txt" if len(chunks) == 1 else f"participants-{k}.txt"
        atomic_write_text(folder / name, "\n".join(chunk) + "\n")
        label_files.append((name, len(chunk)))
    common = dict(folder=folder, bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir,
                  runner=runner, resources=resources, app_args=app_args)
    atomic_write_text(folder / "participant.sbatch", participant_script(**common))
    atomic_write_text(folder / "group.sbatch", group_script(**common))
    atomic_write_text(folder / "submit.sh", submit_script(label_files, resources.throttle))
    for name in ("participant.sbatch", "group.sbatch", "submit.sh"):
        (folder / name).chmod(0o755)
    return Submission(folder=folder, labels=list(labels), label_files=label_files,
                      throttle=resources.throttle)


def sbatch(argv: list[str]) -> str:
    """Run one ``sbatch --parsable ...`` and return the job id."""
    exe = shutil.which(argv[0])
    if exe is None:
        raise SubmitError("sbatch not found: run this on a SLURM login node, or add --dry-run "
                          "to write the scripts without submitting")
    proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SubmitError(f"{' '.join(argv)} failed ({proc.returncode}): "
                          f"{proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]  # "id" or "id;cluster"
    if not job_id.isdigit():
        raise SubmitError(f"{' '.join(argv)}: unexpected answer {proc.stdout.strip()!r}")
    return job_id


def submit(submission: Submission) -> Submission:
    """Submit the arrays, then the group job depending on them all (``afterany``)."""
    for argv in submission.array_commands():
        submission.array_ids.append(sbatch(argv))
    submission.group_id = sbatch(submission.group_command())
    return submission


def record(submission: Submission, states: dict[str, str], dry_run: bool) -> Path:
    """``submission.json``: what was submitted, as what, and where everyone stood before."""
    return atomic_write_json(submission.folder / "submission.json", {
        "submitted": not dry_run,
        "array_jobs": [{"job_id": job_id, "labels_file": name, "tasks": n}
                       for job_id, (name, n) in zip(submission.array_ids or
                                                    [None] * len(submission.label_files),
                                                    submission.label_files)],
        "group_job": submission.group_id,
        "participants": submission.labels,
        "states_before": states,
    })
