"""``--precision int8``: the ONNX export quantised for each volume, calibrated on some of its slices and
checked against float32 on others (UNetSegmentationLib/backends/int8.py)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from support import FakeMachine
from UNetSegmentationLib.backends import int8 as quantization
from UNetSegmentationLib.backends.onnx_export import onnx_predictor_for
from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.model.checkpoint import load_checkpoint



def labels_of(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_calibration_and_check_slices_are_spread_over_the_volume_and_distinct():
    calibration, check = quantization.sample_slices(200)
    assert len(calibration) == len(check) == quantization.CALIBRATION_SLICES
    assert not set(calibration) & set(check)
    assert calibration[0] == 0 and max(check) == 199  # from one end to the other
    calibration, check = quantization.sample_slices(5)
    assert sorted(set(calibration) | set(check)) == [0, 1, 2, 3, 4]
    assert quantization.sample_slices(1) == (np.array([0]), np.array([0]))  # too thin: checked on what calibrated


def test_calibration_tiles_cover_the_slice_in_bounded_pieces_the_network_accepts():
    batch = np.random.default_rng(0).random((1, 3, 600, 96), dtype=np.float32)
    tiles = quantization.calibration_tiles(batch, multiple=32)
    assert all(t.shape[:2] == (1, 3) and t.shape[2] <= 256 and t.shape[2] % 32 == 0 for t in tiles)
    covered = np.zeros(batch.shape[2:], dtype=bool)
    for tile in tiles:  # each tile is a piece of the batch at some place: find it by its first row
        row = next(r for r in range(600) if np.array_equal(batch[0, :, r, :96], tile[0, :, 0, :]))
        covered[row:row + tile.shape[2]] = True
    assert covered.all() and len(tiles) == 3  # rows 0, 256 and 344 (the last one overlapping)
    assert len(quantization.calibration_tiles(np.zeros((1, 3, 512, 512), np.float32), 16)) == 4
    assert quantization.calibration_tiles(np.zeros((1, 3, 128, 128), np.float32), 16)[0].shape == (1, 3, 128, 128)


def one_hot_probabilities(chosen: np.ndarray, channels: int = 4) -> np.ndarray:
    """``(B, channels, H, W)`` probabilities that decide ``chosen`` (B, H, W)."""
    return np.moveaxis(np.eye(channels, dtype=np.float32)[chosen], -1, 1)


def test_agreement_counts_the_foreground_apart_from_the_background():
    chosen = np.zeros((1, 10, 10), dtype=int)
    chosen[0, :2] = 3  # 20 foreground pixels
    relabelled = chosen.copy()
    relabelled[0, 0, :5] = 1  # 5 of them relabelled
    reference, candidate = one_hot_probabilities(chosen), one_hot_probabilities(relabelled)
    agreement = quantization.compare_decisions(reference, candidate)
    assert agreement.labels == pytest.approx(0.95)
    assert agreement.foreground == pytest.approx(15 / 20)
    assert not agreement.acceptable  # 95 % of all pixels, but a quarter of the foreground changed
    assert quantization.compare_decisions(reference, reference).acceptable


def test_int8_is_refused_where_it_cannot_run():
    with pytest.raises(UserError, match="CPU"):
        plan_execution(ExecutionRequest("cuda", precision="int8"), FakeMachine(gpus=1))
    plan = plan_execution(ExecutionRequest("cpu", precision="int8"), FakeMachine())
    assert (plan.precision, plan.backend, plan.quantizes_per_volume) == ("int8", "onnx", True)
    with pytest.raises(UserError, match="ONNX Runtime"):
        plan_execution(ExecutionRequest("cpu", "torch", "int8"), FakeMachine())
    with pytest.raises(UserError, match=r"\[onnx\]"):
        plan_execution(ExecutionRequest("cpu", precision="int8"), FakeMachine(onnx=False))
    assert SegmentationOptions(precision="INT8").precision == "int8"


@pytest.mark.onnx
def test_int8_keeps_the_input_convolutions_and_the_probabilities_in_float32(tmp_path, chest_model_file):
    import onnx

    checkpoint_path = chest_model_file
    session = onnx_predictor_for(load_checkpoint(checkpoint_path), 3, True, 1)
    model = onnx.load(str(session.path))
    kept = set(quantization.float_nodes(model))
    by_name = {node.name: node for node in model.graph.node}
    kept_types = sorted(by_name[name].op_type for name in kept)
    # the first convolution, the head's 1×1 convolution, and the softmax that gives the probabilities
    assert kept_types.count("Conv") == 2
    assert "Softmax" in kept_types
    assert any("probabilities" in by_name[name].output for name in kept)
    convolutions = [node for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose")]
    assert len(convolutions) > 10  # ... and all the others are quantised

    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((1, 3, 64, 64), dtype=np.float32) for _ in range(2)]
    quantized = onnx.load_from_string(quantization.quantize_export(session.path, session.input_name, calibration))
    int8_weights = [t for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) == len(convolutions) - 2
    assert quantized.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.onnx
def test_int8_labels_agree_with_float32_on_the_real_ct(cli, chest_ct_path, tmp_path, chest_model_file):
    checkpoint = chest_model_file
    runs = {}
    for precision in ("fp32", "int8"):
        output = tmp_path / f"{precision}.nrrd"
        result = cli("predict", "--checkpoint", checkpoint, "--precision", precision, "--progress", "json", chest_ct_path, output)
        assert result.code == 0, result.stderr
        runs[precision] = result.events
        assert result.start["precision"] == result.events[-1]["precision"] == precision and result.start["backend"] == "onnx"
        assert not [e for e in result.events if e["event"] == "warning"]
    assert runs["int8"][-1]["timings"]["quantize_s"] > 0
    float32, int8 = labels_of(tmp_path / "fp32.nrrd"), labels_of(tmp_path / "int8.nrrd")
    assert float32.any()
    assert (float32 == int8).mean() >= quantization.INT8_LABEL_AGREEMENT  # measured 99.93 %
    foreground = (float32 > 0) | (int8 > 0)
    assert (float32 == int8)[foreground].mean() >= quantization.INT8_FOREGROUND_AGREEMENT
    assert sitk.ReadImage(str(tmp_path / "int8.nrrd")).GetDirection() == sitk.ReadImage(str(chest_ct_path)).GetDirection()


@pytest.mark.onnx
def test_an_int8_model_that_disagrees_is_not_used(cli, chest_ct_path, tmp_path, monkeypatch, chest_model_file):
    """The check refuses the quantised model: the run goes on in float32, says so, and gives float32's labels."""
    checkpoint = chest_model_file
    reference = cli("predict", "--checkpoint", checkpoint, "--precision", "fp32", "--progress", "none", chest_ct_path, tmp_path / "fp32.nrrd")
    assert reference.code == 0, reference.stderr
    monkeypatch.setattr(quantization, "INT8_LABEL_AGREEMENT", 1.01)  # nothing can agree this well
    result = cli("predict", "--checkpoint", checkpoint, "--precision", "int8", "--progress", "json", chest_ct_path, tmp_path / "fallback.nrrd")
    assert result.code == 0, result.stderr
    assert result.start["precision"] == "int8" and result.events[-1]["precision"] == "fp32"  # asked, then used
    warnings = [e["message"] for e in result.events if e["event"] == "warning"]
    assert len(warnings) == 1 and "int8 was not used" in warnings[0] and "computing in float32" in warnings[0]
    assert (labels_of(tmp_path / "fp32.nrrd") == labels_of(tmp_path / "fallback.nrrd")).all()


@pytest.mark.onnx
def test_an_attention_sigmoid_inside_the_network_is_quantised_like_any_layer():
    """Only the probabilities that reach the output without another layer count as the decision:
    a sigmoid gate inside the network (U-Net v2's attention) is followed by more convolutions."""
    from onnx import TensorProto, helper, numpy_helper

    def weight(name, shape):
        return numpy_helper.from_array(np.full(shape, 0.1, dtype=np.float32), name)

    nodes = [
        helper.make_node("Conv", ["slices", "w_in"], ["features"], name="input_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["features"], ["activated"], name="relu"),
        helper.make_node("Conv", ["activated", "w_gate"], ["gate_logits"], name="gate_conv"),
        helper.make_node("Sigmoid", ["gate_logits"], ["gate"], name="attention_sigmoid"),
        helper.make_node("Mul", ["activated", "gate"], ["gated"], name="attention_mul"),
        helper.make_node("Conv", ["gated", "w_mid"], ["middle"], name="middle_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["middle"], ["middle_activated"], name="middle_relu"),
        helper.make_node("Conv", ["middle_activated", "w_head"], ["logits"], name="head_conv"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("slices", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2, 8, 8])],
        [weight("w_in", (4, 3, 3, 3)), weight("w_gate", (4, 4, 1, 1)), weight("w_mid", (4, 4, 3, 3)), weight("w_head", (2, 4, 1, 1))],
    )
    assert quantization.float_nodes(helper.make_model(graph)) == ["head_conv", "input_conv", "softmax"]


def test_calibration_sees_each_slice_exactly_as_the_run_computes_it(chest_ct_path, chest_model_file, monkeypatch):
    """Issue 22: the calibration box was the body's box as found, not aligned to the model grid as the
    real batches are, so int8's ranges were fitted to inputs the run never showed the network."""
    from UNetSegmentationLib.inference.layout import layout_volume
    from UNetSegmentationLib.inference.normalization import fit_normalization
    from UNetSegmentationLib.inference.predict_file import quantized_for_volume
    from UNetSegmentationLib.inference.slicing import SliceGeometry, model_batches
    from UNetSegmentationLib.protocol.reporters import Reporter

    image = sitk.ReadImage(str(chest_ct_path))
    volume = sitk.GetArrayFromImage(image)
    metadata = load_checkpoint(chest_model_file).metadata
    geometry = SliceGeometry.from_direction(image.GetDirection())
    layout = layout_volume(volume, geometry, image.GetSpacing(), metadata, True, True)
    mapping = fit_normalization(metadata.normalization, volume)
    seen = {}

    def capture(predictor, slice_count, batch_of):
        seen["batch_of"] = batch_of
        return quantization.Int8Result(predictor, "fp32", 0.0, None)

    monkeypatch.setattr(quantization, "quantize_for_volume", capture)
    predictor = type("Predictor", (), {"required_multiple": 16})()
    quantized_for_volume(predictor, volume, geometry, metadata, mapping, Reporter(), layout)
    slices = geometry.slices_view(volume)
    run = {int(batch.indices[0]): batch.inputs for batch in model_batches(slices, 1, metadata.context, mapping, layout.grid, layout.bodies, 16)}
    compared = list(run)[:: max(1, len(run) // 6)]
    assert any(layout.bodies.union([k])[0] % 16 for k in compared)  # body boxes that alignment moves
    for k in compared:
        np.testing.assert_array_equal(seen["batch_of"](np.array([k])), run[k])
