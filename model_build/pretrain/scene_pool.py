"""Synthetic scenes held in memory for pretraining: pixels already at the serving size, targets, grid labels.

Pretraining reads each scene ten to thirty times. Decoding a JPEG and resizing it on every read cost a
third of each step on 2 cores; here every scene is drawn once, squash-resized to 384x384 exactly as
`Florence2Processor` does (PIL bicubic), and kept as uint8 (442 KB a scene). A batch then only
normalises and stacks (`data.InputEncoder`). Scenes are keyed by (seed, kind, index), so the pool is
the same whichever process draws it, and it never shares a random stream with the on-disk val split.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.pool import Pool

import numpy as np
import torch

from handler.florence.preprocess import squash_resize
from handler.florence.tasks import IMAGE_SIZE, Detection, Task, serialize_detections
from model_build.data.coco import InputEncoder
from model_build.data.synth import EASY_SIZE_RANGE, base_caption, make_image
from model_build.pretrain.dense_supervision import GridTargets, grid_targets


@dataclass(frozen=True)
class Scene:
    pixels: np.ndarray  # (IMAGE_SIZE, IMAGE_SIZE, 3) uint8
    caption: str  # base style
    detections: str  # `<OD>` target, label<loc_x0><loc_y0><loc_x1><loc_y1>...
    grid: GridTargets


def draw_scene(key: tuple[int, str, int]) -> Scene:
    """One scene; `kind` "easy" holds one large shape, "full" one or two as in the val split."""
    seed, kind, index = key
    rng = random.Random(f"pretrain-{seed}-{kind}-{index}")
    image, objects = make_image(rng, 1, EASY_SIZE_RANGE) if kind == "easy" else make_image(rng)
    width, height = image.size
    pixels = squash_resize(image, IMAGE_SIZE)
    boxes = serialize_detections([Detection(o.shape, o.box) for o in objects], width, height)
    return Scene(pixels, base_caption(objects), boxes, grid_targets(objects, width, height))


@contextlib.contextmanager
def _pool_deaf_to_ctrl_c(workers: int) -> Iterator[Pool]:
    """Ctrl-C reaches the whole process group: the parent stops the pool, and no worker prints its traceback.

    While the workers fork, SIGINT is only noted, so a worker taking it before its initializer ignores
    it raises nothing, and a Ctrl-C meant for the parent in that moment is raised once the pool is in
    hand to terminate. Ignoring it for the fork instead lost such a Ctrl-C, and the parent went on
    drawing scenes (blocking it does not help: another thread of the process takes it).
    """
    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        pool = get_context("fork").Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    finally:
        signal.signal(signal.SIGINT, previous)
    with pool:
        if noted:
            raise KeyboardInterrupt
        yield pool


class ScenePool:
    """`full` + `easy` scenes; items are (scene index, task) pairs, batched by `collate`."""

    def __init__(self, full: int, easy: int, seed: int = 0, workers: int = 2) -> None:
        self.full, self.easy = full, easy
        keys = [(seed, "full", i) for i in range(full)] + [(seed, "easy", i) for i in range(easy)]
        if workers > 1:
            with _pool_deaf_to_ctrl_c(workers) as pool:
                scenes = pool.map(draw_scene, keys, chunksize=64)
        else:
            scenes = [draw_scene(key) for key in keys]
        self.pixels = torch.from_numpy(np.stack([s.pixels for s in scenes]))
        self.targets = {Task.CAPTION: [s.caption for s in scenes], Task.DETECT: [s.detections for s in scenes]}
        self.grid = {
            "grid_shape": torch.from_numpy(np.stack([s.grid.shape for s in scenes])),
            "grid_color": torch.from_numpy(np.stack([s.grid.color for s in scenes])),
            "grid_bins": torch.from_numpy(np.stack([s.grid.bins for s in scenes])),
        }

    def items(self, tasks: list[Task], easy_share: float = 0.5) -> list[tuple[int, Task]]:
        """Every (scene, task) pair once an epoch, easy scenes repeated so they make up `easy_share` of it."""
        repeats = max(1, round(easy_share / (1 - easy_share) * self.full / self.easy)) if self.easy else 0
        indices = list(range(self.full)) + [self.full + i for i in range(self.easy)] * repeats
        return [(index, task) for index in indices for task in tasks]

    def collate(self, items: list[tuple[int, Task]], encoder: InputEncoder) -> dict[str, torch.Tensor]:
        """Model inputs and labels for (scene, task) items, plus the grid labels of their scenes."""
        indices = torch.tensor([index for index, _ in items])
        tasks = [task for _, task in items]
        batch = encoder.encode(self.pixels[indices], tasks, [self.targets[task][index] for index, task in items])
        return batch | {key: value[indices] for key, value in self.grid.items()}
