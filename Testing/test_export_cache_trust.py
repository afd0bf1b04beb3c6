"""The ONNX export cache trusts nothing it has not verified (issue 13, class 4).

An export carries the SHA-256 binding of the checkpoint (weights and metadata), depth and guidance
it was made from; before one is used its binding and properties are checked
(``backends/onnx_cache.export_problem``). Another model's export copied over a cached one, an export
without its properties or with nonsense in them, a damaged or truncated file: each is named in a
``log`` event and made again, never used. Partial exports of killed runs are removed by later runs
(the lock a writer holds dies with it); cache files get the permissions of any new file.
Every test means the float32 ONNX path (``--precision fp32``; see test_onnx_backend.py).
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import create_checkpoint, leftovers
from UNetSegmentationLib.backends.onnx_cache import BINDING, CHECKED_DIFFERENCE, PARTIAL_SUFFIX, REQUIRED_MULTIPLE, export_binding, remove_abandoned_partials, shipped_export
from UNetSegmentationLib.backends.onnx_export import onnx_predictor_for
from UNetSegmentationLib.backends.onnx_predictor import OnnxSlicePredictor
from UNetSegmentationLib.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.onnx
FP32_JSON = ("--precision", "fp32", "--progress", "json")


def labels_of(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def exports_of(checkpoint: Path) -> list:
    return sorted(checkpoint.parent.glob(checkpoint.name.replace(".safetensors", ".") + "*.onnx"))


def logs(result) -> list:
    return [e["message"] for e in result.events if e["event"] == "log"]


def with_properties(path: Path, change) -> None:
    """Rewrite the metadata properties of the ONNX file at ``path`` (a dict, changed in place by ``change``)."""
    import onnx

    model = onnx.load(str(path))
    properties = {p.key: p.value for p in model.metadata_props}
    change(properties)
    del model.metadata_props[:]
    for key, value in properties.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


@pytest.fixture
def two_models(tmp_path):
    """Two networks of the same architecture and classes, different weights (seeds), in one folder."""
    folder = tmp_path / "models"
    folder.mkdir()
    return [create_checkpoint(folder / f"{name}.safetensors", arch="unet", classes="lung,bone", features="4,8", extra=("--seed", seed))
            for name, seed in (("a", "1"), ("b", "2"))]


def test_another_models_export_copied_over_the_cache_is_not_used(cli, two_models, oblique_volume_path, tmp_path):
    """Issue 13: the other model's export was used silently and the output was the other model's."""
    a, b = two_models
    outputs = {name: tmp_path / f"{name}.nrrd" for name in ("a", "b", "poisoned")}
    for checkpoint, name in ((a, "a"), (b, "b")):
        assert cli("predict", "--checkpoint", checkpoint, *FP32_JSON, oblique_volume_path, outputs[name]).code == 0
    assert (labels_of(outputs["a"]) != labels_of(outputs["b"])).any()  # the poison would show
    (cached_a,), (cached_b,) = exports_of(a), exports_of(b)
    cached_a.write_bytes(cached_b.read_bytes())

    poisoned = cli("predict", "--checkpoint", a, *FP32_JSON, oblique_volume_path, outputs["poisoned"])
    assert poisoned.code == 0, poisoned.stderr
    assert any(str(cached_a) in m and "made from another checkpoint" in m for m in logs(poisoned)), logs(poisoned)
    assert (labels_of(outputs["poisoned"]) == labels_of(outputs["a"])).all()
    assert OnnxSlicePredictor(cached_a, None, None, 1).properties[BINDING] == export_binding(load_checkpoint(a), None, True)


def drop(key):
    return lambda properties: properties.pop(key)


def set_to(key, value):
    return lambda properties: properties.update({key: value})


BROKEN = {
    "without its binding": (drop(BINDING), "no record of the checkpoint"),
    "without its padding multiple": (drop(REQUIRED_MULTIPLE), "padding multiple"),
    "with a nonsense multiple": (set_to(REQUIRED_MULTIPLE, "banana"), "padding multiple 'banana'"),
    "with a multiple of zero": (set_to(REQUIRED_MULTIPLE, "0"), "padding multiple '0'"),
    "with a NaN difference": (set_to(CHECKED_DIFFERENCE, "nan"), "difference from PyTorch 'nan'"),
    "with a large difference": (set_to(CHECKED_DIFFERENCE, "0.5"), "difference from PyTorch '0.5'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN) + ["random bytes", "truncated"])
def test_a_broken_cached_export_is_named_and_made_again(cli, small_unet_one_class, oblique_volume_path, tmp_path, case):
    """Issue 13: an export without its metadata property, or with nonsense in it, gave a traceback."""
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(small_unet_one_class.read_bytes())
    clean = tmp_path / "clean.nrrd"
    assert cli("predict", "--checkpoint", checkpoint, *FP32_JSON, oblique_volume_path, clean).code == 0
    (cached,) = exports_of(checkpoint)
    if case == "random bytes":
        cached.write_bytes(np.random.default_rng(0).bytes(4096))
        reason = "ONNX Runtime cannot load it"
    elif case == "truncated":
        cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
        reason = "ONNX Runtime cannot load it"
    else:
        change, reason = BROKEN[case]
        with_properties(cached, change)
    output = tmp_path / "again.nrrd"
    result = cli("predict", "--checkpoint", checkpoint, *FP32_JSON, oblique_volume_path, output)
    assert result.code == 0 and "Traceback" not in result.stderr, result.stderr
    messages = logs(result)
    assert any(str(cached) in m and "is not used" in m and reason in m for m in messages), messages
    assert any(m.startswith("exporting the ") and "to ONNX (again)" in m for m in messages), messages
    assert (labels_of(output) == labels_of(clean)).all()
    assert exports_of(checkpoint) == [cached] and not leftovers(tmp_path)


def test_a_shipped_export_of_another_checkpoint_is_not_used(cli, two_models, oblique_volume_path, tmp_path):
    """A shipped export is found by the portable binding of its checkpoint: one made for another
    checkpoint, put where this checkpoint's would be, is refused and the network exported to the cache."""
    a, b = two_models
    checkpoint_b = load_checkpoint(b)
    made_for_b = onnx_predictor_for(checkpoint_b, None, True, 1).path
    planted = shipped_export(load_checkpoint(a), None)
    planted.write_bytes(made_for_b.read_bytes())
    made_for_b.unlink()
    result = cli("predict", "--checkpoint", a, *FP32_JSON, oblique_volume_path, tmp_path / "a.nrrd")
    assert result.code == 0, result.stderr
    assert any(str(planted) in m and "another checkpoint" in m for m in logs(result)), logs(result)
    assert len(exports_of(a)) == 2  # the planted one, untouched, and a real export of a


def test_partial_exports_whose_writer_is_gone_are_removed_and_live_ones_kept(tmp_path):
    """A writer holds an exclusive lock on its partial file; the lock dies with the process."""
    old = time.time() - 600
    paths = {name: tmp_path / f"m.L2.0123456789abcdef.onnx.{name}{PARTIAL_SUFFIX}" for name in ("abandoned", "live", "young")}
    for path in paths.values():
        path.write_bytes(b"partial")
    for name in ("abandoned", "live"):
        os.utime(paths[name], (old, old))
    other = tmp_path / "m.L2.0123456789abcdef.onnx"
    other.write_bytes(b"finished")
    os.utime(other, (old, old))
    handle = os.open(paths["live"], os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as the writer of a run in progress does
        assert remove_abandoned_partials(tmp_path) == [paths["abandoned"]]
    finally:
        os.close(handle)
    assert paths["live"].exists() and paths["young"].exists() and other.exists() and not paths["abandoned"].exists()


@pytest.mark.child_process
def test_a_run_killed_while_exporting_leaves_a_partial_that_the_next_run_removes(cli, oblique_volume_path, tmp_path):
    checkpoint = create_checkpoint(tmp_path / "m.safetensors", arch="unetplusplus", classes="lung,bone", features="16,32,64,128,256")
    command = [sys.executable, "-m", "UNetSegmentationLib", "predict", "--checkpoint", str(checkpoint), "--precision", "fp32", "--progress", "none",
               str(oblique_volume_path), str(tmp_path / "first.nrrd")]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}")) and child.poll() is None:
            time.sleep(0.005)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    partials = list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))
    if not partials:
        pytest.skip("the export finished before the run could be killed mid-export")
    old = time.time() - 600  # older than the settling time a fresh partial gets
    for partial in partials:
        os.utime(partial, (old, old))
    again = cli("predict", "--checkpoint", checkpoint, *FP32_JSON, oblique_volume_path, tmp_path / "second.nrrd")
    assert again.code == 0, again.stderr
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}")) and len(exports_of(checkpoint)) == 1


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_cache_files_get_the_permissions_of_any_new_file(small_unet_one_class, tmp_path, umask):
    """Issue 13: exports were written 0600 (a temporary file's mode) whatever the umask."""
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(small_unet_one_class.read_bytes())
    previous = os.umask(umask)
    try:
        predictor = onnx_predictor_for(load_checkpoint(checkpoint), None, True, 1)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(predictor.path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("how", ["writable by every user", "owned by another user"])
def test_a_cached_export_anyone_could_have_planted_is_not_used(cli, small_unet_one_class, oblique_volume_path, tmp_path, how):
    """Anyone who may write a cache file could craft one that carries the right binding: a cached export
    every user may write, or another user's, is made again (a shipped one belongs to the installation)."""
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(small_unet_one_class.read_bytes())
    assert cli("predict", "--checkpoint", checkpoint, *FP32_JSON, oblique_volume_path, tmp_path / "first.nrrd").code == 0
    (cached,) = exports_of(checkpoint)
    if how == "writable by every user":
        cached.chmod(0o666)
        reason = "every user may write it"
    else:
        if os.getuid() != 0:
            pytest.skip("changing a file's owner needs root")
        os.chown(cached, 54321, -1)
        reason = "belongs to another user (uid 54321)"
    again = cli("predict", "--checkpoint", checkpoint, *FP32_JSON, oblique_volume_path, tmp_path / "again.nrrd")
    assert again.code == 0, again.stderr
    assert any(str(cached) in m and reason in m for m in logs(again)), logs(again)
    assert cached.stat().st_uid == os.getuid() and not cached.stat().st_mode & 0o002  # made again, by this user
