"""The main job on the embedded default: synth → finetune → fuse → local API → a caption and boxes.

It runs the same code a user runs by hand, in order, and ends by calling the real HTTP API (uvicorn
serving `handler.app:app`) on a held-out image, so a fresh clone proves the whole product works. It
prints the URL of the demo page (`GET /`); with `--serve` the API and the page stay up.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from model_build.base.loading import check_base
from model_build.data.synth import check_data_or_synth_out
from model_build.export.writer import check_artifact_out
from model_build.settings import output_folder, setting


def check_port_free(port: int) -> None:
    """`check` for --port: a taken port fails at the flag, before the build's minutes, not as 'API server
    exited' after uvicorn's own traceback. 0 asks for any free port."""
    if not port:
        return
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise OSError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}") from exc


@dataclass
class DemoConfig:
    """`python -m model_build demo`: where the main job writes, and how long it fine-tunes."""

    base: str = setting("tiny", help="base model (tiny: the embedded one)", check=check_base)
    data_dir: Path = setting(
        Path("data/synth"),
        help="COCO-format data (synthesized if it has no val2017 split)",
        flag="--data",
        check=check_data_or_synth_out,
    )
    run_dir: Path = setting(Path("runs/demo"), help="fine-tune run and demo outputs", check=output_folder)
    artifact_dir: Path = setting(
        Path("artifacts/demo"), help="artifact folder (as fuse's --out)", flag="--out", check=check_artifact_out
    )
    steps: int | None = setting(None, help="fine-tuning steps (default: finetune's own)", minimum=1)
    serve: bool = setting(False, help="keep the API and the demo page running after the sample request (Ctrl-C)")
    port: int = setting(
        0,
        help="port for the API and the demo page on 127.0.0.1 (0: any free port)",
        minimum=0,
        maximum=65535,
        check=check_port_free,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: bytes, content_type: str, timeout: float = 120) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_healthy(base_url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"API server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"API server did not answer /health within {timeout:.0f} s")


def build(config: DemoConfig) -> Path:
    """Synthetic data, LoRA fine-tune, fuse (with its parity gate); return the artifact folder."""
    from model_build.data.synth import synthesize
    from model_build.export.fuse import FuseConfig, fuse
    from model_build.finetune.lora import FinetuneConfig, finetune

    if not (config.data_dir / "annotations" / "instances_val2017.json").is_file():
        print(f"[1/4] synthesizing COCO-format data in {config.data_dir}")
        synthesize(config.data_dir)
    else:
        print(f"[1/4] using existing data in {config.data_dir}")
    finetune_config = FinetuneConfig(data_dir=config.data_dir, run_dir=config.run_dir / "finetune", base=config.base)
    shutil.rmtree(finetune_config.run_dir, ignore_errors=True)  # the demo's own run: each demo starts over
    if config.steps is not None:
        finetune_config.train = replace(finetune_config.train, steps=config.steps)
    print(f"[2/4] LoRA fine-tuning {config.base} → {finetune_config.run_dir}")
    info = finetune(finetune_config)
    print(json.dumps({"adapter": str(finetune_config.run_dir / "adapter"), "adapter_sha256": info.adapter_sha256}))
    print(f"[3/4] fusing (merge → 384 → int8 → parity gate) → {config.artifact_dir}")
    manifest = fuse(FuseConfig(out_dir=config.artifact_dir, adapter=finetune_config.run_dir, data_dir=config.data_dir))
    print(json.dumps({"artifact": str(config.artifact_dir), "model_bytes": manifest.model_bytes}))
    return config.artifact_dir


def call_api(artifact_dir: Path, image_path: Path, out_dir: Path, keep_serving: bool, port: int = 0) -> dict:
    """Start uvicorn on the artifact, POST one image to /analyze and /detect?format=png, print the answers."""
    check_port_free(port)
    port = port or _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ARTIFACT_DIR": str(artifact_dir.resolve())}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "handler.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        _wait_healthy(base_url, server)
        print(f"[4/4] API up at {base_url} (OpenAPI at {base_url}/docs); POST {image_path.name} to /analyze")
        body = image_path.read_bytes()
        status, payload = _post(base_url + "/analyze", body, "image/jpeg")
        if status != 200:
            raise RuntimeError(f"/analyze answered {status}: {payload[:300]!r}")
        result = json.loads(payload)
        print(f"      caption:    {result.get('caption')!r}")
        for det in result.get("detections", []):
            print(f"      detection:  {det['label']:<10} score {det['score']:.2f} box {det['box']}")
        print(f"      timings ms: {result.get('timings_ms')}")
        status, png = _post(base_url + "/detect?format=png", body, "image/jpeg")
        if status == 200:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "detections.png").write_bytes(png)
            print(f"      boxes drawn on the image: {out_dir / 'detections.png'}")
        print(f"      demo page:  {base_url}/ (pick or drop an image; scores, slider, timings)")
        if keep_serving:
            print(f"serving the API and the demo page at {base_url}/ until Ctrl-C")
            try:
                server.wait()
            except KeyboardInterrupt:  # how --serve is meant to end: not an interrupted run
                print("stopped")
        return result
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=10)


def run_demo(config: DemoConfig) -> dict:
    artifact = build(config)
    from model_build.evaluate import split_records

    image = split_records(config.data_dir, "val2017", 1)[0].path
    return call_api(artifact, image, config.run_dir, config.serve, config.port)
