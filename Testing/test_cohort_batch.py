"""A cohort in one ``unetseg predict`` run: every good case segmented, a bad one recorded, the exit status
and a summary say so; a re-run recomputes nothing; progress counts cases (README: Cohorts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import assert_same_grid, make_volume, write
from UNetSegmentationLib.cohort.batch import EXIT_CASES_FAILED
from UNetSegmentationLib.cohort.manifest import read_records


def cohort_folder(folder: Path) -> Path:
    """Three small CT-like volumes (one in a subfolder, one NIfTI) and a truncated NRRD."""
    (folder / "sub").mkdir(parents=True)
    write(make_volume(size=(40, 36, 8), seed=1), folder / "a.nrrd")
    write(make_volume(size=(32, 30, 6), spacing=(1.0, 1.0, 2.0), seed=2), folder / "b.nii.gz")
    write(make_volume(size=(36, 36, 7), seed=3), folder / "sub" / "c.nrrd")
    data = (folder / "a.nrrd").read_bytes()
    (folder / "broken.nrrd").write_bytes(data[: len(data) // 2])
    return folder


def run_cohort(cli, checkpoint, inputs, output_dir, *extra, progress="none"):
    return cli("predict", "--checkpoint", checkpoint, "--progress", progress, "--output-dir", output_dir, *extra, *inputs)


def records_of(manifest: Path, status: str) -> list:
    return [r for r in read_records(manifest) if r["status"] == status]


def test_a_folder_with_a_corrupt_volume_gives_every_good_case_records_the_bad_one_and_exits_non_zero(cli, small_unetpp, tmp_path):
    inputs = cohort_folder(tmp_path / "in")
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out")
    assert result.code == EXIT_CASES_FAILED, result.stderr
    for name, source in (("a", "a.nrrd"), ("b", "b.nii.gz"), ("sub_c", "sub/c.nrrd")):
        assert_same_grid(sitk.ReadImage(str(tmp_path / "out" / f"{name}.nrrd")), sitk.ReadImage(str(inputs / source)))
    assert not (tmp_path / "out" / "broken.nrrd").exists()
    manifest = tmp_path / "out" / "manifest.jsonl"
    done = {r["case"]: r for r in records_of(manifest, "done")}
    assert sorted(done) == ["a", "b", "sub_c"]
    for record in done.values():
        assert set(record["volumes_ml"]) == {"lung", "bone"} and record["slices"] > 0 and record["seconds"] > 0 and "network_s" in record["timings"]
        assert record["mean_confidence"] is None or 0.0 <= record["mean_confidence"] <= 1.0
    [failed] = records_of(manifest, "failed")
    assert failed["case"] == "broken" and "truncated" in failed["error"]
    assert "broken" in result.stderr and "4 cases: 3 done" in result.stderr and "1 failed" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nrrd", "b.nrrd", "manifest.jsonl", "sub_c.nrrd"]  # no leftovers


def test_each_case_is_labelled_exactly_as_predict_labels_it_alone(cli, small_unetpp, tmp_path):
    inputs = cohort_folder(tmp_path / "in")
    run_cohort(cli, small_unetpp, [inputs / "a.nrrd", inputs / "sub"], tmp_path / "out")
    assert cli("predict", "--checkpoint", small_unetpp, "--progress", "none", inputs / "a.nrrd", tmp_path / "alone.nrrd").code == 0
    cohort, alone = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (tmp_path / "out" / "a.nrrd", tmp_path / "alone.nrrd"))
    np.testing.assert_array_equal(cohort, alone)
    assert (tmp_path / "out" / "c.nrrd").exists()  # a folder given by name: its files named below it


def test_a_rerun_recomputes_nothing_and_a_rerun_with_other_options_refuses_to_replace_outputs_unless_overwrite(cli, small_unetpp, tmp_path):
    inputs = cohort_folder(tmp_path / "in")
    run_cohort(cli, small_unetpp, [inputs], tmp_path / "out")
    manifest = tmp_path / "out" / "manifest.jsonl"
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.nrrd")}
    again = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", progress="json")
    assert again.code == EXIT_CASES_FAILED  # the broken case is still broken
    assert len(records_of(manifest, "done")) == 3  # no case done twice
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.nrrd")} == written
    done_event = again.events[-1]
    assert (done_event["event"], done_event["skipped"], done_event["ran"], done_event["failed"]) == ("done", 3, 1, 1)
    # other options are another key: the outputs are not this run's to replace
    changed = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--largest-component")
    assert changed.code == EXIT_CASES_FAILED and "already exists" in changed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.nrrd")} == written
    replaced = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--largest-component", "--overwrite")
    assert replaced.code == EXIT_CASES_FAILED and len(records_of(manifest, "done")) == 6


def test_progress_counts_cases_with_rate_and_time_left_in_one_json_stream(cli, small_unetpp, tmp_path):
    inputs = cohort_folder(tmp_path / "in")
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", progress="json")
    events = result.events  # every stdout line is one JSON event: no case's own events among them
    assert events[0]["event"] == "start" and (events[0]["command"], events[0]["unit"], events[0]["total"]) == ("predict-cohort", "case", 4)
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [1, 2, 3, 4]
    assert all("rate_per_s" in e and "eta_s" in e and "slices_per_s" in e for e in progress)
    assert any(e["event"] == "warning" and e["message"].startswith("broken failed:") for e in events)
    assert events[-1]["event"] == "done" and (events[-1]["done"], events[-1]["failed"]) == (3, 1)


def test_globs_datalists_and_csvs_name_the_same_cases(cli, small_unetpp, tmp_path):
    inputs = cohort_folder(tmp_path / "in")
    (inputs / "list.json").write_text(json.dumps({"test": ["a.nrrd", {"image": "sub/c.nrrd"}]}))
    (inputs / "list.csv").write_text("image,name\na.nrrd,first\nsub/c.nrrd,third\n")
    by_glob = run_cohort(cli, small_unetpp, [str(inputs / "**" / "*.nrrd")], tmp_path / "glob", "--name", "{stem}_labels.seg.nrrd")
    assert by_glob.code == EXIT_CASES_FAILED  # broken.nrrd matches too
    assert sorted(p.name for p in (tmp_path / "glob").glob("*.seg.nrrd")) == ["a_labels.seg.nrrd", "c_labels.seg.nrrd"]
    assert run_cohort(cli, small_unetpp, [inputs / "list.json"], tmp_path / "datalist").code == 0
    assert sorted(p.name for p in (tmp_path / "datalist").glob("*.nrrd")) == ["a.nrrd", "c.nrrd"]
    assert run_cohort(cli, small_unetpp, [inputs / "list.csv"], tmp_path / "csv", "--name", "{index:02d}_{name}.nii.gz").code == 0
    assert sorted(p.name for p in (tmp_path / "csv").glob("*.nii.gz")) == ["01_first.nii.gz", "02_third.nii.gz"]


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (("--name", "{name}.png"), "must end in one of"),
        (("--name", "{patient}.nrrd"), "{name}, {stem} and {index}"),
        (("--name", "same.nrrd"), "would both be written to"),
        (("--probabilities", "p.nrrd"), "applies to one volume"),
        (("--workers", "0"), "--workers must be 1 or more"),
        (("--ray-address", "auto"), "need --executor ray"),
    ],
)
def test_a_bad_cohort_option_is_one_message_before_any_case(cli, small_unetpp, tmp_path, extra, phrase):
    inputs = cohort_folder(tmp_path / "in")
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", *extra)
    assert result.code == 2 and phrase in result.stderr, result.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_cohort_options_on_a_one_volume_run_are_refused_and_several_paths_need_an_output_dir(cli, small_unetpp, tmp_path):
    volume = write(make_volume(size=(24, 20, 3)), tmp_path / "v.nrrd")
    single = cli("predict", "--checkpoint", small_unetpp, "--workers", "2", volume, tmp_path / "o.nrrd")
    assert single.code == 2 and "--workers only apply to a cohort" in single.stderr
    several = cli("predict", "--checkpoint", small_unetpp, volume, volume, tmp_path / "o.nrrd")
    assert several.code == 2 and "--output-dir" in several.stderr
