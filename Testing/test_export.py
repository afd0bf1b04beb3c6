"""``unetseg export --depth L``: the depth-L sub-network of a UNet++ as a checkpoint of its own.

It holds only the weights the depth-L sub-network uses (a UNet++ with ``features[:L+1]``), predicts
exactly what ``predict --depth L`` predicts on the full checkpoint, and keeps the metrics of depths
up to L with L as its recommended depth.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from support import write_tiny_case

FAST = ("--threads", "1", "--progress", "none", "--device", "cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_case(tmp_path_factory.mktemp("export-data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """A briefly trained UNet++ of depth 3 with per-depth validation metrics."""
    from support import run_cli

    out = tmp_path_factory.mktemp("export") / "full.safetensors"
    result = run_cli("train", "--datalist", data / "datalist.json", "--classes", "body,bone", "--val-slices", "0.25",
                     "--features", "4,8,16,32", "--crop", "32", "--batch-size", "2", "--epochs", "2", "--steps-per-epoch", "4", *FAST, out)
    assert result.code == 0, result.stderr
    return out


def labels(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize("depth", [1, 2])
def test_export_predicts_exactly_what_predict_at_that_depth_predicts(cli, trained, data, tmp_path, depth):
    exported = tmp_path / f"L{depth}.safetensors"
    result = cli("export", "--depth", str(depth), trained, exported)
    assert result.code == 0, result.stderr
    assert f"depth-{depth} sub-network" in result.stderr
    full = cli("predict", "--checkpoint", trained, "--depth", str(depth), *FAST[2:], data / "case.nrrd", tmp_path / "full.nrrd")
    small = cli("predict", "--checkpoint", exported, *FAST[2:], data / "case.nrrd", tmp_path / "small.nrrd")
    assert full.code == 0 and small.code == 0, full.stderr + small.stderr
    assert np.array_equal(labels(tmp_path / "full.nrrd"), labels(tmp_path / "small.nrrd"))


def test_export_keeps_only_the_sub_network_and_its_metrics(cli, trained, tmp_path):
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    exported = tmp_path / "L2.safetensors"
    assert cli("export", "--depth", "L2", trained, exported).code == 0
    source, small = load_checkpoint(trained), load_checkpoint(exported)
    assert small.metadata.kwargs["features"] == [4, 8, 16]
    assert small.parameter_count() < source.parameter_count()
    assert set(small.state_dict) < set(source.state_dict)
    assert all(torch.equal(t, source.state_dict[k]) for k, t in small.state_dict.items())
    assert not any(k.startswith(("nodes.x30", "nodes.x21", "nodes.x12", "nodes.x03", "heads.2")) for k in small.state_dict)
    assert sorted(small.metadata.depth_metrics) == [1, 2]
    assert small.metadata.depth_metrics[2] == source.metadata.depth_metrics[2]
    assert small.metadata.recommended_depth == 2
    assert small.metadata.classes == source.metadata.classes and small.metadata.normalization == source.metadata.normalization
    assert small.metadata.training["exported"]["depth"] == 2


def test_export_refuses_what_it_cannot_do(cli, trained, tmp_path):
    from support import create_checkpoint

    too_deep = cli("export", "--depth", "4", trained, tmp_path / "x.safetensors")
    assert too_deep.code == 2 and "depths 1, 2, 3" in too_deep.stderr
    unet = create_checkpoint(tmp_path / "unet.safetensors", arch="unet", features="4,8")
    not_prunable = cli("export", "--depth", "1", unet, tmp_path / "y.safetensors")
    assert not_prunable.code == 2 and "cannot be pruned" in not_prunable.stderr
    (tmp_path / "exists.safetensors").write_bytes(b"")
    exists = cli("export", "--depth", "1", trained, tmp_path / "exists.safetensors")
    assert exists.code == 2 and "already exists" in exists.stderr
    accurate = cli("export", "--depth", "accurate", trained, tmp_path / "z.safetensors")
    assert accurate.code == 2 and "depth number" in accurate.stderr


# --- issue 23: export and create pass the output gate and hold their output's lock -------------------------


def test_export_and_create_with_overwrite_never_replace_the_bundled_model(cli, trained):
    """``export --overwrite`` and ``create --overwrite`` replaced the bundled model (``unetseg demo`` then failed)."""
    from UNetSegmentationLib.model.bundled import bundled_model_path

    bundled = bundled_model_path()
    if not bundled.exists():
        pytest.skip("no bundled model in this checkout")
    before = bundled.read_bytes()
    exported = cli("export", "--depth", "1", "--overwrite", trained, bundled)
    assert exported.code == 2 and "bundled model" in exported.stderr and "wrote" not in exported.stderr, exported.stderr
    created = cli("create", "--arch", "unet", "--classes", "liver", "--features", "4,8", "--overwrite", bundled)
    assert created.code == 2 and "bundled model" in created.stderr and "wrote" not in created.stderr, created.stderr
    assert bundled.read_bytes() == before


def test_export_never_replaces_its_own_source(cli, trained):
    before = trained.read_bytes()
    result = cli("export", "--depth", "1", "--overwrite", trained, trained)
    assert result.code == 2 and "would overwrite the input or checkpoint" in result.stderr, result.stderr
    assert trained.read_bytes() == before


@pytest.mark.child_process
def test_create_export_and_train_are_refused_while_another_run_writes_their_output(cli, trained, data, tmp_path):
    """Two runs never write one output at once: ``create``, ``export`` and ``train`` take the output's lock as ``predict`` does."""
    import subprocess
    import sys

    from UNetSegmentationLib.io.locks import lock_path

    output = tmp_path / "model.safetensors"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; d = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(d, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(lock_path(output))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        created = cli("create", "--arch", "unet", "--classes", "liver", "--features", "4,8", output)
        exported = cli("export", "--depth", "1", trained, output)
        trained_again = cli("train", "--datalist", data / "datalist.json", "--classes", "body,bone", "--features", "4,8,16,32", "--crop", "32",
                            "--epochs", "1", "--steps-per-epoch", "1", *FAST, output)
    finally:
        holder.kill()
        holder.wait()
    for result in (created, exported, trained_again):
        assert result.code == 2 and "being written by another unetseg run" in result.stderr, result.stderr
    assert not output.exists()
    created = cli("create", "--arch", "unet", "--classes", "liver", "--features", "4,8", output)
    assert created.code == 0 and output.exists() and not lock_path(output).exists(), created.stderr
