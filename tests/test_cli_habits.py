"""CLI habits: --version, -h on every command, help without type noise, one meaning per flag name, wildcards
on list commands, moved flags refused in one line, no silent defaults (labels, calibration, infeasibility
found before statistics), and the README's flags table matching the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from tap_edge import __version__
from tests.conftest import SAMPLE_DIR

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> dict[str, object]:
    """Every command of the CLI by its name as typed (``devices``, ``plan``, ...)."""
    import tap_edge.cli  # noqa: F401 - registers the commands
    from tap_edge.cli.app import app
    from tap_edge.cli.options import tidy_help

    root = tidy_help(typer.main.get_command(app))
    return dict(root.commands)


def _long_flags(command: object) -> set[str]:
    return {o for p in command.params if p.param_type_name == "option" and not p.hidden  # type: ignore[attr-defined]
            for o in p.opts + p.secondary_opts if o.startswith("--")}


def test_version(run_cli) -> None:
    for flag in ("--version", "-V"):
        r = run_cli(flag)
        assert r.code == 0 and r.out.strip() == f"tap-edge {__version__}"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_has_h_and_help_without_type_names(run_cli, name: str) -> None:
    r = run_cli(name, "-h")
    assert r.code == 0, r.err
    assert "Usage: tap-edge" in r.out
    assert not re.search(r"<(bool|str|int|float|path|list\[[a-z]+\])>", r.out), r.out


def test_one_meaning_per_flag_name() -> None:
    cmds = _commands()
    for name, cmd in cmds.items():
        for p in cmd.params:  # type: ignore[attr-defined]
            opts = set(p.opts)
            if "--device" in opts:
                assert "-d" in opts, name
            if "-d" in opts:
                assert "--device" in opts, name
            if "--out" in opts and not p.hidden:  # a document file everywhere (compile refuses it, hidden)
                assert name != "compile"
    assert "--out-dir" in _long_flags(cmds["compile"]) and "--calib-samples" in _long_flags(cmds["compile"])
    for name in ("plan", "eval", "compile"):
        assert {"--calib", "--calib-samples", "--json", "--quiet"} <= _long_flags(cmds[name]), name


def test_moved_flags_are_one_line(run_cli, tmp_path: Path) -> None:
    r = run_cli("compile", "resnet8", "-b", "onnxruntime", "--out", str(tmp_path))
    assert r.code == 2 and "--out is now --out-dir" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli("compile", "resnet8", "-b", "onnxruntime", "--samples", "4")
    assert r.code == 2 and "--samples is now --calib-samples" in r.err


def test_list_commands_take_wildcards(run_cli) -> None:
    r = run_cli("devices", "stm32*", "--json")
    import json

    ids = [d["id"] for d in json.loads(r.out)["devices"]]
    assert r.code == 0 and ids and all(i.startswith("stm32") for i in ids)
    assert run_cli("devices", "show", "stm32h743").code == 0
    r = run_cli("models", "efficientnet*")
    assert r.code == 0 and "efficientnet_lite0" in r.out and "resnet8" not in r.out
    assert json.loads(run_cli("proxies", "hawq", "--json").out)["proxies"][0]["name"] == "hawq"
    assert run_cli("backends", "onnx*", "--json").code == 0
    r = run_cli("devices", "nothing-like-this*")
    assert r.code == 2 and "no device profile matches" in r.err
    r = run_cli("check", "resnet8", "-d", "stm32h7*", "--json")
    assert r.code in (0, 1) and len(json.loads(r.out)["devices"]) >= 2


@pytest.mark.skipif(not SAMPLE_DIR.is_dir(), reason="the shared sample photos are not there")
def test_eval_does_not_score_a_10_class_model_against_imagenet_labels(run_cli) -> None:
    import json

    r = run_cli("eval", "resnet8", "--bits", "w8a8", "--data", str(SAMPLE_DIR), "--limit", "24", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["top1"] is None and result["agreement"] is not None
    assert "outputs 10 classes" in result["top1_note"]
    r = run_cli("eval", "resnet8", "--bits", "w8a8", "--data", str(SAMPLE_DIR), "--limit", "24")
    assert r.code == 0 and "top-1 not scored" in r.err and "top-1" not in r.out
    r = run_cli("eval", "resnet8", "--bits", "w8a8", "--data", str(SAMPLE_DIR), "--limit", "24",
                "--labels", str(SAMPLE_DIR / "labels.csv"))
    assert r.code == 2 and "the model outputs 10 classes" in r.err


def test_graph_only_infeasibility_is_found_before_statistics(run_cli, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    from tap_edge.plan import calib, stats

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("statistics computed for an infeasible budget")

    monkeypatch.setattr(stats, "compute_layer_stats", never)
    monkeypatch.setattr(calib, "load_images", never)
    r = run_cli("plan", "resnet8", "-d", "nrf52840", "--calib", str(tmp_path), "--sram", "1KB", "--out",
                str(tmp_path / "p.json"))
    assert r.code == 2 and "no bit assignment meets the budgets" in r.err


def _readme_flags() -> dict[str, set[str]]:
    """The README's flags table: command -> the long flags it lists."""
    text = README.read_text()
    section = text.split("### Flags", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            name = cells[0].strip("`").removeprefix("tap-edge ").split()[0]
            table[name] = set(re.findall(r"--[a-z0-9-]+", cells[1]))
    return table


def test_readme_flags_table_matches_the_cli() -> None:
    table = _readme_flags()
    cmds = _commands()
    assert set(table) == set(cmds)
    for name, cmd in cmds.items():
        assert table[name] == _long_flags(cmd) - {"--help"}, name
