"""The geometry rules (UNetSegmentationLib/geometry/): one numpy-free answer to "how many slices apart
are the neighbours", "are these slices thinner than the model's" and "which axis do slices run along",
asked by the engine (prediction, training) and by the Slicer side alike.

Each test puts the engine's answer beside the panel's on a table of cases: before issue 22 the panel's
thin-slice test and the engine's differed (slices 9.9501 mm apart for a 10 mm model: thin for the engine,
"nothing to resample" for the panel).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mrml_support
from UNetSegmentationLib.geometry.slice_axes import slice_axes
from UNetSegmentationLib.geometry.slice_distance import neighbour_step, thinner_slices
from UNetSegmentationLib.inference.resolution import plan_model_grid
from UNetSegmentationLib.inference.slicing import SliceGeometry
from UNetSegmentationLib.model.header import read_metadata
from UNetSegmentationLib.panel.checkpoints import spacing_text

mrml = mrml_support.mrml
BUNDLED = read_metadata(mrml_support.CHEST_MODEL)  # 3.05 x 3.05 mm in-plane, neighbours 10 mm apart
ENGINE = Path(__file__).resolve().parent.parent / "UNetSegmentation"

#: slice spacings (mm) against the bundled model's 10 mm: thin, the 0.5 % edge on both sides, equal, thicker
SPACINGS = [0.6, 2.5, 5.0, 9.9, 9.9501, 9.96, 10.0, 10.04, 12.0, 50.0]


def engine_is_thin(metadata, between: float) -> bool:
    """What predict does: the network at fewer positions than the scan has slices."""
    row, column = BUNDLED.in_plane_spacing  # in-plane at the bundled model's spacing: only the slices differ
    grid = plan_model_grid((between, row, column), metadata)
    return len(grid.network_positions(100_000)) < 100_000


def panel_is_thin(metadata, between: float) -> bool:
    """What the panel tells the user before the run (in-plane already at the model's spacing)."""
    row, column = BUNDLED.in_plane_spacing  # in-plane at the bundled model's spacing: only the slices differ
    return spacing_text(metadata, (row, column, between)).endswith("resampled to the model's spacing")


@pytest.mark.parametrize("between", SPACINGS)
def test_the_panel_and_the_engine_agree_whether_slices_are_thinner_than_the_models(between):
    expected = between < 10.0 / 1.005  # more than one slice between neighbours, beyond the 0.5 % tolerance
    assert engine_is_thin(BUNDLED, between) == panel_is_thin(BUNDLED, between) == thinner_slices(10.0, between) == expected


@pytest.mark.parametrize("between", SPACINGS)
def test_prediction_and_training_take_the_neighbours_the_same_slices_apart(between):
    row, column = BUNDLED.in_plane_spacing
    assert plan_model_grid((between, row, column), BUNDLED).context_step == neighbour_step(10.0, between, 1) == pytest.approx(10.0 / between)


def test_no_neighbour_distance_means_the_next_slice_and_no_thin_path():
    no_context = dataclasses.replace(BUNDLED, context=0)
    no_distance = dataclasses.replace(BUNDLED, slice_distance=None, training_spacing=None)
    for metadata in (no_context, no_distance):
        assert plan_model_grid((2.5, 3.05, 3.05), metadata).context_step == 1.0
        assert not engine_is_thin(metadata, 2.5) and not panel_is_thin(metadata, 2.5)
    assert [neighbour_step(d, s) for d, s in ((None, 2.5), (10.0, 0.0), (10.0, -1.0))] == [1.0, 1.0, 1.0]


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(3)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


#: IJK→RAS directions: axial, sagittal and coronal stacks, flipped axes, oblique ones, and a 45° tie
DIRECTIONS = {
    "axial": np.eye(3),
    "axial, flipped": np.diag([-1.0, -1.0, 1.0]),
    "sagittal": np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float),
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=float),
    "tilted 20°": rotation(0, 20),
    "oblique": rotation(0, 35) @ rotation(1, -15) @ rotation(2, 50),
    "45° tie": rotation(0, 45),
}


@pytest.mark.mrml
@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_the_slicer_side_and_the_engine_choose_the_same_slice_axes(mrml, name):
    ras = DIRECTIONS[name]
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = ras * np.array([0.8, 1.1, 3.5])
    node = mrml.volume_from_array(np.zeros((6, 5, 4), dtype=np.int16), ijk_to_ras, name)
    lps = np.diag([-1.0, -1.0, 1.0]) @ ras
    engine = SliceGeometry.from_direction(lps.ravel())
    assert mrml.layer("slices").slice_axes(node) == (engine.slice_axis, engine.row_axis, engine.column_axis) == slice_axes(ras.T.tolist())
    for forced in range(3):  # --axis i/j/k
        assert mrml.layer("slices").slice_axes(node, forced)[0] == SliceGeometry.from_direction(lps.ravel(), forced).slice_axis == forced


@pytest.mark.child_process
def test_the_rules_import_nothing_heavy():
    """The panel's GUI process asks them: no numpy, torch or SimpleITK behind them."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(ENGINE)!r})\n"
        "from UNetSegmentationLib.geometry import slice_axes, slice_distance, spacing_match\n"
        "print(json.dumps([m for m in ('numpy', 'torch', 'SimpleITK') if m in sys.modules]))\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout) == []
