"""The build pipeline on the embedded tiny Florence-2, with real forward passes throughout.

One session-scoped path does the expensive work once: synth -> finetune (a few steps) -> fuse. The
tests then check its products: the adapter file, the manifest, the parity gate, eval and a fresh
process loading the artifact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handler.florence.artifact import Manifest, load_artifact, sha256_file
from handler.florence.engine import Engine
from handler.florence.tasks import Task, num_image_tokens
from model_build.base.loading import load_base
from model_build.cli import main as cli
from model_build.data.synth import synthesize
from model_build.export.fuse import held_out_images
from model_build.export.serving_prep import prepare_for_serving
from model_build.finetune.lora import ADAPTER_WEIGHTS, LoraSettings, apply_lora, load_adapter, save_adapter
from tests.conftest import REPO_ROOT

REPO = REPO_ROOT
PARITY_IMAGES = 3


@pytest.fixture(scope="session")
def build_data(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("build-data"), train=8, val=4, seed=5)


def _finetune_argv(data: Path, run_dir: Path, *flags: str) -> list[str]:
    """A few-step LoRA run on the tiny base: small batches, a figure every step."""
    common = ["--batch-size", "2", "--warmup-steps", "1", "--log-every", "1"]
    return ["finetune", "--base", "tiny", "--data", str(data), "--run-dir", str(run_dir), *common, *flags]


@pytest.fixture(scope="session")
def finetune_run(build_data: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finetune-run")
    code = cli(_finetune_argv(build_data, run_dir, "--steps", "3"))
    assert code == 0
    return run_dir


def _fuse(finetune_run: Path, data: Path, out: Path, *flags: str) -> int:
    return cli(["fuse", "--adapter", str(finetune_run), "--data", str(data), "--out", str(out), *flags])


@pytest.fixture(scope="session")
def artifact(finetune_run: Path, build_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "florence2"
    code = _fuse(finetune_run, build_data, out, "--parity-images", str(PARITY_IMAGES))
    assert code == 0
    return out


def test_finetune_writes_metrics_plot_and_lora_only_adapter(finetune_run: Path) -> None:
    rows = (finetune_run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "step,loss,lr,seconds" and len(rows) == 1 + 3
    assert json.loads((finetune_run / "metrics.json").read_text())["config"]["steps"] == 3
    assert (finetune_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from safetensors.torch import load_file

    tensors = load_file(str(finetune_run / "adapter" / ADAPTER_WEIGHTS))
    assert tensors and all("lora_" in name for name in tensors)
    # q_proj/v_proj exist only in the BART language model (the DaViT tower uses a fused qkv).
    assert all("language_model" in name for name in tensors)
    config = json.loads((finetune_run / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (8, 16, ["q_proj", "v_proj"])


def _logits(model, processor, image) -> torch.Tensor:
    inputs = processor(text=[Task.CAPTION.value], images=[image], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs, decoder_input_ids=torch.tensor([[2, 0, 5, 7]])).logits


def test_adapter_save_load_round_trip_is_exact_with_tied_embeddings(build_data: Path, tmp_path: Path) -> None:
    model, processor = load_base("tiny")
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied pair
    image = held_out_images(build_data, "val2017", 1)[0]
    base_logits = _logits(model, processor, image)
    peft_model = apply_lora(model, LoraSettings())
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: B starts at zero, which would make the test vacuous
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.eval()
    adapted_logits = _logits(peft_model, processor, image)
    assert not torch.allclose(adapted_logits, base_logits, atol=1e-4)

    save_adapter(peft_model, tmp_path, base="tiny", image_size=384, tasks=[Task.CAPTION])
    restored, _, info = load_adapter(tmp_path)
    assert torch.equal(_logits(restored, processor, image), adapted_logits)
    assert info.adapter_sha256 == sha256_file(tmp_path / ADAPTER_WEIGHTS)
    merged = restored.merge_and_unload()
    assert torch.allclose(_logits(merged, processor, image), adapted_logits, atol=1e-4)


def test_manifest_pins_model_adapter_runtime_and_parity(artifact: Path, finetune_run: Path) -> None:
    manifest = Manifest.read(artifact)
    assert manifest.model_sha256 == sha256_file(artifact / "model.pt")
    assert manifest.model_bytes == (artifact / "model.pt").stat().st_size
    assert manifest.adapter_sha256 == sha256_file(finetune_run / "adapter" / ADAPTER_WEIGHTS)
    assert (manifest.base_id, manifest.image_size, manifest.tasks) == ("tiny", 384, ["caption", "detect"])
    assert manifest.generation["num_beams"] == 1
    assert manifest.torch == torch.__version__ and manifest.python == sys.version.split()[0]
    parity = manifest.parity
    assert parity["passed"] and parity["images"] == PARITY_IMAGES
    # Each bound holds, or (quality parity) the served model is as faithful to fp32 as the seed recipe.
    for figure, bound in (("caption_agreement", 0.9), ("box_iou", 0.8)):
        baseline = parity[f"baseline_{figure}"]
        assert parity[figure] >= bound or parity[figure] >= baseline - parity["baseline_slack"]
    assert manifest.extra["lora"]["target_modules"] == ["q_proj", "v_proj"]

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(artifact / "processor")
    assert processor.image_processor.size == {"height": 384, "width": 384}
    assert processor.num_image_tokens == num_image_tokens(384) == 145
    loaded = load_artifact(artifact)
    assert loaded.model.image_spec.size == 384  # the served runtime preprocesses at the same size
    linear_left = [n for n, m in loaded.model.named_modules() if type(m) is torch.nn.Linear]
    assert linear_left == []


def test_parity_gate_refuses_an_impossible_threshold(
    finetune_run: Path, build_data: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "rejected"
    code = _fuse(
        finetune_run,
        build_data,
        out,
        "--parity-images",
        "2",
        "--min-caption-agreement",
        "1.01",
        "--baseline-slack",
        "-1",
    )
    assert code != 0
    assert "parity gate failed" in capsys.readouterr().err
    assert not out.exists()


def test_eval_scores_the_artifact(artifact: Path, build_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert cli(["eval", str(artifact), "--data", str(build_data), "--max-images", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"]["kind"] == "artifact" and report["images"] == 2
    assert {"cider", "bleu4", "exact_match"} <= set(report["caption"])
    assert 0.0 <= report["detect"]["map"] <= report["detect"]["map50"] <= 1.0


_FRESH_PROCESS = """
import json, sys
from handler.florence.artifact import load_artifact
from handler.florence.engine import Engine
from handler.florence.tasks import Task
from model_build.export.fuse import held_out_images
loaded = load_artifact(sys.argv[1])
engine = Engine(loaded.model, loaded.processor)
out = []
for image in held_out_images(sys.argv[2], "val2017", int(sys.argv[3])):
    predictions = engine.run(image, [Task.CAPTION, Task.DETECT]).predictions
    out.append({task.api_name: [p.text, p.as_dict()] for task, p in predictions.items()})
print(json.dumps(out))
"""


def test_artifact_in_fresh_process_matches_in_process_fused_model(
    artifact: Path, finetune_run: Path, build_data: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(artifact), str(build_data), str(PARITY_IMAGES)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    fresh = json.loads(result.stdout.strip().splitlines()[-1])

    peft_model, processor, _ = load_adapter(finetune_run)
    engine = Engine(prepare_for_serving(peft_model.merge_and_unload(), processor))
    in_process = []
    for image in held_out_images(build_data, "val2017", PARITY_IMAGES):
        predictions = engine.run(image, [Task.CAPTION, Task.DETECT]).predictions
        in_process.append({task.api_name: [p.text, p.as_dict()] for task, p in predictions.items()})
    assert fresh == json.loads(json.dumps(in_process))


def test_finetune_resume_continues_from_the_checkpoint(build_data: Path, tmp_path: Path) -> None:
    args = _finetune_argv(build_data, tmp_path, "--checkpoint-every", "1", "--tasks", "caption")
    assert cli(args + ["--steps", "1"]) == 0
    first = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert cli(args + ["--steps", "2", "--resume"]) == 0
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2] and history[0] == first[0]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2
