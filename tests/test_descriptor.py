"""The container-facing descriptions of the app agree with the app.

descriptor.json (Boutiques) must pass ``bosh validate --bids``, list every option of
``get_parser()`` and nothing else, and turn the committed example invocations into the committed
command lines, which the parser must read back as the invocation meant. The Singularity recipe
must bootstrap from the image the descriptor names and run what the Dockerfile's ENTRYPOINT runs.
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from boutiques import bosh
from spython.main.parse import parsers as spython_parsers

from bids_brainage import __version__
from bids_brainage.cli import run
from bids_brainage.cli.parser import get_parser

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "descriptor.json"
INVOCATIONS = ROOT / "tests" / "data" / "boutiques"
EXAMPLE = ROOT / "examples" / "ds-ixi3"
# Options that print and exit; they have no place in a descriptor of a run.
NOT_IN_DESCRIPTOR = {"help", "version"}


@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def _dest(inp: dict) -> str:
    """Each input's value-key is its parser dest in capitals: [WORK_DIR] <-> work_dir."""
    return inp["value-key"].strip("[]").lower()


def _actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in get_parser()._actions if a.dest not in NOT_IN_DESCRIPTOR}


def _simulate(invocation: Path) -> str:
    return bosh(["exec", "simulate", str(DESCRIPTOR), "-i", str(invocation)]).shell_command


def _app_argv(command: str) -> list[str]:
    """The arguments after ``bids_brainage`` in a descriptor's command line."""
    words = shlex.split(command.split(";", 1)[1])
    assert words[0] == "bids_brainage"
    return words[1:]


def test_descriptor_is_a_valid_bids_app_descriptor():
    bosh(["validate", "--bids", str(DESCRIPTOR)])  # raises DescriptorValidationError


def test_descriptor_tags_and_container(descriptor):
    assert descriptor["tags"]["bids-app"] is True
    assert descriptor["tool-version"] == __version__
    image = descriptor["container-image"]
    assert image["type"] == "docker"
    assert image["image"].endswith(f"/bids_brainage:{__version__}")
    codes = {e["code"] for e in descriptor["error-codes"]}
    app_codes = {v for k, v in vars(run).items() if k.startswith("EXIT_") and v != run.EXIT_OK}
    assert codes == app_codes


def test_every_parser_option_is_in_the_descriptor_and_back(descriptor):
    actions = _actions()
    dests = {_dest(inp) for inp in descriptor["inputs"]}
    assert dests == set(actions), (
        f"only in the parser: {sorted(set(actions) - dests)}; "
        f"only in the descriptor: {sorted(dests - set(actions))}"
    )
    for key in {inp["value-key"] for inp in descriptor["inputs"]}:
        assert key in descriptor["command-line"], key


def test_positionals_keep_their_order(descriptor):
    positionals = [a.dest for a in get_parser()._actions if not a.option_strings]
    keys = re.findall(r"\[([A-Z_]+)\]", descriptor["command-line"].split(";", 1)[1])
    assert [k.lower() for k in keys[: len(positionals)]] == positionals


@pytest.mark.parametrize("dest", sorted(_actions()))
def test_each_option_is_described_alike(descriptor, dest):
    action = _actions()[dest]
    for inp in (i for i in descriptor["inputs"] if _dest(i) == dest):
        flag = inp.get("command-line-flag")
        if not action.option_strings:
            assert flag is None
            # the two output-dir inputs (name or existing folder) form a one-is-required group
            assert not inp["optional"] or dest == "output_dir"
            continue
        if isinstance(action, argparse._CountAction):
            # a count (-v, -vv) is a choice of literal flags
            assert flag is None
            assert all(c.lstrip("-") == "v" * c.count("v") for c in inp["value-choices"])
            continue
        assert flag in action.option_strings, (flag, action.option_strings)
        is_flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        assert (inp["type"] == "Flag") == is_flag
        if action.choices is not None:
            assert inp["value-choices"] == list(action.choices)
        if "default-value" in inp:
            assert inp["default-value"] == action.default
        if inp["type"] == "Number":
            assert inp.get("integer") and inp.get("minimum") == 1
            with pytest.raises(argparse.ArgumentTypeError):
                action.type("0")
        if inp.get("list"):
            assert action.nargs == "+" or inp.get("list-separator") == ","


@pytest.mark.parametrize("invocation", sorted(INVOCATIONS.glob("*.json")), ids=lambda p: p.stem)
def test_simulate_gives_the_committed_command_line(invocation):
    expected = invocation.with_suffix(".cmd").read_text().strip()
    assert _simulate(invocation) == expected


def _meant(action: argparse.Action, value):
    """What the parser should hold for an invocation's value."""
    if isinstance(action, argparse._CountAction):
        return value.count("v")
    if action.nargs == 0:
        return action.const
    convert = action.type or str
    if isinstance(value, list):
        if action.nargs in ("+", "*"):
            return [convert(str(v)) for v in value]
        return convert(",".join(map(str, value)))
    return convert(str(value))


@pytest.mark.parametrize("invocation", sorted(INVOCATIONS.glob("*.json")), ids=lambda p: p.stem)
def test_parser_reads_the_command_line_as_meant(descriptor, invocation):
    values = json.loads(invocation.read_text())
    args = get_parser().parse_args(_app_argv(_simulate(invocation)))
    actions = _actions()
    by_id = {inp["id"]: inp for inp in descriptor["inputs"]}
    for input_id, value in values.items():
        dest = _dest(by_id[input_id])
        assert getattr(args, dest) == _meant(actions[dest], value), input_id


def _dockerfile_entrypoint() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    entry = [ln for ln in lines if ln.startswith("ENTRYPOINT")]
    return json.loads(entry[-1].split(None, 1)[1])


def test_singularity_recipe_runs_the_docker_entrypoint(descriptor):
    recipe = spython_parsers.SingularityParser(str(ROOT / "Singularity")).recipe
    (stage,) = recipe.values()
    assert stage.fromHeader == descriptor["container-image"]["image"]
    assert shlex.split(stage.cmd) == ["exec", *_dockerfile_entrypoint(), "$@"]
    labels = dict(label.split(None, 1) for label in stage.labels)
    assert labels["org.opencontainers.image.version"] == __version__
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert labels["org.opencontainers.image.licenses"] == setup["metadata"]["license"]
    help_text = (ROOT / "Singularity").read_text().split("%help", 1)[1]
    assert "singularity run --cleanenv" in help_text and ":/data:ro" in help_text


def test_dockerfile_names_the_version_and_image_of_the_descriptor(descriptor):
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", text, re.M)
    assert _dockerfile_entrypoint() == ["bids_brainage"]
    name = descriptor["container-image"]["image"].rsplit(":", 1)[0]
    assert f"BIDS_BRAINAGE_CONTAINER={name}:$VERSION" in text  # GeneratedBy in the outputs


@pytest.mark.slow
def test_launch_without_container_runs_participant_level(tmp_path, monkeypatch):
    envbin = Path(sys.executable).parent
    bindir = envbin
    if not (envbin / "bids_brainage").exists():
        # not pip-installed: the descriptor's command still has to find the app
        bindir = tmp_path / "bin"
        bindir.mkdir()
        shim = bindir / "bids_brainage"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bids_brainage "$@"\n')
        shim.chmod(0o755)
        monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PATH", f"{bindir}:{envbin}:{os.environ['PATH']}")
    out = tmp_path / "out"
    invocation = tmp_path / "invocation.json"
    invocation.write_text(json.dumps({
        "bids_dir": str(EXAMPLE),
        "output_dir_name": str(out),
        "analysis_level": "participant",
        "participant_label": ["IXI095"],
        "work_dir": str(tmp_path / "work"),
    }))
    monkeypatch.chdir(tmp_path)
    result = bosh(["exec", "launch", "--no-container", "--skip-data-collection",
                   str(DESCRIPTOR), str(invocation)])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (out / "dataset_description.json").is_file()
    table = out / "sub-IXI095" / "anat" / "sub-IXI095_brainage.tsv"
    assert table.is_file(), sorted(p.relative_to(out) for p in out.rglob("*"))
    assert not (out / "sub-IXI161").exists()  # --participant-label reached the app
