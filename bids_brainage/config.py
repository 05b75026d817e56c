"""The resolved settings of one run: one frozen dataclass, passed down, written to logs/."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import uuid
from pathlib import Path

from bids_brainage import __version__


@dataclasses.dataclass(frozen=True)
class Settings:
    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    skip_bids_validation: bool = False
    nprocs: int = 1
    omp_nthreads: int = 1
    omp_nthreads_given: bool = False
    normalization: str = "gmm"
    skull_strip: str = "auto"
    registration: str = "affine"
    models: tuple[str, ...] = ()
    model_dir: Path | None = None
    bias_fit: str = "model"
    controls: tuple[str, ...] = ()
    site_column: str = "auto"
    allow_model_mismatch: bool = False
    reports: bool = True
    verbose: int = 0
    run_uuid: str = ""
    version: str = __version__

    @classmethod
    def from_args(cls, args) -> "Settings":
        bids_dir = Path(args.bids_dir).expanduser().resolve()
        output_dir = Path(args.output_dir).expanduser().resolve()
        work_dir = (
            Path(args.work_dir).expanduser().resolve() if args.work_dir
            else default_work_dir(output_dir)
        )
        nprocs = max(1, args.nprocs)
        omp = args.omp_nthreads or min(nprocs, 8)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls(
            bids_dir=bids_dir,
            output_dir=output_dir,
            analysis_level=args.analysis_level,
            work_dir=work_dir,
            participant_label=tuple(args.participant_label or ()),
            session_label=tuple(args.session_label or ()),
            skip_bids_validation=args.skip_bids_validation,
            nprocs=nprocs,
            omp_nthreads=omp,
            omp_nthreads_given=bool(args.omp_nthreads),
            normalization=args.normalization,
            skull_strip=args.skull_strip,
            registration=args.registration,
            models=tuple(args.models or ()),
            model_dir=Path(args.model_dir).expanduser().resolve() if args.model_dir else None,
            bias_fit=args.bias_fit,
            controls=tuple(getattr(args, "controls", ()) or ()),
            site_column=getattr(args, "site_column", "auto"),
            allow_model_mismatch=getattr(args, "allow_model_mismatch", False),
            reports=args.reports,
            verbose=args.verbose,
            run_uuid=f"{stamp}_{uuid.uuid4().hex[:8]}",
        )

    def to_dict(self) -> dict:
        """Plain types only (TOML and JSON friendly); None values are left out."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    def write_toml(self, folder: Path) -> Path:
        """Write the resolved settings as ``folder/config-<run_uuid>.toml`` (atomically)."""
        import tomli_w

        from bids_brainage.io import atomic_write_text

        path = Path(folder) / f"config-{self.run_uuid}.toml"
        atomic_write_text(path, tomli_w.dumps({"bids_brainage": self.to_dict()}))
        return path

    def thread_environment(self) -> dict[str, str]:
        """Thread counts for the numerical libraries, set before they are imported."""
        n = str(self.omp_nthreads)
        return {
            "OMP_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n,
            "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": n,
        }


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def default_work_dir(output_dir: Path) -> Path:
    """``output_dir/../bids_brainage_work``; where that cannot be written (a container's
    ``/out`` mount has an unwritable parent), a folder in the temporary directory."""
    import tempfile

    preferred = output_dir.parent / "bids_brainage_work"
    if os.access(_nearest_existing(preferred), os.W_OK):
        return preferred
    return Path(tempfile.gettempdir()) / f"bids_brainage_work_{os.getuid()}"


def apply_thread_environment(settings: Settings) -> None:
    for key, value in settings.thread_environment().items():
        os.environ.setdefault(key, value)


# Update checks and telemetry of the libraries we run, off: nothing reaches the network.
# nipype asks etelemetry for newer versions; deno (the BIDS validator's runtime) checks for
# upgrades in the background.
OFFLINE_ENVIRONMENT = {"NIPYPE_NO_ET": "1", "DENO_NO_UPDATE_CHECK": "1"}


def apply_offline_environment(settings: Settings) -> None:
    """Turn off update checks, and keep library caches in the work dir when the user set
    none: a run writes nothing outside ``output_dir`` and the work dir."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ[key] = value
    cache = settings.work_dir / ".cache"
    os.environ.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "torchinductor"))
