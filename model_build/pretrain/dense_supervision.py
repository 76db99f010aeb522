"""Dense per-cell supervision for pretraining the tiny base: what lies under each of the 12x12 visual tokens.

Trained from scratch on captions and `<OD>` alone, a tiny Florence-2 first learns the caption prior and
ignores the image for thousands of steps (measured: ~1500 steps of batch 32 before captions beat chance,
with large seed-to-seed variance), longer than the 20-minute CPU budget. Here small heads read the BART
encoder's image tokens and predict, for every grid cell, the shape and colour of the object covering the
cell's centre and that object's four `<loc_N>` bins. The bins are scored against the model's own tied
`<loc_N>` embeddings, so the encoder learns to hold box edges in exactly the form the decoder copies into
its output. That is 144 labels per image instead of about ten tokens, and the image is used within a few
hundred steps.

The heads exist only during pretraining: the saved model is a plain `Florence2ForConditionalGeneration`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from handler.florence.tasks import IMAGE_SIZE, LOC_BINS, VISION_STRIDE, coordinate_to_bin, loc_token
from model_build.data.synth import COLORS, SHAPES, ShapeObject

GRID = IMAGE_SIZE // VISION_STRIDE
"""Side of the visual token grid (12 at 384): the first GRID*GRID image tokens, row by row."""


@dataclass(frozen=True)
class GridTargets:
    """Per-cell labels of one image: 0 = background, else 1 + index into SHAPES / COLORS; loc bins."""

    shape: np.ndarray  # (GRID, GRID) int64
    color: np.ndarray  # (GRID, GRID) int64
    bins: np.ndarray  # (GRID, GRID, 4) int64, x0 y0 x1 y1; meaningful where shape > 0


def grid_targets(objects: list[ShapeObject], width: int, height: int) -> GridTargets:
    """Label each cell by the object whose box holds the cell's centre (boxes never overlap in synth)."""
    shape = np.zeros((GRID, GRID), np.int64)
    color = np.zeros((GRID, GRID), np.int64)
    bins = np.zeros((GRID, GRID, 4), np.int64)
    centres = (np.arange(GRID) + 0.5) / GRID
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        rows = (centres * height >= y0) & (centres * height < y1)
        cols = (centres * width >= x0) & (centres * width < x1)
        cells = np.outer(rows, cols)
        shape[cells] = SHAPES.index(obj.shape) + 1
        color[cells] = list(COLORS).index(obj.color) + 1
        bins[cells] = (
            coordinate_to_bin(x0, width),
            coordinate_to_bin(y0, height),
            coordinate_to_bin(x1, width),
            coordinate_to_bin(y1, height),
        )
    return GridTargets(shape, color, bins)


class DenseHeads(nn.Module):
    """Linear read-outs of the encoder's image tokens: shape class, colour class, and four loc-bin queries."""

    def __init__(self, hidden_size: int, loc_token_ids: list[int]) -> None:
        super().__init__()
        self.shape = nn.Linear(hidden_size, len(SHAPES) + 1)
        self.color = nn.Linear(hidden_size, len(COLORS) + 1)
        self.box = nn.Linear(hidden_size, 4 * hidden_size)
        self.register_buffer("loc_token_ids", torch.tensor(loc_token_ids), persistent=False)

    def loss(
        self, image_tokens: torch.Tensor, targets: dict[str, torch.Tensor], output_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of every cell's shape and colour, plus that of the box bins on object cells."""
        states = image_tokens.flatten(0, 1)
        shape, color = targets["grid_shape"].flatten(), targets["grid_color"].flatten()
        loss = F.cross_entropy(self.shape(states), shape) + F.cross_entropy(self.color(states), color)
        inside = shape > 0
        if inside.any():
            queries = self.box(states[inside]).view(-1, 4, states.shape[-1])
            logits = queries @ output_embeddings[self.loc_token_ids].t()
            loss = loss + F.cross_entropy(logits.flatten(0, 1), targets["grid_bins"].flatten(0, 2)[inside].flatten())
        return loss


class DenselySupervised(nn.Module):
    """Florence-2 plus `DenseHeads`: `forward(**batch).loss` = language-model loss + weight * dense loss.

    Wrapping keeps the generic training loop unchanged (it only reads `.loss`), and the heads' weights
    ride in the same checkpoint, so a resumed pretraining continues exactly.
    """

    GRID_KEYS = ("grid_shape", "grid_color", "grid_bins")

    def __init__(self, model: nn.Module, tokenizer, weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.weight = weight
        loc_ids = tokenizer.convert_tokens_to_ids([loc_token(i) for i in range(LOC_BINS)])
        self.heads = DenseHeads(model.config.text_config.d_model, loc_ids)

    def forward(self, **batch):
        targets = {key: batch.pop(key) for key in self.GRID_KEYS}
        output = self.model(**batch)
        if self.weight:
            image_tokens = output.encoder_last_hidden_state[:, : GRID * GRID]
            dense = self.heads.loss(image_tokens, targets, self.model.get_output_embeddings().weight)
            output.loss = output.loss + self.weight * dense
        return output
