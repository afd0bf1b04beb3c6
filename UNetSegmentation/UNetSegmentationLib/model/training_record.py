"""What a checkpoint records about the data it was trained on, read back for people (``unetseg info``).

``unetseg train`` stores under ``metadata.training["data"]`` the training cases (image file name,
the image axis the slices ran along, how many slices were trained on), the validation cases, and
the slices of each training case held out for validation (``held_out_slices``; ``unetseg evaluate
--slices checkpoint`` scores exactly those). Checkpoints from before the slice axis was recorded say
so instead of guessing. Pure Python: the record is JSON that came from a file, so nothing here
trusts its types, and text is shown without control characters.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Dict, Iterable, List

from UNetSegmentationLib.grammar.slice_ranges import format_slice_ranges


def slice_ranges(slices: Iterable[int]) -> str:
    """``[4, 5, 6, 16, 17]`` → ``"4-6, 16-17"``: slice indices along the slice axis, as ranges (grammar/slice_ranges)."""
    return format_slice_ranges(slices).replace(",", ", ")


def printable(value: Any, limit: int = 120) -> str:
    """``value`` as one line of text: control characters shown as ``?``, at most ``limit`` characters."""
    text = "".join("?" if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") else c for c in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _entries(data: Dict[str, Any], key: str) -> List[Dict[str, Any]]:
    entries = data.get(key)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _held_out(entry: Dict[str, Any]) -> str:
    slices = entry.get("slices")
    if not isinstance(slices, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in slices):
        return "(unreadable)"
    return slice_ranges(slices) or "none"


def describe_training_data(training: Any) -> List[str]:
    """One line per case of a checkpoint's training record: the image, the axis its slices ran along,
    the slices trained on and those held out for validation (empty when nothing was recorded)."""
    data = training.get("data") if isinstance(training, dict) else None
    if not isinstance(data, dict):
        return []
    lines = describe_unfinished(training)
    config = training.get("config") if isinstance(training.get("config"), dict) else {}
    requested = config.get("axis")
    held = {printable(e.get("case")): e for e in _entries(data, "held_out_slices")}
    for role, key in (("training", "training"), ("validation", "validation")):
        for entry in _entries(data, key):
            case = printable(entry.get("case"))
            axis = entry.get("slice_axis")
            if axis in ("i", "j", "k"):
                along = f"along {axis}" + (" (--axis)" if requested is not None else " (auto)")
            else:
                along = "slice axis not recorded" + (" (auto)" if requested is None else f" (--axis {printable(requested, 8)})")
            if role == "validation":
                use = "all slices held out"
            else:
                count = entry.get("train_slices")
                use = f"{count} slices trained" if isinstance(count, int) else "slices trained"
                if case in held:
                    use += f", held out {_held_out(held[case])}"
            lines.append(f"{role:<10} {printable(entry.get('image'))} (case {case!r}): {along}; {use}")
    return lines + describe_lineage(training)


def describe_unfinished(training: Any) -> List[str]:
    """A line for a checkpoint its run saved after an epoch but never finished (killed, or ``--stop-after``):
    ``training["finished"]`` is False there and True only in the checkpoint of a run's end."""
    if not isinstance(training, dict) or training.get("finished") is not False:
        return []
    epochs, planned = training.get("epochs"), training.get("epochs_planned")
    saved = f"saved at epoch {epochs} of {planned}; " if all(isinstance(v, int) and not isinstance(v, bool) for v in (epochs, planned)) else ""
    return [f"UNFINISHED   {saved}its run did not finish (killed or --stop-after): continue it with unetseg train --resume, or train again"]


def _dice(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "not measured"


def describe_lineage(training: Any) -> List[str]:
    """What a fine-tuned checkpoint's model card says about its base (``training["fine_tuning"]``):
    the base's name and SHA-256, the date, the classes the labels held, the validation Dice before and after."""
    record = training.get("fine_tuning") if isinstance(training, dict) else None
    if not isinstance(record, dict):
        return []
    base = record.get("base") if isinstance(record.get("base"), dict) else {}
    digest = printable(base.get("sha256"), 17)
    lines = [f"fine-tuned from {printable(base.get('name'))} (sha256 {digest}) on {printable(record.get('date'), 40)}"]
    labelled, kept = record.get("classes_labelled"), record.get("classes_not_labelled")
    if isinstance(labelled, list) and isinstance(kept, list) and kept:
        lines.append(f"fine-tuned on labels of {printable(', '.join(map(str, labelled)))}; kept by the marginal loss: {printable(', '.join(map(str, kept)))}")
    corrected = record.get("classes_corrected")
    if isinstance(corrected, list):
        lines.append(f"corrected by the user: {printable(', '.join(map(str, corrected))) or 'no class'}")
    if isinstance(record.get("train_slices"), list):
        lines.append(f"fine-tuned on slices {_held_out({'slices': record['train_slices']})}")
    lines.append(f"validation Dice before {_dice(record.get('dice_before'))}, after {_dice(record.get('dice_after'))}")
    return lines
