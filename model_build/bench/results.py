"""The bench's figures as typed records: `run_bench` fills a `BenchResult`, the report reads its attributes,
and the JSON is `dataclasses.asdict` of it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from model_build.bench.peer import PeerRow, StreamingFloor
from model_build.export.quality import FidelityQuality


@dataclass
class Stats:
    min_s: float
    median_s: float
    p90_s: float
    runs: int

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        ordered = sorted(samples)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        return cls(ordered[0], statistics.median(ordered), p90, len(ordered))


@dataclass
class LatencyRow:
    """One request type, seed recipe vs served, timed interleaved in one process."""

    name: str
    baseline: Stats
    served: Stats
    speedup: float
    """baseline median / served median."""


@dataclass
class ColdStart:
    """A fresh interpreter: imports, artifact load, first caption, then a caption+detect request."""

    first_caption_s: float
    import_torch_s: float
    artifact_load_s: float
    peak_rss_mib: float
    transformers_imported: bool
    process_wall_s: float

    @classmethod
    def from_child(cls, marks: dict[str, Any], wall_s: float, transformers_imported: bool) -> ColdStart:
        return cls(
            float(marks["first_caption_s"]),
            float(marks["import_torch_s"]),
            float(marks["artifact_load_s"]),
            float(marks["peak_rss_mib"]),
            bool(marks.get("transformers_imported", transformers_imported)),
            wall_s,
        )


@dataclass
class Hardware:
    cpu: str
    cpus_available: int
    isa: list[str]
    python: str


@dataclass
class DecodeFloor:
    """Served per-token time against the weight-streaming floor of this machine."""

    floor: StreamingFloor
    per_token_ms: float
    """(detect min - caption min) / (detect tokens - caption tokens): the marginal cost of one token."""
    step_ms: float
    """One served decoder step (20 cached tokens) from the peer rows, per step of a run of consecutive steps."""

    @property
    def multiple(self) -> float:
        return self.per_token_ms / self.floor.floor_ms


@dataclass
class BenchResult:
    hardware: Hardware
    threads: int
    torch: str
    weights: str
    parameters_m: float
    image: str
    caption_tokens: int
    detect_tokens: int
    build_s: float
    latency: list[LatencyRow]
    baseline_cold: ColdStart
    served_cold: ColdStart
    baseline_artifact_mib: float
    served_artifact_mib: float
    fidelity: FidelityQuality
    peers: list[PeerRow]
    peer_info: dict[str, Any]
    decode: DecodeFloor
    quick: bool
    stage_breakdown_ms: dict[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> LatencyRow:
        return next(r for r in self.latency if r.name == name)
