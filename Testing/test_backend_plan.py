"""The execution plan on the CPU (UNetSegmentationLib/backends/plan.py): precision, backend, threads
and slices per call, each decided once from what the user asked and what the machine can do.

The machine is a :class:`~support.FakeMachine`; the CUDA decisions are in test_cuda_decisions.py.
"""

from __future__ import annotations

import pytest

from support import FakeMachine
from UNetSegmentationLib.backends.device import CPU
from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution, split_threads
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions


def plan_on(machine: FakeMachine, **request):
    return plan_execution(ExecutionRequest(**request), machine)


def test_auto_precision_is_bf16_only_on_cpus_that_compute_it_natively():
    emulating = plan_on(FakeMachine(cpu_bf16=False))
    assert (emulating.device, emulating.precision, emulating.backend) == (CPU, "fp32", "onnx")  # emulated bf16: ~100x slower
    native = plan_on(FakeMachine(cpu_bf16=True))
    assert (native.precision, native.backend) == ("bf16", "torch")  # AVX512-BF16/AMX: within the label tolerance, faster
    assert plan_on(FakeMachine(cpu_bf16=True), precision="fp32").backend == "onnx"  # --precision fp32: the ONNX path
    assert plan_on(FakeMachine(cpu_bf16=False), precision="bf16").precision == "bf16"  # asked for: kept
    with pytest.raises(UserError, match="--precision must be one of"):
        plan_on(FakeMachine(), precision="fp8")


def test_auto_backend_is_onnx_runtime_for_float32_when_it_is_installed():
    assert plan_on(FakeMachine(onnx=False), precision="fp32").backend == "torch"  # works without the [onnx] extra
    assert plan_on(FakeMachine(onnx=True), precision="fp32", backend="torch").backend == "torch"
    with pytest.raises(UserError, match=r"\[onnx\]"):
        plan_on(FakeMachine(onnx=False), backend="onnx", precision="fp32")
    with pytest.raises(UserError, match="float32 or int8"):
        plan_on(FakeMachine(onnx=True), backend="onnx", precision="bf16")
    with pytest.raises(UserError, match="--backend must be one of"):
        plan_on(FakeMachine(), backend="tensorrt")
    assert plan_on(FakeMachine(), backend="ONNX", precision="fp32").backend_requested == "onnx"


def test_a_cpu_only_plan_asks_nothing_about_gpus_beyond_whether_there_are_any():
    machine = FakeMachine(gpus=0)
    plan_on(machine)
    assert {question[0] for question in machine.asked} == {"cuda_available", "cpu_native_bf16", "onnx_runtime_installed"}
    machine = FakeMachine(gpus=1)
    plan_on(machine, device="cpu", precision="fp32")
    assert {question[0] for question in machine.asked} == {"onnx_runtime_installed"}  # --device cpu: not even that


def test_cpu_threads_are_shared_out_among_slice_workers():
    assert split_threads(2) == (2, 1)  # the default: two slices at once, one thread each
    assert split_threads(1) == (1, 1)
    assert split_threads(16) == (2, 8)  # many cores: two workers, several threads each
    assert split_threads(16, 4) == (4, 4)
    assert split_threads(2, 8) == (2, 1)  # never more workers than threads
    assert split_threads(3, 2) == (2, 1)
    with pytest.raises(UserError, match="--slice-workers"):
        split_threads(2, 0)
    plan = plan_on(FakeMachine(), threads=6, slice_workers=3)
    assert (plan.threads, plan.workers, plan.threads_per_worker, plan.slices_per_call) == (6, 3, 2, 1)
    with pytest.raises(UserError, match="--threads"):
        plan_on(FakeMachine(), threads=0)


def test_int8_is_planned_as_a_per_volume_quantisation_of_the_onnx_export():
    plan = plan_on(FakeMachine(), precision="int8")
    assert (plan.backend, plan.precision, plan.quantizes_per_volume) == ("onnx", "int8", True)
    assert not plan_on(FakeMachine(), precision="fp32").quantizes_per_volume
    with pytest.raises(UserError, match="ONNX Runtime"):
        plan_on(FakeMachine(), precision="int8", backend="torch")
    with pytest.raises(UserError, match=r"\[onnx\]"):
        plan_on(FakeMachine(onnx=False), precision="int8")


def test_segmentation_options_ask_the_plan_for_what_the_user_chose():
    options = SegmentationOptions(device="cpu", backend="TORCH", precision="fp32", threads=3, slice_workers=1)
    plan = plan_execution(options.execution_request(), FakeMachine())
    assert (plan.device, plan.backend, plan.precision, plan.threads, plan.workers) == (CPU, "torch", "fp32", 3, 1)
    for bad in ({"backend": "tensorrt"}, {"precision": "fp8"}, {"threads": 0}, {"slice_workers": 0}):
        with pytest.raises(UserError):
            SegmentationOptions(**bad)
