"""Is this scan what the model was made for? Its modality, its values and its header against the checkpoint.

A network trained on CT in Hounsfield units segments whatever it is given: an MR series, or a CT
whose RescaleIntercept was lost on the way (every value 1024 too high: air at +24 instead of -1000,
soft tissue saturating the window), gives labels that look like labels, with high confidence, and
exit 0. The checkpoint says what it expects (:class:`~UNetSegmentationLib.model.metadata.Normalization`:
``ct`` with a window in HU, or ``mr``, standardised per volume); :func:`check_scan` compares the scan
with that and returns :class:`ScanFinding` s. The run goes on (the user may know better), and each
finding is a ``warning`` event, a manifest record's ``warnings`` and ``scan_flags``, and a flag in the
QC report.

What counts as Hounsfield units is physics, not the model's window: every body region holds air
(-1000 HU, outside the body, lungs, bowel) or at least fat (about -100 HU), so a CT in HU has a 1st
percentile far below 0, and almost nothing darker than air. The constant a scanner writes outside its
field of view (-3024 in the slicerio chest CT) is left out first. Then the 1st percentile is -1011 in
the slicerio CT, -1012 in TotalSegmentator's sample CT and -1014 in its DICOM series; the same series
without its RescaleIntercept has +10, TotalSegmentator's sample MR -2. An MR has no air at -1000: a
scan where more than :data:`CT_AIR_SHARE` of the voxels lie below -500 is a CT. A missing
RescaleIntercept is named only where the values show it was needed (a CT stored signed in HU needs
none). The statistics come from a strided sample of at most :data:`SAMPLE_VOXELS` voxels (a view of
the volume; no float copy of it): 2 to 10 ms for a 512 x 512 x 20 series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from UNetSegmentationLib.io.input_header import InputHeader
from UNetSegmentationLib.model.metadata import ModelMetadata

MODALITY, INTENSITY, HEADER = "modality", "intensity", "header"
#: the flags a finding may carry (the manifest's ``scan_flags``, the QC report's column)
SCAN_FLAGS = (MODALITY, INTENSITY, HEADER)
#: a CT in HU has values below this at its 1st percentile (fat is about -100 HU, air -1000 HU)
CT_LOWEST_PERCENTILE_HU = -50.0
#: share of voxels (the padding left out) darker than air, below -1200 HU, above which a CT is not in HU (the slicerio
#: CT has 0.8 %, TotalSegmentator's sample CT 0 %; with its intercept applied twice, 39 % to 62 %)
BELOW_AIR_SHARE = 0.10
#: share of voxels below -500 (air in HU) above which a scan given to an MR model is taken for a CT
CT_AIR_SHARE = 0.05
#: share of voxels inside a CT model's window below which the window holds almost nothing of the scan
MIN_WINDOW_SHARE = 0.10
#: the most voxels the statistics read
SAMPLE_VOXELS = 1 << 18
#: DICOM modalities each normalisation kind was made for
MODEL_MODALITIES = {"ct": ("CT",), "mr": ("MR",)}


@dataclass(frozen=True)
class ScanFinding:
    """One way the scan differs from what the model expects: ``flag`` (one of :data:`SCAN_FLAGS`) and the
    ``message`` the user reads (the ``warning`` event's text)."""

    flag: str
    message: str


def check_scan(header: InputHeader, volume: np.ndarray, metadata: ModelMetadata) -> List[ScanFinding]:
    """What about this scan (``header`` from :func:`~UNetSegmentationLib.io.volumes.inspect_input`, ``volume`` its
    voxels in any layout, only read) the model was not made for: modality, intensities, header fields. ``[]``: nothing."""
    kind = metadata.normalization.kind
    findings = _modality_findings(header, kind)
    sample = sample_voxels(volume)
    intensity = _intensity_findings(str(header.path), sample, metadata) if sample.size else []
    return findings + intensity + _header_findings(header, kind, values_wrong=bool(intensity))


def scan_warnings(findings: Sequence[ScanFinding]) -> List[str]:
    """The findings' messages, as ``warning`` events and the manifest's ``warnings`` carry them."""
    return [finding.message for finding in findings]


def scan_flags(findings: Sequence[ScanFinding]) -> List[str]:
    """The findings' flags, each once, in :data:`SCAN_FLAGS` order (the manifest's ``scan_flags``)."""
    return [flag for flag in SCAN_FLAGS if any(finding.flag == flag for finding in findings)]


def sample_voxels(volume: np.ndarray, limit: int = SAMPLE_VOXELS) -> np.ndarray:
    """At most about ``limit`` voxels of ``volume``, every n-th along each axis (a strided view, copied small)."""
    if volume.size == 0:
        return np.empty(0)
    step = max(int(np.ceil((volume.size / limit) ** (1.0 / volume.ndim))), 1)
    return np.asarray(volume[(slice(None, None, step),) * volume.ndim]).ravel()


def _model_words(kind: str, metadata_window) -> str:
    if kind == "ct":
        low, high = metadata_window
        return f"the model was made for CT in Hounsfield units (window {low:g} to {high:g} HU)"
    return "the model was made for MR"


def _modality_findings(header: InputHeader, kind: str) -> List[ScanFinding]:
    expected = MODEL_MODALITIES.get(kind, ())
    if not header.modality or not expected or header.modality in expected:
        return []
    return [ScanFinding(MODALITY, (
        f"{header.path}: the DICOM series is {header.modality} (its Modality) and the model was made for {'/'.join(expected)}: "
        "expect meaningless labels; segment it with a model made for this modality"
    ))]


def _header_findings(header: InputHeader, kind: str, values_wrong: bool) -> List[ScanFinding]:
    """DICOM fields whose absence explains wrong values (``values_wrong``: the intensity check found them) or leaves the
    modality unsaid. A CT stored in HU needs no RescaleIntercept: its absence alone is no finding."""
    if not header.dicom_files:
        return []
    absent = set(header.absent_fields)
    findings = []
    intercept = next((f for f in absent if f.startswith("RescaleIntercept")), None)
    if intercept and values_wrong and kind == "ct":
        findings.append(ScanFinding(HEADER, (
            f"{header.path}: the series has no {intercept}, so its values are the numbers as stored, not Hounsfield units "
            "(air near 0 instead of -1000): export it again with its rescale fields"
        )))
    modality = next((f for f in absent if f.startswith("Modality")), None)
    if modality:
        findings.append(ScanFinding(HEADER, f"{header.path}: the DICOM series has no {modality}; nothing says it is the {kind.upper()} the model was made for"))
    return findings


def _intensity_findings(source: str, sample: np.ndarray, metadata: ModelMetadata) -> List[ScanFinding]:
    normalization = metadata.normalization
    if normalization.kind == "ct":
        low, high = normalization.window
        tissue = _without_padding(sample)
        lowest = float(np.percentile(tissue, 1))
        below_air = float(np.mean(tissue < -1200))
        inside = float(np.mean((sample >= low) & (sample <= high)))
        if lowest >= CT_LOWEST_PERCENTILE_HU:
            return [ScanFinding(INTENSITY, (
                f"{source}: the scan's values do not look like Hounsfield units: 99% of them are at least {lowest:g} (a CT in HU has air at "
                f"-1000 and fat near -100), and {_model_words('ct', normalization.window)}; is it an MR, or a CT whose "
                "RescaleIntercept was lost? Expect meaningless labels"
            ))]
        if below_air > BELOW_AIR_SHARE:
            return [ScanFinding(INTENSITY, (
                f"{source}: {100 * below_air:.0f}% of the scan's values are below -1200, darker than air (-1000 HU), and "
                f"{_model_words('ct', normalization.window)}; was its RescaleIntercept applied twice, or is it not in HU? Expect meaningless labels"
            ))]
        if inside < MIN_WINDOW_SHARE:
            return [ScanFinding(INTENSITY, (
                f"{source}: only {100 * inside:.0f}% of the scan's values lie within the model's window of {low:g} to {high:g} HU: "
                "the model sees almost nothing of it; is it in Hounsfield units?"
            ))]
        return []
    air = float(np.mean(sample < -500))
    if air > CT_AIR_SHARE:
        return [ScanFinding(INTENSITY, (
            f"{source}: {100 * air:.0f}% of the scan's values are below -500, as air is in a CT in Hounsfield units, and "
            f"{_model_words('mr', None)}: expect meaningless labels; segment it with a CT model"
        ))]
    return []


def _without_padding(sample: np.ndarray) -> np.ndarray:
    """``sample`` without its lowest value where that value fills at least 1 % of it: the constant a scanner writes
    outside its field of view (-3024, -2048, 0) or a clipped background says nothing about the scan's tissue."""
    lowest = sample.min()
    rest = sample[sample != lowest]
    return rest if rest.size and rest.size <= 0.99 * sample.size else sample
