"""The panel's "Improve the model" and "Review these slices first" (issue 16), and the model's spacing
beside the input's (issue 14): the Slicer-free presenters (the fine-tuning run's parameters, states,
progress and files; the review list; the model choice and card), the Slicer side on real MRML (the
training pair exported on the volume's exact grid, the user models folder, the centre of a slice),
and the module's widget end to end with the real engine as a child process."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest

import mrml_support
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.header import read_metadata
from UNetSegmentationLib.panel import finetune_run as states
from UNetSegmentationLib.model import user_models
from UNetSegmentationLib.panel.checkpoints import checkpoint_for_scene, describe_checkpoint, fine_tuning_text, model_choices, spacing_text
from UNetSegmentationLib.panel.finetune_run import FineTuneParameters, FineTuneRun, finetune_readiness, model_file_stem, model_to_select, training_text
from UNetSegmentationLib.panel.review_list import review_items
from UNetSegmentationLib.protocol import runner as runner_states

mrml = mrml_support.mrml
slicer_module = mrml_support.slicer_module
BUNDLED = mrml_support.CHEST_MODEL


# --- the run's parameters ---------------------------------------------------------------------------------


def test_the_parameters_write_the_train_command_through_the_engines_options(tmp_path):
    from UNetSegmentationLib.training.train_options import TrainOptions

    parameters = FineTuneParameters(BUNDLED, tmp_path / "models", "mine", train_slices=" 12-18, 40 ", epochs=2, steps_per_epoch=3)
    options = parameters.train_options(Path("i.nrrd"), Path("l.nrrd"), Path("o.safetensors"))
    assert options == TrainOptions(Path("o.safetensors"), image=Path("i.nrrd"), label=Path("l.nrrd"), init=BUNDLED, train_slices="12-18, 40",
                                   epochs=2, steps_per_epoch=3)
    assert parameters.to_arguments(Path("i.nrrd"), Path("l.nrrd"), Path("o.safetensors")) == options.to_arguments()
    assert options.to_arguments() == ["train", "--image", "i.nrrd", "--label", "l.nrrd", "--init", str(BUNDLED), "--train-slices", "12-18, 40",
                                      "--epochs", "2", "--steps-per-epoch", "3", "o.safetensors"]
    # the whole segmentation corrected: a fifth of its slices held out for the Dice before and after
    plain = FineTuneParameters(BUNDLED, tmp_path, "mine").to_arguments(Path("i.nrrd"), Path("l.nrrd"), Path("o.safetensors"))
    assert plain[plain.index("--val-slices") + 1] == "0.2" and "--train-slices" not in plain
    unvalidated = FineTuneParameters(BUNDLED, tmp_path, "mine", validation=None)
    assert "--val-slices" not in unvalidated.to_arguments(Path("i.nrrd"), Path("l.nrrd"), Path("o.safetensors"))
    # the classes the user changed, measured at export, for the model card ("none": nothing changed; not known: not given)
    corrected = parameters.to_arguments(Path("i.nrrd"), Path("l.nrrd"), Path("o.safetensors"), corrected=["ribs", "left lung"])
    assert corrected[corrected.index("--corrected-classes") + 1] == "ribs,left lung"
    assert "none" in parameters.to_arguments(Path("i.nrrd"), Path("l.nrrd"), Path("o.safetensors"), corrected=[])


@pytest.mark.parametrize("change, message", [
    ({"base": "missing.safetensors"}, "is not a file"),
    ({"train_slices": "12 to 18"}, "no slice number or range"),
    ({"name": "a/b"}, "may hold only"),
    ({"epochs": 0}, "at least 1"),
    # the hold-out share: the engine's one rule (training/train_options.check_hold_out), the same as --val-slices
    ({"validation": 0.5}, "below 0.5"),
    ({"validation": 0.0}, "above 0"),
    # the slice box is read by the one bounded grammar: a bomb is refused before any list is built (issue 23 HIGH 3)
    ({"train_slices": "0-99999999999"}, "beyond"),
    ({"train_slices": "30-40", "slice_count": 34}, "beyond the volume's 34 slices"),
])
def test_bad_parameters_are_refused_with_the_panels_words(tmp_path, change, message):
    values = {"base": BUNDLED, "models_folder": tmp_path, "name": "mine", **change}
    with pytest.raises(UserError, match=message):
        FineTuneParameters(**values)


def test_a_plain_pytorch_file_cannot_be_fine_tuned(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(UserError):
        FineTuneParameters(weights, tmp_path, "mine")


def test_the_new_model_never_replaces_a_file_the_base_or_the_bundled_model(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.safetensors").write_bytes(b"taken")
    assert user_models.free_path(models, "mine") == models / "mine-2.safetensors"
    assert user_models.free_path(BUNDLED.parent, BUNDLED.stem) == BUNDLED.parent / f"{BUNDLED.stem}-2.safetensors"
    import datetime

    assert model_file_stem(BUNDLED, "CT chest/1", datetime.datetime(2026, 12, 2, 9, 5, 7)) == "chest-ct-unetplusplus-CT-chest-1-20261202-090507"


# --- the user's model folder (model/user_models.py) -----------------------------------------------------------


def test_the_user_models_folder_is_beside_slicers_settings_and_lists_whole_models_newest_first(tmp_path):
    assert user_models.user_models_folder("/home/u/.config/slicer.org/Slicer.ini") == Path("/home/u/.config/slicer.org/UNetSegmentation/Models")
    first = user_models.save_model(BUNDLED, tmp_path, "first")
    second = user_models.save_model(BUNDLED, tmp_path, "second")
    import os

    os.utime(first, (1, 1))
    (tmp_path / ".third.safetensors.partial").write_bytes(b"half")  # a save under way is no model
    assert user_models.list_models(tmp_path) == [second, first]
    assert first.read_bytes() == BUNDLED.read_bytes()


def test_a_model_copied_short_is_never_given_its_name(tmp_path, monkeypatch):
    import shutil

    def short_copy(source, destination):
        Path(destination).write_bytes(Path(source).read_bytes()[:-100])  # a full disk, a killed copy

    monkeypatch.setattr(shutil, "copyfile", short_copy)
    with pytest.raises(UserError, match="could not be saved"):
        user_models.save_model(BUNDLED, tmp_path / "models", "mine")
    assert list((tmp_path / "models").iterdir()) == [], "neither the model nor its partial copy is left"


def test_a_file_that_is_no_model_is_not_saved_as_one(tmp_path):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x08\0\0\0\0\0\0\0{}      ")
    with pytest.raises(UserError, match="could not be saved"):
        user_models.save_model(fake, tmp_path / "models", "mine")
    assert user_models.list_models(tmp_path / "models") == [] and not any((tmp_path / "models").iterdir())


def test_a_name_taken_while_saving_is_not_replaced(tmp_path, monkeypatch):
    models = tmp_path / "models"
    real_free_path = user_models.free_path

    def racing_free_path(folder, name, protected=()):
        path = real_free_path(folder, name, protected)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"someone else's")  # another Slicer saved under this name meanwhile
        return path

    monkeypatch.setattr(user_models, "free_path", racing_free_path)
    with pytest.raises(UserError, match="nothing was replaced"):
        user_models.save_model(BUNDLED, models, "mine")
    assert (models / "mine.safetensors").read_bytes() == b"someone else's" and sorted(p.name for p in models.iterdir()) == ["mine.safetensors"]


# --- which model is selected after a fine-tuning (defect 3) ----------------------------------------------------


def with_lineage(destination: Path, record) -> Path:
    """The bundled model with ``record`` as its ``training["fine_tuning"]`` (the card's lineage)."""
    import json
    import struct

    raw = BUNDLED.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    metadata = json.loads(header["__metadata__"]["unetseg"])
    metadata["training"]["fine_tuning"] = record
    header["__metadata__"]["unetseg"] = json.dumps(metadata)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    destination.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])
    return destination


def test_a_new_model_worse_than_its_base_on_the_held_out_slices_is_not_selected(tmp_path):
    # the numbers of the default fine-tuning on the slicerio CT's own segmentation (issue 22, defect 3)
    worse = with_lineage(tmp_path / "worse.safetensors", {"base": {"name": BUNDLED.name}, "dice_before": 0.9281, "dice_after": 0.9178})
    pick = model_to_select(BUNDLED, worse)
    assert pick.path == BUNDLED and not pick.new_is_better
    assert pick.reason == (f"{BUNDLED.name} stays selected: the new model scored a validation Dice of 0.918 on the held-out slices, "
                           f"below its base's 0.928 (worse.safetensors is in the model list).")
    better = with_lineage(tmp_path / "better.safetensors", {"dice_before": 0.71, "dice_after": 0.83})
    assert model_to_select(BUNDLED, better).path == better
    assert "0.710 \u2192 0.830" in model_to_select(BUNDLED, better).reason
    unmeasured = with_lineage(tmp_path / "marked.safetensors", {"dice_before": None, "dice_after": None, "train_slices": [12, 13]})
    assert model_to_select(BUNDLED, unmeasured).path == unmeasured  # trained on marked slices: nothing else to measure against


# --- the run's states with a stand-in engine ----------------------------------------------------------------


class ScriptedEngine:
    """An engine child that delivers scripted events, then ends in ``final`` (writing the checkpoint when it succeeds)."""

    def __init__(self, arguments, outputs, events: List[dict], final: str):
        self.arguments, self.outputs, self.events, self.final = list(arguments), list(outputs), list(events), final
        self.python, self.state, self.error_message, self.cancelled = "python", runner_states.IDLE, None, False

    def start(self):
        self.state = runner_states.RUNNING
        return self

    def poll(self):
        if self.events:
            return [self.events.pop(0)], self.state
        if self.state == runner_states.RUNNING:
            if self.final == runner_states.DONE:  # a model whose card says the Dice before and after
                with_lineage(Path(self.arguments[-1]), {"base": {"name": BUNDLED.name}, "dice_before": 0.85, "dice_after": 0.88})
            self.state = self.final
            self.error_message = "the loss became nan" if self.final == runner_states.FAILED else None
        return [], self.state

    def cancel(self, grace_s=5.0):
        self.cancelled, self.state = True, runner_states.CANCELLED


TRAIN_EVENTS = [
    {"event": "start", "command": "train", "total": 4, "unit": "step", "device": "cpu", "arch": "unetplusplus"},
    {"event": "progress", "done": 1, "total": 4, "unit": "step", "eta_s": None, "epoch": 1, "epochs": 2, "loss": 0.5},
    {"event": "progress", "done": 3, "total": 4, "unit": "step", "eta_s": 65.0, "epoch": 2, "epochs": 2, "loss": 0.31234, "val_dice": 0.8712},
    {"event": "done", "checkpoint": "x", "validation": {"dice": 0.88}},
]


def scripted_run(tmp_path, final=runner_states.DONE, events=TRAIN_EVENTS):
    engines = []

    def factory(arguments, outputs, python, idle_timeout_s):
        engines.append(ScriptedEngine(arguments, outputs, events, final))
        return engines[-1]

    parameters = FineTuneParameters(BUNDLED, tmp_path / "models", "mine")
    run = FineTuneRun(parameters, temp_root=tmp_path, engine_factory=factory)
    run.begin_exporting()
    run.image_path.write_bytes(b"image")
    run.label_path.write_bytes(b"label")
    run.start_training()
    return run, engines


def test_progress_shows_epoch_loss_validation_dice_and_time_left_and_the_model_lands_in_the_folder(tmp_path):
    run, engines = scripted_run(tmp_path)
    assert engines[0].arguments == run.parameters.to_arguments(run.image_path, run.label_path, run.output_path) and engines[0].outputs[0] == run.output_path
    texts, values = [], []
    while run.state == states.TRAINING:
        run.poll()
        texts.append(run.view().progress_text)
        values.append(run.view().progress_value)
    assert "Epoch 2 of 2 \u00b7 loss 0.3123 \u00b7 validation Dice 0.871 \u00b7 about 1 min 05 s left" in texts
    assert values == sorted(values) and values[-1] == 100
    assert run.state == states.DONE and run.model_path == tmp_path / "models" / "mine.safetensors"
    assert read_metadata(run.model_path).training["fine_tuning"]["dice_after"] == 0.88, "the child's model, whole"
    assert run.view().progress_text.endswith("mine.safetensors is selected: validation Dice 0.850 \u2192 0.880 on the held-out slices.")
    assert run.pick.path == run.model_path
    assert not run.folder.exists(), "the temporary folder is removed"
    view = run.view()
    assert (view.button_text, view.button_enabled, view.settings_enabled) == ("Fine-tune", True, True)


@pytest.mark.parametrize("how", ["cancel", "fail"])
def test_cancel_or_failure_writes_nothing_and_removes_the_temporary_folder(tmp_path, how):
    run, engines = scripted_run(tmp_path, final=runner_states.FAILED if how == "fail" else runner_states.DONE)
    run.poll()
    view = run.view()
    assert (view.button_text, view.button_enabled, view.settings_enabled) == ("Cancel", True, False)
    if how == "cancel":
        run.cancel()
        assert engines[0].cancelled and run.state == states.CANCELLED
    else:
        assert run.wait(timeout_s=10, interval_s=0) == states.FAILED and "the loss became nan" in run.message
    assert not (tmp_path / "models").exists() and not run.folder.exists()


def test_a_pair_that_was_not_exported_fails_before_a_child_starts(tmp_path):
    run = FineTuneRun(FineTuneParameters(BUNDLED, tmp_path, "mine"), temp_root=tmp_path, engine_factory=lambda *a: pytest.fail("no child"))
    run.begin_exporting()
    run.start_training()
    assert run.state == states.FAILED and "not exported" in run.message


def test_training_text_without_an_epoch_counts_steps():
    assert training_text({"done": 3, "total": 10, "eta_s": None}) == "Step 3 of 10 \u00b7 estimating time left"


def test_fine_tune_readiness_says_what_is_missing():
    assert finetune_readiness(True, True, True) == (True, "")
    assert "segmentation to finish" in finetune_readiness(True, True, True, segmenting=True)[1]
    assert "volume" in finetune_readiness(False, True, True)[1]
    assert "corrected segmentation" in finetune_readiness(True, False, True)[1]
    assert ".safetensors" in finetune_readiness(True, True, False)[1]


# --- the real engine child --------------------------------------------------------------------------------


@pytest.mark.child_process
def test_a_real_fine_tuning_saves_a_new_model_with_its_lineage_and_the_card_shows_it(tmp_path, chest_ct_path, chest_segmentation_path):
    models = tmp_path / "models"
    run = FineTuneRun(FineTuneParameters(BUNDLED, models, "chest-tuned", epochs=1, steps_per_epoch=2), python=sys.executable, temp_root=tmp_path)
    run.begin_exporting()
    run.image_path.write_bytes(chest_ct_path.read_bytes())
    run.label_path.write_bytes(chest_segmentation_path.read_bytes())  # a .seg.nrrd: segments matched by name
    run.corrected_classes = ["Ribs"]  # what the Slicer side measured: only the ribs were edited
    run.start_training()
    assert run.wait(timeout_s=600) == states.DONE, run.message
    assert user_models.list_models(models) == [models / "chest-tuned.safetensors"]
    record = read_metadata(run.model_path).training["fine_tuning"]
    assert record["base"]["name"] == BUNDLED.name
    # a fifth of the slices held out: the Dice before and after, on the card and in the progress line
    assert isinstance(record.get("dice_before"), float) and isinstance(record.get("dice_after"), float), record
    assert record["classes_corrected"] == ["ribs"] and len(record["classes_labelled"]) == 7, "the card names the class edited, not all seven"
    card = describe_checkpoint(run.model_path).summary()
    assert f"Fine-tuned from {BUNDLED.name}" in card and " with corrections of ribs;" in card and "validation Dice" in card
    from UNetSegmentationLib.model.training_record import describe_lineage

    assert "corrected by the user: ribs" in describe_lineage(read_metadata(run.model_path).training), "unetseg info says it too"
    assert "validation Dice" in run.message, run.message
    assert any(line.startswith("Training 2 steps") for line in run.log)


@pytest.mark.child_process
@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
def test_cancelling_a_real_fine_tuning_leaves_no_model_and_no_child(tmp_path, chest_ct_path, chest_segmentation_path):
    from support import process_group_alive

    models = tmp_path / "models"
    run = FineTuneRun(FineTuneParameters(BUNDLED, models, "never", epochs=50), python=sys.executable, temp_root=tmp_path)
    run.begin_exporting()
    run.image_path.write_bytes(chest_ct_path.read_bytes())
    run.label_path.write_bytes(chest_segmentation_path.read_bytes())
    run.start_training()
    deadline = time.monotonic() + 300
    while run.state == states.TRAINING and run.start_event is None and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.1)
    pid = run.engine.pid
    run.cancel()
    assert run.state == states.CANCELLED and not process_group_alive(pid), "the child (and its process group) must be gone"
    assert not models.exists() and not run.folder.exists()


# --- what the panel shows about models and the review ---------------------------------------------------


def test_the_model_choice_lists_the_bundled_model_then_the_users_newest_first(tmp_path):
    import os

    folder = tmp_path / "models"
    folder.mkdir()
    for age, name in enumerate(["new", "old"]):
        path = folder / f"{name}.safetensors"
        path.write_bytes(b"x")
        os.utime(path, (1000 - age, 1000 - age))
    (folder / ".partial.safetensors").write_bytes(b"x")
    other = tmp_path / "other.safetensors"
    choices = model_choices(folder, current=other, bundled=BUNDLED)
    assert [c.label for c in choices] == [f"Bundled: {BUNDLED.stem}", "new", "old", "other.safetensors (file)"]
    assert model_choices(tmp_path / "none", bundled=BUNDLED)[0].path == BUNDLED


def test_the_card_puts_the_models_spacing_beside_the_inputs():
    metadata = read_metadata(BUNDLED)
    text = spacing_text(metadata, (0.76, 0.76, 2.5))
    assert text.splitlines() == ["Model: 3.05 \u00d7 3.05 mm in-plane, neighbours 10 mm apart",
                                 "This volume: 0.76 \u00d7 0.76 mm in-plane, slices 2.5 mm apart: resampled to the model's spacing"]
    assert "on its own grid (Spacing: native)" in spacing_text(metadata, (0.76, 0.76, 2.5), "native")
    assert spacing_text(metadata, None) == "Model: 3.05 \u00d7 3.05 mm in-plane, neighbours 10 mm apart"
    assert spacing_text(metadata, (3.046876, 3.046876, 10.0)).endswith("the model's spacing, nothing to resample")
    assert spacing_text(metadata, (3.046876, 3.046876, 2.5)).endswith("resampled to the model's spacing")  # slices 4x closer


def test_the_lineage_line_names_base_date_corrections_and_dice():
    record = {"base": {"name": "base.safetensors"}, "date": "2026-12-02T09:00:00+00:00", "classes_labelled": ["ribs", "left lung"],
              "classes_corrected": ["ribs"], "dice_before": 0.71, "dice_after": 0.83}
    assert fine_tuning_text(record) == "Fine-tuned from base.safetensors on 2026-12-02 with corrections of ribs; validation Dice 0.710 \u2192 0.830"
    # a model tuned from the command line: the classes its labels held, never called corrections
    del record["classes_corrected"]
    assert fine_tuning_text(record).startswith("Fine-tuned from base.safetensors on 2026-12-02 on labels of ribs, left lung;")
    assert fine_tuning_text(None) == ""


@pytest.mark.parametrize("record", [
    {"base": "not a dict", "date": 7, "classes_labelled": 3, "dice_before": "high", "dice_after": [1]},
    {"base": {"name": ["a"]}, "classes_corrected": [1, 2], "date": None},
    {"base": None, "classes_labelled": "ribs"},
    [],
])
def test_a_hostile_lineage_record_gives_a_card_never_a_traceback(record):
    assert fine_tuning_text(record).startswith("Fine-tuned from") or fine_tuning_text(record) == ""


def test_newlines_and_escape_codes_of_a_lineage_record_stay_out_of_the_card(tmp_path):
    record = {"base": {"name": "base\n\x1b[31mFAKE: approved for clinical use\x1b[0m"}, "date": "2026-12-02\r\nX",
              "classes_corrected": ["ribs\x1b[2J", "lung\u202e"], "dice_before": 0.7, "dice_after": 0.8}
    text = fine_tuning_text(record)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\u202e" not in text, text
    card = describe_checkpoint(with_lineage(tmp_path / "hostile.safetensors", record)).summary()
    assert "\x1b" not in card and card.count("\n") == 2, card  # the card's own three lines, no more


def test_a_scene_naming_a_model_that_no_longer_exists_falls_back_and_says_so(tmp_path):
    from UNetSegmentationLib.model.bundled import bundled_model_path

    gone, bundled = tmp_path / "deleted-model.safetensors", bundled_model_path()
    assert checkpoint_for_scene(gone, None) == (bundled, f"The model this scene names, deleted-model.safetensors, no longer exists: using {bundled.name} instead.")
    assert checkpoint_for_scene(BUNDLED, None) == (BUNDLED, "")  # a model file that exists (the chest model) is kept
    assert checkpoint_for_scene(None, None) == (bundled, "")
    assert checkpoint_for_scene(gone, None, bundled=tmp_path / "none.safetensors")[1].endswith("choose a model file.")


def test_review_items_word_the_done_events_ranking_and_skip_broken_entries():
    items = review_items({"review": [{"slice": 17, "axis": "k", "score": 0.25}, {"slice": "x"}, {"slice": 3, "axis": "i", "score": 0.1}]})
    assert [(i.index, i.axis, i.label) for i in items] == [(17, 2, "1. slice 17 (k): doubt 0.25"), (3, 0, "3. slice 3 (i): doubt 0.10")]
    assert review_items(None) == []


# --- the Slicer side on real MRML ---------------------------------------------------------------------------


def load_segmentation(mrml, path: Path, name: str):
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    mrml.layer("scene").read_segmentation(path, node)
    return node


@pytest.mark.mrml
@pytest.mark.parametrize("transformed", [False, True])
def test_the_training_label_is_the_segmentation_on_the_volumes_exact_grid(mrml, tmp_path, chest_segmentation_path, transformed):
    import SimpleITK as sitk

    from UNetSegmentationLib.cli.evaluate import labelled_volumes
    from UNetSegmentationLib.training.cases import Case

    volume = mrml_support.chest_ct(mrml, transformed)
    segmentation = load_segmentation(mrml, chest_segmentation_path, "corrected")
    if transformed:
        segmentation.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    segmentation.GetSegmentation().GetNthSegment(0).SetName("not a class of the model")
    classes = read_metadata(BUNDLED).classes
    exported = mrml.layer("finetune").export_training_pair(volume, segmentation, classes, tmp_path / "image.nrrd", tmp_path / "label.nrrd")
    assert exported.left_out == ["not a class of the model"] and len(exported.used) == 6

    image, label = sitk.ReadImage(str(tmp_path / "image.nrrd")), sitk.ReadImage(str(tmp_path / "label.nrrd"))
    assert label.GetSize() == image.GetSize() and label.GetOrigin() == image.GetOrigin()
    assert label.GetSpacing() == image.GetSpacing() and label.GetDirection() == image.GetDirection()
    # the engine reads the slicerio file itself: the same values on the same voxels, the renamed segment left out
    truth = labelled_volumes([Case("truth", tmp_path / "image.nrrd", chest_segmentation_path)], classes, "background")[0].truth
    values = np.array([0] + [c.value for c in classes])
    first = next(c.value for c in classes if c.name == segmentation_names_in_file(chest_segmentation_path)[0])
    expected = np.where(values[truth] == first, 0, values[truth])
    assert np.array_equal(sitk.GetArrayFromImage(label), expected)


def segmentation_names_in_file(path: Path) -> List[str]:
    import slicerio

    return [segment["name"] for segment in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]]


@pytest.mark.mrml
def test_a_segmentation_without_any_class_of_the_model_is_refused(mrml, tmp_path, chest_segmentation_path):
    volume = mrml_support.chest_ct(mrml)
    segmentation = load_segmentation(mrml, chest_segmentation_path, "renamed")
    for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        segmentation.GetSegmentation().GetNthSegment(index).SetName(f"structure {index}")
    with pytest.raises(RuntimeError, match="none of the segments"):
        mrml.layer("finetune").export_training_pair(volume, segmentation, read_metadata(BUNDLED).classes, tmp_path / "i.nrrd", tmp_path / "l.nrrd")
    assert not (tmp_path / "i.nrrd").exists()


@pytest.mark.mrml
@pytest.mark.parametrize("name, transformed", [("chest CT", False), ("chest CT", True), ("oblique", True)])
def test_a_slice_centre_lies_on_that_slice_in_the_middle_of_the_volume(mrml, name, transformed):
    import vtk

    volume = mrml_support.VOLUMES[name](mrml, transformed)
    slices = mrml.layer("slices")
    axis, _, _ = slices.slice_axes(volume)
    index = 7
    ras = slices.slice_centre_ras(volume, axis, index)
    to_local = vtk.vtkGeneralTransform()
    if volume.GetParentTransformNode() is not None:
        mrml.slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume.GetParentTransformNode(), to_local)
    matrix = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(matrix)
    ijk = matrix.MultiplyPoint(list(to_local.TransformPoint(ras)) + [1.0])[:3]
    expected = [(size - 1) / 2 for size in volume.GetImageData().GetDimensions()]
    expected[axis] = index
    assert np.allclose(ijk, expected, atol=1e-6)
    with pytest.raises(ValueError, match="outside the volume"):
        slices.slice_centre_ras(volume, axis, 999)


@pytest.mark.mrml
def test_the_spacing_as_the_engine_slices_the_volume(mrml):
    slices = mrml.layer("slices")
    assert slices.slice_spacing(mrml_support.chest_ct(mrml)) == pytest.approx((3.05, 3.05, 10.0), abs=0.01)
    oblique = mrml_support.oblique_volume(mrml)
    axis, rows, columns = slices.slice_axes(oblique)
    from UNetSegmentationLib.inference.slicing import SliceGeometry
    from UNetSegmentationLib.panel.selftest_support import lps_from_ras, oblique_ijk_to_ras

    direction = lps_from_ras(oblique_ijk_to_ras())[:3, :3] / np.array([0.8, 1.1, 3.5])
    geometry = SliceGeometry.from_direction(direction.ravel())
    assert (axis, rows, columns) == (geometry.slice_axis, geometry.row_axis, geometry.column_axis)


# --- the module's widget, end to end --------------------------------------------------------------------------


@pytest.mark.mrml
def test_the_widget_segments_lists_the_slices_to_review_jumps_there_and_fine_tunes_into_the_model_choice(slicer_module, chest_segmentation_path):
    mrml = slicer_module.mrml
    mrml.add_slice_views()
    volume = mrml_support.chest_ct(mrml)
    module = slicer_module.module
    widget = module.UNetSegmentationWidget()
    widget.setup()
    ui, parameters = widget.ui, widget._parameterNode
    parameters.checkpoint = mrml_support.chest_model_copy()
    assert "Model: 3.05 \u00d7 3.05 mm in-plane" in ui.modelInfoLabel.text and "This volume: 3.05 \u00d7 3.05 mm" in ui.modelInfoLabel.text
    assert ui.fineTuneButton.enabled is False and "volume to learn from" in ui.fineTuneStatusLabel.text

    ui.applyButton.click()
    deadline = time.monotonic() + 300
    while widget.segmentation.run.running and time.monotonic() < deadline:
        widget.onTimer(widget.segmentation)
        time.sleep(0.1)
    assert widget.segmentation.run.state == "done", widget.segmentation.run.message
    assert len(ui.reviewListWidget.items) == 10 and ui.reviewListWidget.items[0].startswith("1. slice ")
    assert parameters.trainingVolume is volume and parameters.trainingSegmentation is not None

    first = widget._reviewItems[0]
    ui.reviewListWidget.choose(0)
    red = mrml.scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    centre = mrml.layer("slices").slice_centre_ras(volume, first.axis, first.index)
    assert red.GetSliceToRAS().GetElement(2, 3) == pytest.approx(centre[2]), "the axial view shows the chosen slice"

    parameters.trainingSegmentation = load_segmentation(mrml, chest_segmentation_path, "corrected")  # the user's corrections
    widget.logic.fineTuneEpochs, widget.logic.fineTuneStepsPerEpoch = 1, 2
    ui.fineTuneButton.click()
    assert ui.fineTuneButton.text == "Cancel"
    deadline = time.monotonic() + 600
    while widget.fineTuning.running and time.monotonic() < deadline:
        widget.onTimer(widget.fineTuning)
        time.sleep(0.2)
    run = widget.fineTuning.run
    assert run.state == "done", run.message
    folder = Path(mrml.slicer.app.slicerUserSettingsFilePath).parent / "UNetSegmentation" / "Models"
    assert run.model_path.parent == folder
    assert Path(parameters.checkpoint) == run.pick.path, "the better of the new model and its base is selected for the next run"
    assert ui.fineTuneStatusLabel.text.endswith(run.pick.reason) and run.pick.reason in ui.logTextEdit.lines[-1]
    assert any(line.startswith("Corrected by you: ribs, ") for line in ui.logTextEdit.lines), "a segmentation from a file: every class is the user's"
    assert str(run.model_path) in [data for _, data in ui.modelChoiceComboBox.items]
    widget.onModelChosen([data for _, data in ui.modelChoiceComboBox.items].index(str(run.model_path)))
    assert f"Fine-tuned from {mrml_support.CHEST_MODEL.name}" in ui.modelInfoLabel.text
    assert ui.fineTuneButton.text == "Fine-tune" and ui.fineTuneProgressBar.value == 100
    widget.cleanup()


@pytest.mark.child_process
def test_a_training_child_that_fails_says_so_in_its_own_words(tmp_path):
    run = FineTuneRun(FineTuneParameters(BUNDLED, tmp_path / "models", "mine"), python=sys.executable, temp_root=tmp_path)
    run.begin_exporting()
    run.image_path.write_bytes(b"not an image")
    run.label_path.write_bytes(b"not a label")
    run.start_training()
    assert run.wait(timeout_s=300) == states.FAILED
    assert run.message and "segmentation process" not in run.message
    assert not (tmp_path / "models").exists() and not run.folder.exists()
