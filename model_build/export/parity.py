"""Does the int8 model say what the fp32 model says? Caption agreement and box IoU, through the served Engine.

A served model below a bound is measured against the seed recipe on the same images: the rule is to be at
least as faithful to fp32 as the seed recipe is (`BASELINE_SLACK`), since int8 itself may drift that far.

Box IoU is strict: boxes are paired greedily by label and IoU, and every unpaired box (one model saw
an object the other did not) counts as IoU 0. So a quantized model that drops or invents boxes fails
the gate even if the boxes it does share line up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from handler.florence.engine import Engine
from handler.florence.tasks import Detection, Task

BASELINE_SLACK = 0.02
"""Quality parity (issue 11): below a bound, the served model still passes if it is at least as faithful to
fp32 as the seed recipe (int8 `quantize_dynamic` + HF `generate`), less this slack, on the same images."""


class ParityError(RuntimeError):
    """The quantized model drifted from the fp32 model beyond the thresholds; no artifact is written."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(reference: list[Detection], candidate: list[Detection]) -> tuple[list[float], int]:
    """Greedy same-label pairing by descending IoU; return the paired IoUs and the slot count.

    Slots = max(len(reference), len(candidate)), so unpaired boxes weigh in as zeros.
    """
    pairs = sorted(
        (
            (box_iou(r.box, c.box), i, j)
            for i, r in enumerate(reference)
            for j, c in enumerate(candidate)
            if r.label == c.label
        ),
        reverse=True,
    )
    used_r, used_c, ious = set(), set(), []
    for value, i, j in pairs:
        if i in used_r or j in used_c:
            continue
        used_r.add(i)
        used_c.add(j)
        ious.append(value)
    return ious, max(len(reference), len(candidate))


@dataclass
class ParityReport:
    images: int
    caption_agreement: float | None
    box_iou: float | None
    box_slots: int
    boxes_paired: int
    min_caption_agreement: float
    min_box_iou: float
    caption_mismatches: list[dict] = field(default_factory=list)
    baseline_caption_agreement: float | None = None
    """The seed recipe's own agreement with fp32 on the same images (measured only when a bound is missed)."""
    baseline_box_iou: float | None = None
    baseline_slack: float = BASELINE_SLACK
    """Negative: no comparison with the seed recipe, the bounds alone decide."""

    def _below(self, value: float | None, bound: float, baseline: float | None) -> bool:
        """Below the bound, and (when the baseline was measured) also less faithful than the seed recipe."""
        if value is None or value >= bound:
            return False
        return baseline is None or self.baseline_slack < 0 or value < baseline - self.baseline_slack

    @property
    def failures(self) -> list[str]:
        problems = []
        if self._below(self.caption_agreement, self.min_caption_agreement, self.baseline_caption_agreement):
            problems.append(
                f"caption agreement {self.caption_agreement:.3f} < {self.min_caption_agreement}"
                + (
                    ""
                    if self.baseline_caption_agreement is None
                    else f" (seed recipe {self.baseline_caption_agreement:.3f})"
                )
            )
        if self._below(self.box_iou, self.min_box_iou, self.baseline_box_iou):
            problems.append(
                f"box IoU {self.box_iou:.3f} < {self.min_box_iou}"
                + ("" if self.baseline_box_iou is None else f" (seed recipe {self.baseline_box_iou:.3f})")
            )
        return problems

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare(
    reference: Engine,
    candidate: Engine,
    images: list,
    tasks: list[Task],
    min_caption_agreement: float,
    min_box_iou: float,
) -> ParityReport:
    """Run both engines on every image and measure how often and how closely the candidate agrees."""
    agree, iou_sum, slots, paired, mismatches = 0, 0.0, 0, 0, []
    for index, image in enumerate(tqdm(images, desc="parity int8 vs fp32", unit="img")):
        ref = reference.run(image, tasks).predictions
        cand = candidate.run(image, tasks).predictions
        if Task.CAPTION in tasks:
            same = ref[Task.CAPTION].caption == cand[Task.CAPTION].caption
            agree += same
            if not same and len(mismatches) < 5:
                mismatches.append(
                    {"image": index, "fp32": ref[Task.CAPTION].caption, "int8": cand[Task.CAPTION].caption}
                )
        if Task.DETECT in tasks:
            ious, image_slots = match_boxes(ref[Task.DETECT].detections, cand[Task.DETECT].detections)
            iou_sum += sum(ious)
            slots += image_slots
            paired += len(ious)
    caption_agreement = round(agree / len(images), 4) if Task.CAPTION in tasks and images else None
    # Neither model drew a box anywhere: they agree, and IoU has nothing to average, so report full agreement.
    box = (round(iou_sum / slots, 4) if slots else 1.0) if Task.DETECT in tasks else None
    return ParityReport(
        len(images), caption_agreement, box, slots, paired, min_caption_agreement, min_box_iou, mismatches
    )
