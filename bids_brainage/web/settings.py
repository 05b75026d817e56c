"""The web service's settings: one frozen dataclass, each option also an environment variable.

Precedence: command-line option, then ``BIDS_BRAINAGE_WEB_<NAME>``, then the default. The
parser (:mod:`bids_brainage.web.cli`) shows the variable and the default of every option.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

ENV_PREFIX = "BIDS_BRAINAGE_WEB_"
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Option:
    name: str  # the dataclass field; --name-with-dashes on the command line
    type: type
    default: object
    help: str
    commands: tuple[str, ...] = ("serve", "worker")
    metavar: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS = (
    Option("broker", str, "redis://127.0.0.1:6379/0", "the celery broker (redis) URL",
           metavar="URL"),
    Option("data_dir", Path, Path("bids_brainage_web_data"),
           "where uploads, job states and results are kept (one folder per job)"),
    Option("retention_days", float, 7.0,
           "finished jobs (their uploads and results) are deleted after this many days",
           metavar="DAYS"),
    Option("max_upload_mb", float, 512.0,
           "the largest upload accepted, in MB (streamed to disk, never held in memory)",
           ("serve",)),
    Option("host", str, "127.0.0.1",
           "address to listen on (0.0.0.0 to serve other machines: put it behind the lab's "
           "reverse proxy with a login)", ("serve",)),
    Option("port", int, 8000, "port to listen on", ("serve",)),
    Option("list_days", int, 7,
           "the home page lists the jobs of the last N days (0: no list; each job stays "
           "reachable at its own unguessable URL)", ("serve",), "DAYS"),
    Option("concurrency", int, 1,
           "jobs run at once; each needs up to 2.5 GB, the rest wait in the queue",
           ("worker",), "N"),
    Option("threads", int, 0,
           "threads per job (torch, ITK); 0: the CPU count divided by --concurrency",
           ("worker",), "N"),
    Option("job_time_limit", int, 3600,
           "seconds a job may run before it is stopped and marked failed", ("worker",),
           "SECONDS"),
)


@dataclasses.dataclass(frozen=True)
class WebSettings:
    broker: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("bids_brainage_web_data")
    retention_days: float = 7.0
    max_upload_mb: float = 512.0
    host: str = "127.0.0.1"
    port: int = 8000
    list_days: int = 7
    concurrency: int = 1
    threads: int = 0
    job_time_limit: int = 3600

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def retention_seconds(self) -> float:
        return self.retention_days * 86400.0

    @property
    def threads_per_job(self) -> int:
        if self.threads > 0:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(1, self.concurrency))

    @classmethod
    def from_args(cls, args) -> "WebSettings":
        values = {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
        values["data_dir"] = Path(values.get("data_dir", cls.data_dir)).expanduser().resolve()
        return cls(**values)


def env_default(option: Option, environ=None):
    """The option's value from its environment variable, else its default.

    >>> env_default(OPTIONS[2], {"BIDS_BRAINAGE_WEB_RETENTION_DAYS": "2.5"})
    2.5
    >>> env_default(OPTIONS[2], {})
    7.0
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(option.env)
    if raw is None or raw == "":
        return option.default
    try:
        return option.type(raw)
    except ValueError as exc:
        raise SystemExit(f"{option.env}={raw!r}: not a valid {option.type.__name__}") from exc
