"""training/train_options.TrainOptions: the one options object of ``unetseg train`` and the panel's
fine-tuning (defaults, validation, command line both ways). Torch-free, like the panel's GUI process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from UNetSegmentationLib.cli.main import build_parser
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.bundled import bundled_model_path
from UNetSegmentationLib.training.train_options import FINE_TUNING_DEFAULTS, HOLD_OUT_LIMIT, TrainOptions, check_hold_out


def parsed(arguments):
    return TrainOptions.from_namespace(build_parser().parse_args(arguments))


@pytest.mark.parametrize("changes", [
    {},
    {"init": "base.safetensors", "image": "ct.nrrd", "label": "ct.seg.nrrd", "train_slices": "12-18,40", "label_map": "1:ribs", "partial_classes": "none"},
    {"init": "base.safetensors", "image": "ct.nrrd", "label": "ct.seg.nrrd", "val_slices": 0.2, "epochs": 2, "steps_per_epoch": 3, "overwrite": True},
    {"datalist": "d.json", "arch": "unet", "features": "4,8", "context": 2, "crop": "64,32", "lr": 0.002, "amp": False, "axis": "k", "val_gap": 0, "seed": 3},
])
def test_options_round_trip_through_the_train_command_line(changes):
    options = TrainOptions(output="tuned.safetensors", **changes)
    arguments = options.to_arguments()
    assert arguments[0] == "train" and arguments[-1] == "tuned.safetensors"
    assert parsed(arguments) == options


def test_the_panels_fine_tuning_is_one_options_object():
    options = TrainOptions("m.safetensors", image="v.nrrd", label="v.seg.nrrd", init="bundled", val_slices=0.2)
    assert options.init == bundled_model_path()
    assert options.to_arguments() == ["train", "--image", "v.nrrd", "--label", "v.seg.nrrd", "--val-slices", "0.2", "--init", str(bundled_model_path()), "m.safetensors"]
    assert options.effective("crop") == FINE_TUNING_DEFAULTS["crop"] and options.effective("epochs") == FINE_TUNING_DEFAULTS["epochs"]


@pytest.mark.parametrize("share", [0, HOLD_OUT_LIMIT, 0.7, 1, -0.1, float("nan"), "0.2", True])
def test_one_hold_out_rule_for_the_engine_and_the_panel(share):
    """Issue 22: the panel accepted < 0.5, the engine < 1; both now ask check_hold_out."""
    with pytest.raises(UserError, match="above 0 and below 0.5"):
        check_hold_out(share)
    with pytest.raises(UserError, match="--val-slices"):
        TrainOptions("m.safetensors", val_slices=share)


@pytest.mark.parametrize("changes, words", [
    ({"init": "b.safetensors", "arch": "unet"}, "leave out --arch"),
    ({"freeze_encoder": True}, "needs --init"),
    ({"train_slices": "0-99999999999"}, "--train-slices: '0-99999999999' is beyond"),
    ({"label_map": "0:ribs"}, "background is no class"),
    ({"crop": "0"}, "--crop"),
    ({"context": 17}, "--context"),
    ({"flip": 2.0}, "--flip"),
    ({"epochs": 0}, "--epochs"),
    ({"val_gap": -1}, "--val-gap"),
    ({"lr": float("inf")}, "--lr"),
    ({"norm": "ct"}, "--norm"),
    ({"spacing": "0"}, "--spacing"),
])
def test_every_bad_value_is_one_message_before_anything_runs(changes, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        TrainOptions("m.safetensors", **changes)


def test_a_refused_slice_bomb_is_refused_before_torch_is_imported(tmp_path):
    """Issue 23 HIGH 3: the refusal peaks far below 200 MB (VmHWM of the process since exec)."""
    code = ("import sys; from UNetSegmentationLib.cli.main import main; "
            "rc = main(['train', '--image', 'a.nrrd', '--label', 'b.nrrd', '--init', 'bundled', '--train-slices', '0-99999999999', 'o.safetensors']); "
            "print(rc, 'torch' in sys.modules, next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    rc, torch_imported, peak_kb = result.stdout.split()
    assert rc == "2" and torch_imported == "False" and int(peak_kb) < 200 * 1024, result.stderr
    assert "beyond the largest slice number" in result.stderr and not Path(tmp_path, "o.safetensors").exists()


def test_the_options_import_no_torch_or_numpy():
    code = "import sys, UNetSegmentationLib.training.train_options; print(sorted(m for m in ('torch', 'numpy', 'SimpleITK', 'monai') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
