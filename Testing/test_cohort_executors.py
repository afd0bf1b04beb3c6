"""The same cohort in ``--workers 2`` local processes and on a local Ray instance (bounded CPUs, loopback only,
shut down at the end) gives identical labels and manifest records as one process; a run killed half-way
finishes the rest only when run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import write
from test_cohort_batch import cohort_folder, run_cohort
from UNetSegmentationLib.cohort.batch import EXIT_CASES_FAILED
from UNetSegmentationLib.cohort.manifest import read_records

#: what may differ between the runs: where and how fast a case ran, the output folder
RUN_FIELDS = ("worker", "seconds", "slices_per_s", "timings", "finished", "started", "output", "key", "output_key")  # the keys name the output folder


def outcome(folder: Path) -> dict:
    """Each case's final record without its run fields, and its labels."""
    records = {}
    for record in read_records(folder / "manifest.jsonl"):
        if record["status"] != "started":
            records[record["case"]] = {k: v for k, v in record.items() if k not in RUN_FIELDS}
    labels = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nrrd"))}
    return {"records": records, "labels": labels}


def assert_same_outcome(a: dict, b: dict) -> None:
    assert a["records"] == b["records"]
    assert sorted(a["labels"]) == sorted(b["labels"])
    for name in a["labels"]:
        np.testing.assert_array_equal(a["labels"][name], b["labels"][name])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, small_unetpp):
    from support import run_cli

    folder = tmp_path_factory.mktemp("cohort")
    inputs = cohort_folder(folder / "in")
    result = run_cohort(run_cli, small_unetpp, [inputs], folder / "one")
    assert result.code == EXIT_CASES_FAILED
    return inputs, outcome(folder / "one")


def test_workers_in_two_processes_give_the_labels_and_records_of_one_process(cli, small_unetpp, one_process, tmp_path):
    inputs, expected = one_process
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--workers", "2", progress="json")
    assert result.code == EXIT_CASES_FAILED, result.stderr
    assert result.start["workers"] == 2
    assert_same_outcome(outcome(tmp_path / "out"), expected)
    assert len({r["worker"] for r in read_records(tmp_path / "out" / "manifest.jsonl") if r["status"] == "done"}) <= 2


@pytest.mark.slow  # ~30 s: two local Ray instances started and shut down (about 5-10 s each on two cores)
def test_a_local_ray_instance_gives_the_labels_and_records_of_one_process(cli, small_unetpp, one_process, tmp_path):
    ray = pytest.importorskip("ray", reason="the [cluster] extra (part of [test])")
    inputs, expected = one_process
    t0 = time.perf_counter()
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--executor", "ray", "--workers", "2", "--ray-cpus-per-worker", "1", progress="json")
    assert result.code == EXIT_CASES_FAILED, result.stderr
    assert (result.start["executor"], result.start["workers"]) == ("ray", 2)
    assert_same_outcome(outcome(tmp_path / "out"), expected)
    assert not ray.is_initialized()  # the instance the run started is shut down
    print(f"ray cohort run: {time.perf_counter() - t0:.1f} s")
    # a re-run on Ray resumes from the same manifest: nothing recomputed
    again = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--executor", "ray", progress="json")
    assert (again.events[-1]["skipped"], again.events[-1]["ran"]) == (3, 1)


@pytest.mark.child_process
def test_a_cohort_killed_half_way_finishes_only_the_rest_when_run_again(cli, small_unet_one_class, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):  # ~60 slices each at batch size 1: long enough to kill the run between cases
        write(sitk.GetImageFromArray(rng.normal(0, 300, (60, 48, 48)).astype(np.int16)), inputs / f"case{index}.nrrd")
    output = tmp_path / "out"
    command = [sys.executable, "-m", "UNetSegmentationLib", "predict", "--checkpoint", str(small_unet_one_class), "--batch-size", "1",
               "--progress", "none", "--output-dir", str(output), str(inputs)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = output / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [r for r in read_records(manifest) if r["status"] == "done"]:
        assert child.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    done_before = {r["case"] for r in read_records(manifest) if r["status"] == "done"}
    assert 1 <= len(done_before) < 5, done_before
    result = cli("predict", "--checkpoint", small_unet_one_class, "--batch-size", "1", "--progress", "json", "--output-dir", output, inputs)
    assert result.code == 0, result.stderr
    assert (result.events[-1]["skipped"], result.events[-1]["ran"]) == (len(done_before), 5 - len(done_before))
    done = [r["case"] for r in read_records(manifest) if r["status"] == "done"]
    assert sorted(done) == [f"case{i}" for i in range(5)]  # each case done exactly once
    assert sorted(p.name for p in output.iterdir()) == sorted([f"case{i}.nrrd" for i in range(5)] + ["manifest.jsonl"])
