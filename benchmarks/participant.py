"""One real full-resolution head through the default command, and where its seconds go.

    python benchmarks/participant.py [--runs 3] [--images ds000011,ixi1mm] [--app PATH]
                                     [--app-args "..."] [--json FILE]

Runs ``bids_brainage <ds> <out> participant -w <work>`` as a user types it (the console
script next to this Python; the BIDS validator and the reports on), on a one-participant
dataset holding

- ``ds000011``: ``../shared/data/ds000011-heads`` sub-01 (``--subject``), a raw head,
  1 × 1.33 × 1.33 mm, 160 × 192 × 192;
- ``ixi1mm``: the example's sub-IXI095 (``--ixi-subject``) upsampled (cubic) to 1 mm.

Each run gets fresh output and work folders; then the same command runs again on them
("rerun": nothing changed, everything reused). Prints, as the median over ``--runs``:

- the wall time, and the peak resident memory of the whole process tree (the app, nipype's
  forkserver workers, the validator's deno): /proc of every descendant sampled every 50 ms,
  RSS summed (an upper bound: shared pages count once per process), and PSS summed
  once a second (reading it costs the run it measures CPU: see ``TreeMemory``);
- each stage's seconds from the ``_brainage.json`` sidecar;
- the time outside the stages, broken down with the wall-clock markers the app writes when
  ``BIDS_BRAINAGE_TIMELINE`` is set (:mod:`bids_brainage.timeline`);
- what ran beside the steps: each request the helper process answered (deepbet's load and
  network, the tissue warp, figures) and each item the warm-up thread loaded, with its start
  and duration, to see which of them the steps waited for;
- the load average before and after each run: the machine may be shared.

``--app PATH`` runs another installation's ``bids_brainage`` (e.g. an older commit's, in a
virtual environment of its own): before/after tables taken back to back.
``benchmarks/cohort.py`` (a whole dataset in one command) reuses the pieces below.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ds-ixi3"
HEADS = ROOT.parent / "shared" / "data" / "ds000011-heads"
STAGES = ("conform", "skull_strip", "largest_component", "n4", "register", "normalize",
          "predict")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------ datasets
def one_participant_dataset(folder: Path, source: Path, subject: str, image=None) -> Path:
    """``folder`` as a BIDS dataset holding only ``sub-<subject>`` of ``source`` (its T1w
    replaced by ``image``, a nibabel image, when given)."""
    folder.mkdir(parents=True)
    for name in ("dataset_description.json", "README", "participants.json"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    rows = (source / "participants.tsv").read_text().splitlines()
    keep = [rows[0]] + [r for r in rows[1:] if r.split("\t")[0] == f"sub-{subject}"]
    (folder / "participants.tsv").write_text("\n".join(keep) + "\n")
    src = source / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"
    dst = folder / f"sub-{subject}" / "anat" / src.name
    dst.parent.mkdir(parents=True)
    if image is None:
        shutil.copy(src, dst)
    else:
        image.to_filename(str(dst))
    return folder


def make_datasets(tmp: Path, names, subject: str, ixi_subject: str) -> dict[str, Path]:
    out = {}
    for name in names:
        if name == "ds000011":
            out[name] = one_participant_dataset(tmp / name, HEADS, subject)
        elif name == "ixi1mm":
            import nibabel as nib

            from bids_brainage.training.robustness import upsample_to_1mm

            src = EXAMPLE / f"sub-{ixi_subject}" / "anat" / f"sub-{ixi_subject}_T1w.nii.gz"
            out[name] = one_participant_dataset(tmp / name, EXAMPLE, ixi_subject,
                                                upsample_to_1mm(nib.load(src)))
        else:
            raise SystemExit(f"unknown image {name!r}; choose ds000011, ixi1mm")
    return out


# ------------------------------------------------------------------------------ memory
def _children_map() -> dict[int, list[int]]:
    children = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    children, tree, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeMemory(threading.Thread):
    """Samples the summed RSS of a process and all its descendants every ``interval``, and
    their summed PSS every ``pss_interval``, until stopped. PSS is read seldom: the kernel
    walks a process's page tables for it, ~25 ms of CPU per sample of a 1 GB process, and
    at 20 samples a second that took a third of a core from the run being measured (RSS,
    from statm, costs microseconds)."""

    def __init__(self, pid: int, interval: float = 0.05, pss_interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_interval = pid, interval, pss_interval
        self.peak_rss = self.peak_pss = 0
        self.max_processes = 0
        self._done = threading.Event()

    def run(self):
        last_pss = 0.0
        while not self._done.is_set():
            tree = process_tree(self.pid)
            self.peak_rss = max(self.peak_rss, sum(_rss(p) for p in tree))
            if time.monotonic() - last_pss >= self.pss_interval:
                last_pss = time.monotonic()
                self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in tree))
            self.max_processes = max(self.max_processes, len(tree))
            self._done.wait(self.interval)

    def stop(self):
        self._done.set()
        self.join()


# ------------------------------------------------------------------------------ one run
def default_app() -> Path:
    """The ``bids_brainage`` console script installed next to this Python."""
    return Path(sys.executable).parent / "bids_brainage"


def run_app(args: list[str], *, app: Path, timeline: Path) -> dict:
    """Run the app once; its wall time, peak memory, exit code and timeline."""
    env = dict(os.environ, BIDS_BRAINAGE_TIMELINE=str(timeline))
    load_before = os.getloadavg()[0]
    launch = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen([str(app), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    memory = TreeMemory(proc.pid)
    memory.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    memory.stop()
    events = ([json.loads(line) for line in timeline.read_text().splitlines()]
              if timeline.exists() else [])
    return {"rc": proc.returncode, "wall": wall, "launch": launch, "end": launch + wall,
            "peak_rss_gb": memory.peak_rss / 1e9, "peak_pss_gb": memory.peak_pss / 1e9,
            "processes": memory.max_processes, "events": events, "output": output,
            "load": (load_before, os.getloadavg()[0])}


def sidecars(out: Path) -> dict[str, dict]:
    """``{image prefix: its _brainage.json}`` (not the contribution map's sidecar)."""
    return {p.name[:-len("_brainage.json")]: json.loads(p.read_text())
            for p in sorted(out.rglob("sub-*_brainage.json")) if "_desc-" not in p.name}


def predictions(out: Path) -> list[list[str]]:
    rows = []
    for tsv in sorted(out.rglob("sub-*_brainage.tsv")):
        lines = [line.split("\t") for line in tsv.read_text().splitlines()]
        rows += [[r[0], r[3], r[4]] for r in lines[1:]]
    return rows


def one_run(data: Path, tmp: Path, *, app: Path, app_args: list[str]) -> dict:
    """A fresh run, then the same command again on its folders."""
    out, work = tmp / "out", tmp / "work"
    cmd = [str(data), str(out), "participant", "-w", str(work), *app_args]
    fresh = run_app(cmd, app=app, timeline=tmp / "timeline-fresh.jsonl")
    if fresh["rc"] != 0:
        raise SystemExit(f"run failed ({fresh['rc']}): {fresh['output'][-3000:]}")
    fresh["stages"] = next(iter(sidecars(out).values()))["timings"]
    fresh["predictions"] = predictions(out)
    fresh["breakdown"] = breakdown(fresh, fresh["stages"])
    rerun = run_app(cmd, app=app, timeline=tmp / "timeline-rerun.jsonl")
    if rerun["rc"] != 0:
        raise SystemExit(f"rerun failed ({rerun['rc']}): {rerun['output'][-3000:]}")
    rerun["breakdown"] = breakdown(rerun, {})
    rerun["predictions"] = predictions(out)
    return {"fresh": fresh, "rerun": rerun}


# ------------------------------------------------------------------------------ breakdown
def _first(events, name, **match):
    for e in events:
        if e["event"] == name and all(e.get(k) == v for k, v in match.items()):
            return e["t"]
    return None


def breakdown(run: dict, stages: dict) -> dict[str, float]:
    """The run's wall time cut at the app's markers (seconds, in order). Stage seconds are
    taken out of the workflow's share; what remains of it is nipype's: building the graph,
    handing steps to workers (and starting them), collecting results, idling between polls."""
    ev = sorted(run["events"], key=lambda e: e["t"])
    if not ev:
        return {}
    marks = [("launch", run["launch"])]
    for name in ("main", "parsed", "checked", "validated", "models_verified", "indexed",
                 "workflow_start", "workflow_end", "reports_end", "exit"):
        t = _first(ev, name)
        if t is not None:
            marks.append((name, t))
    marks.append(("end", run["end"]))
    # each label names the span that ends at its marker; what runs beside the validator
    # (T1w discovery, loading ahead) counts as the validator's until it answers
    labels = {"main": "interpreter start, imports", "parsed": "argument parsing",
              "checked": "settings, paths", "validated": "BIDS validator (and beside it)",
              "models_verified": "model files checked (sha256)",
              "indexed": "lock, participants, T1w found, description",
              "workflow_start": "nipype import, workflow built (wait for loading)",
              "workflow_end": "workflow (nipype + stages)",
              "reports_end": "failures recorded, reports (rest)",
              "exit": "log, return", "end": "interpreter exit, pool shut down"}
    out = {}
    for (_, t0), (name, t1) in zip(marks, marks[1:]):
        if name == "workflow_end":
            out.update(_workflow_parts(ev, stages, t1 - t0))
        else:
            out[labels[name]] = out.get(labels[name], 0.0) + (t1 - t0)
    return out


def _workflow_parts(ev, stages: dict, workflow: float) -> dict[str, float]:
    starts = {e["node"]: e["t"] for e in ev if e["event"] == "node_start"}
    ends = {e["node"]: e["t"] for e in ev if e["event"] == "node_end"}
    stage_total = sum(float(v) for v in stages.values())
    sink, report = (sum(b["t"] - a["t"] for a, b in zip(pairs[::2], pairs[1::2]))
                    for pairs in ([e for e in ev if e.get("step") == step]
                                  for step in ("DerivativesSink", "ParticipantReport")))
    first_node = min(starts.values(), default=None)
    setup = (first_node - _first(ev, "workflow_start")) if first_node else 0.0
    # handing a step over: from nipype's "start" to the interface's run_start (worker start,
    # input hashing, upstream results loaded); collecting: run_end to nipype's "end"
    dispatch = collect = 0.0
    for node, t_start in starts.items():
        folder = "/" + node.replace(".", "/")
        mine = {e["event"]: e["t"] for e in ev if e["event"] in ("run_start", "run_end")
                and str(e.get("cwd", "")).endswith(folder)}
        if "run_start" in mine and node in ends:
            dispatch += mine["run_start"] - t_start
            collect += ends[node] - mine.get("run_end", ends[node])
    workers = [e for e in ev if e["event"] in ("worker_start", "worker_ready")]
    worker_setup = sum(b["t"] - a["t"] for a, b in zip(workers[::2], workers[1::2])
                       if a["event"] == "worker_start" and b["event"] == "worker_ready")
    return {
        "workflow total": workflow,
        "workflow: stages (sidecar)": stage_total,
        "workflow: graph set-up, hashing": setup,
        "workflow: hand-over to workers": dispatch,
        "  of which worker set-up": worker_setup,
        "workflow: results collected": collect,
        "workflow: outputs written (sink)": sink,
        "workflow: report drawn (node)": report,
        "workflow: rest (idle polls, parallel)": (workflow - stage_total - setup - dispatch
                                                  - collect - sink - report),
    }


def beside(run: dict) -> dict[str, tuple[float, float]]:
    """What ran beside the steps: each request the helper process answered and each item the
    warm-up thread loaded -> (start, seconds), from the launch (the first of a name)."""
    out = {}
    for kind, label in (("helper", "helper: {}"), ("warm_up", "warm-up: {}")):
        open_at = {}
        for e in sorted(run["events"], key=lambda e: e["t"]):
            name = e.get("function") or e.get("item")
            if e["event"] == f"{kind}_start":
                open_at.setdefault(name, e["t"])
            elif e["event"] == f"{kind}_end" and name in open_at:
                key = label.format(name)
                if key not in out:
                    out[key] = (open_at[name] - run["launch"], e["t"] - open_at[name])
    return out


# ------------------------------------------------------------------------------ report
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def print_table(name: str, shape, runs: list[dict]) -> None:
    fresh = [r["fresh"] for r in runs]
    rerun = [r["rerun"] for r in runs]
    n = len(runs)
    print(f"\n{name} {shape}: median of {n} run(s)")
    walls = ", ".join(f"{r['wall']:.1f}" for r in fresh)
    loads = ", ".join(f"{r['load'][0]:.1f}-{r['load'][1]:.1f}" for r in fresh)
    print(f"  wall                         {med(r['wall'] for r in fresh):7.1f} s  (runs {walls};"
          f" load avg {loads})")
    print(f"  peak memory, process tree    {med(r['peak_rss_gb'] for r in fresh):7.2f} GB RSS"
          f" ({med(r['peak_pss_gb'] for r in fresh):.2f} GB PSS,"
          f" up to {max(r['processes'] for r in fresh)} processes)")
    stage_sum = [sum(float(v) for v in r["stages"].values()) for r in fresh]
    print(f"  stages (sidecar)             {med(stage_sum):7.2f} s")
    for stage in STAGES:
        print(f"    {stage:<26} {med(float(r['stages'].get(stage, 0)) for r in fresh):7.2f} s")
    outside = [r["wall"] - s for r, s in zip(fresh, stage_sum)]
    print(f"  outside the stages           {med(outside):7.2f} s")
    keys = list(dict.fromkeys(k for r in fresh for k in r["breakdown"]))
    for key in keys:
        if key == "workflow: stages (sidecar)":
            continue
        print(f"    {key:<36} {med(r['breakdown'].get(key) for r in fresh):6.2f} s")
    side = [beside(r) for r in fresh]
    names = list(dict.fromkeys(k for b in side for k in b))
    if names:
        print("  beside the steps (start from launch, seconds)")
    for key in names:
        print(f"    {key:<44} {med(b[key][0] for b in side if key in b):6.2f} +"
              f" {med(b[key][1] for b in side if key in b):5.2f} s")
    walls = ", ".join(f"{r['wall']:.1f}" for r in rerun)
    print(f"  rerun, same folders          {med(r['wall'] for r in rerun):7.1f} s  (runs {walls};"
          f" peak {med(r['peak_rss_gb'] for r in rerun):.2f} GB RSS)")
    for key in dict.fromkeys(k for r in rerun for k in r["breakdown"]):
        if key.startswith("workflow:") or key.startswith("  of"):
            continue
        print(f"    {key:<36} {med(r['breakdown'].get(key) for r in rerun):6.2f} s")
    same = all(r["rerun"]["predictions"] == r["fresh"]["predictions"] for r in runs)
    print(f"  predictions {fresh[0]['predictions']}  (rerun identical: {same})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", default="ds000011,ixi1mm")
    parser.add_argument("--subject", default="01", help="ds000011 participant")
    parser.add_argument("--ixi-subject", default="IXI095", help="example participant")
    parser.add_argument("--app", type=Path, default=default_app(),
                        help="the bids_brainage command to run (default: this environment's)")
    parser.add_argument("--app-args", default="", help="more options for the app")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    import nibabel as nib

    print(f"app: {args.app}; {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; load avg {os.getloadavg()[0]:.1f}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-participant-") as tmp:
        tmp = Path(tmp)
        datasets = make_datasets(tmp / "data", args.images.split(","), args.subject,
                                 args.ixi_subject)
        for name, data in datasets.items():
            shape = nib.load(next(data.rglob("*_T1w.nii.gz"))).shape
            runs = []
            for i in range(args.runs):
                folder = tmp / f"{name}-run{i}"
                folder.mkdir()
                runs.append(one_run(data, folder, app=args.app,
                                    app_args=shlex.split(args.app_args)))
                shutil.rmtree(folder)  # the next run starts from nothing
            print_table(name, shape, runs)
            results[name] = [{k: {kk: vv for kk, vv in v.items() if kk not in ("output",)}
                              for k, v in r.items()} for r in runs]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
