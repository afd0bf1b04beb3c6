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


@pytest.mark.child_process
def test_the_installed_console_command_runs():
    result = subprocess.run([sys.executable, "-m", "UNetSegmentationLib", "archs"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "unetplusplus" in result.stdout


def test_demo_segments_the_slicerio_ct_and_draws_an_overlay(cli, tmp_path):
    result = cli("demo", "--output-dir", tmp_path, "--progress", "none")
    assert result.code == 0, result.stderr
    assert (tmp_path / "CTChest4.seg.nrrd").exists()
    assert (tmp_path / "CTChest4-overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- one options object for a segmentation run --------------------------------------------------------


def predict_namespace(arguments):
    from UNetSegmentationLib.cli.main import build_parser

    return build_parser().parse_args(arguments)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"depth": 2, "device": "cpu", "batch_size": 3, "axis": 2, "largest_component": True},
        {"depth": "accurate", "probabilities": "conf.nrrd", "overwrite": True, "classification_guidance": False},
        {"backend": "onnx", "precision": "int8", "threads": 3, "slice_workers": 1, "axis": 0},
    ],
)
def test_options_round_trip_through_the_predict_command_line(changes):
    from UNetSegmentationLib.inference.options import SegmentationOptions

    options = SegmentationOptions(**changes)
    args = predict_namespace(options.to_arguments("in.nrrd", "out.seg.nrrd", "m.safetensors", ["--arch", "unet"]))
    assert SegmentationOptions.from_namespace(args) == options
    assert (args.input, args.output, str(args.checkpoint), args.arch) == ("in.nrrd", "out.seg.nrrd", "m.safetensors", "unet")


def test_the_cli_the_runner_and_the_panel_get_identical_defaults():
    from UNetSegmentationLib.inference.options import DEFAULTS, SegmentationOptions
    from UNetSegmentationLib.panel.run import RunOptions, SegmentationRun

    cli_defaults = SegmentationOptions.from_namespace(predict_namespace(["predict", "--checkpoint", "m.safetensors", "in.nrrd", "out.nrrd"]))
    assert cli_defaults == DEFAULTS == SegmentationOptions()
    # the runner's command line of a default run carries no setting: the child uses the same defaults
    assert DEFAULTS.to_arguments("in.nrrd", "out.nrrd", "m.safetensors") == ["predict", "--checkpoint", "m.safetensors", "in.nrrd", "out.nrrd"]
    run = SegmentationRun(RunOptions("m.safetensors"))
    assert run.options.segmentation == DEFAULTS
    assert run.arguments()[:3] == ["predict", "--checkpoint", "m.safetensors"] and len(run.arguments()) == 5
    run.cleanup()
    # the Slicer panel's parameter node takes its defaults from the same object
    from UNetSegmentationSlicer import parameters

    assert parameters.run_options("m.safetensors").segmentation == DEFAULTS
    assert (parameters.DEFAULT_BATCH_SIZE, parameters.DEFAULT_DEVICE, parameters.DEFAULT_SLICE_AXIS) == (DEFAULTS.batch_size, DEFAULTS.device, "auto")


def test_the_default_batch_size_is_written_once():
    """The issue's example of a repeated default: on the predict path (CLI, runner, panel, Slicer module)
    it is declared in inference/options.py only."""
    import re
    from pathlib import Path

    module = Path(__file__).resolve().parent.parent / "UNetSegmentation"
    files = [module / "UNetSegmentation.py", *(module / "UNetSegmentationSlicer").glob("*.py"), *(module / "UNetSegmentationLib" / "panel").glob("*.py")]
    files += [module / "UNetSegmentationLib" / name for name in ("inference/options.py", "cli/predict.py", "protocol/runner.py")]
    declarations = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        declarations += [(path.name, m.group(0)) for m in re.finditer(r"(batch_?[sS]ize\b[^=\n(]*=\s*\d+|default=\d+.*batch|DEFAULT_BATCH_SIZE\s*=\s*\d+)", text)]
    assert declarations == [("options.py", "DEFAULT_BATCH_SIZE = 4")], declarations


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "--batch-size must be a positive integer"),
        ({"axis": "z"}, "--axis must be auto, i, j or k"),
        ({"depth": "deep"}, "--depth must be 1..4"),
        ({"backend": "tensorrt"}, "--backend must be one of"),
        ({"threads": 0}, "--threads must be a positive integer"),
    ],
)
def test_bad_options_are_refused_on_construction_naming_the_option(changes, message):
    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.inference.options import SegmentationOptions

    with pytest.raises(UserError, match=message):
        SegmentationOptions(**changes)


@pytest.mark.child_process
def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`unetseg archs | head -1`: when the reader of stdout closes it, no traceback, the status a shell gives (141)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-m", "UNetSegmentationLib", "archs", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before the first line
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "Error" not in stderr, stderr


# --- argument errors and the bundled model's short name (issue 22, defects 11 and 12) ------------------------


@pytest.mark.parametrize("argv, command, words", [
    (["train", "--no-such-option", "out.safetensors"], "train", "unrecognized arguments: --no-such-option"),
    (["evaluate", "--image", "a.nrrd", "--label", "b.nrrd", "--bogus"], "evaluate", "unrecognized arguments: --bogus"),
    (["train", "--epochs", "many", "out.safetensors"], "train", "invalid int value: 'many'"),
    (["info"], "info", "the following arguments are required: CKPT"),
])
def test_an_argument_error_is_one_line_that_names_the_command(cli, argv, command, words):
    result = cli(*argv)
    assert result.code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "usage:" not in result.stderr
    assert result.stderr.startswith(f"unetseg: error: {command}: ") and words in result.stderr and f"unetseg {command} --help" in result.stderr


def test_an_argument_error_with_json_progress_is_an_error_event_too(cli):
    result = cli("train", "--progress", "json", "--no-such-option", "out.safetensors")
    assert result.code == 2 and json.loads(result.stdout)["event"] == "error" and "--no-such-option" in json.loads(result.stdout)["message"]


def test_bundled_is_the_bundled_models_short_name(cli):
    from UNetSegmentationLib.cli.main import build_parser
    from UNetSegmentationLib.model.bundled import bundled_model_path

    result = cli("info", "bundled", "--json")
    assert result.code == 0 and json.loads(result.stdout)["path"] == str(bundled_model_path())
    parser = build_parser()
    assert parser.parse_args(["predict", "in.nrrd", "out.nrrd"]).checkpoint == bundled_model_path()  # no --checkpoint: the bundled model
    assert parser.parse_args(["evaluate", "--checkpoint", "bundled", "--image", "a", "--label", "b"]).checkpoint == bundled_model_path()
    assert parser.parse_args(["train", "--init", "bundled", "--image", "a", "--label", "b", "o.safetensors"]).init == bundled_model_path()
    assert str(parser.parse_args(["info", "./bundled"]).checkpoint) == "bundled"  # a file of that name stays reachable


def test_the_bundled_model_records_no_path_of_the_machine_it_was_built_on():
    """Issue 22, defect 14: its training config held /tmp/bundled/train.csv; every run now records file names only."""
    from UNetSegmentationLib.model.bundled import bundled_model_path

    text = read_metadata(bundled_model_path()).dumps()
    assert not any(marker in text for marker in ('"/tmp', '"/work', '"/home', '"/root', ':\\\\')), "an absolute path in the bundled model's metadata"
    config = read_metadata(bundled_model_path()).training["config"]
    assert all(value is None or "/" not in value and "\\" not in value for value in (config["log"], config["state"], config.get("datalist")))
