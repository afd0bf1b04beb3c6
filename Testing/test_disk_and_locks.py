"""Full disks, verified writes, operating-system locks and output-path mistakes (issue 13, classes 5, 6 and
the output messages of 11).

A write the disk cuts short never takes the final name: every output is flushed and checked against
its own header before the rename (``io/verified_write.py``). A full disk is tested for real on a
256 kB tmpfs where the tests may mount one (root), and everywhere as an operating-system limit on
the size of files a child may write (``RLIMIT_FSIZE``: writes past it fail, as on a full disk). A
lock is an ``flock`` the operating system releases when its holder ends (``io/locks.py``): a lock
file left by a killed run, by a zombie, or naming a process id that now belongs to someone else
blocks nobody.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from engine_child import run_unetseg
from support import assert_refused, leftovers, make_volume

LOCK_NAME = ".labels.nrrd.unetseg-lock"


def noise_volume(path: Path, size=(64, 64, 40)) -> Path:
    """A volume whose confidence map does not compress to nothing (an untrained network on noise)."""
    array = np.random.default_rng(0).normal(0, 300, size[::-1]).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


# --- 5. full disk --------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize(
    "output_name, probabilities",
    [("labels.nii", None), ("labels.nrrd", "confidence.nii.gz"), ("labels.nrrd", "confidence.nrrd"), ("labels.seg.nrrd", "confidence.mha")],
)
def test_a_write_the_disk_cuts_short_is_refused_and_leaves_nothing(small_unet_one_class, tmp_path, output_name, probabilities):
    """Files may grow to 64 kB only; the label map (164 kB as .nii) or the confidence map (655 kB of float32) cannot."""
    volume = noise_volume(tmp_path / "noise.nrrd")
    folder = tmp_path / "out"
    folder.mkdir()
    extra = ["--probabilities", folder / probabilities] if probabilities else []
    run = run_unetseg("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--backend", "torch", *extra, volume, folder / output_name, file_size=64 * 1024)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.code == 2 and len(lines) == 1 and lines[0].startswith("unetseg: error: cannot write"), (run.code, run.stderr[-3000:])
    assert ".partial" not in lines[0]
    assert os.listdir(folder) == [], "no output, no temporary file, no lock"


@pytest.fixture
def small_disk(tmp_path):
    """A 256 kB tmpfs mounted at ``tmp_path/disk`` (root only); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE tests cover the others)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_label_map_larger_than_the_disk_is_refused_not_renamed_into_place(small_unet_one_class, tmp_path, small_disk):
    """ITK's NIfTI writer does not notice the full disk; the check against the file's own header does."""
    volume = noise_volume(tmp_path / "noise.nrrd", size=(100, 100, 40))  # 400 kB of uint8 labels on a 256 kB disk
    output = small_disk / "labels.nii"
    run = run_unetseg("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--backend", "torch", volume, output)
    assert run.code == 2 and f"cannot write {output}: the file came out incomplete" in run.stderr and "the disk is probably full" in run.stderr, run.stderr
    assert os.listdir(small_disk) == []


def test_a_disk_full_at_the_start_gives_one_message_and_leaves_no_lock(small_unet_one_class, oblique_volume_path, small_disk):
    filler = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(filler, bytes(4096)):
            pass
    except OSError:  # the disk is full
        pass
    finally:
        os.close(filler)
    output = small_disk / "labels.nrrd"
    run = run_unetseg("predict", "--checkpoint", small_unet_one_class, "--progress", "none", oblique_volume_path, output)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.code == 2 and len(lines) == 1 and f"the disk holding {small_disk} is full" in lines[0], run.stderr
    assert os.listdir(small_disk) == ["filler"]


def test_a_volume_file_cut_short_by_its_writer_is_not_renamed_into_place(tmp_path):
    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.io.outputs import atomic_output

    final = tmp_path / "labels.nii.gz"
    final.write_bytes(b"the user's earlier result")
    with pytest.raises(UserError) as refused:
        with atomic_output([final], overwrite=True) as (temporary,):
            sitk.WriteImage(make_volume(), str(temporary), useCompression=True)
            data = temporary.read_bytes()
            temporary.write_bytes(data[: len(data) // 2])  # as a writer that did not notice the disk was full
    assert str(refused.value).startswith(f"cannot write {final}: the file came out incomplete (its header announces 34.9 kB of voxel data but its compressed data stops")
    assert final.read_bytes() == b"the user's earlier result" and leftovers(tmp_path) == []


def test_a_flush_the_disk_refuses_is_a_message_naming_the_final_file(tmp_path, monkeypatch):
    import errno

    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.io import verified_write
    from UNetSegmentationLib.io.outputs import atomic_output

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(verified_write.os, "fsync", disk_full)  # the operating system reports the lost write at fsync
    final = tmp_path / "history.csv"
    with pytest.raises(UserError, match=f"cannot write {final}: No space left on device"):
        with atomic_output([final]) as (temporary,):
            temporary.write_text("epoch,loss\n")
    assert not final.exists() and leftovers(tmp_path) == []


# --- 6. locks the operating system releases ----------------------------------------------------------------------


@pytest.fixture
def predict_oblique(cli, small_unet_one_class, oblique_volume_path, tmp_path):
    """``unetseg predict`` of the oblique volume into ``tmp_path/out/labels.nrrd``."""
    output = tmp_path / "out" / "labels.nrrd"
    output.parent.mkdir()

    def run(*extra):
        return cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", *extra, oblique_volume_path, output), output

    return run


HOLDER = textwrap.dedent(
    """
    import fcntl, os, socket, sys, time
    descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    os.write(descriptor, f"{os.getpid()} {socket.gethostname()}\\n".encode())
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def hold_lock(lock: Path, seconds: float = 120) -> subprocess.Popen:
    """Another process holding ``lock`` as a running unetseg does (until it ends or is killed)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.child_process
def test_a_lock_file_naming_a_live_process_that_holds_no_lock_blocks_nobody(predict_oblique, tmp_path):
    """The process id in a lock file left by a killed run now belongs to another, unrelated process."""
    result, output = predict_oblique()
    assert result.code == 0
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (output.parent / LOCK_NAME).write_text(f"{unrelated.pid} {socket.gethostname()}\n")
        again, _ = predict_oblique("--overwrite")
        assert again.code == 0, again.stderr
        assert os.listdir(output.parent) == ["labels.nrrd"], "the left-over lock file is tidied away"
    finally:
        unrelated.kill()
        unrelated.wait()


@pytest.mark.skipif(os.name != "posix", reason="zombies are POSIX")
def test_a_lock_held_by_a_run_that_is_now_a_zombie_blocks_nobody(predict_oblique, tmp_path):
    lock = tmp_path / "out" / LOCK_NAME
    holder = hold_lock(lock, seconds=0)
    try:
        os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)  # it has ended but is not reaped: a zombie
        result, output = predict_oblique()
        assert result.code == 0, result.stderr
        assert os.listdir(output.parent) == ["labels.nrrd"]
    finally:
        holder.wait()


def test_a_live_holder_is_respected_and_once_killed_its_lock_blocks_nobody(predict_oblique, tmp_path):
    lock = tmp_path / "out" / LOCK_NAME
    holder = hold_lock(lock)
    try:
        result, output = predict_oblique()
        assert result.code == 2 and result.stderr.count("\n") == 1, result.stderr
        for phrase in ("is being written by another unetseg run", f"(process {holder.pid}); wait for it to finish", str(lock)):
            assert phrase in result.stderr
        assert sorted(os.listdir(output.parent)) == [LOCK_NAME]
        assert lock.read_text() == f"{holder.pid} {socket.gethostname()}\n", "another run's lock is not ours to touch"
    finally:
        holder.send_signal(signal.SIGKILL)  # as the out-of-memory killer would: the lock file stays behind
        holder.wait()
    assert lock.exists()
    result, output = predict_oblique()
    assert result.code == 0, result.stderr
    assert os.listdir(output.parent) == ["labels.nrrd"]


def test_a_run_holds_its_lock_with_the_operating_system_and_removes_the_file_when_done(tmp_path):
    fcntl = pytest.importorskip("fcntl")  # POSIX: the lock is flock
    from UNetSegmentationLib.io.locks import claim_output, lock_path, release_output

    output = tmp_path / "labels.nrrd"
    claim_output(output)
    try:
        probe = os.open(lock_path(output), os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        assert lock_path(output).read_text().split()[0] == str(os.getpid())
    finally:
        release_output(output)
    assert not lock_path(output).exists()


# --- 11. output-path mistakes ------------------------------------------------------------------------------------


def test_an_output_path_ending_in_a_slash_is_refused_as_a_folder(cli, small_unet_one_class, oblique_volume_path, tmp_path):
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", oblique_volume_path, f"{tmp_path}/labels.nrrd/")
    assert_refused(result, tmp_path / "labels.nrrd", "ends in '/'", "names a folder", "give a file name")
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--probabilities", f"{tmp_path}/confidence/", oblique_volume_path, tmp_path / "labels.nrrd")
    assert_refused(result, tmp_path / "labels.nrrd", "--probabilities", "names a folder")
    assert sorted(os.listdir(tmp_path)) == ["oblique.nrrd"]


def test_a_probability_map_under_a_segmentation_name_is_refused(cli, small_unet_one_class, oblique_volume_path, tmp_path):
    output = tmp_path / "labels.nrrd"
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--probabilities", tmp_path / "confidence.seg.nrrd", oblique_volume_path, output)
    assert_refused(result, output, "confidence.seg.nrrd", ".seg.nrrd is a Slicer segmentation name", "use one of .nrrd")
    assert not (tmp_path / "confidence.seg.nrrd").exists()


@pytest.mark.child_process
def test_the_runner_removes_a_killed_runs_lock_file_but_never_one_a_run_holds(tmp_path):
    """A killed child's lock file is tidied away by the runner; a lock file some run holds now (it has
    just claimed the output) is left alone, even when it names the killed child."""
    import subprocess
    import sys

    from UNetSegmentationLib.io.locks import lock_path, remove_abandoned_lock

    output = tmp_path / "labels.nrrd"
    lock = lock_path(output)
    lock.write_text("12345 host\n")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not remove_abandoned_lock(output, 12345) and lock.exists(), "a held lock is not ours to remove"
    finally:
        holder.kill()
        holder.wait()
    assert not remove_abandoned_lock(output, 999) and lock.exists(), "a lock file another process wrote stays"
    assert remove_abandoned_lock(output, 12345) and not lock.exists()


# --- issue 23: every output of a run written together; a full disk keeps its cause --------------------------


def fill_leaving(disk: Path, free_bytes: int) -> None:
    """Fill ``disk`` (a tmpfs) and give back ``free_bytes``: the run starts with that much room."""
    filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(filler, bytes(4096)):
            pass
    except OSError:  # full
        pass
    os.ftruncate(filler, os.fstat(filler).st_size - free_bytes)
    os.close(filler)


def test_a_review_list_the_disk_cannot_hold_leaves_no_label_map_either(small_unet_one_class, tmp_path, small_disk):
    """The label map was renamed into place, then the review list found the disk full: exit 2 with a label map
    written. Now every output is written as a temporary first and all are renamed together, or none."""
    volume = tmp_path / "long.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((900, 20, 20), dtype=np.int16)), str(volume), True)  # labels compress to nothing; 900 ranked slices do not
    fill_leaving(small_disk, 72 * 1024)  # above the 64 kB refused at the start: the run starts
    output, review = small_disk / "labels.nrrd", small_disk / "review.json"
    run = run_unetseg("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--backend", "torch", "--review-list", review, volume, output)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.code == 2 and len(lines) == 1 and "No space left on device" in lines[0] and f"holding {small_disk} is full" in lines[0], run.stderr
    assert sorted(os.listdir(small_disk)) == ["filler"], "no label map, no review list, no temporary, no lock"


def test_a_full_disk_under_the_nrrd_writer_says_so_not_only_its_gzip_error(small_unet_one_class, tmp_path, small_disk):
    """ITK's NRRD writer reports a full disk as "[nrrd] _nrrdGzWrite: failed to write to file"."""
    volume = noise_volume(tmp_path / "noise.nrrd", size=(100, 100, 40))
    probabilities = small_disk / "confidence.nrrd"  # 1.6 MB of float32 on a 256 kB disk
    run = run_unetseg("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--backend", "torch", "--probabilities", probabilities, volume, small_disk / "labels.nrrd")
    assert run.code == 2 and "the disk is probably full" in run.stderr, run.stderr
    assert os.listdir(small_disk) == []
