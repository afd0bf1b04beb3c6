"""The execution plan on the CPU (UNetSegmentationLib/backends/plan.py): precision, backend, threads
and slices per call, each decided once from what the user asked and what the machine can do.

The machine is a :class:`~support.FakeMachine`; the CUDA decisions are in test_cuda_decisions.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import FakeMachine
from UNetSegmentationLib.backends.device import CPU, SystemCapabilities, cgroup_cpu_quota
from UNetSegmentationLib.backends.plan import ExecutionRequest, cpus_per_worker, plan_execution, split_threads, usable_cpus
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


# --- defect 1 of issue 22: auto chooses within the backend the user chose -------------------------------------


def test_auto_precision_with_the_onnx_backend_is_what_onnx_runtime_computes():
    """``--backend onnx`` with the default ``--precision auto`` on a CPU with native bf16 was refused
    ("use --precision fp32"): auto must choose what the chosen backend computes."""
    plan = plan_on(FakeMachine(cpu_bf16=True), backend="onnx")
    assert (plan.backend, plan.precision) == ("onnx", "fp32")
    assert plan_on(FakeMachine(cpu_bf16=True), backend="torch").precision == "bf16"  # PyTorch computes bf16 there
    assert plan_on(FakeMachine(cpu_bf16=True), backend="onnx", precision="int8").precision == "int8"
    with pytest.raises(UserError, match="--backend onnx computes in float32 or int8"):
        plan_on(FakeMachine(cpu_bf16=True), backend="onnx", precision="bf16")  # asked for explicitly: still refused


@pytest.mark.onnx
def test_predict_with_the_onnx_backend_runs_on_a_cpu_with_native_bf16(predict, oblique_volume_path, monkeypatch):
    monkeypatch.setattr(SystemCapabilities, "cpu_native_bf16", lambda self: True)  # this machine's CPU, said to have AMX
    result, output = predict(oblique_volume_path, "--backend", "onnx", progress="json")
    assert result.code == 0, result.stderr
    start = next(json.loads(line) for line in result.stdout.splitlines() if '"start"' in line)
    assert (start["backend"], start["precision"]) == ("onnx", "fp32") and output.exists()


# --- usable CPUs: one answer for the plan, training and cohort workers ---------------------------------------------


class Cpus(FakeMachine):
    def __init__(self, cpus: int) -> None:
        super().__init__()
        self.cpus = cpus

    def usable_cpus(self) -> int:
        return self.cpus


def test_cpus_are_shared_out_among_worker_processes():
    assert usable_cpus(Cpus(6)) == 6
    assert [cpus_per_worker(workers, Cpus(6)) for workers in (1, 2, 4, 8)] == [6, 3, 1, 1]
    assert usable_cpus() >= 1 and cpus_per_worker(1) == usable_cpus()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_cpu_quota_is_read_from_the_process_own_cgroup_v2_and_its_parents(tmp_path):
    write(tmp_path / "proc/self/cgroup", "0::/job.slice/step_0\n")
    write(tmp_path / "sys/fs/cgroup/cpu.max", "max 100000\n")  # the root: no limit
    write(tmp_path / "sys/fs/cgroup/job.slice/cpu.max", "300000 100000\n")  # the job: 3 CPUs
    write(tmp_path / "sys/fs/cgroup/job.slice/step_0/cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 3
    write(tmp_path / "sys/fs/cgroup/job.slice/step_0/cpu.max", "150000 100000\n")  # 1.5 CPUs: rounded up
    assert cgroup_cpu_quota(tmp_path) == 2


def test_the_cpu_quota_of_a_cgroup_v1_group_is_seen(tmp_path):
    """cgroup v1 (HPC clusters): the quota is in the process's own group, not at the hierarchy's root."""
    write(tmp_path / "proc/self/cgroup", "5:memory:/slurm/uid_1/job_7\n4:cpu,cpuacct:/slurm/uid_1/job_7\n")
    write(tmp_path / "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    write(tmp_path / "sys/fs/cgroup/cpu,cpuacct/slurm/uid_1/job_7/cpu.cfs_quota_us", "400000\n")
    write(tmp_path / "sys/fs/cgroup/cpu,cpuacct/slurm/uid_1/job_7/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path) == 4
    (tmp_path / "sys/fs/cgroup/cpu,cpuacct/slurm/uid_1/job_7/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path) is None


# --- issue 23 LOW: the memory estimate counts the slices a batch can hold ------------------------------------


def test_a_batch_size_beyond_the_slice_count_is_estimated_as_the_slices_there_are(small_unet_one_class, tmp_path):
    """``--batch-size 1000`` on a 12-slice volume gathers 12 slices: it was estimated as 1000 and refused."""
    from support import write_tiny_case
    from UNetSegmentationLib.inference.predict_file import predict_file

    case = write_tiny_case(tmp_path)  # 40x36 pixels, 12 slices
    room = 600 * 2**20  # the engine's 512 MiB, 12 slices of batches, not 1000
    for batch_size, name in ((12, "twelve.nrrd"), (1000, "thousand.nrrd")):
        predict_file(case / "case.nrrd", tmp_path / name, small_unet_one_class, SegmentationOptions(batch_size=batch_size, device="cpu"),
                     memory_available=lambda: room)
        assert (tmp_path / name).is_file()
