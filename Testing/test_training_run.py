"""``unetseg train`` runs as a specification (data checks: test_training_data.py; losses: test_training_losses.py).

- A short run on the real chest CT shipped in slicerio (7 classes from a Slicer .seg.nrrd) lowers
  the loss and beats trivial baselines on held-out slices.
- The checkpoint carries what ``predict`` needs and what the training measured: classes with names,
  colours and terminology from the segmentation, the normalisation, the held-out slices, the Dice
  and ms/slice of every UNet++ depth, and the recommended depth (the shallowest within tolerance).
- Runs are repeatable from ``--seed``; ``--resume`` continues from the saved step and ends where an
  uninterrupted run ends.
- Progress speaks the one event schema: ``start`` (command train, total steps), a ``progress`` event
  per step of the whole run, a ``log`` line per epoch, ``done`` with the summary.
- Every registered architecture trains through the same command (losses via ``as_training_output``).
"""

from __future__ import annotations

import csv
import json
import os
import signal

import numpy as np
import pytest
import torch

from support import POSIX, wait_for, write_tiny_case

from UNetSegmentationLib.model.header import read_metadata
from UNetSegmentationLib.networks.registry import ARCHITECTURES
from UNetSegmentationLib.protocol.runner import FAILED, EngineProcess

FAST = ("--threads", "1", "--progress", "none", "--device", "cpu")


def read_log(path):
    return list(csv.DictReader(open(path)))


# --- a short run on the real chest CT --------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest_run(tmp_path_factory, chest_ct_path, chest_segmentation_path):
    """100 steps of a small UNet++ (features 8..64, depth 3) on whole slices of the chest CT (a crop
    must show both lungs to tell left from right), 20 % of the slices held out."""
    from support import run_cli

    folder = tmp_path_factory.mktemp("chest")
    checkpoint = folder / "chest.safetensors"
    result = run_cli(
        "train", "--image", chest_ct_path, "--label", chest_segmentation_path, "--val-slices", "0.2",
        "--features", "8,16,32,64", "--epochs", "4", "--steps-per-epoch", "25", "--batch-size", "2", "--crop", "128",
        "--lr", "3e-3", "--seed", "0", *FAST, checkpoint,
    )
    assert result.code == 0, result.stderr
    return checkpoint


def held_out_truth(chest_ct_path, chest_segmentation_path, slices):
    """Channel indices of the held-out slices (slices along k for this axial CT)."""
    from UNetSegmentationLib.training.cases import Case
    from UNetSegmentationLib.io.labels import resolve_classes
    from UNetSegmentationLib.io.labels import load_case

    loaded = load_case(Case("chest", chest_ct_path, chest_segmentation_path))
    _, (lookup,) = resolve_classes([("chest", loaded.label)])
    return lookup[loaded.label.array][slices]


@pytest.mark.slow
def test_training_lowers_the_loss(chest_run):
    log = read_log(chest_run.with_suffix(".csv"))
    assert [int(r["epoch"]) for r in log] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in log] == [25, 50, 75, 100]
    assert float(log[-1]["loss"]) < 0.85 * float(log[0]["loss"])


def test_held_out_dice_beats_trivial_baselines(chest_run, chest_ct_path, chest_segmentation_path):
    from UNetSegmentationLib.model.checkpoint import read_metadata
    from UNetSegmentationLib.evaluation.metrics import dice_per_class

    metadata = read_metadata(chest_run)
    (held_out,) = metadata.training["data"]["held_out_slices"]
    truth = held_out_truth(chest_ct_path, chest_segmentation_path, held_out["slices"])
    classes = len(metadata.classes)
    all_background = np.nanmean(np.nan_to_num(dice_per_class(np.zeros_like(truth), truth, classes)))
    majority = np.bincount(truth[truth > 0]).argmax()  # 'tissue' everywhere
    majority_everywhere = np.nanmean(dice_per_class(np.full_like(truth, majority), truth, classes))
    trained = metadata.training["validation"]["dice"]
    assert all_background == 0.0
    assert trained > majority_everywhere + 0.1, (trained, majority_everywhere)
    # large, high-contrast structures are learnt first
    per_class = metadata.training["validation"]["by_depth"]["L3"]["per_class"]
    assert min(per_class["right lung"], per_class["left lung"], per_class["tissue"]) > 0.8, per_class


def test_checkpoint_records_classes_validation_and_depth_selection(chest_run):
    from UNetSegmentationLib.model.checkpoint import read_metadata
    from UNetSegmentationLib.training.selection import select_depth

    metadata = read_metadata(chest_run)
    names = [c.name for c in metadata.classes]
    assert names == ["ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column", "right lung", "left lung", "tissue"]
    right_lung = metadata.classes[4]
    assert right_lung.color == pytest.approx((0.0862745, 0.772549, 0.278431))
    assert right_lung.terminology["typeModifier"][2] == "Right"
    assert metadata.normalization.window == (-1000.0, 1000.0) and metadata.training_spacing == pytest.approx([3.0469, 3.0469], abs=1e-3)
    # held-out slices: contiguous blocks covering 20 % of the 34 slices, with a gap of one slice (the context)
    (held_out,) = metadata.training["data"]["held_out_slices"]
    assert held_out["image"] == "CTChest4.nrrd" and len(held_out["slices"]) == 7
    assert metadata.training["data"]["training"][0]["train_slices"] == 34 - 7 - 6
    # every depth has a Dice and a measured speed; the recommended depth follows the paper's rule
    assert sorted(metadata.depth_metrics) == [1, 2, 3]
    assert all(m["ms_per_slice"] > 0 and 0 <= m["dice"] <= 1 for m in metadata.depth_metrics.values())
    assert metadata.recommended_depth == select_depth({d: m["dice"] for d, m in metadata.depth_metrics.items()}, 0.01)


def test_depth_selection_picks_the_shallowest_depth_within_tolerance():
    from UNetSegmentationLib.training.selection import select_depth

    assert select_depth({1: 0.70, 2: 0.795, 3: 0.80, 4: 0.79}, tolerance=0.01) == 2
    assert select_depth({1: 0.70, 2: 0.795, 3: 0.80, 4: 0.79}, tolerance=0.0) == 3
    assert select_depth({1: 0.70, 2: 0.795, 3: 0.80, 4: 0.79}, tolerance=0.2) == 1
    assert select_depth({1: float("nan"), 2: 0.5}) == 2 and select_depth({}) is None


@pytest.mark.slow
def test_predict_uses_the_recommended_depth_and_evaluate_reproduces_the_held_out_dice(cli, chest_run, chest_ct_path, chest_segmentation_path, tmp_path):
    from UNetSegmentationLib.model.checkpoint import read_metadata

    metadata = read_metadata(chest_run)
    result = cli("predict", "--checkpoint", chest_run, "--progress", "json", "--device", "cpu", chest_ct_path, tmp_path / "out.seg.nrrd")
    assert result.code == 0, result.stderr
    assert result.start["depth"] == metadata.recommended_depth  # (a first ONNX export logs before the start event)
    # evaluate on the recorded held-out slices, run as training validates (PyTorch, float32, whole slices): the same Dice, for every depth
    result = cli("evaluate", "--checkpoint", chest_run, "--image", chest_ct_path, "--label", chest_segmentation_path,
                 "--slices", "checkpoint", "--output-dir", tmp_path / "eval", "--progress", "none", "--device", "cpu",
                 "--backend", "torch", "--precision", "fp32", "--no-crop")
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    for depth, metrics in metadata.depth_metrics.items():
        rows = [r for r in report["rows"] if r["depth"] == f"L{depth}" and r["dice"] is not None]
        assert np.mean([r["dice"] for r in rows]) == pytest.approx(metrics["dice"], abs=1e-4)
    assert (tmp_path / "eval" / "accuracy-vs-speed.png").is_file()


# --- repeatability and resume ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A synthetic CT-like volume and its label map ('body' 1, 'bone' 2), with a datalist."""
    return write_tiny_case(tmp_path_factory.mktemp("tiny"))


def tiny_train(cli, data, out, *extra):
    return cli("train", "--datalist", data / "datalist.json", "--classes", "body,bone", "--val-slices", "0.25", "--val-blocks", "1",
               "--features", "4,8", "--crop", "32", "--batch-size", "2", "--steps-per-epoch", "3", "--seed", "7", *FAST, *extra, out)


def weights(path):
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    return load_checkpoint(path).state_dict


def test_the_same_seed_gives_the_same_run(cli, tiny_data, tmp_path):
    for name in ("a", "b"):
        result = tiny_train(cli, tiny_data, tmp_path / f"{name}.safetensors", "--epochs", "2")
        assert result.code == 0, result.stderr
    a, b = weights(tmp_path / "a.safetensors"), weights(tmp_path / "b.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = tiny_train(cli, tiny_data, tmp_path / "c.safetensors", "--epochs", "2", "--seed", "8")
    assert c.code == 0 and not all(torch.equal(a[k], weights(tmp_path / "c.safetensors")[k]) for k in a)


def test_resume_continues_from_the_saved_step_and_ends_where_an_uninterrupted_run_ends(cli, tiny_data, tmp_path):
    straight = tiny_train(cli, tiny_data, tmp_path / "straight.safetensors", "--epochs", "3")
    assert straight.code == 0, straight.stderr
    first = tiny_train(cli, tiny_data, tmp_path / "split.safetensors", "--epochs", "3", "--stop-after", "2")
    assert first.code == 0, first.stderr
    assert [int(r["step"]) for r in read_log(tmp_path / "split.csv")] == [3, 6]
    assert (tmp_path / "split.resume.pt").is_file()
    # the checkpoint of an unfinished run says so (issue 23: a killed fine-tune's card looked finished)
    assert read_metadata(tmp_path / "split.safetensors").training["finished"] is False
    assert "its run did not finish" in cli("info", tmp_path / "split.safetensors").stdout
    # without --resume the unfinished run is protected
    again = tiny_train(cli, tiny_data, tmp_path / "split.safetensors", "--epochs", "3")
    assert again.code == 2 and "--resume" in again.stderr
    resumed = cli("train", "--datalist", tiny_data / "datalist.json", "--classes", "body,bone", "--val-slices", "0.25", "--val-blocks", "1",
                  "--features", "4,8", "--crop", "32", "--batch-size", "2", "--steps-per-epoch", "3", "--seed", "7",
                  "--threads", "1", "--device", "cpu", "--progress", "json", "--epochs", "3", "--resume", tmp_path / "split.safetensors")
    assert resumed.code == 0, resumed.stderr
    logs = [e["message"] for e in resumed.events if e["event"] == "log"]
    assert "resuming after epoch 2 (step 6)" in logs
    # the resumed run reports the steps of the whole run from step 7 on, and one epoch line: epoch 3, ending at step 9
    assert [(e["done"], e["total"], e["epoch"]) for e in resumed.events if e["event"] == "progress"] == [(7, 9, 3), (8, 9, 3), (9, 9, 3)]
    assert [m.split()[:4] for m in logs if m.startswith("epoch")] == [["epoch", "3", "step", "9"]]
    log, reference = read_log(tmp_path / "split.csv"), read_log(tmp_path / "straight.csv")
    assert [int(r["step"]) for r in log] == [3, 6, 9]
    assert [r["loss"] for r in log] == [r["loss"] for r in reference]
    assert [r["val_dice"] for r in log] == [r["val_dice"] for r in reference]
    a, b = weights(tmp_path / "straight.safetensors"), weights(tmp_path / "split.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # finished: the card says so, and the resume state (~3x the model) is gone (issue 22, defect 14)
    assert read_metadata(tmp_path / "split.safetensors").training["finished"] is True and "UNFINISHED" not in cli("info", tmp_path / "split.safetensors").stdout
    assert not (tmp_path / "split.resume.pt").exists() and resumed.events[-1]["resume_state"] == "removed"


def test_training_progress_speaks_the_one_event_schema(cli, tiny_data, tmp_path):
    from UNetSegmentationLib.protocol.events import KINDS, VERSION

    result = tiny_train(cli, tiny_data, tmp_path / "m.safetensors", "--epochs", "2", "--progress", "json")
    assert result.code == 0, result.stderr
    events = result.events
    assert {e["event"] for e in events} <= set(KINDS)
    start, done = events[0], events[-1]
    assert start["event"] == "start" and start["version"] == VERSION and start["command"] == "train"
    assert (start["total"], start["unit"], start["epochs"], start["steps_per_epoch"]) == (6, "step", 2, 3)
    # one progress event per step of the whole run, with the time left for all of it
    progress = [e for e in events if e["event"] == "progress"]
    assert [(e["done"], e["total"], e["unit"], e["epoch"], e["epochs"]) for e in progress] == [(s, 6, "step", 1 + (s - 1) // 3, 2) for s in range(1, 7)]
    assert all(e["loss"] > 0 and e["lr"] > 0 for e in progress)
    assert progress[0]["eta_s"] > 0 and progress[-1]["eta_s"] == 0
    epoch_lines = [e["message"] for e in events if e["event"] == "log" and e["message"].startswith("epoch")]
    assert [m.split()[:4] for m in epoch_lines] == [["epoch", "1", "step", "3"], ["epoch", "2", "step", "6"]]
    assert all("val_dice" in m for m in epoch_lines)
    assert done["event"] == "done" and done["checkpoint"] == str(tmp_path / "m.safetensors") and done["best_epoch"] in (1, 2)


def test_the_progress_bar_counts_the_whole_run_and_tells_each_epoch_on_stderr(cli, tiny_data, tmp_path):
    result = tiny_train(cli, tiny_data, tmp_path / "m.safetensors", "--epochs", "2", "--progress", "bar")
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    assert "epoch   1  step      3" in result.stderr and "epoch   2  step      6" in result.stderr
    assert "6/6" in result.stderr  # the bar counts the steps of the whole run
    assert f"wrote {tmp_path / 'm.safetensors'} (best epoch" in result.stderr


def test_resume_refuses_a_changed_configuration(cli, tiny_data, tmp_path):
    assert tiny_train(cli, tiny_data, tmp_path / "m.safetensors", "--epochs", "2", "--stop-after", "1").code == 0
    changed = tiny_train(cli, tiny_data, tmp_path / "m.safetensors", "--epochs", "2", "--resume", "--lr", "0.1")
    assert changed.code == 2 and "lr" in changed.stderr
    missing = tiny_train(cli, tiny_data, tmp_path / "other.safetensors", "--epochs", "2", "--resume")
    assert missing.code == 2 and "no resume state" in missing.stderr


# --- every architecture, the same command -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_registered_architecture_trains_with_the_same_command(cli, tiny_data, tmp_path, arch):
    out = tmp_path / f"{arch}.safetensors"
    result = cli("train", "--datalist", tiny_data / "datalist.json", "--val-slices", "0.25", "--arch", arch, "--classes", "body,bone",
                 "--features", "4,8,16,32,64", "--crop", "64", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2", *FAST, out)
    assert result.code == 0, result.stderr
    predicted = cli("predict", "--checkpoint", out, "--progress", "none", "--device", "cpu", tiny_data / "case.nrrd", tmp_path / "out.nrrd")
    assert predicted.code == 0, predicted.stderr


# --- the bundled model -------------------------------------------------------------------------------------------


def test_the_bundled_model_is_small_trained_and_used_by_the_demo(cli, tmp_path):
    from UNetSegmentationLib.model.checkpoint import read_metadata
    from UNetSegmentationLib.cli.demo import bundled_model

    model = bundled_model()
    if model is None:
        pytest.skip("no bundled model in this checkout")
    assert model.stat().st_size < 5_000_000
    metadata = read_metadata(model)
    assert metadata.architecture == "unetplusplus" and len(metadata.classes) == 14  # the many-organ model of issue 24
    assert all(c.terminology for c in metadata.classes) and 1.0 < metadata.temperature < 10.0  # coded and calibrated
    assert metadata.recommended_depth in metadata.depth_metrics
    held_out = {entry["case"]: entry["slices"] for entry in metadata.training["data"]["held_out_slices"]}
    assert held_out["ctchest4"] == [4, 5, 6, 16, 17, 27, 28]  # the slices the chest model of rounds 1-2 held out
    assert metadata.training["validation"]["dice"] > 0.8  # held-out slices of its four volumes (see ct-organs-unetplusplus.md)
    assert model.with_suffix(".md").is_file()  # its model card
    result = cli("demo", "--output-dir", tmp_path, "--progress", "none")
    assert result.code == 0, result.stderr
    assert "UNTRAINED" not in result.stderr and "trained on the other slices of this same CT" in result.stderr
    assert (tmp_path / "CTChest4-overlay.png").is_file()


def test_training_can_start_from_a_created_checkpoint(cli, tiny_data, tmp_path):
    from support import create_checkpoint
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    start = create_checkpoint(tmp_path / "start.safetensors", classes="body,bone", features="4,8,16")
    out = tmp_path / "tuned.safetensors"
    result = cli("train", "--datalist", tiny_data / "datalist.json", "--init", start, "--val-slices", "0.25", "--epochs", "1",
                 "--steps-per-epoch", "2", "--crop", "32", "--batch-size", "2", *FAST, out)
    assert result.code == 0, result.stderr
    tuned, initial = load_checkpoint(out), load_checkpoint(start)
    assert [c.name for c in tuned.metadata.classes] == ["body", "bone"] and tuned.metadata.kwargs == initial.metadata.kwargs
    assert tuned.metadata.training["config"]["init"] == start.name  # a file name: no path of this machine travels with the model
    assert not all(torch.equal(tuned.state_dict[k], initial.state_dict[k]) for k in initial.state_dict)
    clash = cli("train", "--datalist", tiny_data / "datalist.json", "--init", start, "--features", "4,8", *FAST, tmp_path / "x.safetensors")
    assert clash.code == 2 and "leave out --features" in clash.stderr


@pytest.mark.child_process
@pytest.mark.slow
@pytest.mark.skipif(not POSIX, reason="signals and process groups are POSIX")
def test_a_training_run_killed_mid_run_resumes_to_the_same_weights(cli, tmp_path):
    from support import write_tiny_case
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    data = write_tiny_case(tmp_path)
    common = ["--datalist", str(data / "datalist.json"), "--classes", "body,bone", "--val-slices", "0.25", "--val-blocks", "1",
              "--features", "4,8", "--crop", "32", "--batch-size", "2", "--steps-per-epoch", "3", "--seed", "7",
              "--threads", "1", "--device", "cpu", "--epochs", "4"]
    killed = tmp_path / "killed"
    killed.mkdir()
    run = EngineProcess(["train", *common, str(killed / "m.safetensors")]).start()
    wait_for(run, "log", timeout_s=180, starting="epoch")  # the first epoch is over: its checkpoint can be resumed
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(timeout=60) == FAILED and "SIGKILL" in run.error_message
    assert [p.name for p in killed.iterdir() if ".partial" in p.name] == []
    resumed = cli("train", *common, "--progress", "none", "--resume", killed / "m.safetensors")
    assert resumed.code == 0, resumed.stderr
    straight = cli("train", *common, "--progress", "none", tmp_path / "straight.safetensors")
    assert straight.code == 0, straight.stderr
    a, b = load_checkpoint(killed / "m.safetensors").state_dict, load_checkpoint(tmp_path / "straight.safetensors").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(killed / "m.csv") as log:
        assert [int(row["step"]) for row in csv.DictReader(log)] == [3, 6, 9, 12]
