"""A cohort against hostile and unlucky inputs (issue 23): case names that would leave the output folder are
refused case by case, the ``--name`` rule is bounded, workers are planned from the CPUs and memory this
process may use, a worker killed by the OOM killer fails only its case, workers die with their parent, and
every bad input is one message or one failed case, never a traceback or a hang (docs/hardening.md, 140-164)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import leftovers, make_volume, write
from test_cohort_batch import cohort_folder, records_of, run_cohort
from UNetSegmentationLib.cohort.batch import EXIT_CASES_FAILED
from UNetSegmentationLib.cohort.manifest import read_records
from UNetSegmentationLib.cohort.resources import WORKER_FLOOR_BYTES, plan_cohort
from UNetSegmentationLib.io import memory_budget

GIB = 1 << 30


def two_volumes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(make_volume(size=(24, 20, 4), seed=1), folder / "a.nrrd")
    write(make_volume(size=(24, 20, 4), seed=2), folder / "b.nrrd")
    return folder


# --- HIGH 1: a case's name never leaves the output folder ------------------------------------------------


@pytest.mark.parametrize("hostile", ["../escaped", "/tmp/unetseg-absolute-escape", "sub/dir", "..", ".hidden", "a\x1b[31mred"])
def test_a_csv_name_that_would_leave_the_output_folder_fails_that_case_and_the_others_run(cli, small_unetpp, tmp_path, hostile):
    inputs = two_volumes(tmp_path / "in")
    (inputs / "list.csv").write_text(f"image,name\na.nrrd,{hostile}\nb.nrrd,fine\n", encoding="utf-8")
    result = run_cohort(cli, small_unetpp, [inputs / "list.csv"], tmp_path / "out", "--overwrite")
    assert result.code == EXIT_CASES_FAILED, result.stderr
    assert (tmp_path / "out" / "fine.nrrd").exists()
    [failed] = records_of(tmp_path / "out" / "manifest.jsonl", "failed")
    assert failed["case"] == hostile and failed["output"] is None and "output name" in failed["error"], failed
    assert not (tmp_path / "escaped.nrrd").exists() and not Path("/tmp/unetseg-absolute-escape.nrrd").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fine.nrrd", "manifest.jsonl"]
    assert "\x1b" not in result.stderr  # the name is shown with its control characters replaced


def test_a_name_rule_is_checked_for_every_case_not_once_with_a_stand_in(cli, small_unetpp, tmp_path):
    inputs = two_volumes(tmp_path / "in")
    (inputs / "list.csv").write_text("image,name\na.nrrd,ok\nb.nrrd,x" + "y" * 300 + "\n", encoding="utf-8")
    result = run_cohort(cli, small_unetpp, [inputs / "list.csv"], tmp_path / "out", "--name", "{index}_{name}.nrrd")
    assert result.code == EXIT_CASES_FAILED and (tmp_path / "out" / "1_ok.nrrd").exists()
    [failed] = records_of(tmp_path / "out" / "manifest.jsonl", "failed")
    assert "bytes long" in failed["error"]


def test_a_symbolic_link_in_the_output_folder_cannot_lead_a_case_out(cli, small_unetpp, tmp_path):
    inputs = two_volumes(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "a.nrrd").symlink_to(tmp_path / "elsewhere" / "victim.nrrd")
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--overwrite")
    assert result.code == EXIT_CASES_FAILED and not (tmp_path / "elsewhere" / "victim.nrrd").exists()
    assert "symbolic link" in records_of(tmp_path / "out" / "manifest.jsonl", "failed")[0]["error"]


@pytest.mark.parametrize(
    "rule, phrase",
    [("{index:>2000000000}.nrrd", "at most 64"), ("{index:.999999999}.nrrd", "at most 64"), ("{name.__class__}.nrrd", "{name}, {stem} and {index} only"),
     ("{index:{name}}.nrrd", "no format a file name can use"), ("{name!r}.nrrd", "no conversion"), ("{" * 3000, "characters long")],
)
def test_a_name_rule_format_bomb_is_refused_before_anything_is_formatted(cli, small_unetpp, tmp_path, rule, phrase):
    import resource

    inputs = two_volumes(tmp_path / "in")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--name", rule)
    assert result.code == 2 and phrase in result.stderr, result.stderr
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # kB: no 2 GB string was built


def test_qc_pictures_of_hostile_names_stay_in_the_report_folder(cli, small_unetpp, tmp_path):
    pytest.importorskip("matplotlib")
    inputs = two_volumes(tmp_path / "in")
    (inputs / "list.csv").write_text("image,name\na.nrrd,=HYPERLINK(\"x\")\nb.nrrd,+cmd|calc\n", encoding="utf-8")
    result = run_cohort(cli, small_unetpp, [inputs / "list.csv"], tmp_path / "out", "--name", "{index}.nrrd", "--qc-report", tmp_path / "qc")
    assert result.code == 0, result.stderr
    pictures = sorted(p.name for p in (tmp_path / "qc" / "cases").iterdir())
    assert len(pictures) == 2 and all("/" not in p and not p.startswith(".") for p in pictures)
    with open(tmp_path / "qc" / "qc.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row), rows  # no formula runs in a spreadsheet
    assert "QC report: 2 of 2 case(s) flagged" in result.stderr and str(tmp_path / "qc" / "qc.csv") in result.stderr


# --- HIGH 4: workers planned from the CPUs and memory this process may use ------------------------------


def test_workers_are_capped_by_usable_cpus_and_memory_and_each_gets_its_share():
    plan = plan_cohort(8, 100, cpus=lambda: 2, memory=lambda: 16 * GIB)
    assert (plan.workers, plan.threads, plan.memory_share) == (2, 1, 8 * GIB) and "lowered to 2" in plan.notes[0]
    tight = plan_cohort(4, 100, cpus=lambda: 16, memory=lambda: 2 * WORKER_FLOOR_BYTES + 1)
    assert tight.workers == 2 and tight.threads == 8 and "of memory available" in tight.notes[0]
    assert plan_cohort(4, 3, cpus=lambda: 16, memory=lambda: None).workers == 3  # no more workers than cases
    assert plan_cohort(None, 10, user_threads=3, cpus=lambda: 4, memory=lambda: None).threads is None  # --threads wins
    alone = plan_cohort(1, 10, cpus=lambda: 4, memory=lambda: 8 * GIB)
    assert (alone.workers, alone.threads, alone.memory_share) == (1, 4, None)


def test_a_workers_memory_check_sees_its_share_not_the_whole_machine():
    try:
        memory_budget.limit_to_share(123 * 1024 * 1024)
        assert memory_budget.available_memory() <= 123 * 1024 * 1024
    finally:
        memory_budget.limit_to_share(None)


def fake_machine(root: Path, cgroup_lines: str, files: dict) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup_lines)
    (root / "proc/meminfo").write_text("MemAvailable:   67108864 kB\n")  # 64 GiB
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def test_a_cgroup_v1_limit_is_read_at_the_processs_own_group_not_the_hierarchy_root(tmp_path):
    job = "sys/fs/cgroup/memory/slurm/uid_1000/job_42"
    root = fake_machine(tmp_path, "4:memory:/slurm/uid_1000/job_42\n0::/\n", {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n", "sys/fs/cgroup/memory/memory.usage_in_bytes": "5000000000\n",
        f"{job}/memory.limit_in_bytes": str(4 * GIB), f"{job}/memory.usage_in_bytes": str(GIB), f"{job}/memory.stat": f"total_inactive_file {GIB // 2}\n",
    })
    assert memory_budget.available_memory(root) == 4 * GIB - GIB + GIB // 2


def test_a_cgroup_v2_limit_of_the_own_group_and_of_a_parent_group_both_count(tmp_path):
    root = fake_machine(tmp_path, "0::/user.slice/job.scope\n", {
        "sys/fs/cgroup/user.slice/memory.max": str(3 * GIB), "sys/fs/cgroup/user.slice/memory.current": str(2 * GIB),
        "sys/fs/cgroup/user.slice/job.scope/memory.max": "max", "sys/fs/cgroup/user.slice/job.scope/memory.current": str(GIB),
    })
    assert memory_budget.available_memory(root) == GIB  # the parent's limit binds
    container = fake_machine(tmp_path / "container", "0::/host/path/not/visible\n", {"sys/fs/cgroup/memory.max": str(2 * GIB), "sys/fs/cgroup/memory.current": str(GIB)})
    assert memory_budget.available_memory(container) == GIB  # the mount's root is the own group


def _spawned_children() -> list:
    """This process's children started by multiprocessing's spawn."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == os.getpid() and b"multiprocessing" in command and b"resource_tracker" not in command:
                children.append(int(entry.name))
    return children


@pytest.mark.child_process
def test_a_worker_killed_by_the_oom_killer_fails_its_case_only_and_leaves_no_lock(cli, small_unetpp, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(3):
        write(make_volume(size=(40, 36, 10), seed=index), inputs / f"case{index}.nrrd")
    killed = []

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for pid in _spawned_children():
                os.kill(pid, signal.SIGKILL)  # what the OOM killer sends
                killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--workers", "2")
    killer.join()
    assert killed and result.code == EXIT_CASES_FAILED, result.stderr
    [failed] = records_of(tmp_path / "out" / "manifest.jsonl", "failed")
    assert "killed by SIGKILL" in failed["error"] and "out-of-memory" in failed["error"]
    assert len(records_of(tmp_path / "out" / "manifest.jsonl", "done")) == 2  # the run went on
    assert leftovers(tmp_path / "out") == [] and "Traceback" not in result.stderr


@pytest.mark.child_process
def test_workers_die_with_their_killed_parent(small_unet_one_class, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(4):
        write(sitk.GetImageFromArray(np.random.default_rng(index).normal(0, 300, (80, 48, 48)).astype(np.int16)), inputs / f"case{index}.nrrd")
    command = [sys.executable, "-m", "UNetSegmentationLib", "predict", "--checkpoint", str(small_unet_one_class), "--batch-size", "1",
               "--progress", "none", "--workers", "2", "--output-dir", str(tmp_path / "out"), str(inputs)]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, workers = time.monotonic() + 60, []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent_of(p) == parent.pid and b"multiprocessing" in _cmdline(p)]
        time.sleep(0.05)
    assert workers, "no worker started"
    parent.kill()
    parent.wait()
    t0 = time.monotonic()
    while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in workers) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in workers), "a worker outlived its parent"


def _parent_of(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


# --- 7/8: one message or one failed case, never a traceback or a hang -----------------------------------


def test_a_file_name_that_is_not_utf8_fails_that_case_and_the_others_run(cli, small_unetpp, tmp_path):
    inputs = two_volumes(tmp_path / "in")
    os.rename(inputs / "a.nrrd", os.fsencode(inputs) + b"/caf\xe9.nrrd")  # Latin-1, not UTF-8
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out")
    assert result.code == EXIT_CASES_FAILED and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "out" / "b.nrrd").exists()
    assert "not valid UTF-8" in records_of(tmp_path / "out" / "manifest.jsonl", "failed")[0]["error"]


def test_an_unreadable_sub_folder_is_a_failed_case_not_a_silent_skip(cli, small_unetpp, tmp_path, monkeypatch):
    inputs = two_volumes(tmp_path / "in")
    locked = inputs / "locked"
    locked.mkdir()
    write(make_volume(size=(24, 20, 4)), locked / "c.nrrd")
    real_scandir = os.scandir

    def scandir(path="."):  # tests run as root, who reads any folder: refuse as the system does for mode 000
        if Path(os.fsdecode(path)) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out")
    assert result.code == EXIT_CASES_FAILED, result.stderr
    [failed] = records_of(tmp_path / "out" / "manifest.jsonl", "failed")
    assert "cannot read the folder" in failed["error"] and "Permission denied" in failed["error"]


def test_a_recursive_glob_through_a_symlink_loop_ends(cli, small_unetpp, tmp_path):
    inputs = two_volumes(tmp_path / "in")
    (inputs / "loop").symlink_to(inputs, target_is_directory=True)
    t0 = time.perf_counter()
    result = run_cohort(cli, small_unetpp, [str(inputs / "**" / "*.nrrd")], tmp_path / "out")
    assert result.code == 0 and time.perf_counter() - t0 < 60, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nrrd")) == ["a.nrrd", "b.nrrd"]


@pytest.mark.parametrize(
    "write_input, phrase",
    [
        (lambda p: p.with_suffix(".json").write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (lambda p: p.with_suffix(".json").write_text(json.dumps({"test": ["x" * 300 + ".nrrd"]})), "do not exist or cannot be reached"),
        (lambda p: p.with_suffix(".csv").write_text("image\n" + "y" * 300 + ".nrrd\n"), "do not exist or cannot be reached"),
        (lambda p: p.with_suffix(".json").write_text(json.dumps({"test": [{"image": 7}]})), "has no image path"),
        (lambda p: p.with_suffix(".csv").write_bytes(b"image\n\xff\xfe.nrrd\n"), "cannot read the CSV"),
    ],
)
def test_a_hostile_list_is_one_message(cli, small_unetpp, tmp_path, write_input, phrase):
    write_input(tmp_path / "list")
    listed = next(tmp_path.glob("list.*"))
    result = run_cohort(cli, small_unetpp, [listed], tmp_path / "out")
    assert result.code == 2 and phrase in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_hand_edited_manifest_records_of_the_wrong_type_do_not_crash_the_summary_or_the_qc_report(cli, small_unetpp, tmp_path):
    pytest.importorskip("matplotlib")
    inputs = cohort_folder(tmp_path / "in")
    assert run_cohort(cli, small_unetpp, [inputs], tmp_path / "out").code == EXIT_CASES_FAILED
    manifest = tmp_path / "out" / "manifest.jsonl"
    records = read_records(manifest)
    for record in records:
        if record["status"] == "done":
            record.update(volumes_ml=["not", "a", "dict"], mean_confidence="high", seconds={"x": 1}, warnings="one", scan_flags=5, case=record["case"])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--qc-report", tmp_path / "qc")
    assert result.code == EXIT_CASES_FAILED and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "qc" / "qc.csv").exists()


def test_scan_flags_in_a_record_flag_the_case_in_the_qc_report():
    from UNetSegmentationLib.cohort.qc_report import qc_flags
    from UNetSegmentationLib.model.metadata import ClassInfo

    record = {"status": "done", "volumes_ml": {"lung": 3000.0}, "mean_confidence": 0.95, "scan_flags": ["modality MR, the model is for CT"]}
    flags = qc_flags({"mr": record, "ct": {**record, "scan_flags": []}}, [ClassInfo(1, "lung", (1, 0, 0))])
    assert flags == {"mr": ["scan: modality MR, the model is for CT"], "ct": []}


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (lambda t: ("--qc-report", t / "in" / "a.nrrd"), "is a file, not a folder"),
        (lambda t: ("--executor", "ray", "--ray-cpus-per-worker", "nan"), "must be a positive number"),
        (lambda t: ("--manifest", t / "in" / "a.nrrd"), "this run reads"),
        (lambda t: ("--manifest", t / "notes.txt"), "is not a cohort manifest"),
    ],
)
def test_a_bad_cohort_output_option_is_one_message_before_any_case(cli, small_unetpp, tmp_path, extra, phrase):
    inputs = two_volumes(tmp_path / "in")
    (tmp_path / "notes.txt").write_text("my notes, not a manifest\n")
    before = (inputs / "a.nrrd").read_bytes()
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", *extra(tmp_path))
    assert result.code == 2 and phrase in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (inputs / "a.nrrd").read_bytes() == before and (tmp_path / "notes.txt").read_text() == "my notes, not a manifest\n"


def test_a_manifest_naming_a_fifo_is_refused_at_once(cli, small_unetpp, tmp_path):
    inputs = two_volumes(tmp_path / "in")
    os.mkfifo(tmp_path / "pipe")
    t0 = time.perf_counter()
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--manifest", tmp_path / "pipe")
    assert result.code == 2 and "FIFO" in result.stderr and time.perf_counter() - t0 < 30


def test_a_ray_address_where_nothing_listens_fails_fast_with_one_message(cli, small_unetpp, tmp_path):
    pytest.importorskip("ray", reason="the [cluster] extra (part of [test])")
    inputs = two_volumes(tmp_path / "in")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t0 = time.perf_counter()
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert result.code == 2 and "cannot reach a Ray cluster" in result.stderr, result.stderr
    assert time.perf_counter() - t0 < 30 and len(result.stderr.strip().splitlines()) == 1


# --- resume: by content for small inputs; a changed input is recomputed, not refused ---------------------


def test_an_input_changed_with_size_and_mtime_restored_is_recomputed_and_its_output_replaced(cli, small_unetpp, tmp_path):
    inputs = two_volumes(tmp_path / "in")
    assert run_cohort(cli, small_unetpp, [inputs], tmp_path / "out").code == 0
    volume = inputs / "a.nrrd"
    stat = volume.stat()
    image = sitk.ReadImage(str(volume))
    changed = sitk.GetArrayFromImage(image)
    changed[0, 0, 0] += 1
    data = volume.read_bytes()
    edited = sitk.GetImageFromArray(changed)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(volume), useCompression=False)
    assert volume.read_bytes() != data
    if volume.stat().st_size == stat.st_size:
        os.utime(volume, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and time as before: only the content says it changed
    again = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", progress="json")
    assert again.code == 0, again.stderr  # not "already exists": this cohort's own output of that case is replaced
    assert (again.events[-1]["skipped"], again.events[-1]["ran"]) == (1, 1)
    os.utime(inputs / "b.nrrd")  # touched, content unchanged: nothing to do
    touched = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", progress="json")
    assert (touched.events[-1]["skipped"], touched.events[-1]["ran"]) == (2, 0)


def test_nhdr_volumes_are_found_as_training_finds_them(cli, small_unetpp, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(make_volume(size=(24, 20, 4)), inputs / "detached.nhdr")
    assert (inputs / "detached.raw").exists() or any(inputs.glob("detached.*raw*"))
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out")
    assert result.code == 0, result.stderr
    assert (tmp_path / "out" / "detached.nrrd").exists()
