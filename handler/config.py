"""Every environment setting the service reads, with its default, in one place.

| variable | default | meaning |
|---|---|---|
| ARTIFACT_DIR | /opt/artifact | folder with model.pt, processor/ and manifest.json (baked into the image) |
| MAX_IMAGE_BYTES | 4_669_440 | largest inline image (raw, multipart, base64): fits a synchronous event, see below |
| MAX_S3_IMAGE_BYTES | 20_971_520 | largest image read from S3 (`{"s3": ...}` requests, S3 events): no event limit applies |
| MAX_IMAGE_PIXELS | 40_000_000 | largest accepted width*height; stops decompression bombs |
| ALLOWED_BUCKETS | (empty) | comma-separated buckets that JSON `{"s3": ...}` requests and Batch Operations tasks may read |
| OUTPUT_PREFIX | results/ | where S3-upload results are written; keys under it, in the bucket results go to, never trigger work |
| OUTPUT_BUCKET | (empty) | write results to this bucket, under OUTPUT_PREFIX + the source bucket + '/', not next to the source |
| ARTIFACT_RETRY_S | 30 | after a failed model load, answer 503 from memory this long before retrying |
| TORCH_THREADS | CPUs available, on Lambda at most memory/1769, rounded (2 at 3008 MB) | intra-op threads for inference |
| LOG_LEVEL | INFO | level of the structured JSON request log |
| ARTIFACT_SHA256 | (empty) | when set, the sha256 of the artifact's manifest.json must equal it (docs/deploy.md) |
| MIN_SCORE | 0 | default floor on box scores, 0..1: S3 uploads use it; a request's `min_score` overrides it |
| CORS_ALLOW_ORIGINS | (empty) | comma-separated origins (`https://app.example.com`) or `*` that browsers may call the API from; empty sends no CORS headers |

Lambda refuses a synchronous request or response over 6,291,456 bytes, and binary bodies travel as
base64 (4 bytes per 3). With 65,536 bytes kept for the envelope (headers, request context, multipart
boundaries, JSON keys): (6,291,456 - 65,536) // 4 * 3 = 4,669,440 bytes of image. The same bound caps
a binary response body (the drawn PNG).

A number outside its range, a LOG_LEVEL that is not a level or a CORS origin that is not
`scheme://host[:port]` makes every invoke answer 500
`misconfigured`, naming the setting (S3 events raise it, so Lambda retries them after the fix).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any


def available_cpus() -> int:
    """CPUs this process may use: Lambda grants vCPUs in proportion to memory."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


LAMBDA_PAYLOAD_BYTES = 6_291_456
"""Lambda's limit on a synchronous invoke's event, and on its response."""
ENVELOPE_MARGIN_BYTES = 65_536
"""Room in the event or response for everything that is not the base64 body."""
MAX_BINARY_BODY_BYTES = (LAMBDA_PAYLOAD_BYTES - ENVELOPE_MARGIN_BYTES) // 4 * 3
"""4,669,440: the largest binary body whose base64 plus the envelope fits LAMBDA_PAYLOAD_BYTES."""


API_GATEWAY_TIMEOUT_S = 29
"""API Gateway stops waiting for the function after 29 s and answers 504 itself, without our error shape."""


MB_PER_LAMBDA_CPU = 1769
"""Lambda grants one CPU's worth of time per 1,769 MB of memory."""


def default_torch_threads(env: dict[str, str]) -> int:
    """CPUs available, but on Lambda no more than the CPU time it grants (memory/1769, rounded).

    Lambda may show more vCPUs than that share (two at 1,769 MB and less); threads beyond the share
    only wait for CPU time, and intra-op threads that wait for each other are slower than one thread
    (docs/deploy.md §8: one thread beats two at 2,048 MB; two threads on an oversubscribed CPU ran
    a backfill 10x slower than one).
    """
    cpus = available_cpus()
    memory_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if memory_mb.isdigit():
        return max(1, min(cpus, round(int(memory_mb) / MB_PER_LAMBDA_CPU)))
    return cpus


class SettingError(ValueError):
    """A setting that does not parse: the entry points answer it as `errors.Misconfigured` (500)."""


def _number(env: dict[str, str], name: str, default: float, kind: type, low: float, high: float = math.inf) -> Any:
    """`env[name]` as `kind` within [low, high], or `default` when unset or blank.

    A value that does not parse is the deployment's fault, not the caller's: every invoke answers
    `misconfigured` (500, naming the setting) until it is fixed, instead of a bare ValueError at the
    Lambda boundary with no per-task answer for S3 Batch Operations.
    """
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:  # NaN fails both comparisons
        what = "an integer" if kind is int else "a number"
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise SettingError(f"setting {name}={raw[:100]!r} is not {what} {bounds}")
    return value


def _log_level(env: dict[str, str], default: str) -> str:
    raw = env.get("LOG_LEVEL", "").strip()
    level = raw.upper() or default
    if not isinstance(logging.getLevelName(level), int):
        raise SettingError(f"setting LOG_LEVEL={raw[:100]!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9-]+(\.[a-z0-9-]+)*)(:[0-9]{1,5})?")
"""What a browser sends as `Origin`: scheme, host and port, no path, no trailing slash."""


def _cors_origins(raw: str) -> tuple[str, ...]:
    """`*`, or exact origins compared as browsers write them (lowercase).

    A path or trailing slash (`https://app.example.com/`) never equals a browser's Origin, so the
    setting would silently allow nothing: it is refused like a bad number instead.
    """
    origins = tuple(dict.fromkeys(item.strip().lower() for item in raw.split(",") if item.strip()))
    if origins == ("*",):
        return origins
    wrong = [origin for origin in origins if not _ORIGIN.fullmatch(origin)]
    if wrong:
        raise SettingError(
            f"setting CORS_ALLOW_ORIGINS={raw.strip()[:100]!r} is not '*' or comma-separated origins"
            f" like https://app.example.com (no path, no trailing slash): {wrong[0][:100]!r}"
        )
    return origins


def _csv(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    artifact_dir: str = "/opt/artifact"
    max_image_bytes: int = MAX_BINARY_BODY_BYTES
    max_s3_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    allowed_buckets: frozenset[str] = field(default_factory=frozenset)
    output_prefix: str = "results/"
    output_bucket: str = ""
    artifact_retry_s: float = 30.0
    torch_threads: int = 0
    log_level: str = "INFO"
    artifact_sha256: str = ""
    min_score: float = 0.0
    cors_allow_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        prefix = env.get("OUTPUT_PREFIX", cls.output_prefix)
        return cls(
            artifact_dir=env.get("ARTIFACT_DIR", cls.artifact_dir),
            max_image_bytes=_number(env, "MAX_IMAGE_BYTES", cls.max_image_bytes, int, 1),
            max_s3_image_bytes=_number(env, "MAX_S3_IMAGE_BYTES", cls.max_s3_image_bytes, int, 1),
            max_image_pixels=_number(env, "MAX_IMAGE_PIXELS", cls.max_image_pixels, int, 1),
            allowed_buckets=_csv(env.get("ALLOWED_BUCKETS", "")),
            output_prefix=prefix if prefix.endswith("/") else prefix + "/",
            output_bucket=env.get("OUTPUT_BUCKET", ""),
            artifact_retry_s=_number(env, "ARTIFACT_RETRY_S", cls.artifact_retry_s, float, 0),
            torch_threads=_number(env, "TORCH_THREADS", 0, int, 0) or default_torch_threads(env),
            log_level=_log_level(env, cls.log_level),
            artifact_sha256=env.get("ARTIFACT_SHA256", "").strip().lower(),
            min_score=_number(env, "MIN_SCORE", cls.min_score, float, 0, 1),
            cors_allow_origins=_cors_origins(env.get("CORS_ALLOW_ORIGINS", "")),
        )

    @property
    def largest_image_bytes(self) -> int:
        """The decoder's own byte cap: each source enforces its tighter limit before this."""
        return max(self.max_image_bytes, self.max_s3_image_bytes)


def settings() -> Settings:
    """Settings read fresh from the environment (cheap; lets tests change env between calls)."""
    return Settings.from_env()
