"""Resources, declared needs and long steps (issue 13, classes 10, 11, 12, 13).

- ``--threads`` is capped at the CPUs this process may use, with a warning (predict, evaluate, train).
- Each command declares what it needs (``cli/needs.py``); a missing package stops the command at once
  with one message naming it and its extra, or (for an optional part) warns at the start.
- A first ONNX export is announced as a ``log`` event before it starts.
- ``train`` records the axis it sliced along and the slices it held out, prints both, and ``info``
  prints them from the checkpoint; its geometry message names what differs (the direction too), and
  a crop far larger than every slice is refused instead of running out of memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from support import create_checkpoint, make_volume, read_pyproject, rotation_matrix, write_tiny_case
from UNetSegmentationLib.backends.device import usable_cpu_count
from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution
from UNetSegmentationLib.cli.needs import COMMAND_NEEDS, check_needs
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.header import read_metadata

REPOSITORY = Path(__file__).resolve().parent.parent
TINY_TRAIN = ("--classes", "body,bone", "--features", "4,8", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "32",
              "--device", "cpu", "--progress", "json")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_case(tmp_path_factory.mktemp("resources"))


def events_of(result, kind: str) -> list:
    return [e for e in result.events if e["event"] == kind]


# --- class 10: --threads --------------------------------------------------------------------------------------------


class FewCpus:
    """A machine whose process may use ``cpus`` CPUs, and nothing else of interest (no GPU, no ONNX Runtime)."""

    def __init__(self, cpus: int) -> None:
        self.cpus = cpus

    def usable_cpus(self) -> int:
        return self.cpus

    def cuda_available(self) -> bool:
        return False

    def cpu_native_bf16(self) -> bool:
        return False

    def onnx_runtime_installed(self) -> bool:
        return False


def test_threads_are_capped_at_the_cpus_the_process_may_use():
    """Issue 13: ``--threads 1000`` started 505 threads and slowed the machine for everyone."""
    capped = plan_execution(ExecutionRequest("cpu", threads=1000), FewCpus(3))
    assert (capped.threads, capped.workers * capped.threads_per_worker) == (3, 2)
    assert capped.notes == ("--threads 1000 is more than the 3 CPU(s) this process may use; using 3",)
    assert plan_execution(ExecutionRequest("cpu", threads=3), FewCpus(3)).notes == ()
    assert plan_execution(ExecutionRequest("cpu"), FewCpus(3)).threads == 3
    here = plan_execution(ExecutionRequest("cpu", threads=1000))
    assert here.threads == usable_cpu_count() == len(os.sched_getaffinity(0)) and here.notes


def test_predict_and_train_say_when_threads_are_lowered(cli, tiny_data, small_unet_one_class, tmp_path):
    wanted = usable_cpu_count() + 1000
    predicted = cli("predict", "--checkpoint", small_unet_one_class, "--threads", wanted, "--backend", "torch", "--progress", "json",
                    tiny_data / "case.nrrd", tmp_path / "out.nrrd")
    assert predicted.code == 0, predicted.stderr
    assert [w["message"] for w in events_of(predicted, "warning")] == [f"--threads {wanted} is more than the {usable_cpu_count()} CPU(s) this process may use; using {usable_cpu_count()}"]
    assert events_of(predicted, "start")[0]["threads"] <= usable_cpu_count()
    trained = cli("train", "--datalist", tiny_data / "datalist.json", *TINY_TRAIN, "--threads", wanted, tmp_path / "m.safetensors")
    assert trained.code == 0, trained.stderr
    assert any(f"--threads {wanted} is more than" in w["message"] for w in events_of(trained, "warning"))


# --- class 12: what each command needs ------------------------------------------------------------------------------


def without(*modules):
    import importlib.util

    return lambda name: None if name.split(".")[0] in modules else importlib.util.find_spec(name)


def test_a_missing_package_stops_a_command_at_once_naming_it_and_its_extra():
    with pytest.raises(UserError, match=r"unetseg evaluate needs scipy for HD95 .*pip install scipy"):
        check_needs("evaluate", print, without("scipy"))
    with pytest.raises(UserError, match=r"unetseg demo needs matplotlib for the PNG overlay.*UNetSegmentationLib\[plots\]"):
        check_needs("demo", print, without("matplotlib"))
    warnings = []
    skipped = check_needs("evaluate", warnings.append, without("matplotlib"))
    assert [n.module for n in skipped] == ["matplotlib"] and "UNetSegmentationLib[plots]" in warnings[0] and "plot is skipped" in warnings[0]
    assert check_needs("evaluate", warnings.append) == [] and len(warnings) == 1


def test_the_core_install_brings_what_every_command_needs():
    """Core needs are pyproject dependencies; every extra named is one pyproject declares."""
    project = read_pyproject()["project"]
    core = {d.split(">")[0].split("=")[0].split(";")[0].strip().lower() for d in project["dependencies"]}
    for command, needs in COMMAND_NEEDS.items():
        for need in needs:
            if need.extra is None:
                assert need.module.lower() in core, f"{command} needs {need.module}, which the core install does not bring"
            else:
                assert need.extra in project["optional-dependencies"], f"{command}: extra [{need.extra}] is not declared"


HIDE_AND_RUN = (
    "import sys, time\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None  # as if not installed\n"
    "from UNetSegmentationLib.cli.main import main\n"
    "started = time.perf_counter()\n"
    "code = main(sys.argv[2:])\n"
    "print('seconds', round(time.perf_counter() - started, 2), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_without(modules: str, *arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_AND_RUN, modules, *map(str, arguments)], capture_output=True, text=True, timeout=600)


def test_evaluate_without_scipy_stops_before_any_work(tiny_data, small_unet_one_class, tmp_path):
    """Issue 13: evaluate worked ~25 s, then ended in an internal error (scipy was needed for HD95)."""
    finished = run_without("scipy", "evaluate", "--checkpoint", small_unet_one_class, "--image", tiny_data / "case.nrrd", "--label", tiny_data / "case_label.nrrd",
                           "--output-dir", tmp_path / "evaluation", "--progress", "json", "--other-labels", "background")
    assert finished.returncode == 2, finished.stderr
    lines = [line for line in finished.stderr.splitlines() if not line.startswith("seconds")]
    assert lines == ["unetseg: error: unetseg evaluate needs scipy for HD95 surface distances (MONAI computes them with scipy), which is not installed: "
                     "pip install scipy (a dependency of UNetSegmentationLib: reinstall it with pip install -e .)"]
    assert [json.loads(line)["event"] for line in finished.stdout.splitlines()] == ["error"]
    assert not (tmp_path / "evaluation").exists()


def test_evaluate_without_matplotlib_warns_first_and_skips_only_the_plot(tiny_data, tmp_path):
    checkpoint = create_checkpoint(tmp_path / "m.safetensors", classes="body,bone", features="4,8,16,32")
    finished = run_without("matplotlib", "evaluate", "--checkpoint", checkpoint, "--image", tiny_data / "case.nrrd", "--label", tiny_data / "case_label.nrrd",
                           "--output-dir", tmp_path / "evaluation", "--progress", "json", "--backend", "torch", "--depth", "1,2")
    assert finished.returncode == 0, finished.stderr
    events = [json.loads(line) for line in finished.stdout.splitlines()]
    assert events[0]["event"] == "warning" and "matplotlib is not installed" in events[0]["message"] and "[plots]" in events[0]["message"]
    assert sorted(p.name for p in (tmp_path / "evaluation").iterdir()) == ["evaluation.csv", "evaluation.json"]


# --- class 13: long steps are announced and recorded -----------------------------------------------------------------


@pytest.mark.onnx
def test_a_first_export_is_announced_before_it_starts(cli, tiny_data, tmp_path):
    """Issue 13: the first predict with a new checkpoint or depth exported for 9-36 s without a word."""
    checkpoint = create_checkpoint(tmp_path / "m.safetensors", features="4,8,16,32")  # no recommended depth: the deepest, L3
    arguments = ("--precision", "fp32", "--progress", "json", tiny_data / "case.nrrd")
    first = cli("predict", "--checkpoint", checkpoint, *arguments, tmp_path / "first.nrrd")
    assert first.code == 0, first.stderr
    assert [e["event"] for e in first.events[:2]] == ["log", "start"]
    assert first.events[0]["message"].startswith("exporting the network at depth L3 to ONNX (first run with this checkpoint and depth)")
    again = cli("predict", "--checkpoint", checkpoint, *arguments, tmp_path / "again.nrrd")
    assert again.code == 0 and again.events[0]["event"] == "start" and not events_of(again, "log")
    other_depth = cli("predict", "--checkpoint", checkpoint, "--depth", "2", *arguments, tmp_path / "depth2.nrrd")
    assert other_depth.events[0]["message"].startswith("exporting the network at depth L2 to ONNX")


def test_train_records_and_prints_its_slice_axis_and_held_out_slices(cli, tiny_data, tmp_path):
    """Issue 13: train never said which axis it sliced along or which slices it held out, nor did info."""
    out = tmp_path / "m.safetensors"
    result = cli("train", "--datalist", tiny_data / "datalist.json", *TINY_TRAIN, "--val-slices", "0.25", "--val-blocks", "1", out)
    assert result.code == 0, result.stderr
    data = read_metadata(out).training["data"]
    held = data["held_out_slices"][0]
    assert (data["training"][0]["slice_axis"], held["slice_axis"], held["slices"]) == ("k", "k", [4, 5, 6])
    said = [e["message"] for e in events_of(result, "log")]
    assert "case 'case': 12 slices along k (auto: the axis closest to head-feet); 7 train, held out 4-6" in said
    info = cli("info", out)
    assert info.code == 0 and "training   case.nrrd (case 'case'): along k (auto); 7 slices trained, held out 4-6" in info.stdout
    along_j = cli("train", "--datalist", tiny_data / "datalist.json", *TINY_TRAIN, "--axis", "j", tmp_path / "j.safetensors")
    assert along_j.code == 0 and read_metadata(tmp_path / "j.safetensors").training["data"]["training"][0]["slice_axis"] == "j"
    assert "along j (--axis); 36 slices trained" in cli("info", tmp_path / "j.safetensors").stdout


# --- class 11: training messages name the real cause -----------------------------------------------------------------


def label_with(tmp_path: Path, name: str, **geometry) -> Path:
    label = sitk.Cast(make_volume(**geometry) > 0, sitk.sitkUInt8)
    path = tmp_path / name
    sitk.WriteImage(label, str(path))
    return path


def train_on_label(cli, tiny_data, tmp_path, label: Path, *extra):
    datalist = tmp_path / f"{label.stem}.json"
    datalist.write_text(json.dumps({"training": [{"image": str(tiny_data / "case.nrrd"), "label": str(label)}]}))
    return cli("train", "--datalist", datalist, *TINY_TRAIN[2:], "--classes", "body", *extra, tmp_path / "m.safetensors")


def test_a_geometry_mismatch_in_direction_names_the_axis_and_both_directions(cli, tiny_data, tmp_path):
    """Issue 13: the message printed size, spacing and origin, identical, and never the direction."""
    rotated = label_with(tmp_path, "rotated.nrrd", direction=rotation_matrix(0.0, 0.0, 0.3))
    result = train_on_label(cli, tiny_data, tmp_path, rotated)
    assert result.code == 2
    message = result.stderr.strip().splitlines()[-1]
    assert "axis i along (0.9553, 0.2955, 0) (LPS), the image (1, 0, 0) (LPS)" in message, message
    assert "axis j along (-0.2955, 0.9553, 0)" in message and "size" not in message and "spacing" not in message


def test_a_geometry_mismatch_prints_values_that_differ(cli, tiny_data, tmp_path):
    nearly = label_with(tmp_path, "nearly.nrrd", spacing=(0.8, 1.1, 3.5012))
    message = train_on_label(cli, tiny_data, tmp_path, nearly).stderr.strip().splitlines()[-1]
    assert "label nearly.nrrd has spacing 0.8x1.1x3.501 mm, the image 0.8x1.1x3.5 mm" in message, message


def test_a_crop_far_larger_than_every_slice_is_refused_before_training(cli, tiny_data, tmp_path):
    """Issue 13: ``train --crop 100000`` on a 128² image said "out of memory" (a crop of six digits is now
    refused by the option's grammar; 20000 is a well-formed crop far larger than the slices)."""
    started = time.perf_counter()
    result = cli("train", "--datalist", tiny_data / "datalist.json", *TINY_TRAIN[:-4], "--crop", "20000", "--progress", "none", tmp_path / "m.safetensors")
    assert result.code == 2 and time.perf_counter() - started < 30
    assert result.stderr.strip().splitlines() == [
        "unetseg: error: --crop 20000x20000 is far larger than every training slice (the largest is 36x40 pixels): "
        "a crop is cut from one slice, and beyond it holds only padding; use --crop 36,40 or less"
    ]
    assert not (tmp_path / "m.safetensors").exists()
