"""Out of memory: on the GPU the batch is halved, then the run moves to the CPU, each step a warning;
on the CPU with one slice it is one clear message; any other error is never swallowed."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from support import assert_refused, create_checkpoint

from UNetSegmentationLib.backends.memory import MemoryGuard, is_out_of_memory
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.predict_file import predict_file
from UNetSegmentationLib.protocol.reporters import Reporter



class RecordingReporter(Reporter):
    """A reporter that keeps every event it is given, as ``(kind, fields)``."""

    def __init__(self) -> None:
        super().__init__()
        self.events = []

    @property
    def warnings(self) -> list:
        return [fields["message"] for kind, fields in self.events if kind == "warning"]

    def start(self, command, total, unit="slice", **info) -> None:
        super().start(command, total, unit, **info)
        self.events.append(("start", {"command": command, "total": total, "unit": unit, **info}))

    def progress(self, done, **extra) -> dict:
        fields = super().progress(done, **extra)
        self.events.append(("progress", fields))
        return fields

    def log(self, message) -> None:
        self.events.append(("log", {"message": message}))

    def warning(self, message) -> None:
        self.events.append(("warning", {"message": message}))

    def done(self, **summary) -> None:
        self.events.append(("done", summary))

    def error(self, message) -> None:
        self.events.append(("error", {"message": message}))

class PretendGpu(SlicePredictor):
    """A real predictor (on the CPU) that claims to be on a GPU with room for ``fits`` slices per call."""

    def __init__(self, model, metadata, fits: int, depth=None) -> None:
        super().__init__(model, metadata, torch.device("cpu"), depth)
        self.device = torch.device("cuda")
        self.fits = fits
        self.calls = []

    def __call__(self, batch):
        self.calls.append(len(batch))
        if len(batch) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)")
        return super().__call__(batch)

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint

    path = create_checkpoint(tmp_path_factory.mktemp("oom") / "m.safetensors", arch="unet", classes="a,b", features="4,8")
    checkpoint = load_checkpoint(path)
    return build_model(checkpoint), checkpoint.metadata

def test_gpu_out_of_memory_retries_with_smaller_batches(tiny_model):
    model, metadata = tiny_model
    batch = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    expected = SlicePredictor(model, metadata, torch.device("cpu"), None)(batch)
    reporter = RecordingReporter()
    predictor = PretendGpu(model, metadata, fits=2)
    guard = MemoryGuard(predictor, reporter)
    torch.testing.assert_close(guard(batch), expected)
    assert predictor.calls == [8, 4, 2, 2, 2, 2]
    assert reporter.warnings == [
        "the GPU ran out of memory with a batch of 8 slices; continuing with batches of 4 (as --batch-size 4)",
        "the GPU ran out of memory with a batch of 4 slices; continuing with batches of 2 (as --batch-size 2)",
    ]
    predictor.calls.clear()
    guard(batch[:3])  # the smaller size holds for the rest of the volume
    assert predictor.calls == [2, 1]

def test_gpu_out_of_memory_with_one_slice_falls_back_to_the_cpu(tiny_model):
    model, metadata = tiny_model
    batch = np.random.default_rng(1).random((4, 3, 16, 16), dtype=np.float32)
    expected = SlicePredictor(model, metadata, torch.device("cpu"), None)(batch)
    reporter = RecordingReporter()
    guard = MemoryGuard(PretendGpu(model, metadata, fits=0), reporter)
    torch.testing.assert_close(guard(batch), expected)
    assert guard.predictor.device.type == "cpu" and guard.batch_limit is None
    assert reporter.warnings[-1] == "the GPU ran out of memory even with one slice at a time; continuing on the CPU (slower)"
    assert len(reporter.warnings) == 3  # 4 -> 2 -> 1 -> CPU

def test_cpu_out_of_memory_with_one_slice_is_a_clear_error():
    def exhausted(batch):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 8589934592 bytes.")

    guard = MemoryGuard(exhausted, RecordingReporter())  # a predictor without a device: the CPU
    with pytest.raises(UserError, match=r"out of memory on the CPU even with one slice \(16x16 pixels\)"):
        guard(np.zeros((2, 3, 16, 16), np.float32))

def test_errors_other_than_out_of_memory_are_not_swallowed():
    def broken(batch):
        raise RuntimeError("Given groups=1, weight of size [4, 3, 3, 3], expected input to have 3 channels")

    with pytest.raises(RuntimeError, match="expected input"):
        MemoryGuard(broken, RecordingReporter())(np.zeros((2, 3, 8, 8), np.float32))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ValueError("out of memory"))

def test_predict_survives_gpu_out_of_memory_and_says_so(small_unet_one_class, oblique_volume_path, tmp_path):
    """``predict_file`` end to end with a PyTorch predictor on a pretend GPU (its predictor factory):
    first with room for every batch (the reference), then with room for none."""
    from UNetSegmentationLib.model.checkpoint import build_model

    made = []

    def on_pretend_gpu(fits):
        def factory(checkpoint, plan, depth, classification_guidance):
            made.append(PretendGpu(build_model(checkpoint), checkpoint.metadata, fits=fits, depth=depth))
            return made[-1], []

        return factory

    outputs = {}
    for fits in (64, 0):
        outputs[fits] = tmp_path / f"labels-{fits}.nrrd"
        reporter = RecordingReporter()
        predict_file(oblique_volume_path, outputs[fits], small_unet_one_class, SegmentationOptions(batch_size=4), reporter, predictor_factory=on_pretend_gpu(fits))
    assert reporter.warnings == [
        "the GPU ran out of memory with a batch of 4 slices; continuing with batches of 2 (as --batch-size 2)",
        "the GPU ran out of memory with a batch of 2 slices; continuing with batches of 1 (as --batch-size 1)",
        "the GPU ran out of memory even with one slice at a time; continuing on the CPU (slower)",
    ]
    assert made[1].calls[:3] == [4, 2, 1], "4, 2 and 1 slices tried on the GPU before the CPU"
    assert reporter.events[-1][0] == "done"
    reference, survived = (sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[fits]))) for fits in (64, 0))
    np.testing.assert_array_equal(survived, reference)

def test_out_of_memory_outside_the_batches_is_a_message_not_a_traceback(predict, oblique_volume_path, monkeypatch):
    """E.g. moving the model to a full GPU, or any allocation outside the guarded network call: PyTorch
    raises it as it would on a full GPU."""

    def full_gpu(module, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(torch.nn.Module, "to", full_gpu)
    assert_refused(*predict(oblique_volume_path, "--backend", "torch"), "out of memory (CUDA out of memory. Tried to allocate 20.00 MiB)", "--batch-size", "--device cpu")
