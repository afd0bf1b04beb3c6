"""Fetches and prepares the training data of the many-organ CT model (issue 24) from the package registries alone.

    python Resources/Tools/prepare_training_data.py --output training-data [--cache DIR] [--offline] [--overwrite]

1. Fetches, with pip, the TotalSegmentator 2.18.0 source distribution and the slicerio 1.4.0 wheel into
   ``--cache`` (default ``~/.cache/unetseg/training-data``), and checks each against the SHA-256 pinned
   here: a different file stops the run (the training set would silently change).
2. Reads the labelled CTs they hold (the volumes issue 24 names, and only these) and writes, into
   ``--output``: ``images/CASE.nii.gz`` (int16 HU), ``labels/CASE.nii.gz`` (one uint8 label map per
   volume, in the class scheme of ``training_data_scheme.py``), ``classes.json`` (values, names, colours,
   Slicer terminology), ``datalist.json`` (MONAI decathlon style, with each case's ``patient``,
   ``labelled_classes`` and leave-one-patient-out ``fold``) and ``manifest.json`` (every file read and
   written with its size and SHA-256, the evidence for the patient grouping, voxel counts per class,
   and the labelled files left out, with why).

The output folder appears whole or not at all; an existing one is replaced only with ``--overwrite``
and only when it holds a manifest of this tool. ``docs/training-data.md`` is the data card.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import training_data_scheme as scheme  # noqa: E402

TOOL = "prepare_training_data"
TS_VERSION = "2.18.0"
TS_SDIST = f"totalsegmentator-{TS_VERSION}.tar.gz"
TS_SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
SLICERIO_VERSION = "1.4.0"
SLICERIO_WHEEL = f"slicerio-{SLICERIO_VERSION}-py3-none-any.whl"
SLICERIO_WHEEL_SHA256 = "ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b"
#: the two slicerio data files, pinned too: the installed package's copy is used when offline
SLICERIO_FILES = {
    "CTChest4.nrrd": "439ee098e50ee8e3254bd80ed8bcf7f8d006da4cab35be7a65b61ccb30dd6a3d",
    "Segmentation.seg.nrrd": "1a35d7165f51521cf4c747d81278eb461e5f151b0ea43f1bfb38fba3453140cf",
}
REFERENCE = "tests/reference_files/"
#: the sdist's files this tool reads (paths inside ``totalsegmentator-2.18.0/``)
TS_FILES = (
    "LICENSE",
    "PKG-INFO",
    "totalsegmentator/map_to_binary.py",
    REFERENCE + "example_ct.nii.gz",
    REFERENCE + "example_ct_sm.nii.gz",
    REFERENCE + "example_seg.nii.gz",
    REFERENCE + "spine_report/example_ct_report/totalseg.nii.gz",
    REFERENCE + "spine_report/example_ct_report/contrast_phase.json",
    REFERENCE + "aorta_report/example_ct.nii.gz",
    REFERENCE + "aorta_report/test_result/models/aorta.nii.gz",
    REFERENCE + "aorta_report/test_result/models/ct_cropped.nii.gz",
    REFERENCE + "aorta_report/test_result/models/contrast_phase.json",
    REFERENCE + "pulmonary_report/models/heart.nii.gz",
    REFERENCE + "pulmonary_report/models/ct_cropped.nii.gz",
)
#: the patient each source declares; ``scheme.group_patients`` merges those whose voxels coincide
DECLARED_PATIENTS = {
    "ctchest4": "slicerio-ctchest",
    "example_ct_sm": "ts-abdomen",
    "example_ct": "ts-abdomen-full",
    "chest_cta": "ts-chest-cta",
}
#: labelled files in the sdist not trained on, by name pattern, with why (first match wins)
LEFT_OUT = (
    ("example_ct_dicom/", "test only: the unseen patient of issue 24 (with example_seg_dicom.nii.gz)"),
    ("example_seg_dicom", "test only: labels of the unseen patient example_ct_dicom/"),
    ("_mr", "MR, not CT"),
    ("example_seg_fast", "TotalSegmentator --fast output for example_ct(_sm): a second, coarser labelling of a training patient"),
    ("example_seg_roi_subset", "a subset of example_seg.nii.gz (liver, brain)"),
    ("example_seg_lung_vessels/", "lung vessels/airways: no class here (and empty in these slices)"),
    ("example_seg_tissue_types/", "tissue types (fat, muscle): no class here"),
    ("example_seg_appendicular_bones/", "appendicular bones: no class here (empty in these slices)"),
    ("spine_report/test_result/", "vertebral bodies / refined vertebrae of example_ct: the same vertebrae as totalseg.nii.gz"),
    ("spine_report/example_ct_report/totalseg_vertebrae_body", "vertebral bodies and discs: no class here"),
    ("models/ct.nii.gz", "a copy of aorta_report/example_ct.nii.gz (same SHA-256)"),
    ("aorta_report/test_result/models/vertebrae_T12", "one vertebra: cannot label the thoracic column (T1-T11 unlabelled)"),
    ("aorta_report/", "aortic sub-structures, branches, lumens, landmarks: no class here"),
    ("pulmonary_report/", "pulmonary artery and its landmarks: no class here"),
)


class PreparationError(Exception):
    """A problem with the sources or the output folder: one message, exit status 2, nothing written."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_record(name: str, data: bytes) -> Dict[str, Any]:
    return {"file": name, "bytes": len(data), "sha256": sha256(data)}


# --- fetching -----------------------------------------------------------------------------------------


def fetch(spec: str, filename: str, expected: str, cache: Path, binary: bool, offline: bool) -> bytes:
    """The distribution ``filename`` from ``cache``, downloaded with pip when missing; its SHA-256 checked."""
    path = cache / filename
    if not path.is_file() or sha256(path.read_bytes()) != expected:
        if offline:
            raise PreparationError(f"{path} is missing or not the pinned file, and --offline forbids downloading it")
        cache.mkdir(parents=True, exist_ok=True)
        kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, spec, "-d", str(cache)]
        print("$ " + " ".join(command[2:]), file=sys.stderr)
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0 or not path.is_file():
            raise PreparationError(f"pip could not download {spec}:\n{result.stdout[-2000:]}")
    data = path.read_bytes()
    if sha256(data) != expected:
        raise PreparationError(f"{path}: SHA-256 {sha256(data)} is not the pinned {expected}: the source changed")
    return data


def sdist_files(archive: bytes) -> Tuple[Dict[str, bytes], List[str]]:
    """The files of :data:`TS_FILES` from the sdist (regular files only), and every member name."""
    prefix = f"totalsegmentator-{TS_VERSION}/"
    files: Dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = tar.getnames()
        for name in TS_FILES:
            member = tar.getmember(prefix + name)
            if not member.isfile():
                raise PreparationError(f"{TS_SDIST}: {name} is not a regular file")
            files[name] = tar.extractfile(member).read()
    return files, [n[len(prefix):] for n in names if n.startswith(prefix)]


def slicerio_files(wheel: Optional[bytes]) -> Dict[str, bytes]:
    """CTChest4.nrrd and Segmentation.seg.nrrd from the wheel, else from the installed package; pinned hashes checked."""
    files: Dict[str, bytes] = {}
    for name, expected in SLICERIO_FILES.items():
        if wheel is not None:
            data = zipfile.ZipFile(io.BytesIO(wheel)).read(f"slicerio/data/{name}")
        else:
            import slicerio

            data = (Path(slicerio.__file__).parent / "data" / name).read_bytes()
        if sha256(data) != expected:
            raise PreparationError(f"slicerio's {name}: SHA-256 {sha256(data)} is not the pinned {expected}")
        files[name] = data
    return files


def total_class_map(source: bytes) -> Dict[int, str]:
    """``class_map["total"]`` of ``map_to_binary.py``, read as a literal (the module is not imported)."""
    for node in ast.parse(source.decode("utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            return {int(k): str(v) for k, v in ast.literal_eval(node.value)["total"].items()}
    raise PreparationError("map_to_binary.py holds no class_map literal")


# --- reading ------------------------------------------------------------------------------------------


def read_image(data: bytes, suffix: str, scratch: Path):
    """A SimpleITK image from bytes (ITK reads files: a scratch copy)."""
    import SimpleITK as sitk

    path = scratch / f"read{suffix}"
    path.write_bytes(data)
    image = sitk.ReadImage(str(path))
    path.unlink()
    return image


def array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def same_grid(a, b) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3) and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def header_offset(big, small) -> Tuple[int, int, int]:
    """Where ``small``'s first voxel lies in ``big``'s grid by the headers, as (slice, row, column)."""
    index = big.TransformPhysicalPointToContinuousIndex(small.GetOrigin())
    return tuple(int(round(v)) for v in index[::-1])


def place_crop(full, crop_ct, crop_mask, what: str) -> np.ndarray:
    """A mask made on a cropped copy of ``full``, put into ``full``'s grid: the crop's offset comes from
    its header and is confirmed by its voxels (within 2 HU: the crop was resampled once)."""
    offset = header_offset(full, crop_ct)
    if scheme.find_sub_block(array(full), array(crop_ct), tolerance=2.0, candidates=[offset]) != offset:
        raise PreparationError(f"{what}: its cropped CT is not the block of the full CT its header names")
    out = np.zeros(array(full).shape, dtype=bool)
    mask = array(crop_mask) > 0
    out[tuple(slice(o, o + s) for o, s in zip(offset, mask.shape))] = mask
    return out


def slicer_labels(segmentation_bytes: bytes, ct, scratch: Path) -> Tuple[np.ndarray, List[str]]:
    """The slicerio segmentation in our values (read with slicerio), on the CT's grid; its labelled classes."""
    import slicerio

    path = scratch / "segmentation.seg.nrrd"
    path.write_bytes(segmentation_bytes)
    segmentation = slicerio.read_segmentation(str(path))
    path.unlink()
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim != 3 or list(segmentation.get("referenceImageExtentOffset", [0, 0, 0])) != [0, 0, 0]:
        raise PreparationError("Segmentation.seg.nrrd: expected one layer on the CT's whole grid")
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    expected = np.eye(4)
    expected[:3, :3] = np.asarray(ct.GetDirection()).reshape(3, 3) * np.asarray(ct.GetSpacing())
    expected[:3, 3] = ct.GetOrigin()
    if voxels.shape != ct.GetSize() or not np.allclose(ijk_to_lps, expected, atol=1e-3):
        raise PreparationError("Segmentation.seg.nrrd is not on CTChest4.nrrd's grid")
    names = {int(s["labelValue"]): s["name"] for s in segmentation["segments"]}
    unknown = sorted(set(names.values()) - set(scheme.SLICER_SEGMENTS))
    if unknown:
        raise PreparationError(f"Segmentation.seg.nrrd: segments without a class rule: {unknown}")
    labels = scheme.remap_labels(voxels.transpose(2, 1, 0), names, scheme.SLICER_SEGMENTS.get)
    return labels, scheme.covered_classes(names.values(), scheme.SLICER_SEGMENTS.get)


# --- the cases ----------------------------------------------------------------------------------------


def build_cases(ts: Dict[str, bytes], sl: Dict[str, bytes], scratch: Path) -> List[Dict[str, Any]]:
    """Each case: name, image (SimpleITK), labels (our values), labelled classes, and where they came from."""
    total = total_class_map(ts["totalsegmentator/map_to_binary.py"])
    cases = []

    ct = read_image(sl["CTChest4.nrrd"], ".nrrd", scratch)
    labels, labelled = slicer_labels(sl["Segmentation.seg.nrrd"], ct, scratch)
    cases.append({"name": "ctchest4", "image": ct, "labels": labels, "labelled": labelled,
                  "sources": ["slicerio: data/CTChest4.nrrd", "slicerio: data/Segmentation.seg.nrrd (segments by name; 'tissue' dropped: it holds organs that are classes)"]})

    sm = read_image(ts[REFERENCE + "example_ct_sm.nii.gz"], ".nii.gz", scratch)
    seg = read_image(ts[REFERENCE + "example_seg.nii.gz"], ".nii.gz", scratch)
    if not same_grid(sm, seg):
        raise PreparationError("example_seg.nii.gz is not on example_ct_sm.nii.gz's grid")
    labels = scheme.add_body(scheme.remap_labels(array(seg), total), array(sm))
    cases.append({"name": "example_ct_sm", "image": sm, "labels": labels,
                  "labelled": scheme.covered_classes(total.values()) + [scheme.BODY],
                  "sources": ["totalsegmentator sdist: example_ct_sm.nii.gz",
                              "example_seg.nii.gz (TotalSegmentator 'total', all 117 structures; names from class_map['total'])",
                              "body: derived here (scheme.body_outline minus every other class)"]})

    full = read_image(ts[REFERENCE + "example_ct.nii.gz"], ".nii.gz", scratch)
    spine = read_image(ts[REFERENCE + "spine_report/example_ct_report/totalseg.nii.gz"], ".nii.gz", scratch)
    if not same_grid(full, spine):
        raise PreparationError("spine_report totalseg.nii.gz is not on example_ct.nii.gz's grid")
    vertebrae = {v: n for v, n in total.items() if n.startswith("vertebrae_")}
    present = set(np.unique(array(spine)).tolist()) - {0}
    if not present <= set(vertebrae):
        raise PreparationError(f"spine_report totalseg.nii.gz holds non-vertebra values {sorted(present - set(vertebrae))}")
    cases.append({"name": "example_ct", "image": full, "labels": scheme.remap_labels(array(spine), vertebrae),
                  "labelled": scheme.covered_classes(vertebrae.values()),
                  "sources": ["totalsegmentator sdist: example_ct.nii.gz",
                              "spine_report/example_ct_report/totalseg.nii.gz (vertebrae S1-T11, class_map['total'] values)"]})

    cta = read_image(ts[REFERENCE + "aorta_report/example_ct.nii.gz"], ".nii.gz", scratch)
    aorta = place_crop(cta, read_image(ts[REFERENCE + "aorta_report/test_result/models/ct_cropped.nii.gz"], ".nii.gz", scratch),
                       read_image(ts[REFERENCE + "aorta_report/test_result/models/aorta.nii.gz"], ".nii.gz", scratch), "aorta_report aorta.nii.gz")
    heart = read_image(ts[REFERENCE + "pulmonary_report/models/heart.nii.gz"], ".nii.gz", scratch)
    if not same_grid(cta, heart):
        raise PreparationError("pulmonary_report heart.nii.gz is not on aorta_report/example_ct.nii.gz's grid")
    pulmonary_ct = read_image(ts[REFERENCE + "pulmonary_report/models/ct_cropped.nii.gz"], ".nii.gz", scratch)
    if scheme.find_sub_block(array(cta), array(pulmonary_ct), 2.0, [header_offset(cta, pulmonary_ct)]) is None:
        raise PreparationError("pulmonary_report's CT is not a block of aorta_report/example_ct.nii.gz")
    labels, overlaps = scheme.combine_masks(array(cta).shape, [("heart", array(heart) > 0), ("aorta", aorta)])
    cases.append({"name": "chest_cta", "image": cta, "labels": labels, "labelled": ["aorta", "heart"], "overlaps": overlaps,
                  "sources": ["totalsegmentator sdist: aorta_report/example_ct.nii.gz (also the pulmonary report's CT: its crop is a block of it)",
                              "aorta_report/test_result/models/aorta.nii.gz (on the crop ct_cropped.nii.gz, placed by header and voxels)",
                              "pulmonary_report/models/heart.nii.gz (TotalSegmentator total --fast, roi aorta+heart); aorta wins where they overlap"]})
    for case in cases:
        scheme.check_labelled(case["labels"], case["labelled"], case["name"])
    return cases


def left_out(names: Sequence[str], used: Sequence[str]) -> List[Dict[str, str]]:
    """Every NIfTI or DICOM file under the sdist's reference files that is not trained on, with why."""
    out = []
    for name in sorted(names):
        if not name.startswith(REFERENCE) or name in used or not (name.endswith(".nii.gz") or "/example_ct_dicom/" in f"/{name}"):
            continue
        relative = name[len(REFERENCE):]
        reason = next((why for pattern, why in LEFT_OUT if pattern in relative), "not a label of a training volume (CT copy or image)")
        out.append({"file": relative, "why": reason})
    return summarised(out)


def summarised(entries: List[Dict[str, str]], most: int = 3) -> List[Dict[str, str]]:
    """Entries of one folder with one reason, when more than ``most``, as one entry ``folder/ (N files)``."""
    groups: Dict[Tuple[str, str], List[Dict[str, str]]] = {}
    for entry in entries:
        groups.setdefault((entry["file"].rpartition("/")[0], entry["why"]), []).append(entry)
    out = []
    for (folder, why), members in groups.items():
        out += [{"file": f"{folder}/ ({len(members)} files)", "why": why}] if folder and len(members) > most else members
    return sorted(out, key=lambda e: e["file"])


def patient_facts(cases: List[Dict[str, Any]], ts: Dict[str, bytes]) -> Tuple[Dict[str, str], List[Dict[str, Any]]]:
    """Patients by voxel evidence (scheme.group_patients), plus the acquisition facts that bear on the rest."""
    import json

    facts = [scheme.VolumeFacts(c["name"], array(c["image"]), tuple(c["image"].GetSpacing()[::-1]), DECLARED_PATIENTS[c["name"]]) for c in cases]
    patients, evidence = scheme.group_patients(facts)
    phase = {"example_ct": json.loads(ts[REFERENCE + "spine_report/example_ct_report/contrast_phase.json"])["phase"],
             "chest_cta": json.loads(ts[REFERENCE + "aorta_report/test_result/models/contrast_phase.json"])["phase"]}
    evidence.append({"cases": ["example_ct", "chest_cta"], "finding": (
        f"different examinations: contrast phase {phase['example_ct']} vs {phase['chest_cta']} (TotalSegmentator's own estimates), "
        "3 mm vs 1.5 mm voxels, abdomen-pelvis vs neck-to-upper-abdomen, no shared frame of reference; "
        "their anatomy overlaps only at T12, where it neither shows nor excludes one person: kept as two patients")})
    return patients, evidence


# --- writing ------------------------------------------------------------------------------------------


def write_volume(image, path: Path, labels: Optional[np.ndarray] = None) -> bytes:
    """An int16 CT (or, with ``labels``, a uint8 label map on its grid) as compressed NIfTI; its bytes."""
    import SimpleITK as sitk

    if labels is None:
        voxels = array(image)
        if voxels.min() < -32768 or voxels.max() > 32767:
            raise PreparationError(f"{path.name}: HU outside int16")
        out = sitk.GetImageFromArray(voxels.astype(np.int16))
    else:
        out = sitk.GetImageFromArray(labels.astype(np.uint8))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path), True)
    return path.read_bytes()


def prepare(output: Path, cache: Path, offline: bool, overwrite: bool) -> Dict[str, Any]:
    """The whole run; returns the manifest."""
    output = output.resolve()
    if output.exists() and not (overwrite and (output / "manifest.json").is_file()):
        raise PreparationError(f"{output} exists: pass --overwrite to replace a folder this tool wrote" if not overwrite
                               else f"{output} holds no manifest.json of this tool: not replacing it")
    sdist = fetch(f"totalsegmentator=={TS_VERSION}", TS_SDIST, TS_SDIST_SHA256, cache, binary=False, offline=offline)
    try:
        wheel = fetch(f"slicerio=={SLICERIO_VERSION}", SLICERIO_WHEEL, SLICERIO_WHEEL_SHA256, cache, binary=True, offline=offline)
    except PreparationError:
        if not offline:
            raise
        wheel = None  # offline without the wheel: the installed slicerio's data files, hashes checked
    ts, members = sdist_files(sdist)
    sl = slicerio_files(wheel)
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    (partial / "labels").mkdir()
    try:
        manifest = write_all(partial, output.name, ts, sl, members, sdist, wheel)
        if output.exists():
            shutil.rmtree(output)
        partial.rename(output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return manifest


def write_all(folder: Path, name: str, ts, sl, members, sdist: bytes, wheel: Optional[bytes]) -> Dict[str, Any]:
    """Every output file into ``folder`` (the partial output); the manifest (``name``: the output's)."""
    cases = build_cases(ts, sl, folder)
    patients, evidence = patient_facts(cases, ts)
    records, outputs, summaries = [], [], []
    for case in cases:
        image_name, label_name = f"images/{case['name']}.nii.gz", f"labels/{case['name']}.nii.gz"
        outputs.append(file_record(image_name, write_volume(case["image"], folder / image_name)))
        outputs.append(file_record(label_name, write_volume(case["image"], folder / label_name, case["labels"])))
        records.append(scheme.CaseRecord(case["name"], image_name, label_name, patients[case["name"]], tuple(case["labelled"])))
        summaries.append({"name": case["name"], "patient": patients[case["name"]], "size": list(case["image"].GetSize()),
                          "spacing_mm": [round(s, 4) for s in case["image"].GetSpacing()], "sources": case["sources"],
                          "labelled_classes": [c.name for c in scheme.CLASSES if c.name in case["labelled"]],
                          "voxels_per_class": scheme.voxel_counts(case["labels"]), "overlaps_resolved": case.get("overlaps", {})})
    datalist = scheme.build_datalist(records, "Labelled real CTs of the TotalSegmentator 2.18.0 sdist and slicerio 1.4.0 (issue 24); "
                                     "a case's classes outside labelled_classes are unknown, not background")
    scheme.write_json(folder / "classes.json", [c.to_json() for c in scheme.CLASSES])
    scheme.write_json(folder / "datalist.json", datalist)
    for name in ("classes.json", "datalist.json"):
        outputs.append(file_record(name, (folder / name).read_bytes()))
    manifest = {
        "tool": TOOL,
        "command": f"python Resources/Tools/prepare_training_data.py --output {name}",
        "sources": [
            {"package": "totalsegmentator", "version": TS_VERSION, **file_record(TS_SDIST, sdist), "licence": "Apache-2.0 (LICENSE, PKG-INFO)",
             "fetched_with": f"pip download --no-deps --no-binary :all: totalsegmentator=={TS_VERSION}"},
            {"package": "slicerio", "version": SLICERIO_VERSION, **(file_record(SLICERIO_WHEEL, wheel) if wheel else {"file": "installed package"}),
             "licence": "MIT (package licence; the data folder carries no other)", "fetched_with": f"pip download --no-deps --only-binary :all: slicerio=={SLICERIO_VERSION}"},
        ],
        "files_read": [file_record(f"totalsegmentator-{TS_VERSION}/{n}", d) for n, d in ts.items()] + [file_record(f"slicerio/data/{n}", d) for n, d in sl.items()],
        "outputs": outputs,
        "cases": summaries,
        "patients": evidence,
        "left_out": left_out(members, [n for n in TS_FILES]),
    }
    scheme.write_json(folder / "manifest.json", manifest)
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="folder to write (must not exist, or see --overwrite)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "unetseg" / "training-data", help="where the downloaded distributions are kept")
    parser.add_argument("--offline", action="store_true", help="download nothing: use the cache (and the installed slicerio's data)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder this tool wrote before")
    args = parser.parse_args(argv)
    try:
        manifest = prepare(args.output, args.cache, args.offline, args.overwrite)
    except (PreparationError, ValueError) as error:  # ValueError: a scheme rule refused what a source holds
        print(f"error: {error}", file=sys.stderr)
        return 2
    for case in manifest["cases"]:
        print(f"{case['name']:14s} patient {case['patient']:18s} {'x'.join(map(str, case['size'])):12s} labelled: {', '.join(case['labelled_classes'])}")
    print(f"wrote {args.output} ({len(manifest['outputs'])} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
