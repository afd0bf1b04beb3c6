"""Safe checkpoints: safetensors weights with JSON metadata; plain PyTorch state dicts only through
``torch.load(weights_only=True)``. Nothing here ever unpickles arbitrary objects.

torch and safetensors are imported inside the functions that read or write tensors, not here:
:func:`load_checkpoint` with ``weights=False`` (a run on a cached ONNX export, the Slicer panel)
must work without PyTorch installed, and importing torch costs about 1.3 s of start-up here.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.outputs import atomic_output
from UNetSegmentationLib.model.header import SAFETENSORS, PathLike, checkpoint_kind, read_metadata
from UNetSegmentationLib.model.metadata import METADATA_KEY, ModelMetadata
from UNetSegmentationLib.networks.registry import build_network, get_architecture

if TYPE_CHECKING:  # annotations only (see the module docstring)
    import torch

    from UNetSegmentationLib.networks.contract import SegmentationNetwork

SAFETENSORS_SUFFIX = ".safetensors"


class Checkpoint:
    """Validated metadata and the state dict it describes.

    ``state_dict`` is read on first use when it was not given (:func:`load_checkpoint` with
    ``weights=False``): a cached ONNX export of the same file needs the metadata only.
    """

    def __init__(self, path: PathLike, metadata: ModelMetadata, state_dict: Optional[Dict[str, "torch.Tensor"]] = None) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self._state_dict = state_dict

    @property
    def state_dict(self) -> Dict[str, "torch.Tensor"]:
        """Parameter and buffer name → tensor (on the CPU), read from the file on first use."""
        if self._state_dict is None:
            self._state_dict = _load_safetensors(self.path)
        return self._state_dict

    def parameter_count(self) -> int:
        """Trainable parameters in the file (batch-norm statistics not counted)."""
        return sum(t.numel() for k, t in self.state_dict.items() if t.is_floating_point() and not _is_buffer(k))


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


#: tensors that hold counts, not weights (BatchNorm's), and may be integers
_INTEGER_KEYS = ("num_batches_tracked",)


def checked_weights(path: PathLike, state_dict: Dict[str, "torch.Tensor"]) -> Dict[str, "torch.Tensor"]:
    """``state_dict`` if every weight can be right: floating point (integer or boolean weights would be
    cast silently into a different network) and finite (a NaN weight makes every output NaN, which
    reads as "nothing found"); else a :class:`UserError` naming the first bad tensors."""
    import torch  # lazy: see the module docstring

    not_float, not_finite = [], []
    for key, tensor in state_dict.items():
        if key.endswith(_INTEGER_KEYS):
            continue
        if not tensor.is_floating_point():
            not_float.append(f"{key} ({str(tensor.dtype).replace('torch.', '')})")
        elif tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            not_finite.append(f"{key} ({bad} of {tensor.numel()})")
    if not_float:
        raise UserError(f"checkpoint {path} holds weights that are not floating-point numbers: {', '.join(not_float[:3])}"
                        f"{f' and {len(not_float) - 3} more' if len(not_float) > 3 else ''}; a network's weights are float32/float16/bfloat16")
    if not_finite:
        raise UserError(f"checkpoint {path} holds NaN or infinite weights in {len(not_finite)} tensor(s), e.g. {', '.join(not_finite[:3])}; "
                        "the training diverged or the file is damaged: use an earlier checkpoint")
    return state_dict


def _load_safetensors(path: Path) -> Dict[str, "torch.Tensor"]:
    # lazy: safetensors.torch imports torch (see the module docstring)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise UserError(f"checkpoint {path} is corrupt or truncated: {error}") from None
    return checked_weights(path, weights)


def _load_torch_state_dict(path: Path) -> Dict[str, "torch.Tensor"]:
    import torch  # lazy: see the module docstring

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).split("\n")[0:3]
        raise UserError(
            f"refusing to load {path}: it holds pickled Python objects, and unpickling them could run arbitrary code "
            f"(torch.load with weights_only=True said: {' '.join(line.strip() for line in reason if line.strip())[:300]}). "
            "Save only the weights: torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, struct.error) as error:
        raise UserError(f"checkpoint {path} is corrupt or truncated: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    for wrapper in ("state_dict", "model_state_dict", "model", "network", "weights"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not (isinstance(loaded, dict) and loaded and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())):
        raise UserError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    prefix = "module."  # saved from DataParallel / DistributedDataParallel
    if all(k.startswith(prefix) for k in loaded):
        loaded = {k[len(prefix):]: v for k, v in loaded.items()}
    return checked_weights(path, loaded)


def load_checkpoint(path: PathLike, metadata_for_plain_torch: Optional[ModelMetadata] = None, weights: bool = True) -> Checkpoint:
    """Read and validate a checkpoint; a plain PyTorch file needs its metadata given separately.

    ``weights=False``: a safetensors file's tensors are read (with PyTorch) only when first used;
    its metadata is read and validated now, without PyTorch.
    """
    path = Path(path)
    if checkpoint_kind(path) == SAFETENSORS:
        metadata = read_metadata(path)
        state_dict = _load_safetensors(path) if weights else None
    else:
        if metadata_for_plain_torch is None:
            raise UserError(
                f"{path} is a plain PyTorch file with no metadata: give --arch and --classes "
                "(and --context, --features, --norm if they differ from the defaults)"
            )
        metadata = metadata_for_plain_torch
        state_dict = _load_torch_state_dict(path)
    get_architecture(metadata.architecture)  # unknown architecture: clear error before anything else
    return Checkpoint(path, metadata, state_dict)


def _describe_mismatch(model: "torch.nn.Module", state_dict: Mapping[str, "torch.Tensor"], metadata: ModelMetadata) -> Optional[str]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    for key in wrong_shape:
        file_shape, model_shape = tuple(state_dict[key].shape), tuple(expected[key].shape)
        # an output layer: a convolution whose output channels are the class channels (1×1 or 3×3 heads)
        if model_shape[0] == metadata.out_channels and file_shape[1:] == model_shape[1:] and len(model_shape) == 4:
            fits = "1 class" if file_shape[0] == 1 else f"{file_shape[0] - 1} classes"
            return (
                f"class-count mismatch: the weights' output layer {key} has {file_shape[0]} channel(s), which fits {fits}, "
                f"but {len(metadata.classes)} class(es) are declared ({', '.join(c.name for c in metadata.classes)})"
            )
    problems = []
    if wrong_shape:
        k = wrong_shape[0]
        problems.append(f"{len(wrong_shape)} tensor(s) of the wrong shape (e.g. {k}: {tuple(state_dict[k].shape)} in the file, {tuple(expected[k].shape)} expected)")
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if not problems:
        return None
    return (
        f"the weights do not match architecture {metadata.architecture!r} with {metadata.kwargs}: "
        + "; ".join(problems)
    )


def build_model(checkpoint: Checkpoint) -> "SegmentationNetwork":
    """The network with the checkpoint's weights, in evaluation mode on the CPU."""
    import torch  # lazy: see the module docstring

    metadata = checkpoint.metadata
    # First on the meta device (shapes only, no memory): metadata asking for a huge network cannot
    # exhaust memory before its mismatch with the weights in the file is found.
    with torch.device("meta"):
        skeleton = build_network(metadata.architecture, metadata.kwargs)
    problem = _describe_mismatch(skeleton, checkpoint.state_dict, metadata)
    if problem:
        raise UserError(f"{checkpoint.path}: {problem}")
    model = build_network(metadata.architecture, metadata.kwargs)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval()


def create_checkpoint(path: PathLike, metadata: ModelMetadata, seed: int = 0, overwrite: bool = False) -> "SegmentationNetwork":
    """Write an untrained checkpoint (seeded initial weights) and return its network."""
    import torch  # lazy: see the module docstring

    torch.manual_seed(seed)
    model = build_network(metadata.architecture, metadata.kwargs)
    save_checkpoint(path, model.state_dict(), metadata, overwrite=overwrite)
    return model


def save_checkpoint(path: PathLike, state_dict: Mapping[str, "torch.Tensor"], metadata: ModelMetadata, overwrite: bool = False) -> Path:
    """Write weights and metadata as safetensors, atomically (temp file + rename)."""
    from safetensors.torch import save_file  # lazy: imports torch (see the module docstring)

    path = Path(path)
    if not path.name.endswith(SAFETENSORS_SUFFIX):
        raise UserError(f"checkpoints are written as safetensors: the file name must end in {SAFETENSORS_SUFFIX} (got {path.name})")
    metadata = metadata.checked(f"metadata for {path.name}")  # never write what could not be loaded
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_output([path], overwrite=overwrite) as (temporary,):
        save_file(tensors, str(temporary), metadata={METADATA_KEY: metadata.dumps()})
    return path
