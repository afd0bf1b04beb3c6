"""Random 2.5D training crops: foreground oversampling and MONAI augmentations, seeded per epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.slicing import gather_context
from UNetSegmentationLib.training.partial_labels import merged_mask
from UNetSegmentationLib.training.simulated_acquisition import RandFieldOfViewCut, RandThickSlice
from UNetSegmentationLib.training.volumes import PreparedVolume


@dataclass(frozen=True)
class AugmentOptions:
    """Random augmentations (MONAI transforms), applied to each 2.5D crop.

    ``flip``: probability of mirroring rows and, independently, columns. Off by default: the engine
    already brings every slice into one anatomical orientation, and mirroring would teach a model to
    confuse left and right structures. ``rotate`` in degrees, ``scale`` as a ±fraction,
    ``intensity`` as a ±shift and ±scale in normalised units; each applied with probability ``prob``.

    The acquisition candidates of issue 24 (off by default; chosen by leave-one-patient-out measurement,
    see Resources/Tools/train_bundled_model.py): ``contrast`` a gamma in ``[1 - contrast, 1 + contrast]``
    (contrast phases, windowing); ``noise`` Gaussian noise of standard deviation up to it (normalised
    units: low-dose scans); ``low_resolution`` in-plane down- and up-sampling by a zoom down to
    ``1 - low_resolution`` (other reconstruction kernels and spacings); ``thickness`` thicker slices
    (:class:`~.simulated_acquisition.RandThickSlice`); ``cut`` the probability of a field of view that
    ends inside the crop (:class:`~.simulated_acquisition.RandFieldOfViewCut`).
    """

    flip: float = 0.0
    rotate: float = 15.0
    scale: float = 0.1
    intensity: float = 0.1
    prob: float = 0.5
    contrast: float = 0.0
    noise: float = 0.0
    low_resolution: float = 0.0
    thickness: float = 0.0
    cut: float = 0.0

    def transforms(self):
        """A MONAI ``Compose`` over ``{"image": (C, H, W), "label": (1, H, W)}``, or ``None`` for no augmentation."""
        steps = []
        if self.rotate > 0 or self.scale > 0:
            steps.append(
                RandAffined(
                    keys=("image", "label"),
                    prob=self.prob,
                    rotate_range=(np.deg2rad(self.rotate),),
                    scale_range=(self.scale, self.scale),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                )
            )
        if self.flip > 0:
            steps += [RandFlipd(keys=("image", "label"), prob=self.flip, spatial_axis=axis) for axis in (0, 1)]
        if self.intensity > 0:
            steps += [
                RandScaleIntensityd(keys="image", factors=self.intensity, prob=self.prob),
                RandShiftIntensityd(keys="image", offsets=self.intensity, prob=self.prob),
            ]
        steps += self._acquisition()
        return Compose(steps) if steps else None

    def _acquisition(self) -> list:
        """The simulated-acquisition transforms that are switched on."""
        steps: list = []
        if self.contrast > 0:
            steps.append(RandAdjustContrastd(keys="image", prob=self.prob, gamma=(max(0.05, 1 - self.contrast), 1 + self.contrast)))
        if self.low_resolution > 0:
            steps.append(RandSimulateLowResolutiond(keys="image", prob=self.prob, zoom_range=(1 - self.low_resolution, 1.0), upsample_mode="bilinear"))
        if self.thickness > 0:
            steps.append(RandThickSlice(keys="image", prob=self.prob, thickness=self.thickness))
        if self.noise > 0:
            steps.append(RandGaussianNoised(keys="image", prob=self.prob, std=self.noise))
        if self.cut > 0:
            steps.append(RandFieldOfViewCut("image", "label", prob=self.cut))
        return steps


class SliceSampler:
    """Random 2.5D training crops with foreground oversampling.

    With probability ``foreground`` a sample is centred (with jitter) on a random voxel of a class
    chosen uniformly among the classes present in the training slices — so small structures are
    seen as often as large ones; a case's unknown classes (``PreparedVolume.unlabelled``) are never drawn
    from it — otherwise it is a uniformly random slice and crop. The crop is
    ``crop`` (rows, columns); slices smaller than it are zero-padded (in normalised units, as
    ``predict`` pads).
    """

    def __init__(self, volumes: Sequence[PreparedVolume], context: int, crop: Tuple[int, int], class_count: int, foreground: float = 0.5, augment: Optional[AugmentOptions] = None) -> None:
        self.volumes = [v for v in volumes if v.train_slices.size]
        if not self.volumes:
            raise UserError("no training slices: every case is used for validation")
        self.context = context
        self.crop = tuple(int(c) for c in crop)
        self.foreground = foreground
        self.augment = (augment or AugmentOptions()).transforms()
        # (volume, slice) pairs: all training slices, and per class those containing it
        self.all_slices = np.array([(v, s) for v, volume in enumerate(self.volumes) for s in volume.train_slices], dtype=np.int64)
        pairs: Dict[int, list] = {channel: [] for channel in range(1, class_count + 1)}
        for v, volume in enumerate(self.volumes):  # one pass over the slices, not one per class
            for s in volume.train_slices:
                present = np.bincount(np.ravel(volume.targets[s]), minlength=class_count + 1)[1:class_count + 1]
                for channel in np.flatnonzero(present) + 1:
                    if int(channel) not in volume.unlabelled:
                        pairs[int(channel)].append((v, int(s)))
        # per volume, the row of the batch's (B, C) merged mask: background + its unknown classes (partial_labels.py)
        self.merged = np.array([merged_mask(class_count + 1, v.unlabelled) for v in self.volumes], dtype=bool)
        self.class_slices: Dict[int, np.ndarray] = {c: np.array(p, dtype=np.int64) for c, p in pairs.items() if p}
        self.missing_classes = [c for c in range(1, class_count + 1) if c not in self.class_slices]

    def set_random_state(self, seed: int) -> np.random.Generator:
        """Seed the sampler and the augmentations; returns the generator the sampler draws from."""
        if self.augment is not None:
            self.augment.set_random_state(seed=seed % (2**32))
        self.rng = np.random.default_rng(seed)
        return self.rng

    def _window(self, size: int, crop: int, centre: Optional[int]) -> int:
        if size <= crop:
            return 0
        if centre is None:
            return int(self.rng.integers(0, size - crop + 1))
        jitter = int(self.rng.integers(crop // 4, crop - crop // 4 + 1))
        return int(np.clip(centre - jitter, 0, size - crop))

    def sample(self) -> Tuple[np.ndarray, np.ndarray, int]:
        """One ``(2c+1, H, W)`` float32 input, its ``(H, W)`` int64 target and the index of its volume."""
        rng = self.rng
        centre = None
        if self.class_slices and rng.random() < self.foreground:
            channel = list(self.class_slices)[int(rng.integers(len(self.class_slices)))]
            pairs = self.class_slices[channel]
            v, s = pairs[int(rng.integers(len(pairs)))]
            rows, columns = np.nonzero(self.volumes[v].targets[s] == channel)
            pick = int(rng.integers(rows.size))
            centre = (int(rows[pick]), int(columns[pick]))
        else:
            v, s = self.all_slices[int(rng.integers(len(self.all_slices)))]
        volume = self.volumes[int(v)]
        size_r, size_c = volume.slices.shape[1:]
        r0 = self._window(size_r, self.crop[0], None if centre is None else centre[0])
        c0 = self._window(size_c, self.crop[1], None if centre is None else centre[1])
        window = (slice(None), slice(r0, r0 + self.crop[0]), slice(c0, c0 + self.crop[1]))
        image = volume.mapping(gather_context(volume.slices[window], np.array([int(s)]), self.context, volume.context_step))[0]
        target = np.asarray(volume.targets[int(s)][window[1:]], dtype=np.int64)
        pad_r, pad_c = self.crop[0] - image.shape[1], self.crop[1] - image.shape[2]
        if pad_r or pad_c:
            image = np.pad(image, ((0, 0), (0, pad_r), (0, pad_c)))
            target = np.pad(target, ((0, pad_r), (0, pad_c)))
        if self.augment is not None:
            out = self.augment({"image": image, "label": target[None].astype(np.float32)})
            image = np.asarray(out["image"], dtype=np.float32)
            target = np.rint(np.asarray(out["label"])[0]).astype(np.int64)
        return image, target, int(v)

    def batch(self, batch_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inputs ``(B, 2c+1, H, W)``, targets ``(B, H, W)`` and the ``(B, C)`` bool merged mask of each
        sample's background + unknown channels (the marginal loss takes it per sample)."""
        samples = [self.sample() for _ in range(batch_size)]
        return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples]), self.merged[[s[2] for s in samples]]
