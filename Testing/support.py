"""What the tests share, in one place (fixtures stay in ``conftest.py``): running ``unetseg`` in-process
and reading what the user would see, refusals and leftovers, small checkpoints, synthetic volumes
(oblique, anisotropic, DICOM series, a tiny labelled training case), process-group checks, and a
pretend machine for the execution plan (:class:`FakeMachine`)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Sequence, Tuple

if TYPE_CHECKING:  # annotations only: NumPy and SimpleITK are imported by the helpers that use them, so
    # that FakeMachine can be imported where a test proves the plan imports nothing heavy
    import numpy as np
    import SimpleITK as sitk

    from UNetSegmentationLib.protocol.runner import EngineProcess

from hypothesis import HealthCheck, settings


# --- property-based tests: bounded by default, a fuzzing run on request --------------------------------
# UNETSEG_FUZZ_EXAMPLES=5000 turns the fixed-seed default run (a few dozen examples per property) into a
# long random one (docs/hardening.md).

FUZZ_EXAMPLES = os.environ.get("UNETSEG_FUZZ_EXAMPLES")
EXAMPLES = int(FUZZ_EXAMPLES) if FUZZ_EXAMPLES else 60
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the machine may be shared: no per-example time limit
    derandomize=FUZZ_EXAMPLES is None,  # the default run is the same every time; a fuzzing run explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# --- the project's declared packaging ---------------------------------------------------------------


def read_pyproject() -> dict:
    """``pyproject.toml`` as a dict: ``tomllib`` from Python 3.11, ``tomli`` (the test extra brings it) on 3.10."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8"))


# --- running unetseg in-process ----------------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def start(self) -> dict:
        """The run's ``start`` event (``log`` events, e.g. a first-run export, may come before it)."""
        return next(e for e in self.events if e["event"] == "start")


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


def rotation_matrix(ax: float, ay: float, az: float) -> np.ndarray:
    """A proper rotation (det +1) from Euler angles in radians."""
    import numpy as np

    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_volume(size=(40, 36, 12), spacing=(0.8, 1.1, 3.5), direction=None, origin=(-12.5, 30.25, 101.0), dtype="int16", seed=0) -> sitk.Image:
    """A CT-like volume in HU: air background, a soft-tissue ellipsoid with a bright 'bone' core."""
    import numpy as np
    import SimpleITK as sitk

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


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, prefix: str = "") -> None:
    """One DICOM file per slice of ``image`` (direction must be exactly orthonormal for GDCM), in one series."""
    import SimpleITK as sitk

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


# --- files, grids and processes of the failure matrix -------------------------------------------------


POSIX = os.name != "nt"


def assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    """Same size, origin, spacing and direction (to 1e-6)."""
    import numpy as np

    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def write(image: sitk.Image, path: Path) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path))
    return path


def with_array(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """``array`` as an image on ``like``'s grid."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


def alive(pid: int, settle_s: float = 3.0) -> bool:
    """Whether process ``pid`` still runs (zombies count as gone), after ``settle_s`` for the system to reap it."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as file:
                running = file.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            running = False
        except OSError:
            try:
                os.kill(pid, 0)
                running = True
            except ProcessLookupError:
                running = False
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


def wait_for(run: EngineProcess, kind: str, timeout_s: float = 120, starting: str = "") -> list:
    """Poll until an event of ``kind`` arrives (with a ``message`` starting with ``starting``, when given);
    returns all events so far; fails if the run ends first."""
    events = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new, state = run.poll()
        events += new
        if any(e.get("event") == kind and str(e.get("message", "")).startswith(starting) for e in new):
            return events
        assert state == "running", (state, run.error_message, events)
        time.sleep(0.02)
    raise AssertionError(f"no {kind} event within {timeout_s} s")


def deny_reading(monkeypatch, module, path: Path) -> None:
    """``open`` in ``module`` refuses ``path`` as the operating system does for a file without read
    permission (tests run as root, who reads any file)."""
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(module, "open", denying_open, raising=False)


UNUSUAL = "Patient Müller – 患者 ø"


def unusual_files(folder: Path, checkpoint: Path) -> tuple:
    """Volume, checkpoint, outputs in a folder whose path has spaces and non-ASCII characters."""
    folder = folder / UNUSUAL
    folder.mkdir()
    volume = write(make_volume(size=(24, 20, 3)), folder / "CT Thorax ü.nrrd")
    copy = folder / "Modell ß.safetensors"
    shutil.copyfile(checkpoint, copy)
    return volume, copy, folder / "Ergebnis é.seg.nrrd", folder / "Konfidenz ñ.nii.gz"


def events_until_finished(run: EngineProcess, timeout_s: float = 60) -> list:
    """Poll ``run`` until it leaves ``running`` (or ``timeout_s`` passes); returns every event it gave."""
    events = []
    deadline = time.monotonic() + timeout_s
    while run.state == "running" and time.monotonic() < deadline:
        events += run.poll()[0]
        time.sleep(0.02)
    return events


# --- a tiny labelled training case ---------------------------------------------------------------------


def write_two_fold_chest_datalist(folder: Path, chest_ct_path: Path, chest_segmentation_path: Path, fold1_labelled: Sequence[str]) -> Path:
    """The chest CT and its segmentation twice, as two 'patients' ``ct0`` (fold 0, every class labelled) and
    ``ct1`` (fold 1, whose ``labelled_classes`` are ``fold1_labelled``), in ``folder/datalist.json``; returns that path."""
    cases = []
    for fold in (0, 1):
        image, label = folder / f"ct{fold}.nrrd", folder / f"ct{fold}.seg.nrrd"
        shutil.copyfile(chest_ct_path, image)
        shutil.copyfile(chest_segmentation_path, label)
        cases.append({"name": f"ct{fold}", "image": image.name, "label": label.name, "fold": fold})
    cases[1]["labelled_classes"] = list(fold1_labelled)
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"training": cases}))
    return datalist


def write_tiny_case(folder: Path, size=(40, 36, 12)) -> Path:
    """``case.nrrd`` (CT-like, anisotropic) + ``case_label.nrrd`` (1 'body' above -500 HU, 2 'bone'
    above 400 HU) + ``datalist.json`` listing them for training; returns ``folder``."""
    import numpy as np
    import SimpleITK as sitk

    folder = Path(folder)
    image = make_volume(size=size)
    array = sitk.GetArrayFromImage(image)
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[array > -500] = 1
    labels[array > 400] = 2
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    sitk.WriteImage(image, str(folder / "case.nrrd"))
    sitk.WriteImage(label, str(folder / "case_label.nrrd"))
    (folder / "datalist.json").write_text(json.dumps({"training": [{"image": "case.nrrd", "label": "case_label.nrrd"}]}))
    return folder


# --- a pretend machine for the execution plan -------------------------------------------------------------
# FakeMachine answers the plan's hardware questions (UNetSegmentationLib.backends.device.Capabilities) as
# told and records which were asked: tests of the device, precision, backend and batch decisions pass one
# to plan_execution instead of patching module internals; no GPU is needed to test what the plan decides.


GIB = 1 << 30


@dataclass
class FakeMachine:
    """``gpus`` CUDA GPUs (0: no CUDA); ``bf16_gpus``: the indices of those that compute bf16 natively
    (default: all); ``free_bytes``/``total_bytes``: each GPU's memory; ``cpu_bf16``: native bf16 on
    the CPU; ``onnx``: ONNX Runtime installed. ``asked`` lists every question, in order."""

    gpus: int = 0
    bf16_gpus: Sequence[int] = None
    free_bytes: int = 80 * GIB
    total_bytes: int = 80 * GIB
    cpu_bf16: bool = False
    onnx: bool = True
    asked: List[Tuple] = field(default_factory=list)

    def cuda_available(self) -> bool:
        self.asked.append(("cuda_available",))
        return self.gpus > 0

    def cuda_device_count(self) -> int:
        self.asked.append(("cuda_device_count",))
        return self.gpus

    def cuda_bf16_supported(self, index: int) -> bool:
        self.asked.append(("cuda_bf16_supported", index))
        assert 0 <= index < self.gpus, f"asked about GPU {index} of {self.gpus}"
        return index in (range(self.gpus) if self.bf16_gpus is None else self.bf16_gpus)

    def cuda_memory(self, index: int) -> Tuple[int, int]:
        self.asked.append(("cuda_memory", index))
        assert 0 <= index < self.gpus, f"asked about GPU {index} of {self.gpus}"
        return self.free_bytes, self.total_bytes

    def cpu_native_bf16(self) -> bool:
        self.asked.append(("cpu_native_bf16",))
        return self.cpu_bf16

    def onnx_runtime_installed(self) -> bool:
        self.asked.append(("onnx_runtime_installed",))
        return self.onnx


#: an NVIDIA H200-like machine: one GPU with native bf16, 139 GiB free
H200 = dict(gpus=1, free_bytes=139 * GIB, total_bytes=141 * GIB)
#: a Turing-like machine (e.g. a T4): one GPU without native bf16, 15 GiB
T4 = dict(gpus=1, bf16_gpus=(), free_bytes=14 * GIB, total_bytes=15 * GIB)


# --- a small real volume: the slicerio CT's lumbar spine, cropped (issue 22, defect 2) ---------------------


def write_lumbar_crop(folder: Path, size=(73, 73, 30), spacing_mm: float = 1.5) -> tuple:
    """The slicerio chest CT and its segmentation resampled to ``spacing_mm`` isotropic and cropped to
    ``size`` voxels (i, j, k) around the lumbar vertebral column: 36x36 pixels at the bundled model's
    3.05 mm, 30 slices 1.5 mm apart. Writes ``lumbar.nrrd`` and ``lumbar_label.nrrd`` (the bundled
    model's class values: the segments in order, 1 ribs ... 4 lumbar ... 7 tissue); returns both paths."""
    import numpy as np
    import SimpleITK as sitk
    import slicerio

    from UNetSegmentationLib.io.labels import read_label

    folder = Path(folder)
    ct = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    label = sitk.GetImageFromArray(read_label(slicerio.get_testdata_file("Segmentation.seg.nrrd"), ct).array.astype(np.uint8))
    label.CopyInformation(ct)
    lumbar = np.argwhere(sitk.GetArrayFromImage(label) == 4)  # [k, j, i]
    centre_index = [float(v) for v in lumbar.mean(axis=0)[::-1]]  # (i, j, k)
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint(centre_index))
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    origin = centre - direction @ (np.array(size, dtype=float) - 1) / 2 * spacing_mm
    grid = dict(size=[int(s) for s in size], outputOrigin=[float(v) for v in origin], outputSpacing=[spacing_mm] * 3, outputDirection=ct.GetDirection())
    image = sitk.Resample(ct, transform=sitk.Transform(), interpolator=sitk.sitkLinear, defaultPixelValue=-1024, outputPixelType=sitk.sitkInt16, **grid)
    labels = sitk.Resample(label, transform=sitk.Transform(), interpolator=sitk.sitkNearestNeighbor, defaultPixelValue=0, **grid)
    paths = folder / "lumbar.nrrd", folder / "lumbar_label.nrrd"
    sitk.WriteImage(image, str(paths[0]))
    sitk.WriteImage(labels, str(paths[1]))
    return paths
