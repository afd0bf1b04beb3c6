"""Shared fixtures: the real chest CT shipped in slicerio, small checkpoints made by ``unetseg create``,
synthetic volumes with oblique directions and anisotropic spacing, and a ``run_cli`` helper that runs
``unetseg`` in-process and captures what the user would see."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


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


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_cli(*args) -> CliResult:
    """Run ``unetseg ARGS`` in this process; SystemExit from argparse becomes the exit code."""
    from UNetSegmentationLib.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def bundled_copy(tmp_path) -> Path:
    """The bundled model copied into the test's folder (its ONNX exports are cached beside it)."""
    bundled = Path(__file__).resolve().parent.parent / "UNetSegmentation" / "Resources" / "Models" / "chest-ct-unetplusplus.safetensors"
    copy = tmp_path / "bundled.safetensors"
    copy.write_bytes(bundled.read_bytes())
    return copy


@pytest.fixture
def cli():
    return run_cli


def leftovers(folder: Path) -> list:
    """Temporary and lock files of the engine in ``folder``."""
    return sorted(p.name for p in Path(folder).iterdir() if ".partial" in p.name or p.name.endswith(".unetseg-lock"))


def assert_refused(result: CliResult, output: Path, *phrases: str) -> str:
    """Exit 2, exactly one line ``unetseg: error: ...`` containing every phrase, no output, no leftovers."""
    from UNetSegmentationLib.errors import EXIT_USER_ERROR

    assert result.code == EXIT_USER_ERROR, (result.code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unetseg: error: "), result.stderr
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), lines[0]
    assert not output.exists()
    assert leftovers(output.parent) == []
    return lines[0]


def process_group_alive(pgid: int, settle_s: float = 3.0) -> bool:
    """Whether any process of the group is left (after giving the system ``settle_s`` to reap orphans)."""
    import os
    import time

    deadline = time.monotonic() + settle_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def create_checkpoint(path: Path, arch: str = "unetplusplus", classes: str = "lung,bone", features: str = "4,8,16,32,64", context: int = 1, extra=()) -> Path:
    result = run_cli("create", "--arch", arch, "--classes", classes, "--features", features, "--context", context, *extra, path)
    assert result.code == 0, result.stderr
    return path


@pytest.fixture(scope="session")
def small_unetpp(tmp_path_factory) -> Path:
    """An untrained two-class UNet++ with tiny features (fast on CPU)."""
    return create_checkpoint(tmp_path_factory.mktemp("ckpt") / "unetpp.safetensors")


@pytest.fixture(scope="session")
def small_unet_one_class(tmp_path_factory) -> Path:
    """An untrained one-class (sigmoid) U-Net with tiny features."""
    return create_checkpoint(tmp_path_factory.mktemp("ckpt") / "unet.safetensors", arch="unet", classes="liver", features="4,8,16")


def rotation_matrix(ax: float, ay: float, az: float) -> np.ndarray:
    """A proper rotation (det +1) from Euler angles in radians."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_volume(size=(40, 36, 12), spacing=(0.8, 1.1, 3.5), direction=None, origin=(-12.5, 30.25, 101.0), dtype=np.int16, seed=0) -> sitk.Image:
    """A CT-like volume in HU: air background, a soft-tissue ellipsoid with a bright 'bone' core."""
    rng = np.random.default_rng(seed)
    i, j, k = size
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, k), np.linspace(-1, 1, j), np.linspace(-1, 1, i), indexing="ij")
    body = (xx / 0.8) ** 2 + (yy / 0.7) ** 2 + (zz / 0.9) ** 2 < 1
    bone = (xx / 0.2) ** 2 + (yy / 0.2) ** 2 < 1
    array = np.full((k, j, i), -1000.0)
    array[body] = 40
    array[body & bone] = 700
    array += rng.normal(0, 10, array.shape)
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.eye(3).ravel() if direction is None else np.asarray(direction, dtype=float).ravel()))
    return image


@pytest.fixture
def oblique_volume_path(tmp_path) -> Path:
    """An oblique (rotated ~20°/-15°/35°), anisotropic (0.8×1.1×3.5 mm) int16 volume as NRRD."""
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(make_volume(direction=rotation_matrix(0.35, -0.26, 0.61)), str(path))
    return path


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, prefix: str = "") -> None:
    """One DICOM file per slice of ``image`` (direction must be exactly orthonormal for GDCM), in one series."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = sitk.Cast(image[:, :, k], sitk.sitkInt16)
        slice_.SetMetaData("0020|000e", series_uid)
        slice_.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        slice_.SetMetaData("0020|0037", "\\".join(map(str, image.GetDirection()[0::3] + image.GetDirection()[1::3])))
        slice_.SetMetaData("0020|0013", str(k))
        slice_.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(slice_)
