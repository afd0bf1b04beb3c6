"""Checkpoints under arbitrary input: property-based tests and a fuzzing run (hypothesis).

- The metadata parser: any JSON value (or any text) either parses into valid metadata that survives
  a round trip, or raises UserError — never another exception.
- The checkpoint loader under byte- and JSON-level mutations of a real small checkpoint:
  ``read_metadata``, ``load_checkpoint`` and ``build_model`` only ever succeed or raise UserError.

Bounded by default (a fixed seed and a few dozen examples per property: the file runs in seconds).
A longer, random fuzzing run (see docs/hardening.md)::

    UNETSEG_FUZZ_EXAMPLES=5000 python -m pytest Testing/test_checkpoint_fuzzing.py -q
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import BOUNDED, create_checkpoint
from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint
from UNetSegmentationLib.model.header import read_metadata
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ModelMetadata



# --- strategies ------------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)  # json.loads accepts NaN and Infinity
    | st.text(max_size=12)
    | st.sampled_from(["ct", "mr", "unet", "unetplusplus", "²", "٣", "1", "", "features", "kind", "window", 10**400, -(10**400)])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=16,
)

VALID = {
    "format_version": 1,
    "architecture": {"name": "unetplusplus", "kwargs": {"in_channels": 3, "out_channels": 3, "features": [4, 8, 16], "norm": "batch"}},
    "context": 1,
    "normalization": {"kind": "ct", "window": [-1000, 1000]},
    "classes": [
        {"value": 1, "name": "lung", "color": [0.1, 0.8, 0.3], "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "39607008", "Lung"]}},
        {"value": 2, "name": "bone", "color": [1, 1, 0.8]},
    ],
    "training_spacing": [0.8, 0.8],
    "depth_metrics": {"1": {"dice": 0.8, "ms_per_slice": 1.5}, "2": {"dice": 0.9, "ms_per_slice": 3.0}},
    "recommended_depth": 2,
    "training": {"epochs": 3},
}


def locations(value, path=()):
    """Every (path) into a JSON value, the root excluded."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield path + (key,)
        yield from locations(child, path + (key,))


@st.composite
def mutated(draw, base):
    """``base`` with one to three places replaced by any JSON value, deleted, or given an extra key."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        places = list(locations(data))
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
        else:
            parent[path[-1]] = draw(json_values)
    return data


def parses_or_refuses(data):
    """The property: valid metadata (that survives a round trip), or a UserError with a message."""
    try:
        metadata = ModelMetadata.from_json(data)
    except UserError as error:
        assert str(error).strip()
        return None
    again = ModelMetadata.from_json(json.loads(metadata.dumps()))
    assert again.dumps() == metadata.dumps()
    assert metadata.classes and len({c.value for c in metadata.classes}) == len(metadata.classes)
    assert all(1 <= c.value <= 65535 for c in metadata.classes)
    assert metadata.kwargs["in_channels"] == 2 * metadata.context + 1
    assert metadata.kwargs["out_channels"] == (1 if len(metadata.classes) == 1 else len(metadata.classes) + 1)
    return metadata


# --- the metadata parser ------------------------------------------------------------------------------


def test_the_reference_metadata_is_valid():
    assert parses_or_refuses(VALID) is not None


@BOUNDED
@given(json_values)
def test_any_json_value_parses_or_is_refused(data):
    parses_or_refuses(data)


@BOUNDED
@given(mutated(VALID))
def test_any_change_to_valid_metadata_parses_or_is_refused(data):
    parses_or_refuses(data)


@BOUNDED
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps), mutated(VALID).map(json.dumps)))
def test_any_text_parses_or_is_refused(text):
    try:
        ModelMetadata.loads(text)
    except UserError as error:
        assert str(error).strip()


def test_deeply_nested_json_is_refused_not_a_crash():
    with pytest.raises(UserError):
        ModelMetadata.loads("[" * 100_000 + "]" * 100_000)


# --- fuzzing the checkpoint loader --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_checkpoint(tmp_path_factory):
    """A real small checkpoint (two-class U-Net, features 4,8) and a scratch file for the mutants."""
    folder = tmp_path_factory.mktemp("fuzz")
    path = create_checkpoint(folder / "seed.safetensors", arch="unet", classes="a,b", features="4,8")
    data = path.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    return data, 8 + header_length, folder / "mutant.safetensors"


def loads_or_refuses(path: Path) -> None:
    """The property of the loader: success, or a UserError with a message; nothing else."""
    try:
        read_metadata(path)
    except UserError as error:
        assert str(error).strip()
    try:
        checkpoint = load_checkpoint(path)
    except UserError as error:
        assert str(error).strip()
        return
    try:
        build_model(checkpoint)
    except UserError as error:
        assert str(error).strip()


@st.composite
def byte_mutations(draw, data: bytes, header_end: int):
    """One to six byte edits, mostly inside the JSON header: set, insert, delete, truncate, new length."""
    mutant = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not mutant:
            break
        end = min(len(mutant), draw(st.sampled_from([header_end, header_end, len(mutant)])))
        position = draw(st.integers(0, max(0, end - 1)))
        kind = draw(st.sampled_from(["set", "set", "insert", "delete", "truncate", "length"]))
        if kind == "set":
            mutant[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            mutant[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del mutant[position:position + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del mutant[position:]
        else:
            mutant[0:8] = struct.pack("<Q", draw(st.sampled_from([0, 1, 2, header_end - 9, header_end - 7, len(data), 2**63, 2**64 - 1])))
    return bytes(mutant)


@st.composite
def header_mutations(draw, data: bytes, header_end: int):
    """Valid JSON, wrong content: the header (tensor table: dtype, shape, offsets) or the metadata
    inside it changed by :func:`mutated`, re-encoded with a consistent length."""
    header = json.loads(data[8:header_end])
    if draw(st.booleans()):
        metadata = json.loads(header["__metadata__"]["unetseg"])
        header["__metadata__"]["unetseg"] = json.dumps(draw(mutated(metadata)))
    else:
        header = draw(mutated(header))
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data[header_end:]


def test_the_seed_checkpoint_loads(seed_checkpoint):
    data, _, mutant = seed_checkpoint
    mutant.write_bytes(data)
    build_model(load_checkpoint(mutant))


@BOUNDED
@given(data=st.data())
def test_byte_mutations_of_a_checkpoint_load_or_are_refused(seed_checkpoint, data):
    seed, header_end, mutant = seed_checkpoint
    mutant.write_bytes(data.draw(byte_mutations(seed, header_end)))
    loads_or_refuses(mutant)


@BOUNDED
@given(data=st.data())
def test_header_mutations_of_a_checkpoint_load_or_are_refused(seed_checkpoint, data):
    seed, header_end, mutant = seed_checkpoint
    mutant.write_bytes(data.draw(header_mutations(seed, header_end)))
    loads_or_refuses(mutant)
