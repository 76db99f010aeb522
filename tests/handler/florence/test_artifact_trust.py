"""A forged artifact cannot run code: the pickle loads with weights_only and an allow-list, every file
is covered by the manifest, file names stay in the folder, and an outside pin must match.

The forged pickles are real exploits: `test_the_forged_pickles_do_run_code_under_a_plain_load` shows
that an ordinary `torch.load` of them runs the payload (and, for one, still returns a working model).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from handler.app import app
from handler.florence.artifact import ArtifactError, Manifest, load_artifact, sha256_file
from tests.conftest import REPO_ROOT


class _Payload:
    """Unpickles as `exec(code)`: what an attacker who can write model.pt would ship."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


class _PayloadThenModel:
    """Unpickles as `eval(...)`: runs the payload, then hands back the real model, so service goes on."""

    def __init__(self, marker: Path, model: torch.nn.Module) -> None:
        self.marker, self.model = marker, model

    def __reduce__(self):
        expression = f"(__import__('pathlib').Path({str(self.marker)!r}).write_text('ran'), model)[1]"
        return eval, (expression, {"model": self.model})


def _forge(tiny_artifact: Path, folder: Path, forged: object) -> Path:
    """A copy of the artifact whose model.pt is `forged`, with sha256 and size updated in the manifest."""
    shutil.copytree(tiny_artifact, folder)
    model_path = folder / "model.pt"
    torch.save(forged, model_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_sha256"] = hashlib.sha256(model_path.read_bytes()).hexdigest()
    manifest["model_bytes"] = model_path.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def forged(tiny_artifact: Path, tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Two forged artifacts, by name, each with the marker file its payload would write."""
    real = torch.load(tiny_artifact / "model.pt", weights_only=False)  # the trusted build's own model
    exec_marker, eval_marker = tmp_path / "exec-ran", tmp_path / "eval-ran"
    code = f"open({str(exec_marker)!r}, 'w').write('ran')"
    return {
        "exec": (_forge(tiny_artifact, tmp_path / "exec", _Payload(code)), exec_marker),
        "exec-then-model": (
            _forge(tiny_artifact, tmp_path / "eval", _PayloadThenModel(eval_marker, real)),
            eval_marker,
        ),
    }


def test_the_forged_pickles_do_run_code_under_a_plain_load(forged: dict[str, tuple[Path, Path]]) -> None:
    """The control: without the allow-list these files execute their payload (in a child process)."""
    script = (
        "import sys, torch\n"
        "for path in sys.argv[1:]:\n"
        "    model = torch.load(path, weights_only=False)\n"
        "    print(type(model).__name__)\n"
    )
    paths = [str(folder / "model.pt") for folder, _ in forged.values()]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", script, *paths], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NoneType", "FastFlorence"]  # the second still returns the real model
    assert all(marker.read_text() == "ran" for _, marker in forged.values())


@pytest.mark.parametrize("name", ["exec", "exec-then-model"])
def test_a_forged_pickle_never_runs_and_the_service_answers_503(
    serving_env: Path, forged: dict[str, tuple[Path, Path]], name: str, png_bytes: bytes, monkeypatch
) -> None:
    folder, marker = forged[name]
    monkeypatch.setenv("ARTIFACT_DIR", str(folder))
    response = TestClient(app).post("/caption", content=png_bytes, headers={"content-type": "image/png"})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "model_unavailable"
    payload_call = {"exec": "exec", "exec-then-model": "eval"}[name]
    assert "not a model this service trusts" in error["message"]
    assert f"it names {payload_call}, which is not on the allow-list" in error["message"], error["message"]
    assert "weights_only=False" not in error["message"]  # torch's advice to disable the check is not passed on
    assert not marker.exists(), "the forged pickle's payload ran"


def _rewrite_manifest(folder: Path, **fields: object) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(fields)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("model_file", ["/etc/passwd", "../tiny/model.pt", "sub/model.pt", "..", "C:\\model.pt", ""])
def test_model_file_must_be_a_bare_name_inside_the_folder(tiny_artifact: Path, tmp_path: Path, model_file: str) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_artifact, folder)
    _rewrite_manifest(folder, model_file=model_file)
    with pytest.raises(ArtifactError, match="bare names inside the folder"):
        load_artifact(folder)


def test_processor_files_are_covered_by_the_manifest(tiny_artifact: Path, tmp_path: Path) -> None:
    manifest = Manifest.read(tiny_artifact)
    assert manifest.processor_sha256 and "tokenizer.json" in manifest.processor_sha256
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_artifact, tampered)
    with (tampered / "processor" / "tokenizer.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(ArtifactError, match=r"processor/tokenizer.json does not match"):
        load_artifact(tampered)
    extra = tmp_path / "extra"
    shutil.copytree(tiny_artifact, extra)
    (extra / "processor" / "added.py").write_text("print('hi')")
    with pytest.raises(ArtifactError, match=r"added\.py"):
        load_artifact(extra)


def test_a_pinned_artifact_sha256_must_match_the_manifest(
    serving_env: Path, tiny_artifact: Path, tmp_path: Path, png_bytes: bytes, monkeypatch
) -> None:
    digest = hashlib.sha256((tiny_artifact / "manifest.json").read_bytes()).hexdigest()
    assert load_artifact(tiny_artifact, pinned_sha256=digest).manifest.model_sha256
    folder = tmp_path / "repinned"
    shutil.copytree(tiny_artifact, folder)
    _rewrite_manifest(folder, base_id="someone else's")  # a manifest that verifies on its own
    assert load_artifact(folder).manifest.base_id == "someone else's"
    monkeypatch.setenv("ARTIFACT_DIR", str(folder))
    monkeypatch.setenv("ARTIFACT_SHA256", digest)
    response = TestClient(app).post("/caption", content=png_bytes, headers={"content-type": "image/png"})
    assert response.status_code == 503 and "pinned ARTIFACT_SHA256" in response.json()["error"]["message"]


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 7])
def test_sha256_file_is_hashlib_over_the_bytes(tmp_path: Path, size: int) -> None:
    """The one-call hash over a mapping equals hashlib over the file's bytes, an empty file included."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
