"""The speed paths give the plain path's results within their stated tolerances (acceleration.py,
onnx_backend.py, BENCHMARKS.md):

- BatchNorm folding: logits equal to ~1e-5 (float32 rounding);
- channels_last + folding (the optimised PyTorch predictor): probabilities equal to ~1e-5;
- bf16 autocast: labels agree on ≥ 99 % of voxels (BF16_LABEL_AGREEMENT) with the bundled model on
  the real chest CT;
- ONNX Runtime: probabilities equal to 1e-4 (ONNX_TOLERANCE), labels agree; skipped without onnxruntime;
- slice workers (several slices computed at once on the CPU): the same labels as one at a time.

Small networks and a few slices: fast on a CPU.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from UNetSegmentationLib.backends import plan as acceleration

from UNetSegmentationLib.backends import onnx_export as onnx_backend
from UNetSegmentationLib.backends import torch_network as inference_network
from UNetSegmentationLib.backends.plan import BF16_LABEL_AGREEMENT, ONNX_TOLERANCE
from UNetSegmentationLib.inference.prefetch import prefetch
from UNetSegmentationLib.backends.torch_network import ProbabilityNetwork, fold_batchnorm
from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.pipeline import labels_from_decision, labels_from_probabilities
from UNetSegmentationLib.networks.registry import ARCHITECTURES, build_network
from UNetSegmentationLib.backends.device import onnx_runtime_available as onnx_available
from UNetSegmentationLib.backends.onnx_export import onnx_predictor_for
from UNetSegmentationLib.backends.onnx_cache import shipped_export
from UNetSegmentationLib.backends.micro_batch import MicroBatched
from UNetSegmentationLib.backends.factory import create_predictor
from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution
from UNetSegmentationLib.backends.device import cuda_is_impossible

from conftest import create_checkpoint

BUNDLED = Path(__file__).resolve().parent.parent / "UNetSegmentation" / "Resources" / "Models" / "chest-ct-unetplusplus.safetensors"
needs_onnx = pytest.mark.skipif(not onnx_available(), reason="onnxruntime/onnx not installed (the [onnx] extra)")


def small_kwargs(name: str) -> dict:
    architecture = ARCHITECTURES[name]
    kwargs = dict(architecture.default_kwargs, in_channels=3, out_channels=3)
    preset = architecture.feature_presets.get("small")
    kwargs["features"] = list(preset) if preset else [4, 8, 16, 32, 64]
    if name == "unet3plus":
        kwargs["features"] = [4, 8, 16, 32, 64]
    if name == "deeplabv3plus":
        kwargs.update(features=[8, 8, 16, 32, 64], aspp_channels=16, decoder_channels=16, low_level_channels=8)
    if name == "fcn8s":
        kwargs.update(features=[4, 8, 16, 32, 32], fc_features=32)
    return kwargs


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Trained-looking BatchNorm statistics and affine parameters (the defaults would fold trivially)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_folding_batchnorm_keeps_every_architectures_output(name):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_network(name, small_kwargs(name)))
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
    folded = fold_batchnorm(model)
    assert folded > 0
    with torch.inference_mode():
        got = model(x)
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_folding_removes_the_batchnorm_layers_of_unetplusplus_and_keeps_every_depth():
    model = randomise_batchnorm(build_network("unetplusplus", small_kwargs("unetplusplus")))
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        expected = [model.forward_depth(x, d) for d in model.depths]
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model) == batchnorms
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.inference_mode():
        for depth, before in zip(model.depths, expected):
            torch.testing.assert_close(model.forward_depth(x, depth), before, atol=1e-5, rtol=1e-5)


def test_folding_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError):
        fold_batchnorm(build_network("unet", small_kwargs("unet")).train())


def test_instance_norm_networks_stay_contiguous():
    batch = build_network("unet", small_kwargs("unet"))
    instance = build_network("unet", dict(small_kwargs("unet"), norm="instance"))
    assert inference_network.prefers_channels_last(batch)
    assert not inference_network.prefers_channels_last(instance)


@pytest.mark.parametrize("depth", [2, "accurate", None])
def test_optimised_torch_predictor_matches_the_plain_one(small_unetpp, depth):
    checkpoint = load_checkpoint(small_unetpp)
    plain_model = randomise_batchnorm(build_model(checkpoint))
    fast_model = randomise_batchnorm(build_model(checkpoint))
    cpu = torch.device("cpu")
    plain = SlicePredictor(plain_model, checkpoint.metadata, cpu, depth)
    fast = SlicePredictor(fast_model, checkpoint.metadata, cpu, depth, True, "fp32", True)
    assert fast.channels_last and not plain.channels_last
    batch = np.random.default_rng(0).random((3, 3, 64, 80), dtype=np.float32)
    expected, got = plain(batch), fast(batch)
    assert (got - expected).abs().max().item() <= 1e-5
    values = np.arange(3)
    assert (labels_from_probabilities(got, values)[0] == labels_from_probabilities(expected, values)[0]).mean() >= 0.9999


def test_bf16_labels_agree_with_fp32_on_the_real_ct(chest_ct_path):
    """The bundled model on 6 slices of the slicerio chest CT: bf16 autocast keeps ≥ 99 % of the labels."""
    import SimpleITK as sitk

    from UNetSegmentationLib.inference.pipeline import predict_volume
    from UNetSegmentationLib.inference.normalization import fit_normalization
    from UNetSegmentationLib.inference.slicing import SliceGeometry

    checkpoint = load_checkpoint(BUNDLED)
    image = sitk.ReadImage(str(chest_ct_path))
    volume = sitk.GetArrayFromImage(image)[14:20]
    geometry = SliceGeometry.from_direction(image.GetDirection())
    mapping = fit_normalization(checkpoint.metadata.normalization, volume)
    labels = {}
    for precision in ("fp32", "bf16"):
        predictor = SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), 3, True, precision, True)
        assert predictor.precision == precision
        labels[precision] = predict_volume(volume, geometry, predictor, mapping, 6).labels
    assert labels["fp32"].any()
    assert (labels["fp32"] == labels["bf16"]).mean() >= BF16_LABEL_AGREEMENT


def test_precision_and_backend_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: False)
    assert acceleration.resolve_precision("auto", cpu) == "fp32"  # emulated bf16 would be ~100x slower
    assert acceleration.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: True)
    assert acceleration.resolve_precision("auto", cpu) == "bf16"  # AVX512-BF16/AMX: within the label tolerance, faster
    assert acceleration.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(UserError):
        acceleration.resolve_precision("fp8", cpu)
    assert acceleration.resolve_backend("torch", cpu, "fp32") == "torch"
    assert acceleration.resolve_backend("auto", cpu, "bf16") == "torch"  # ONNX Runtime runs fp32 only
    monkeypatch.setattr(acceleration, "onnx_available", lambda: False)
    assert acceleration.resolve_backend("auto", cpu, "fp32") == "torch"  # works without the [onnx] extra
    with pytest.raises(UserError, match=r"\[onnx\]"):
        acceleration.resolve_backend("onnx", cpu, "fp32")
    monkeypatch.setattr(acceleration, "onnx_available", lambda: True)
    assert acceleration.resolve_backend("auto", cpu, "fp32") == "onnx"
    with pytest.raises(UserError):
        acceleration.resolve_backend("onnx", cpu, "bf16")


def test_prediction_options_check_speed_settings():
    assert SegmentationOptions(backend="TORCH").backend == "torch"
    for bad in ({"backend": "tensorrt"}, {"precision": "fp8"}, {"threads": 0}, {"slice_workers": 0}):
        with pytest.raises(UserError):
            SegmentationOptions(**bad)


def test_cpu_threads_are_shared_out_among_slice_workers():
    split = acceleration.split_threads
    assert split(2) == (2, 1)  # the default: two slices at once, one thread each
    assert split(1) == (1, 1)
    assert split(16) == (2, 8)  # many cores: two workers, several threads each
    assert split(16, 4) == (4, 4)
    assert split(2, 8) == (2, 1)  # never more workers than threads
    assert split(3, 2) == (2, 1)
    with pytest.raises(UserError, match="--slice-workers"):
        split(2, 0)


def test_micro_batched_workers_keep_the_order_and_run_concurrently():
    running, most, lock = [0], [0], threading.Lock()

    def network(batch):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        assert torch.get_num_threads() == 1  # the worker's share of the threads
        with lock:
            running[0] -= 1
        return torch.from_numpy(batch[:, :1] * 2)

    threads = torch.get_num_threads()
    predictor = MicroBatched(network, 1, workers=2, threads_per_worker=1, sets_torch_threads=True)
    batch = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1)
    assert predictor(batch).flatten().tolist() == [0, 2, 4, 6, 8]
    assert most[0] == 2
    assert torch.get_num_threads() == threads  # restored after the call
    assert predictor.threads == 2


def test_an_error_in_a_slice_worker_reaches_the_caller():
    def network(batch):
        if batch[0, 0, 0, 0] == 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return torch.from_numpy(batch)

    predictor = MicroBatched(network, 1, workers=2, threads_per_worker=1)
    with pytest.raises(RuntimeError, match="allocate"):
        predictor(np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1))


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=needs_onnx)])
def test_slice_workers_give_the_labels_of_one_slice_at_a_time(cli, chest_ct_path, tmp_path, backend, bundled_copy):
    import SimpleITK as sitk

    checkpoint = bundled_copy
    labels = {}
    for workers in (1, 2):
        output = tmp_path / f"{workers}.nrrd"
        result = cli("predict", "--checkpoint", checkpoint, "--backend", backend, "--threads", "2", "--slice-workers", str(workers),
                     "--progress", "json", chest_ct_path, output)
        assert result.code == 0, result.stderr
        assert (result.events[0]["workers"], result.events[0]["threads"]) == (workers, 2)
        labels[workers] = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert labels[1].any()
    assert (labels[1] == labels[2]).mean() >= 0.9999


def test_prefetch_keeps_order_and_reraises_errors_from_its_thread():
    assert list(prefetch(iter(range(20)), ahead=2)) == list(range(20))

    def failing():
        yield 1
        raise ValueError("broken batch")

    with pytest.raises(ValueError, match="broken batch"):
        list(prefetch(failing()))


def test_prefetch_stops_its_thread_when_the_consumer_stops():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    iterator = prefetch(endless(), ahead=1)
    assert next(iterator) == 0
    iterator.close()
    time.sleep(0.2)
    count = len(produced)
    time.sleep(0.2)
    assert len(produced) == count
    assert not any(t.name == "unetseg-prefetch" and t.is_alive() for t in threading.enumerate())


def test_cli_and_runner_pass_the_speed_options(cli, chest_ct_path, small_unetpp, tmp_path):
    from UNetSegmentationLib.protocol.runner import predict_arguments

    arguments = predict_arguments("in.nrrd", "out.nrrd", "m.safetensors", backend="torch", precision="fp32", threads=1)
    assert arguments[arguments.index("--backend") + 1] == "torch"
    assert arguments[arguments.index("--precision") + 1] == "fp32"
    assert arguments[arguments.index("--threads") + 1] == "1"
    assert "--backend" not in predict_arguments("in.nrrd", "out.nrrd", "m.safetensors")
    threads = torch.get_num_threads()
    try:  # --threads sets PyTorch's (process-wide) thread count
        result = cli("predict", "--checkpoint", small_unetpp, "--backend", "torch", "--threads", "1", "--progress", "json", chest_ct_path, tmp_path / "o.nrrd")
    finally:
        torch.set_num_threads(threads)
    assert result.code == 0, result.stderr
    start = result.events[0]
    assert start["backend"] == "torch" and start["precision"] == "fp32" and start["threads"] == 1
    assert cli("predict", "--checkpoint", small_unetpp, "--backend", "tensorrt", chest_ct_path, tmp_path / "p.nrrd").code == 2


# --- ONNX Runtime -----------------------------------------------------------------------------------


@needs_onnx
@pytest.mark.parametrize("depth", [2, "accurate"])
def test_onnx_export_matches_torch(tmp_path, depth):
    path = create_checkpoint(tmp_path / "m.safetensors")
    checkpoint = load_checkpoint(path)
    predictor = onnx_predictor_for(checkpoint, depth, True, 1)
    assert predictor.path.parent == tmp_path and predictor.path.suffix == ".onnx"  # cached next to the checkpoint
    assert predictor.checked_difference <= ONNX_TOLERANCE
    reference = SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), depth)
    assert predictor.required_multiple == reference.required_multiple
    batch = np.random.default_rng(1).random((2, 3, 48, 112), dtype=np.float32)
    assert_decision_matches(predictor(batch), reference(batch))


def assert_decision_matches(decision: np.ndarray, probabilities: torch.Tensor) -> None:
    """ONNX Runtime's decision (chosen channel, confidence) is PyTorch's, within ONNX_TOLERANCE."""
    batch, _, rows, columns = probabilities.shape
    assert isinstance(decision, np.ndarray) and decision.shape == (batch, 2, rows, columns)
    values = np.arange(max(2, probabilities.shape[1]))
    expected_labels, expected_confidence = labels_from_probabilities(probabilities, values)
    labels, confidence = labels_from_decision(decision, values)
    assert np.abs(confidence - expected_confidence).max() <= ONNX_TOLERANCE
    assert (labels == expected_labels).mean() >= 0.999  # a near-tie may go either way


@needs_onnx
def test_onnx_sigmoid_network_matches_torch(small_unet_one_class, tmp_path, monkeypatch):
    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(tmp_path))
    checkpoint = load_checkpoint(small_unet_one_class)
    predictor = onnx_predictor_for(checkpoint, None, True, 1)
    reference = SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), None)
    batch = np.random.default_rng(2).random((1, 3, 32, 40), dtype=np.float32)
    assert_decision_matches(predictor(batch), reference(batch))


@needs_onnx
def test_onnx_cache_is_reused_and_invalidated_by_a_changed_checkpoint(tmp_path, monkeypatch):
    path = create_checkpoint(tmp_path / "m.safetensors")
    first = onnx_predictor_for(load_checkpoint(path), 2, True, 1)

    def no_export(*args, **kwargs):
        raise AssertionError("a cache hit must not build or export the network")

    monkeypatch.setattr(onnx_backend, "_network", no_export)
    again = onnx_predictor_for(load_checkpoint(path), 2, True, 1)
    assert again.path == first.path
    monkeypatch.undo()
    create_checkpoint(path, extra=("--seed", "5", "--overwrite"))  # other weights, same file name
    changed = onnx_predictor_for(load_checkpoint(path), 2, True, 1)
    assert changed.path != first.path
    other_depth = onnx_predictor_for(load_checkpoint(path), 3, True, 1)
    assert other_depth.path != changed.path


@needs_onnx
def test_onnx_export_goes_to_the_cache_folder_when_the_checkpoint_folder_is_not_writable(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    path = create_checkpoint(tmp_path / "models" / "m.safetensors")
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(cache))
    real = onnx_backend.export_checked

    def read_only_models(checkpoint, depth, guidance, target, threads):
        if target.parent == path.parent:
            raise PermissionError(13, "Permission denied")
        return real(checkpoint, depth, guidance, target, threads)

    monkeypatch.setattr(onnx_backend, "export_checked", read_only_models)
    predictor = onnx_predictor_for(load_checkpoint(path), 1, True, 1)
    assert predictor.path.parent == cache / "onnx"
    assert not list(path.parent.glob("*.onnx"))


@needs_onnx
def test_an_export_that_disagrees_with_torch_falls_back_to_torch_under_auto(small_unetpp, tmp_path, monkeypatch):
    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(tmp_path))
    checkpoint_path = create_checkpoint(tmp_path / "m.safetensors")
    monkeypatch.setattr(onnx_backend, "_check", lambda *args: 1.0)  # as if tracing had frozen a shape
    monkeypatch.setattr(onnx_backend, "EXPORTERS", onnx_backend.EXPORTERS[:1])  # (the slower exporter would be refused alike)
    checkpoint = load_checkpoint(checkpoint_path)
    predictor, notes = create_predictor(checkpoint, plan_execution(ExecutionRequest("cpu", precision="fp32")), 2)
    assert predictor.backend == "torch"
    assert notes and "differs from PyTorch" in notes[0]
    with pytest.raises(UserError, match="--backend onnx"):
        create_predictor(checkpoint, plan_execution(ExecutionRequest("cpu", backend="onnx", precision="fp32")), 2)
    assert not list(tmp_path.glob("*.onnx"))


@needs_onnx
def test_predict_with_onnx_and_torch_backends_agree_on_the_real_ct(cli, chest_ct_path, tmp_path, bundled_copy):
    import SimpleITK as sitk

    checkpoint = bundled_copy
    outputs = {}
    for backend in ("onnx", "torch"):
        outputs[backend] = tmp_path / f"{backend}.nrrd"
        result = cli("predict", "--checkpoint", checkpoint, "--backend", backend, "--progress", "json", chest_ct_path, outputs[backend])
        assert result.code == 0, result.stderr
        assert result.events[0]["backend"] == backend
    onnx_labels, torch_labels = (sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[b]))) for b in ("onnx", "torch"))
    assert torch_labels.any()
    assert (onnx_labels == torch_labels).mean() >= 0.9999


def test_probability_network_is_what_the_predictor_computes(small_unetpp):
    checkpoint = load_checkpoint(small_unetpp)
    model = build_model(checkpoint)
    predictor = SlicePredictor(model, checkpoint.metadata, torch.device("cpu"), 3)
    network = ProbabilityNetwork(model, 3, checkpoint.metadata.uses_softmax)
    batch = np.random.default_rng(3).random((1, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        torch.testing.assert_close(network(torch.from_numpy(batch)), predictor(batch))


#: runs ``unetseg ARGS`` in a fresh interpreter and prints its exit code and whether it imported torch/MONAI
IMPORT_PROBE = (
    "import json, runpy, sys\n"
    "sys.argv = ['unetseg'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('UNetSegmentationLib', run_name='__main__')\n"
    "except SystemExit as end:\n"
    "    code = end.code\n"
    "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules, 'monai': 'monai' in sys.modules}))\n"
)


def predict_in_fresh_process(*arguments, env=None) -> dict:
    import json
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", IMPORT_PROBE, "predict", *map(str, arguments)], capture_output=True, text=True, timeout=300, env=env)
    return json.loads(finished.stdout.strip().splitlines()[-1])


@needs_onnx
@pytest.mark.skipif(not cuda_is_impossible(), reason="a GPU may be present here: PyTorch must be asked")
def test_a_cached_onnx_export_segments_without_importing_torch_or_monai(chest_ct_path, tmp_path, bundled_copy):
    """Start-up on a CPU-only machine: with the export cached, ``predict`` needs neither PyTorch nor MONAI."""
    import SimpleITK as sitk

    runs = [
        predict_in_fresh_process("--checkpoint", bundled_copy, "--progress", "none", *extra, chest_ct_path, tmp_path / f"{name}.nrrd")
        for name, extra in (("first", []), ("cached", []), ("int8", ["--precision", "int8"]))
    ]
    assert runs[0] == {"code": 0, "torch": True, "monai": True}  # the first run exports (PyTorch builds the network)
    assert runs[1] == runs[2] == {"code": 0, "torch": False, "monai": False}  # int8 quantises the cached export
    first, cached = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}.nrrd"))) for n in ("first", "cached"))
    assert first.any() and (first == cached).all()


@needs_onnx
@pytest.mark.skipif(not cuda_is_impossible(), reason="a GPU may be present here: PyTorch must be asked")
def test_the_bundled_model_ships_its_export_so_its_first_run_needs_no_pytorch(cli, chest_ct_path, tmp_path):
    """The export beside the bundled model (Resources/Tools/ship_onnx_export.py) belongs to the model
    as it is now, serves a run with an empty cache, and gives PyTorch's labels."""
    import os

    import SimpleITK as sitk

    checkpoint = load_checkpoint(BUNDLED)
    shipped = shipped_export(checkpoint, checkpoint.metadata.recommended_depth)
    assert shipped.is_file(), f"{shipped.name} is missing: run python Resources/Tools/ship_onnx_export.py"
    models = tmp_path / "Models"  # the model and its shipped export alone (no export cached by earlier runs)
    models.mkdir()
    for source in (BUNDLED, shipped):
        (models / source.name).write_bytes(source.read_bytes())
    installed = models / BUNDLED.name
    environment = dict(os.environ, UNETSEG_CACHE_DIR=str(tmp_path / "empty-cache"))
    run = predict_in_fresh_process("--checkpoint", installed, "--progress", "none", chest_ct_path, tmp_path / "shipped.nrrd", env=environment)
    assert run == {"code": 0, "torch": False, "monai": False}
    assert sorted(p.name for p in models.iterdir()) == sorted([BUNDLED.name, shipped.name])  # nothing exported
    assert not (tmp_path / "empty-cache").exists()
    reference = cli("predict", "--checkpoint", installed, "--backend", "torch", "--progress", "none", chest_ct_path, tmp_path / "torch.nrrd")
    assert reference.code == 0, reference.stderr
    shipped_labels, torch_labels = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}.nrrd"))) for n in ("shipped", "torch"))
    assert torch_labels.any() and (shipped_labels == torch_labels).mean() >= 0.9999
