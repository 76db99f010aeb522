"""Every environment setting the service reads, with its default, in one place.

| variable | default | meaning |
|---|---|---|
| ARTIFACT_DIR | /opt/artifact | folder with model.pt, processor/ and manifest.json (baked into the image) |
| MAX_IMAGE_BYTES | 5_500_000 | largest accepted image; fits Lambda's 6 MB payload after base64 |
| MAX_IMAGE_PIXELS | 40_000_000 | largest accepted width*height; stops decompression bombs |
| ALLOWED_BUCKETS | (empty) | comma-separated buckets that JSON `{"s3": ...}` requests may read |
| OUTPUT_PREFIX | results/ | where S3-upload results are written; keys under it never trigger work |
| OUTPUT_BUCKET | (empty) | write results to this bucket instead of the source bucket |
| ARTIFACT_RETRY_S | 30 | after a failed model load, answer 503 from memory this long before retrying |
| TORCH_THREADS | CPUs available | intra-op threads for inference |
| LOG_LEVEL | INFO | level of the structured JSON request log |
| MIN_SCORE | 0 | default floor on box scores, 0..1: S3 uploads use it; a request's `min_score` overrides it |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def available_cpus() -> int:
    """CPUs this process may use: Lambda grants vCPUs in proportion to memory."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _csv(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    artifact_dir: str = "/opt/artifact"
    max_image_bytes: int = 5_500_000
    max_image_pixels: int = 40_000_000
    allowed_buckets: frozenset[str] = field(default_factory=frozenset)
    output_prefix: str = "results/"
    output_bucket: str = ""
    artifact_retry_s: float = 30.0
    torch_threads: int = 0
    log_level: str = "INFO"
    min_score: float = 0.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        prefix = env.get("OUTPUT_PREFIX", cls.output_prefix)
        return cls(
            artifact_dir=env.get("ARTIFACT_DIR", cls.artifact_dir),
            max_image_bytes=int(env.get("MAX_IMAGE_BYTES", cls.max_image_bytes)),
            max_image_pixels=int(env.get("MAX_IMAGE_PIXELS", cls.max_image_pixels)),
            allowed_buckets=_csv(env.get("ALLOWED_BUCKETS", "")),
            output_prefix=prefix if prefix.endswith("/") else prefix + "/",
            output_bucket=env.get("OUTPUT_BUCKET", ""),
            artifact_retry_s=float(env.get("ARTIFACT_RETRY_S", cls.artifact_retry_s)),
            torch_threads=int(env.get("TORCH_THREADS", 0)) or available_cpus(),
            log_level=env.get("LOG_LEVEL", cls.log_level),
            min_score=float(env.get("MIN_SCORE", cls.min_score)),
        )


def settings() -> Settings:
    """Settings read fresh from the environment (cheap; lets tests change env between calls)."""
    return Settings.from_env()
