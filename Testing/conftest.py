"""Shared fixtures: the real chest CT shipped in slicerio, small checkpoints made by ``unetseg create``,
synthetic volumes with oblique directions and anisotropic spacing, and ``cli`` (``unetseg`` run
in-process). The helpers behind them are in ``support.py``; tests import helpers from there."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import create_checkpoint, make_volume, rotation_matrix, run_cli, write
from UNetSegmentationLib.backends.device import onnx_runtime_available


@pytest.fixture(autouse=True)
def _restore_locale():
    """ITK's DICOM writer sets LC_CTYPE to "C" and leaves it; a later ``subprocess.run(text=True)``
    would then decode UTF-8 output as ASCII. Restore the locale after every test."""
    import locale

    before = locale.setlocale(locale.LC_CTYPE)
    yield
    if locale.setlocale(locale.LC_CTYPE) != before:
        locale.setlocale(locale.LC_CTYPE, before)


@pytest.fixture(scope="session")
def chest_ct_path() -> Path:
    """The real chest CT (128×128×34, 3.05×3.05×10 mm, int32 HU) shipped inside the slicerio package."""
    import slicerio

    return Path(slicerio.get_testdata_file("CTChest4.nrrd"))


@pytest.fixture(scope="session")
def chest_segmentation_path() -> Path:
    """The real Slicer segmentation of that CT (ribs, vertebral columns, lungs, tissue)."""
    import slicerio

    return Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))


@pytest.fixture
def chest_model_file(tmp_path) -> Path:
    """The chest model (the bundled model of rounds 1-2, kept in Testing/Data for the tests whose expectations
    are about it: its 7 classes, its held-out slices of the slicerio CT) copied into the test's folder (its ONNX
    exports are cached beside it)."""
    bundled = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"
    copy = tmp_path / "bundled.safetensors"
    copy.write_bytes(bundled.read_bytes())
    return copy


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def small_unetpp(tmp_path_factory) -> Path:
    """An untrained two-class UNet++ with tiny features (fast on CPU)."""
    return create_checkpoint(tmp_path_factory.mktemp("ckpt") / "unetpp.safetensors")


@pytest.fixture(scope="session")
def small_unet_one_class(tmp_path_factory) -> Path:
    """An untrained one-class (sigmoid) U-Net with tiny features."""
    return create_checkpoint(tmp_path_factory.mktemp("ckpt") / "unet.safetensors", arch="unet", classes="liver", features="4,8,16")


@pytest.fixture
def oblique_volume_path(tmp_path) -> Path:
    """An oblique (rotated ~20°/-15°/35°), anisotropic (0.8×1.1×3.5 mm) int16 volume as NRRD."""
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(make_volume(direction=rotation_matrix(0.35, -0.26, 0.61)), str(path))
    return path





@pytest.fixture
def predict(cli, small_unet_one_class, tmp_path):
    """``unetseg predict`` into ``tmp_path/out/labels.nrrd`` with the small one-class U-Net."""
    output = tmp_path / "out" / "labels.nrrd"
    output.parent.mkdir()

    def run(input_path, *extra, checkpoint=small_unet_one_class, progress="none"):
        return cli("predict", "--checkpoint", checkpoint, "--progress", progress, *extra, input_path, output), output

    return run


@pytest.fixture
def long_volume(tmp_path) -> Path:
    """60 slices of 48x48: long enough, at batch size 1, to act on a child while it runs."""
    path = tmp_path / "long.nrrd"
    write(sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 300, (60, 48, 48)).astype(np.int16)), path)
    return path


def pytest_configure(config):
    """The programs installed with the interpreter that runs the tests (dcmqi's ``segimage2itkimage``,
    ``unetseg``) come first on the ``PATH``, for ``shutil.which`` and for child processes: the README's
    test command runs ``.venv/bin/python -m pytest`` without activating the venv, and a program of the
    same name elsewhere on the ``PATH`` is not the one installed here."""
    scripts = sysconfig.get_path("scripts")
    if scripts and Path(scripts).is_dir() and os.environ.get("PATH", "").split(os.pathsep)[0] != scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])


def pytest_collection_modifyitems(config, items):
    """Tests marked ``onnx`` are skipped where ONNX Runtime is not installed (the ``[onnx]`` extra; the
    ``[test]`` extra brings it, so the README's test command runs them)."""
    if onnx_runtime_available():
        return
    skip = pytest.mark.skip(reason="onnxruntime/onnx not installed (the [onnx] extra)")
    for item in items:
        if item.get_closest_marker("onnx"):
            item.add_marker(skip)
