"""``bids_brainage-slurm``: a cohort on a SLURM cluster, one participant per array task.

status.py   which participants are done (``ok``), ``failed`` or ``missing``; whom to submit
scripts.py  the array and group sbatch scripts and a ``submit.sh`` that chains them by hand
submit.py   writes a submission's files to ``output_dir/logs/slurm/<stamp>/`` and runs sbatch

The command line is ``bids_brainage.cli.slurm``.
"""
