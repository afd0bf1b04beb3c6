"""Every decision the engine makes for a CUDA GPU, tested without one (issue 18).

Only the hardware questions are faked: a :class:`~support.FakeMachine` answers the plan's
capability queries (GPUs present, native bf16, free memory), and for running out of memory a real
predictor on the CPU that says it is on a GPU raises PyTorch's out-of-memory errors on chosen calls.
Everything else is the engine's own code: the plan, the predictor, the memory guard, the pipeline,
the reporter and the Slicer panel's device list.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from support import GIB, H200, T4, FakeMachine
from UNetSegmentationLib.backends.device import CPU, PlainDevice
from UNetSegmentationLib.backends.factory import create_predictor
from UNetSegmentationLib.backends.plan import GPU_MAX_BATCH, GPU_MIN_BATCH, ExecutionRequest, plan_execution
from UNetSegmentationLib.backends.torch_network import autocast
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor, torch_settings
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.normalization import fit_normalization
from UNetSegmentationLib.inference.pipeline import predict_volume
from UNetSegmentationLib.inference.slicing import SliceGeometry
from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint
from UNetSegmentationLib.protocol.events import parse_event
from UNetSegmentationLib.protocol.reporters import JsonLinesReporter

BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"


def plan_on(machine: FakeMachine, **request):
    return plan_execution(ExecutionRequest(**request), machine)


# --- precision -----------------------------------------------------------------------------------------


def test_a_gpu_with_native_bf16_computes_in_bf16_on_the_pytorch_backend():
    plan = plan_on(FakeMachine(**H200), threads=8)
    assert (str(plan.device), plan.backend, plan.precision) == ("cuda", "torch", "bf16")
    assert (plan.workers, plan.threads_per_worker, plan.slices_per_call) == (1, 8, None)  # the GPU takes the whole batch
    assert plan_on(FakeMachine(**H200), precision="fp32").precision == "fp32"


def test_a_gpu_without_bf16_computes_in_fp16_and_the_predictor_accepts_it(small_unetpp):
    """The bug of issue 12/18: fp16 was resolved by the factory and refused by the predictor."""
    machine = FakeMachine(**T4)
    plan = plan_on(machine)
    assert (str(plan.device), plan.precision) == ("cuda", "fp16")
    assert plan_on(FakeMachine(**T4), precision="bf16").precision == "fp16"  # emulated bf16 would be far slower
    assert ("cuda_bf16_supported", 0) in machine.asked
    # the planned precision reaches a predictor unchanged (on the CPU here: the only device there is)
    checkpoint = load_checkpoint(small_unetpp)
    predictor, notes = create_predictor(checkpoint, dataclasses.replace(plan, device=CPU, slices_per_call=1), 2)
    assert notes == [] and predictor.precision == "fp16" and predictor.settings.autocast_dtype == "float16"
    batch = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    reference = SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), 2)(batch)
    probabilities = predictor(batch)
    assert probabilities.dtype == torch.float32
    assert (probabilities - reference).abs().max().item() < 2e-2  # fp16 rounding of an untrained network


def test_each_gpu_is_asked_about_itself():
    machine = FakeMachine(gpus=2, bf16_gpus=(0,))
    assert plan_on(machine, device="cuda:0").precision == "bf16"
    assert plan_on(machine, device="cuda:1").precision == "fp16"
    assert [q for q in machine.asked if q[0] == "cuda_bf16_supported"] == [("cuda_bf16_supported", 0), ("cuda_bf16_supported", 1)]


def test_cuda_refuses_what_only_the_cpu_computes():
    with pytest.raises(UserError, match="int8 runs on the CPU"):
        plan_on(FakeMachine(**H200), precision="int8")
    with pytest.raises(UserError, match="--backend onnx runs on the CPU"):
        plan_on(FakeMachine(**H200), backend="onnx", precision="fp32")
    assert plan_on(FakeMachine(**H200), device="cpu", precision="int8").backend == "onnx"  # --device cpu makes it possible


@pytest.mark.parametrize("machine, dtype, scaled", [(H200, torch.bfloat16, False), (T4, torch.float16, True)], ids=["native-bf16", "no-bf16"])
def test_training_autocasts_in_the_precision_prediction_would_use(small_unetpp, machine, dtype, scaled):
    """Issue 22: training asked ``torch.cuda.is_bf16_supported()``, which also says yes where bf16 is
    only emulated (pre-Ampere, far slower than fp16). It now asks the plan, as prediction does."""
    from UNetSegmentationLib.backends.plan import autocast_precision
    from UNetSegmentationLib.training.config import TrainConfig
    from UNetSegmentationLib.training.optimization import Optimization

    fake = FakeMachine(**machine)
    assert autocast_precision(PlainDevice("cuda"), fake) == plan_on(FakeMachine(**machine)).precision
    model = build_model(load_checkpoint(small_unetpp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler: "CUDA is not available" on this CPU-only machine
        optimization = Optimization.build(TrainConfig(), model, torch.device("cuda"), fake)
    assert optimization.amp_dtype == dtype and ("cuda_bf16_supported", 0) in fake.asked
    assert (optimization.scaler._enabled or not torch.cuda.is_available()) or not scaled
    cpu = Optimization.build(TrainConfig(), model, torch.device("cpu"), FakeMachine(cpu_bf16=False))
    assert cpu.amp_dtype is None  # emulated bf16 on a CPU: ~100x slower, float32 instead
    assert Optimization.build(TrainConfig(), model, torch.device("cpu"), FakeMachine(cpu_bf16=True)).amp_dtype == torch.bfloat16


# --- what the predictor does with the chosen precision -----------------------------------------------------


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", None)])
def test_cuda_settings_follow_the_planned_precision(precision, dtype):
    settings = torch_settings("cuda", precision, channels_last_pays=False)
    assert settings.autocast_dtype == (None if dtype is None else str(dtype).split(".")[1])
    assert settings.channels_last and settings.pinned_transfer and settings.cudnn_benchmark  # on every GPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... Disabling autocast": built, not entered
        context = autocast("cuda", settings.autocast_dtype)
    if dtype is None:
        assert not isinstance(context, torch.autocast)
    else:
        assert context.device == "cuda" and context.fast_dtype == dtype


def test_cpu_settings_keep_contiguous_memory_where_channels_last_does_not_pay():
    assert not torch_settings("cpu", "bf16", channels_last_pays=False).channels_last
    assert torch_settings("cpu", "bf16", channels_last_pays=True).channels_last
    assert not torch_settings("cpu", "fp32", True).pinned_transfer
    with pytest.raises(UserError, match="PyTorch backend computes in"):
        torch_settings("cuda", "int8", False)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_the_predictor_computes_its_convolutions_in_the_planned_precision_and_layout(small_unetpp, precision, dtype):
    """Applied, not only decided: the first convolution sees channels_last inputs and autocast's dtype."""
    checkpoint = load_checkpoint(small_unetpp)
    predictor = SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), 2, True, precision, True)
    seen = []
    first = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output.dtype)))
    probabilities = predictor(np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32))
    (inputs, output_dtype), = seen
    assert output_dtype == dtype
    assert inputs.is_contiguous(memory_format=torch.channels_last) and predictor.channels_last
    assert probabilities.dtype == torch.float32  # probabilities always float32 (softmax outside autocast's dtype)


# --- batch sizing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("free_gib, expected", [(139, GPU_MAX_BATCH), (20, 8), (6, GPU_MIN_BATCH), (0.5, GPU_MIN_BATCH)])
def test_the_gpu_batch_follows_its_free_memory(free_gib, expected):
    machine = FakeMachine(gpus=2, free_bytes=int(free_gib * GIB), total_bytes=141 * GIB)
    assert plan_on(machine, device="cuda:1").batch_size == expected
    assert ("cuda_memory", 1) in machine.asked  # the chosen GPU's memory


def test_a_batch_size_the_user_gave_is_kept_and_the_cpu_computes_one_slice_per_call():
    assert plan_on(FakeMachine(**H200), batch_size=3).batch_size == 3
    with pytest.raises(UserError, match="--batch-size"):
        plan_on(FakeMachine(**H200), batch_size=0)
    cpu = plan_on(FakeMachine(**H200), device="cpu", threads=4)
    assert (cpu.batch_size, cpu.slices_per_call, cpu.workers, cpu.threads_per_worker) == (None, 1, 2, 2)


# --- --device ------------------------------------------------------------------------------------------


def test_device_cuda_n_must_name_a_present_gpu():
    assert str(plan_on(FakeMachine(gpus=2), device="cuda:1").device) == "cuda:1"
    assert plan_on(FakeMachine(gpus=2), device="CUDA").device == PlainDevice("cuda")
    with pytest.raises(UserError, match=r"--device cuda:2: only 2 CUDA device\(s\) are present"):
        plan_on(FakeMachine(gpus=2), device="cuda:2")
    with pytest.raises(UserError, match="--device cuda:0: no CUDA GPU is available"):
        plan_on(FakeMachine(gpus=0), device="cuda:0")
    with pytest.raises(UserError, match="no CUDA GPU"):
        plan_on(FakeMachine(gpus=0), device="cuda")
    with pytest.raises(UserError, match="auto, cpu, cuda or cuda:N"):
        plan_on(FakeMachine(gpus=1), device="gpu")


def test_auto_means_the_gpu_when_there_is_one():
    assert plan_on(FakeMachine(**H200)).device == PlainDevice("cuda")
    no_gpu = plan_on(FakeMachine(gpus=0, cpu_bf16=False))
    assert (no_gpu.device, no_gpu.precision, no_gpu.backend) == (CPU, "fp32", "onnx")


@pytest.mark.child_process
def test_planning_for_a_gpu_asks_the_capabilities_and_imports_nothing_heavy():
    """The plan asks its Capabilities object and nothing else: with a fake one it imports neither
    PyTorch nor NumPy, even when the answer is a GPU (the Slicer panel imports the plan)."""
    code = (
        "import json, sys\n"
        f"sys.path[:0] = {[str(Path(__file__).parent), str(BUNDLED.parents[2])]!r}\n"
        "from support import FakeMachine, H200\n"
        "from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution\n"
        "plan = plan_execution(ExecutionRequest(), FakeMachine(**H200))\n"
        "print(json.dumps([str(plan.device), plan.precision, 'torch' in sys.modules, 'numpy' in sys.modules]))\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout) == ["cuda", "bf16", False, False]


# --- out of memory -------------------------------------------------------------------------------------


class OutOfMemoryOnCalls(SlicePredictor):
    """The bundled network on the CPU, saying it is on a GPU and running out of memory on the calls
    numbered in ``failing`` (1-based) with ``error``; ``calls`` records each call's slice count."""

    def __init__(self, checkpoint, failing, error: BaseException) -> None:
        super().__init__(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), 3)
        self.device = torch.device("cuda")
        self.failing, self.error, self.calls = set(failing), error, []

    def __call__(self, batch):
        self.calls.append(len(batch))
        if len(self.calls) in self.failing:
            raise self.error
        return super().__call__(batch)


@pytest.fixture(scope="module")
def ct_slices(chest_ct_path):
    """Six slices of the real chest CT with the bundled model's normalisation."""
    image = sitk.ReadImage(str(chest_ct_path))
    volume = sitk.GetArrayFromImage(image)[14:20]
    checkpoint = load_checkpoint(BUNDLED)
    return checkpoint, volume, SliceGeometry.from_direction(image.GetDirection()), fit_normalization(checkpoint.metadata.normalization, volume)


def run_recording_events(predictor, ct_slices, batch_size: int):
    checkpoint, volume, geometry, mapping = ct_slices
    stream = io.StringIO()
    result = predict_volume(volume, geometry, predictor, mapping, batch_size, reporter=JsonLinesReporter(stream))
    events = [parse_event(line) for line in stream.getvalue().splitlines()]
    return result.labels, [e["message"] for e in events if e and e["event"] == "warning"]


OUT_OF_MEMORY = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"),
    RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB"),
]


@pytest.mark.parametrize("error", OUT_OF_MEMORY, ids=["OutOfMemoryError", "RuntimeError"])
def test_gpu_out_of_memory_halves_the_batch_then_moves_to_the_cpu_and_says_so(ct_slices, error):
    checkpoint = ct_slices[0]
    reference, _ = run_recording_events(SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), 3), ct_slices, 4)
    predictor = OutOfMemoryOnCalls(checkpoint, failing={1, 2, 3}, error=error)  # 4, 2 and 1 slices do not fit
    labels, warnings_seen = run_recording_events(predictor, ct_slices, 4)
    assert predictor.calls == [4, 2, 1]  # then the CPU computes everything
    assert warnings_seen == [
        "the GPU ran out of memory with a batch of 4 slices; continuing with batches of 2 (as --batch-size 2)",
        "the GPU ran out of memory with a batch of 2 slices; continuing with batches of 1 (as --batch-size 1)",
        "the GPU ran out of memory even with one slice at a time; continuing on the CPU (slower)",
    ]
    assert reference.any()
    np.testing.assert_array_equal(labels, reference)


def test_out_of_memory_on_a_later_batch_keeps_the_halved_size_for_the_rest(ct_slices):
    predictor = OutOfMemoryOnCalls(ct_slices[0], failing={2}, error=OUT_OF_MEMORY[0])  # the second call does not fit
    _, warnings_seen = run_recording_events(predictor, ct_slices, 2)
    assert predictor.calls == [2, 2, 1, 1, 1, 1]  # 6 slices in batches of 2; after the failure one at a time, still on the GPU
    assert warnings_seen == ["the GPU ran out of memory with a batch of 2 slices; continuing with batches of 1 (as --batch-size 1)"]


# --- the Slicer panel's device list --------------------------------------------------------------------


FAKE_TORCH = '''
__version__ = "2.13.0+cu128"
class cuda:
    @staticmethod
    def is_available():
        return {available}
    @staticmethod
    def device_count():
        return {count}
    @staticmethod
    def get_device_name(index):
        return "NVIDIA H200"
'''


@pytest.mark.child_process
@pytest.mark.parametrize("count", [0, 1, 2])
def test_the_panel_lists_the_gpus_its_probe_finds(tmp_path, count):
    """The panel's probe (a child ``python -c PROBE_CODE``) against a PyTorch that reports ``count`` GPUs."""
    from UNetSegmentationLib.panel.devices import PROBE_CODE, device_choices, parse_probe_output

    (tmp_path / "torch.py").write_text(FAKE_TORCH.format(available=count > 0, count=count))
    finished = subprocess.run([sys.executable, "-c", PROBE_CODE], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    info = parse_probe_output(finished.stdout)
    assert info.error is None and info.torch_version == "2.13.0+cu128"
    choices = {c.value: c for c in device_choices(info)}
    assert list(choices) == ["auto", "cpu", "cuda"]
    if count == 0:
        assert not choices["cuda"].enabled and "no CUDA GPU" in choices["auto"].label
    else:
        assert choices["cuda"].enabled and "NVIDIA H200" in choices["cuda"].label
        assert ("+1 more" in choices["cuda"].label) == (count == 2)
        # what the panel then asks for is planned on the GPU
        assert str(plan_on(FakeMachine(gpus=count), device=choices["cuda"].value).device) == "cuda"
