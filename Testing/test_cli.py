"""The ``unetseg`` commands: help, architectures, creating and inspecting checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from UNetSegmentationLib.model.checkpoint import load_checkpoint, read_metadata


@pytest.mark.parametrize("command", ["archs", "create", "info", "predict", "demo"])
def test_every_command_has_help(cli, command):
    result = cli(command, "--help")
    assert result.code == 0 and "usage: unetseg" in result.stdout


def test_archs_lists_what_each_architecture_supports(cli):
    result = cli("archs", "--json")
    assert result.code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["unetplusplus"]["supports"]["prune_depths"] == [1, 2, 3, 4]
    assert rows["unetplusplus"]["supports"]["deep_supervision"] is True
    assert rows["unet"]["supports"]["prune_depths"] == []
    assert rows["unet"]["supports"]["feature_presets"]["wide"] == [35, 70, 140, 280, 560]


def test_create_writes_a_safetensors_checkpoint_with_complete_metadata(cli, tmp_path):
    path = tmp_path / "m.safetensors"
    result = cli("create", "--arch", "unet", "--classes", "liver, spleen", "--context", "2", "--features", "wide", "--norm", "mr:1,99", path)
    assert result.code == 0, result.stderr
    metadata = read_metadata(path)
    assert metadata.architecture == "unet" and metadata.context == 2
    assert metadata.kwargs["in_channels"] == 5 and metadata.kwargs["out_channels"] == 3
    assert metadata.kwargs["features"] == [35, 70, 140, 280, 560]
    assert [(c.value, c.name) for c in metadata.classes] == [(1, "liver"), (2, "spleen")]
    assert metadata.normalization.to_json() == {"kind": "mr", "percentiles": [1.0, 99.0]}
    assert path.read_bytes()[8:9] == b"{"  # safetensors, not a pickle


def test_create_is_repeatable_with_a_seed(cli, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (a, b):
        assert cli("create", "--arch", "unet", "--classes", "x", "--features", "4,8", "--seed", "7", path).code == 0
    wa, wb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.parametrize(
    "arguments, phrase",
    [
        (["--classes", ""], "--classes needs"),
        (["--classes", "a,,b"], "--classes needs"),
        (["--classes", "a,a"], "duplicate class name"),
        (["--classes", "a", "--norm", "ct:5"], "--norm must be"),
        (["--classes", "a", "--features", "8"], "at least two"),
        (["--classes", "a", "--features", "huge"], "--features must be"),
    ],
)
def test_create_names_bad_options(cli, tmp_path, arguments, phrase):
    result = cli("create", "--arch", "unet", *arguments, tmp_path / "m.safetensors")
    assert result.code == 2 and phrase in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_info_shows_metadata_and_parameters_per_depth(cli, small_unetpp):
    result = cli("info", small_unetpp, "--json")
    assert result.code == 0
    info = json.loads(result.stdout)
    per_depth = info["parameters"]["per_depth"]
    assert list(per_depth) == ["1", "2", "3", "4"]
    assert per_depth["1"] < per_depth["2"] < per_depth["3"] < per_depth["4"] <= info["parameters"]["total"]
    assert [c["name"] for c in info["metadata"]["classes"]] == ["lung", "bone"]
    text = cli("info", small_unetpp)
    assert text.code == 0 and "L4" in text.stdout and "softmax over background + 2 classes" in text.stdout


def test_the_installed_console_command_runs():
    result = subprocess.run([sys.executable, "-m", "UNetSegmentationLib", "archs"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "unetplusplus" in result.stdout


def test_demo_segments_the_slicerio_ct_and_draws_an_overlay(cli, tmp_path):
    result = cli("demo", "--output-dir", tmp_path, "--progress", "none")
    assert result.code == 0, result.stderr
    assert (tmp_path / "CTChest4.seg.nrrd").exists()
    assert (tmp_path / "CTChest4-overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
