"""No network at run time, proven: participant and group level in a network namespace of their
own (``unshare -n``: not even loopback is up), with every Python process of the run watched
by an audit hook that records, and refuses, any attempt to resolve a name or connect to an
internet address. Needs root (for ``unshare -n``); skipped with the reason otherwise."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from _harden import EXAMPLE, HAS_UNSHARE, IS_ROOT, progress_lines, run_app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (IS_ROOT and HAS_UNSHARE),
                       reason="needs root and unshare to cut the network (unshare -n)"),
]

# imported by every Python process of the run (PYTHONPATH): forkserver, workers included
WATCH = '''
import os, sys

_LOG = os.environ["BIDS_BRAINAGE_TEST_NET_LOG"]
_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
           "socket.gethostbyaddr", "socket.sendto")


def _watch(event, args):
    if event not in _EVENTS:
        return
    if event in ("socket.connect", "socket.sendto"):
        address = args[1] if event == "socket.connect" else args[-1]
        if not isinstance(address, tuple):  # AF_UNIX: multiprocessing's own pipes
            return
    with open(_LOG, "a") as handle:
        handle.write(f"{os.getpid()} {sys.argv[:2]} {event} {args!r}\\n")
    raise OSError(f"network access attempted: {event} {args!r}")


sys.addaudithook(_watch)
'''


def test_participant_and_group_level_run_without_a_network(tmp_path, example_run):
    _, ref_out, _ = example_run
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(WATCH)
    net_log = tmp_path / "network-attempts.log"
    env = {"PYTHONPATH": str(hooks), "BIDS_BRAINAGE_TEST_NET_LOG": str(net_log)}
    out, work = tmp_path / "out", tmp_path / "work"
    participant = run_app([EXAMPLE, out, "participant", "-w", work, "--nprocs", "2",
                           "--participant-label", "IXI095"], tmp_path / "sandbox",
                          env=env, wrap=["unshare", "-n"])
    group = run_app([EXAMPLE, out, "group"], tmp_path / "sandbox", env=env,
                    wrap=["unshare", "-n"])
    attempts = net_log.read_text() if net_log.exists() else ""
    assert not attempts, f"network access attempted:\n{attempts}"
    assert participant.code == 0, participant.stderr
    assert group.code == 0, group.stderr
    assert not participant.elsewhere and not group.elsewhere

    # the same predictions as the networked session run of the example
    def rows(folder: Path):
        path = folder / "sub-IXI095" / "anat" / "sub-IXI095_brainage.tsv"
        with open(path, newline="") as handle:
            return [(r["model"], r["predicted_age"]) for r in csv.DictReader(handle,
                                                                               delimiter="\t")]
    assert rows(out) == rows(ref_out)
    summary = json.loads((out / "group_brainage.json").read_text())
    assert summary["counts"]["participants"] == 1
    assert (out / "group_report.html").is_file() and (out / "sub-IXI095.html").is_file()
    assert len(progress_lines(participant.stderr)) == 8  # one per step of the one image


def test_the_watch_sees_a_connection(tmp_path):
    """The audit hook above does catch an attempt (so an empty log means something)."""
    import subprocess
    import sys

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(WATCH)
    net_log = tmp_path / "log"
    code = ("import socket\n"
            "for attempt in (lambda: socket.create_connection(('example.org', 80), 1),\n"
            "                lambda: socket.socket().connect(('192.0.2.1', 80))):\n"
            "    try:\n        attempt()\n    except OSError:\n        pass\n")
    subprocess.run(["unshare", "-n", sys.executable, "-c", code], check=True,
                   env={"PYTHONPATH": str(hooks), "BIDS_BRAINAGE_TEST_NET_LOG": str(net_log),
                        "PATH": "/usr/bin:/bin"})
    log = net_log.read_text()
    assert "socket.getaddrinfo ('example.org'" in log and "socket.connect" in log
