"""The ONNX Runtime backend (UNetSegmentationLib/backends/onnx_*.py): the export decides what PyTorch
decides, is cached beside the checkpoint (or in the cache folder), is refused when it disagrees, and
serves a CPU-only run without importing PyTorch or MONAI. Skipped without onnxruntime (the [onnx] extra).

On a CPU with native bf16 ``--precision auto`` plans the PyTorch backend in bf16 (backends/plan.py):
every test here that means the ONNX path says ``--precision fp32`` (or int8) or ``--backend onnx``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from support import create_checkpoint
from support import FakeMachine
from UNetSegmentationLib.backends import onnx_export
from UNetSegmentationLib.backends.device import cuda_is_impossible
from UNetSegmentationLib.backends.factory import create_predictor
from UNetSegmentationLib.backends.onnx_cache import shipped_export
from UNetSegmentationLib.backends.onnx_export import onnx_predictor_for
from UNetSegmentationLib.backends.plan import ONNX_TOLERANCE, ExecutionRequest, plan_execution
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.pipeline import labels_from_probabilities
from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint

BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"
pytestmark = pytest.mark.onnx
#: a CPU-only machine: the plan can say "CPU" without asking PyTorch
torch_free_startup = pytest.mark.skipif(not cuda_is_impossible(), reason="a GPU may be present here: PyTorch must be asked")


def labels_of(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

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


def assert_decision_matches(onnx_probabilities: np.ndarray, probabilities: torch.Tensor) -> None:
    """ONNX Runtime's probabilities are PyTorch's within ONNX_TOLERANCE, and the labels decided from
    them (in numpy, as the ONNX path decides) are PyTorch's."""
    assert isinstance(onnx_probabilities, np.ndarray) and onnx_probabilities.shape == tuple(probabilities.shape)
    assert np.abs(onnx_probabilities - probabilities.numpy()).max() <= ONNX_TOLERANCE
    values = np.arange(max(2, probabilities.shape[1]))
    expected_labels, expected_confidence = labels_from_probabilities(probabilities, values)
    labels, confidence = labels_from_probabilities(onnx_probabilities, values)
    assert np.abs(confidence - expected_confidence).max() <= ONNX_TOLERANCE
    assert (labels == expected_labels).mean() >= 0.999  # a near-tie may go either way


def test_onnx_sigmoid_network_matches_torch(small_unet_one_class, tmp_path, monkeypatch):
    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(tmp_path))
    checkpoint = load_checkpoint(small_unet_one_class)
    predictor = onnx_predictor_for(checkpoint, None, True, 1)
    reference = SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), None)
    batch = np.random.default_rng(2).random((1, 3, 32, 40), dtype=np.float32)
    assert_decision_matches(predictor(batch), reference(batch))


def test_onnx_cache_is_reused_and_invalidated_by_a_changed_checkpoint(tmp_path, monkeypatch):
    path = create_checkpoint(tmp_path / "m.safetensors")
    first = onnx_predictor_for(load_checkpoint(path), 2, True, 1)

    def no_export(*args, **kwargs):
        raise AssertionError("a cache hit must not build or export the network")

    monkeypatch.setattr(onnx_export, "_network", no_export)
    again = onnx_predictor_for(load_checkpoint(path), 2, True, 1)
    assert again.path == first.path
    monkeypatch.undo()
    create_checkpoint(path, extra=("--seed", "5", "--overwrite"))  # other weights, same file name
    changed = onnx_predictor_for(load_checkpoint(path), 2, True, 1)
    assert changed.path != first.path
    other_depth = onnx_predictor_for(load_checkpoint(path), 3, True, 1)
    assert other_depth.path != changed.path


def test_onnx_export_goes_to_the_cache_folder_when_the_checkpoint_folder_is_not_writable(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    path = create_checkpoint(tmp_path / "models" / "m.safetensors")
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(cache))
    real = onnx_export.export_checked

    def read_only_models(checkpoint, depth, guidance, target, threads):
        if target.parent == path.parent:
            raise PermissionError(13, "Permission denied")
        return real(checkpoint, depth, guidance, target, threads)

    monkeypatch.setattr(onnx_export, "export_checked", read_only_models)
    predictor = onnx_predictor_for(load_checkpoint(path), 1, True, 1)
    assert predictor.path.parent == cache / "onnx"
    assert not list(path.parent.glob("*.onnx"))


def test_an_export_that_disagrees_with_torch_falls_back_to_torch_under_auto(small_unetpp, tmp_path, monkeypatch):
    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(tmp_path))
    checkpoint_path = create_checkpoint(tmp_path / "m.safetensors")
    monkeypatch.setattr(onnx_export, "_check", lambda *args: 1.0)  # as if tracing had frozen a shape
    monkeypatch.setattr(onnx_export, "EXPORTERS", onnx_export.EXPORTERS[:1])  # (the slower exporter would be refused alike)
    checkpoint = load_checkpoint(checkpoint_path)
    predictor, notes = create_predictor(checkpoint, plan_execution(ExecutionRequest("cpu", precision="fp32"), FakeMachine()), 2)
    assert predictor.backend == "torch"
    assert notes and "differs from PyTorch" in notes[0]
    with pytest.raises(UserError, match="--backend onnx"):
        create_predictor(checkpoint, plan_execution(ExecutionRequest("cpu", backend="onnx", precision="fp32"), FakeMachine()), 2)
    assert not list(tmp_path.glob("*.onnx"))


def test_predict_with_onnx_and_torch_backends_agree_on_the_real_ct(cli, chest_ct_path, tmp_path, chest_model_file):
    """Both backends in float32 (auto would be bf16 for PyTorch on a CPU with native bf16)."""
    outputs = {}
    for backend in ("onnx", "torch"):
        outputs[backend] = tmp_path / f"{backend}.nrrd"
        result = cli("predict", "--checkpoint", chest_model_file, "--backend", backend, "--precision", "fp32", "--progress", "json", chest_ct_path, outputs[backend])
        assert result.code == 0, result.stderr
        assert (result.start["backend"], result.start["precision"]) == (backend, "fp32")
    onnx_labels, torch_labels = labels_of(outputs["onnx"]), labels_of(outputs["torch"])
    assert torch_labels.any()
    assert (onnx_labels == torch_labels).mean() >= 0.9999


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
    finished = subprocess.run([sys.executable, "-c", IMPORT_PROBE, "predict", *map(str, arguments)], capture_output=True, text=True, timeout=300, env=env)
    return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.mark.child_process
@pytest.mark.slow
@torch_free_startup
def test_a_cached_fp32_onnx_export_segments_without_importing_torch_or_monai(chest_ct_path, tmp_path, chest_model_file):
    """Start-up on a CPU-only machine on the float32 ONNX path (``--precision fp32``; ``auto`` is the
    PyTorch bf16 path on CPUs with native bf16): with the export cached, ``predict`` needs neither
    PyTorch nor MONAI, and neither does int8, which quantises the cached export."""
    runs = [
        predict_in_fresh_process("--checkpoint", chest_model_file, "--progress", "none", "--precision", precision, chest_ct_path, tmp_path / f"{name}.nrrd")
        for name, precision in (("first", "fp32"), ("cached", "fp32"), ("int8", "int8"))
    ]
    assert runs[0] == {"code": 0, "torch": True, "monai": True}  # the first run exports (PyTorch builds the network)
    assert runs[1] == runs[2] == {"code": 0, "torch": False, "monai": False}
    first, cached = labels_of(tmp_path / "first.nrrd"), labels_of(tmp_path / "cached.nrrd")
    assert first.any() and (first == cached).all()


@pytest.mark.child_process
@torch_free_startup
def test_the_bundled_model_ships_its_export_so_its_first_fp32_run_needs_no_pytorch(cli, chest_ct_path, tmp_path):
    """The export beside the bundled model (Resources/Tools/ship_onnx_export.py) belongs to the model
    as it is now, serves a float32 ONNX run (``--precision fp32``) with an empty cache, and gives
    PyTorch's float32 labels."""
    checkpoint = load_checkpoint(BUNDLED)
    shipped = shipped_export(checkpoint, checkpoint.metadata.recommended_depth)
    assert shipped.is_file(), f"{shipped.name} is missing: run python Resources/Tools/ship_onnx_export.py"
    models = tmp_path / "Models"  # the model and its shipped export alone (no export cached by earlier runs)
    models.mkdir()
    for source in (BUNDLED, shipped):
        (models / source.name).write_bytes(source.read_bytes())
    installed = models / BUNDLED.name
    environment = dict(os.environ, UNETSEG_CACHE_DIR=str(tmp_path / "empty-cache"))
    fp32 = ("--precision", "fp32", "--progress", "none")
    run = predict_in_fresh_process("--checkpoint", installed, *fp32, chest_ct_path, tmp_path / "shipped.nrrd", env=environment)
    assert run == {"code": 0, "torch": False, "monai": False}
    assert sorted(p.name for p in models.iterdir()) == sorted([BUNDLED.name, shipped.name])  # nothing exported
    assert not (tmp_path / "empty-cache").exists()
    reference = cli("predict", "--checkpoint", installed, "--backend", "torch", *fp32, chest_ct_path, tmp_path / "torch.nrrd")
    assert reference.code == 0, reference.stderr
    shipped_labels, torch_labels = labels_of(tmp_path / "shipped.nrrd"), labels_of(tmp_path / "torch.nrrd")
    assert torch_labels.any() and (shipped_labels == torch_labels).mean() >= 0.9999
