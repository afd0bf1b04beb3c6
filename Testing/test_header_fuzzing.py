"""Property-based: any NRRD or NIfTI header (sizes, voxel types, encodings, byte counts, spacings,
directions, transforms) ends ``unetseg predict`` in a correct result or one clear message (issue 13).

Every example is a file written from generated header fields and a generated amount of data (all of
it, half, none, more). It runs in an engine process kept alive between examples (``EngineWorker``:
starting PyTorch once instead of per example), limited to 8 GB of address space, each example
within a time limit (a hang fails the example; the worker is replaced). Each run must end in exit 0
with a label map on the grid ITK reads the input onto, or exit 2 with exactly one line
``unetseg: error: ...`` on standard error (native writes included) — never an internal error or a
traceback — and leave no temporary file and no lock behind.

Bounded by default (a fixed seed, 25 examples per format); ``UNETSEG_FUZZ_EXAMPLES=2000`` explores.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_child import PACKAGE_PARENT
from support import leftovers

FUZZ_EXAMPLES = os.environ.get("UNETSEG_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(FUZZ_EXAMPLES) if FUZZ_EXAMPLES else 25,
    deadline=None,
    derandomize=FUZZ_EXAMPLES is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EXAMPLE_TIMEOUT_S = 60

_WORKER = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, tempfile, traceback
    try:  # a bug that allocates what a header claims cannot take the machine (POSIX)
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    except ImportError:
        pass
    from UNetSegmentationLib.cli.main import main
    for line in sys.stdin:
        argv = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        with tempfile.TemporaryFile() as native:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(native.fileno(), 2)  # what C and C++ code writes to standard error counts too
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        code = main(argv)
                    except SystemExit as exit_:
                        code = exit_.code if isinstance(exit_.code, int) else 1
                    except BaseException:
                        code, _ = -1, err.write(traceback.format_exc())
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            native.seek(0)
            text = native.read(20000).decode("utf-8", "replace")
        sys.__stdout__.write("@@" + json.dumps({"code": code, "stderr": err.getvalue(), "native": text}) + "\\n")
        sys.__stdout__.flush()
    """
)


class EngineWorker:
    """An engine process that runs ``unetseg`` command lines sent to it, one at a time, within a time limit."""

    def __init__(self) -> None:
        self.process = None
        self.answers: "queue.Queue[str]" = queue.Queue()

    def start(self) -> None:
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)
        self.answers = queue.Queue()
        threading.Thread(target=self._read, args=(self.process, self.answers), daemon=True).start()

    @staticmethod
    def _read(process: subprocess.Popen, answers: "queue.Queue[str]") -> None:
        for line in process.stdout:
            if line.startswith("@@"):
                answers.put(line[2:])
        answers.put("")  # the worker ended

    def run(self, *args) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.process.stdin.write(json.dumps([str(a) for a in args]) + "\n")
        self.process.stdin.flush()
        try:
            answer = self.answers.get(timeout=EXAMPLE_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"unetseg {' '.join(map(str, args))} did not finish within {EXAMPLE_TIMEOUT_S} s") from None
        if not answer:
            code = self.process.wait()
            self.process = None
            raise AssertionError(f"the engine process died (exit {code}) running unetseg {' '.join(map(str, args))}")
        return json.loads(answer)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def worker():
    engine = EngineWorker()
    yield engine
    engine.stop()


def check_run(worker: EngineWorker, checkpoint: Path, volume: Path) -> dict:
    """Run predict on ``volume``; assert a correct result or one clear message, no leftovers; the answer."""
    output = volume.parent / "out" / "labels.nrrd"
    output.parent.mkdir(exist_ok=True)
    answer = worker.run("predict", "--checkpoint", checkpoint, "--progress", "none", "--backend", "torch", volume, output)
    lines = [line for line in (answer["stderr"] + answer["native"]).splitlines() if line.strip()]
    assert answer["code"] in (0, 2), answer
    if answer["code"] == 2:
        assert len(lines) == 1 and lines[0].startswith("unetseg: error: "), lines
        assert not output.exists()
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(volume))
        reader.ReadImageInformation()
        labels = sitk.ReadImage(str(output))
        assert labels.GetSize() == reader.GetSize() and np.allclose(labels.GetOrigin(), reader.GetOrigin())
    assert leftovers(output.parent) == [], "no temporary file or lock"
    return answer


# --- NRRD --------------------------------------------------------------------------------------------------------

NRRD_TYPES = {"uchar": 1, "signed char": 1, "short": 2, "unsigned short": 2, "int": 4, "uint32": 4, "float": 4, "double": 8, "int64": 8, "block": 1, "quaternion": 4}
#: each NRRD field as a plausible value (first) or a hostile one; an example makes at most two fields hostile
NRRD_FIELDS = {
    "sizes": (st.lists(st.sampled_from([1, 2, 3, 5, 8, 16]), min_size=3, max_size=3), st.one_of(
        st.lists(st.sampled_from([0, 1, 4, 2048, 2 ** 31, 2 ** 40, -1]), min_size=3, max_size=3), st.lists(st.sampled_from([1, 4, 8]), min_size=1, max_size=4))),
    "type": (st.sampled_from(["uchar", "short", "unsigned short", "int", "float", "double"]), st.sampled_from(["signed char", "uint32", "int64", "block", "quaternion"])),
    "encoding": (st.sampled_from(["raw", "gzip"]), st.sampled_from(["ascii", "hex", "bzip2", "zstd"])),
    "dimension": (st.just(None), st.sampled_from([0, 2, 17])),
    "endian": (st.just("little"), st.sampled_from(["big", "middle"])),
    "space directions": (st.sampled_from(["(1,0,0) (0,1,0) (0,0,1)", "(0.5,0,0) (0,2,0) (0,0,3.5)", "(0,1,0) (-1,0,0) (0,0,1)"]), st.sampled_from(
        ["(1,1,0) (0,1,0) (0,0,1)", "(0,0,0) (0,1,0) (0,0,1)", "(nan,0,0) (0,1,0) (0,0,1)", "(1,0,0) (0,1,0)", "none", "(1e300,0,0) (0,1,0) (0,0,1)"])),
    "space origin": (st.sampled_from(["(0,0,0)", "(-12.5,30,101)"]), st.sampled_from(["(nan,0,0)", "(1e308,0,0)", "(1,2)"])),
    "byte skip": (st.just(None), st.sampled_from([-1, 7, 10 ** 12])),
    "data file": (st.just(None), st.sampled_from(["missing.raw", "LIST", "%03d.raw 0 2 1", "/dev/zero"])),
    "data": (st.just(1.0), st.sampled_from([0.5, 0.0, 1.2])),  # the share of the data the header announces that is there
}


@st.composite
def nrrd_files(draw) -> tuple:
    """``(header fields, data bytes)`` of a NRRD file: plausible, with up to two fields hostile."""
    hostile = draw(st.sets(st.sampled_from(sorted(NRRD_FIELDS)), max_size=2))
    value = {name: draw(choices[1] if name in hostile else choices[0]) for name, choices in NRRD_FIELDS.items()}
    sizes, type_, encoding = value["sizes"], value["type"], value["encoding"]
    fields = {"type": type_, "dimension": value["dimension"] if value["dimension"] is not None else len(sizes), "space": "left-posterior-superior",
              "sizes": " ".join(map(str, sizes)), "space directions": value["space directions"], "endian": value["endian"], "encoding": encoding,
              "space origin": value["space origin"], "byte skip": value["byte skip"], "data file": value["data file"]}
    voxels = int(np.prod(sizes)) if all(0 <= s <= 64 for s in sizes) else 0
    raw = np.random.default_rng(len(hostile)).integers(0, 100, voxels * NRRD_TYPES[type_], dtype=np.uint8).tobytes()
    data = {"gzip": gzip.compress(raw), "ascii": " ".join(str(b) for b in raw[:voxels]).encode(), "hex": raw.hex().encode()}.get(encoding, raw)
    share = value["data"]
    data = data[: int(len(data) * min(share, 1.0))] + (bytes(int(len(data) * (share - 1))) if share > 1 else b"")
    return {key: text for key, text in fields.items() if text is not None}, data


@FUZZ
@given(nrrd_files())
def test_any_nrrd_header_ends_in_a_result_or_one_clear_message(worker, small_unet_one_class, example):
    fields, data = example
    header = "NRRD0004\n" + "".join(f"{key}: {value}\n" for key, value in fields.items()) + "\n"
    with tempfile.TemporaryDirectory(prefix="nrrd-fuzz-") as folder:
        volume = Path(folder) / "volume.nrrd"
        volume.write_bytes(header.encode() + data)
        check_run(worker, small_unet_one_class, volume)


# --- NIfTI -------------------------------------------------------------------------------------------------------


def base_nifti() -> bytes:
    """A valid, uncompressed NIfTI-1 file of 8×6×4 int16 voxels (its header is then changed field by field)."""
    with tempfile.TemporaryDirectory() as folder:
        image = sitk.GetImageFromArray(np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8) - 50)
        image.SetSpacing((0.8, 1.2, 3.0))
        sitk.WriteImage(image, str(Path(folder) / "v.nii"))
        return (Path(folder) / "v.nii").read_bytes()


finite_or_not = st.one_of(st.floats(-2.0, 2.0), st.sampled_from([0.0, float("nan"), float("inf"), 1e30, -1e-30]))
#: NIfTI header changes (offset, struct format, hostile values); an example makes at most two
NIFTI_CHANGES = {
    "dim": (40, "<8h", st.tuples(st.sampled_from([3, 2, 4, 0, -1, 8]), *[st.sampled_from([8, 6, 4, 1, 0, 5, 32767, -3])] * 3, *[st.just(1)] * 4)),
    "datatype": (70, "<hh", st.sampled_from([(2, 8), (16, 32), (64, 64), (128, 24), (1536, 128), (3, 8), (0, 0), (4, 8), (2304, 32)])),
    "pixdim": (76, "<8f", st.tuples(st.sampled_from([1.0, -1.0, 0.0]), *[st.sampled_from([0.8, 1.0, 0.0, -2.0, float("nan"), 1e30])] * 3, *[st.just(1.0)] * 4)),
    "vox_offset": (108, "<f", st.tuples(st.sampled_from([0.0, 100.0, 1e9, -5.0, float("nan"), 353.5]))),
    "codes": (252, "<hh", st.tuples(st.sampled_from([0, 1, 2, 4, -1, 99]), st.sampled_from([0, 1, 2, 4, -1, 99]))),
    "qform": (256, "<6f", st.tuples(*[finite_or_not] * 3, *[st.sampled_from([0.0, -12.5, 1e20])] * 3)),
    "sform": (280, "<12f", st.tuples(*[finite_or_not] * 12)),
    "magic": (344, "<4s", st.tuples(st.sampled_from([b"ni1\x00", b"n+2\x00", b"xyz\x00"]))),
    "data": (None, None, st.sampled_from([0.6, 0.3, 1.5])),  # the share of the file that is there
}


@st.composite
def nifti_files(draw) -> tuple:
    """``(bytes of a NIfTI file, compressed?)``: a valid file with up to two header fields (or its length) changed."""
    data = bytearray(base_nifti())
    share = 1.0
    for name in sorted(draw(st.sets(st.sampled_from(sorted(NIFTI_CHANGES)), max_size=2))):
        offset, layout, values = NIFTI_CHANGES[name]
        if offset is None:
            share = draw(values)
        else:
            data[offset:offset + struct.calcsize(layout)] = struct.pack(layout, *draw(values))
    payload = bytes(data[: int(len(data) * min(share, 1.0))]) + (bytes(int(len(data) * (share - 1))) if share > 1 else b"")
    return payload, draw(st.booleans())


@FUZZ
@given(nifti_files())
def test_any_nifti_header_ends_in_a_result_or_one_clear_message(worker, small_unet_one_class, example):
    payload, compressed = example
    with tempfile.TemporaryDirectory(prefix="nifti-fuzz-") as folder:
        volume = Path(folder) / ("volume.nii.gz" if compressed else "volume.nii")
        volume.write_bytes(gzip.compress(payload) if compressed else payload)
        check_run(worker, small_unet_one_class, volume)
