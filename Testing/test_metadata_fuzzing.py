"""Checkpoint metadata from a hostile file, all the way to a Slicer segmentation (issue 13, class 3; hypothesis).

The classes of a real small checkpoint get names with line breaks, ``:``, ``:=`` and ``=``, header
field names, separators, backslashes, non-ASCII text and lone surrogates; terminology dicts of any
shape; colours and label values of any JSON type. Every case ends in exactly one of:

- a clear refusal when the checkpoint is loaded: a :class:`UserError` of one line naming the file
  (``unetseg info`` exits 2 with one ``unetseg: error:`` line);
- a correct result: the ``.seg.nrrd`` written from it holds exactly one segment per class, each
  with the class's own name, label value, colour and terminology, as ITK's NRRD reader (Slicer's)
  reads them back; slicerio reads the file; no partial file or lock is left.

Never a traceback, never a header that reads differently from the checkpoint. Bounded by default
(fixed seed, 60 examples); ``UNETSEG_FUZZ_EXAMPLES=5000`` for a long random run (docs/hardening.md).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from hypothesis import event, given
from hypothesis import strategies as st

from support import BOUNDED, create_checkpoint, leftovers, make_volume, run_cli
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.outputs import atomic_output
from UNetSegmentationLib.io.segment_fields import terminology_entry
from UNetSegmentationLib.io.segmentations import write_labels
from UNetSegmentationLib.model.checkpoint import load_checkpoint
from UNetSegmentationLib.model.header import read_safetensors_header

INJECTIONS = ["\n", "\r", "\r\n", ":=", ":", "=", "|", "~", "^", "\\", "\\n", "\t", "\x00", "\x7f", "\u0085", "\u2028", "\u202e", "\ud800",
              "Segment0_Name:=", "\nSegment1_Name:=left lung", "Segmentation_MasterRepresentation:=", "# comment", "右肺", "é", "ß", "🫁", " ", ""]
text_pieces = st.sampled_from(INJECTIONS) | st.text(max_size=8)
hostile_text = st.lists(text_pieces, min_size=1, max_size=5).map("".join) | st.text(max_size=300)
any_json = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=True, allow_infinity=True) | hostile_text
code = st.lists(hostile_text, min_size=0, max_size=4) | any_json
RIB = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list", "category": ["SCT", "123037004", "Anatomical Structure"],
       "type": ["SCT", "113197003", "Rib"], "anatomicContextName": "Anatomic codes - DICOM master list"}
terminology = (
    st.none()
    | st.just(RIB)
    | st.fixed_dictionaries({"category": code, "type": code}, optional={"contextName": hostile_text, "anatomicContextName": hostile_text,
                                                                       "typeModifier": code, "anatomicRegion": code, "anatomicRegionModifier": code})
    | st.dictionaries(hostile_text, any_json, max_size=3)
    | any_json
)
colour = st.lists(st.floats(-0.5, 1.5) | st.integers(-1, 2) | any_json, min_size=0, max_size=4) | any_json
label_value = st.integers(-2, 70000) | st.sampled_from([1, 2, 255, 256, 65535]) | any_json
hostile_class = st.fixed_dictionaries({"name": hostile_text, "value": label_value, "color": colour, "terminology": terminology})


def rib_with(field: str, part: int, text: str) -> dict:
    """The rib terminology with one part of one field replaced by ``text``."""
    changed = json.loads(json.dumps(RIB))
    if isinstance(changed[field], list):
        changed[field][part] = text
    else:
        changed[field] = text
    return changed


#: text a header can hold: any script, emoji, spaces, and the header's own punctuation (``:``, ``:=``, ``=``, ``#``)
_REFUSED_BY_DESIGN = "\\\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"  # backslash, bidi overrides
printable_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters=_REFUSED_BY_DESIGN), max_size=60) | st.lists(
    st.sampled_from([":=", ":", "=", "#", "Segment0_Name:=", "Segmentation_MasterRepresentation:=", "右肺", "é", "🫁", "lung", " "]), min_size=1, max_size=6).map("".join)
name_text = (printable_text | st.sampled_from(["右肺", "left lung", "Lunge rechts (ß)", "a: b = c", "rest|of~it^all"])).filter(lambda t: t.strip())
part_text = printable_text.filter(lambda t: not any(s in t for s in "~^|"))
#: classes a real model could have, with every character a header can hold: each must be written exactly
plausible_class = st.fixed_dictionaries({
    "name": name_text,
    "value": st.integers(1, 65535),
    "color": st.lists(st.floats(0, 1), min_size=3, max_size=3),
    "terminology": st.none() | st.just(RIB) | st.builds(rib_with, st.sampled_from(sorted(RIB)), st.integers(0, 2), part_text),
})


def distinct(classes: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(classes, min_size=2, max_size=2, unique_by=(lambda c: str(c["name"]).strip(), lambda c: str(c["value"])))


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A real two-class checkpoint's weights and metadata: the examples change only its classes."""
    from safetensors.torch import load_file

    path = create_checkpoint(tmp_path_factory.mktemp("metadata-fuzz") / "seed.safetensors", arch="unet", classes="lung,bone", features="4,8")
    return load_file(str(path)), json.loads(read_safetensors_header(path)["__metadata__"]["unetseg"])


def written(folder: Path, weights, metadata) -> Path:
    from safetensors.torch import save_file

    path = folder / "hostile.safetensors"
    save_file(weights, str(path), metadata={"unetseg": json.dumps(metadata)})
    return path


def check_segmentation(path: Path, classes) -> None:
    """The file holds exactly the classes, as Slicer's reader (ITK/Teem) and slicerio read them."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    fields = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys() if k.startswith("Segment")}
    assert sorted({k.split("_")[0] for k in fields if k.startswith("Segment") and k[7].isdigit()}) == [f"Segment{i}" for i in range(len(classes))]
    for index, info in enumerate(classes):
        prefix = f"Segment{index}_"
        assert fields[prefix + "Name"] == info.name
        assert fields[prefix + "LabelValue"] == str(info.value)
        assert [float(c) for c in fields[prefix + "Color"].split()] == list(info.color)
        expected_tags = f"TerminologyEntry:{terminology_entry(info.terminology)}|" if info.terminology else "|"
        assert fields[prefix + "Tags"] == expected_tags
    segments = slicerio.read_segmentation(str(path))["segments"]
    assert [(s["labelValue"], s["color"]) for s in segments] == [(c.value, list(c.color)) for c in classes]
    for segment, info in zip(segments, classes):
        if info.name.isascii():  # pynrrd (slicerio's reader) drops non-ASCII header bytes
            assert segment["name"] == info.name
        if json.dumps(info.terminology, ensure_ascii=False).isascii():
            assert segment.get("terminology") == info.terminology  # the checkpoint's, in the canonical form readers give


def refused_or_written(seed, classes) -> bool:
    """Load a checkpoint with ``classes``: refused with one clear line (False), or written to a
    .seg.nrrd that holds exactly these classes (True)."""
    weights, valid = seed
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checkpoint = written(folder, weights, {**valid, "classes": classes})
        try:
            loaded = load_checkpoint(checkpoint, weights=False)
        except UserError as refusal:
            event("refused at load")
            message = str(refusal)
            assert str(checkpoint) in message and "\n" not in message and "\r" not in message, message
            info = run_cli("info", checkpoint)
            assert info.code == 2 and len(info.stderr.strip().splitlines()) == 1, info.stderr
            return False
        event("written and read back")
        labels = np.zeros((2, 6, 6), dtype=np.uint16)
        for position, info in enumerate(loaded.metadata.classes):
            labels[position, 1:4, 1:4] = info.value
        output = folder / "result.seg.nrrd"
        with atomic_output([output]) as (temporary,):
            write_labels(labels, make_volume(size=(6, 6, 2)), temporary, loaded.metadata.classes, final_name=output)
        check_segmentation(output, loaded.metadata.classes)
        assert [c.name for c in loaded.metadata.classes] == [c["name"].strip() for c in classes]
        assert not leftovers(folder)
        assert run_cli("info", checkpoint).code == 0
        return True


@BOUNDED
@given(classes=distinct(plausible_class | hostile_class))
def test_any_class_metadata_is_refused_at_load_or_written_exactly(seed, classes):
    refused_or_written(seed, classes)


@BOUNDED
@given(classes=distinct(plausible_class))
def test_names_and_terminology_of_any_script_and_punctuation_are_written_exactly(seed, classes):
    """Nothing a header can hold is refused: ``右肺``, emoji, ``a: b = c``, ``Segment0_Name:=`` as text."""
    assert refused_or_written(seed, classes)
