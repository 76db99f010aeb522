"""Image preprocessing without `transformers`: what `CLIPImageProcessorPil` does for Florence-2.

Squash-resize to the serving size with PIL (bicubic), scale to [0, 1], normalise with ImageNet
mean/std, channels first. Large JPEGs are first decoded at a reduced scale (`draft`), which keeps the
decode of a 12 MP photo in the tens of milliseconds; the model sees 384 x 384 either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch and Pillow come with the model, not with the module
    import torch
    from PIL import Image


@dataclass(frozen=True)
class ImageSpec:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = 3  # PIL.Image.BICUBIC, as Florence-2's processor config says

    def to_pixels(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> float32 torch tensor (1, 3, size, size)."""
        import torch

        resized = torch.from_numpy(squash_resize(image, self.size, self.resample))
        return normalize(resized[None], self.mean, self.std).contiguous()


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, H, W, 3) uint8 torch tensor -> (B, 3, H, W) float32 model input, bit for bit the processor's.

    Serving (`ImageSpec.to_pixels`) and training (`model_build.data.coco.InputEncoder`) both go through
    here; the result is a channels-first view, not a copy. Exactness matters: a one-ulp difference in
    a pixel can flip a dynamic-quantization rounding and, through it, a box coordinate. The processor
    rescales in float64 and rounds once; for the 256 uint8 values a float32 division by 255 gives
    those same floats (tests/handler/inputs/test_images.py checks all of them).
    """
    import torch

    shape = (1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    return pixels.permute(0, 3, 1, 2).float().div_(255).sub_(mean_t).div_(std_t)


def squash_resize(image: Image.Image, size: int, resample: int = 3) -> np.ndarray:
    """PIL image -> (size, size, 3) uint8 RGB: the processor's resize (bicubic, no crop, aspect not kept).

    Training (`model_build.data.coco`) resizes through this too, so it sees the pixels serving sees.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image.resize((size, size), resample=resample), dtype=np.uint8)


JPEG_FORMATS = frozenset({"JPEG", "MPO"})
"""Pillow's names for the files libjpeg decodes (and can decode at reduced scale): JPEG, and MPO, a
phone's JPEG carrying a second image (an HDR gain map or a depth map) after the first."""


def draft_decode(image: Image.Image, size: int) -> Image.Image:
    """Let libjpeg downscale by 1/2..1/8 while decoding a not-yet-loaded JPEG, keeping both sides >= 2x `size`.

    The 2x margin leaves the real filtering to the final bicubic resize, so the pixels stay close to a
    full decode; a 12 MP photo then decodes and resizes several times faster. Callers must read the
    original size before this (draft changes `image.size`). Already-decoded images are left alone.
    """
    if getattr(image, "format", None) in JPEG_FORMATS and getattr(image, "tile", None):
        image.draft("RGB", (size * 2, size * 2))
    return image
