"""The speed paths give the plain path's results within their stated tolerances (backends/plan.py,
backends/torch_network.py, BENCHMARKS.md):

- BatchNorm folding: logits equal to ~1e-5 (float32 rounding);
- channels_last + folding (the optimised PyTorch predictor): probabilities equal to ~1e-5;
- bf16 autocast: labels agree on ≥ 99 % of voxels (BF16_LABEL_AGREEMENT) with the bundled model on
  the real chest CT;
- slice workers (several slices computed at once on the CPU): the same labels as one at a time.

ONNX Runtime's path is tested in test_onnx_backend.py, int8 in test_int8.py, the plan's decisions in
test_backend_plan.py and test_cuda_decisions.py. Small networks and a few slices: fast on a CPU.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from UNetSegmentationLib.backends.micro_batch import MicroBatched
from UNetSegmentationLib.backends.plan import BF16_LABEL_AGREEMENT
from UNetSegmentationLib.backends.torch_network import fold_batchnorm, prefers_channels_last
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.pipeline import labels_from_probabilities
from UNetSegmentationLib.inference.prefetch import prefetch
from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint
from UNetSegmentationLib.networks.registry import ARCHITECTURES, build_network

BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"


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
    assert prefers_channels_last(batch)
    assert not prefers_channels_last(instance)


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


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=pytest.mark.onnx)])
def test_slice_workers_give_the_labels_of_one_slice_at_a_time(cli, chest_ct_path, tmp_path, backend, chest_model_file):
    """In float32 for both backends (ONNX Runtime computes float32; auto is bf16 on CPUs with native bf16)."""
    import SimpleITK as sitk

    labels = {}
    for workers in (1, 2):
        output = tmp_path / f"{workers}.nrrd"
        result = cli("predict", "--checkpoint", chest_model_file, "--backend", backend, "--precision", "fp32", "--threads", "2",
                     "--slice-workers", str(workers), "--progress", "json", chest_ct_path, output)
        assert result.code == 0, result.stderr
        assert (result.start["workers"], result.start["threads"], result.start["backend"]) == (workers, 2, backend)
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


def test_the_command_line_carries_the_speed_options_to_the_run(cli, chest_ct_path, small_unetpp, tmp_path):
    options = SegmentationOptions(backend="torch", precision="fp32", threads=1)
    arguments = options.to_arguments(chest_ct_path, tmp_path / "o.nrrd", small_unetpp)
    assert arguments[arguments.index("--backend") + 1] == "torch"
    assert arguments[arguments.index("--precision") + 1] == "fp32"
    assert arguments[arguments.index("--threads") + 1] == "1"
    assert "--backend" not in SegmentationOptions().to_arguments("in.nrrd", "out.nrrd", "m.safetensors")
    threads = torch.get_num_threads()
    try:  # --threads sets PyTorch's (process-wide) thread count
        result = cli(*arguments[:-2], "--progress", "json", *arguments[-2:])
    finally:
        torch.set_num_threads(threads)
    assert result.code == 0, result.stderr
    start = result.start
    assert (start["backend"], start["precision"], start["threads"]) == ("torch", "fp32", 1)
    assert cli("predict", "--checkpoint", small_unetpp, "--backend", "tensorrt", chest_ct_path, tmp_path / "p.nrrd").code == 2
