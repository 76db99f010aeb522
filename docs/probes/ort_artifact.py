"""Probe for issue 11: what would an ONNX-Runtime-backed served artifact give? (run by hand, not product code)

Builds Florence-2-base (random weights, seed 0), exports three ORT int8 models (vision tower + projector,
BART text encoder that also emits the decoder's cross-attention K/V, one decoder step with a growing
self-attention cache + tied lm_head), runs them from a torch-free runner (numpy + onnxruntime + tokenizers
+ PIL), and measures it against the served torch path: latency (interleaved rounds), cold start and peak
RSS in fresh processes, install size, and the base-size teacher-forced quality rule.

    PYTHONPATH=. python docs/probes/ort_artifact.py --out /tmp/ort-probe

The module imports only the standard library at the top, so `--cold-child` proves torch stays out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()
POSITION_OFFSET = 2  # BART's learned positions start at row 2
MAX_NEW_TOKENS = 1024 - POSITION_OFFSET


# ---------------------------------------------------------------- torch-free runner (numpy + onnxruntime)


class OrtRunner:
    """The served path as an ORT artifact would run it: preprocessing, the three sessions, a numpy greedy loop."""

    def __init__(self, folder: Path, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.np = np
        self.config = json.loads((folder / "config.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(name: str) -> Any:
            return ort.InferenceSession(str(folder / f"{name}.int8.onnx"), options, providers=["CPUExecutionProvider"])

        self.vision, self.encoder, self.step = session("vision"), session("encoder"), session("step")
        self.embed_int8 = np.load(folder / "embed_int8.npy", mmap_mode="r")
        self.embed_scale = np.load(folder / "embed_scale.npy")
        self.positions = np.load(folder / "dec_positions.npy")
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.mean = np.array(self.config["mean"], dtype=np.float32)
        self.std = np.array(self.config["std"], dtype=np.float32)

    def embed(self, ids: list[int]) -> Any:
        rows = self.np.asarray(self.embed_int8[ids], dtype=self.np.float32)
        return rows * self.embed_scale[ids, None]

    def pixels(self, image: Any) -> Any:
        """Squash-resize (bicubic) to the serving size, /255, ImageNet mean/std, channels first."""
        np = self.np
        size = self.config["image_size"]
        rgb = np.array(image.convert("RGB").resize((size, size), resample=3), dtype=np.uint8)
        scaled = rgb.astype(np.float32) / np.float32(255)
        return np.ascontiguousarray(((scaled - self.mean) / self.std).transpose(2, 0, 1)[None])

    def image_features(self, image: Any) -> Any:
        return self.vision.run(None, {self.vision.get_inputs()[0].name: self.pixels(image)})[0]

    def cross_kv(self, task: str, features: Any) -> tuple[Any, Any]:
        ids = self.config["prompt_ids"][task]
        embeds = self.embed(ids)
        slots = [i for i, t in enumerate(ids) if t == self.config["image_token_id"]]
        embeds[slots] = features[0]
        cross_k, cross_v = self.encoder.run(None, {self.encoder.get_inputs()[0].name: embeds[None]})
        return cross_k, cross_v

    def greedy(self, cross: tuple[Any, Any], new_tokens: int, teacher: list[int] | None = None) -> tuple[list, list]:
        """Pinned-length greedy decode (EOS suppressed), cache grown by the step's own concat.

        With `teacher`, the next input is the teacher's token instead of the argmax (teacher forcing).
        """
        np = self.np
        layers, heads, width = self.config["decoder_layers"], self.config["heads"], self.config["d_model"]
        self_k = np.zeros((layers, 1, heads, 0, width // heads), dtype=np.float32)
        self_v = self_k
        token, ids, all_logits = self.config["start_id"], [], []
        names = [i.name for i in self.step.get_inputs()]
        for step in range(new_tokens):
            hidden = (self.embed([token]) + self.positions[POSITION_OFFSET + step])[None]
            logits, self_k, self_v = self.step.run(
                None, dict(zip(names, (hidden, self_k, self_v, *cross), strict=True))
            )
            logits = logits[0, -1]
            if teacher is not None:
                all_logits.append(logits.copy())
            logits[self.config["eos_id"]] = -np.inf
            token = int(logits.argmax()) if teacher is None else teacher[step]
            ids.append(token)
        return ids, all_logits

    def run(self, image: Any, tasks: list[str], pinned: dict[str, int]) -> dict[str, str]:
        """`/analyze` as the handler would do it: one vision pass, then each task's decode in turn."""
        features = self.image_features(image)
        answers = {}
        for task in tasks:
            ids, _ = self.greedy(self.cross_kv(task, features), pinned[task])
            answers[task] = self.tokenizer.decode(ids, skip_special_tokens=False)
        return answers


def peak_rss_mib() -> float:
    """VmHWM (exec resets it; ru_maxrss carries the parent's peak across fork+exec on Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cold_child(folder: str, image_path: str, threads: int) -> None:
    """Fresh-process cold start of the ORT runner: import, sessions, first 20-token caption."""
    marks: dict[str, Any] = {}
    import onnxruntime  # noqa: F401

    marks["import_onnxruntime_s"] = time.perf_counter() - START
    from PIL import Image

    load_start = time.perf_counter()
    runner = OrtRunner(Path(folder), threads)
    marks["sessions_s"] = time.perf_counter() - load_start
    image = Image.open(image_path).convert("RGB")
    pinned = runner.config["pinned"]
    runner.run(image, ["<CAPTION>"], pinned)
    marks["first_caption_s"] = time.perf_counter() - START
    runner.run(image, ["<CAPTION>", "<OD>"], pinned)
    marks["torch_imported"] = "torch" in sys.modules
    marks["transformers_imported"] = "transformers" in sys.modules
    marks["sympy_imported"] = "sympy" in sys.modules
    marks["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(marks))


# ---------------------------------------------------------------- build side (torch): export + quantize


def _encoder_module(model: Any) -> Any:
    """BART encoder on inputs_embeds (prompt embeddings with image features in their slots), in plain ops,
    returning the stacked cross-attention K/V of every decoder layer (computed once per request)."""
    import torch
    from torch import nn

    lm = model.model.language_model
    heads = model.config.text_config.encoder_attention_heads
    dec_heads = model.config.text_config.decoder_attention_heads

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = lm.encoder.layers
            self.norm = lm.encoder.layernorm_embedding
            self.positions = lm.encoder.embed_positions
            self.cross = nn.ModuleList(layer.encoder_attn for layer in lm.decoder.layers)

        def forward(self, inputs_embeds):
            b, length, width = inputs_embeds.shape
            x = self.norm(inputs_embeds + self.positions.weight[POSITION_OFFSET : POSITION_OFFSET + length])
            for layer in self.layers:
                sa = layer.self_attn

                def split(t, h=heads):
                    return t.view(b, length, h, -1).transpose(1, 2)

                q, k, v = split(sa.q_proj(x)), split(sa.k_proj(x)), split(sa.v_proj(x))
                att = torch.softmax(q @ k.transpose(-1, -2) * sa.scaling, -1) @ v
                x = layer.self_attn_layer_norm(x + sa.out_proj(att.transpose(1, 2).reshape(b, length, width)))
                x = layer.final_layer_norm(x + layer.fc2(torch.nn.functional.gelu(layer.fc1(x))))
            keys = [ca.k_proj(x).view(b, length, dec_heads, -1).transpose(1, 2) for ca in self.cross]
            values = [ca.v_proj(x).view(b, length, dec_heads, -1).transpose(1, 2) for ca in self.cross]
            return torch.stack(keys), torch.stack(values)

    return Encoder().eval()


def _step_module(model: Any) -> Any:
    """peer.py's decoder step with its fixed position zeroed: the runner adds the step's position in numpy,
    so one graph serves every step (its cache dimension is dynamic)."""
    import torch

    from model_build.bench.peer import _decoder_step_module

    step = _decoder_step_module(model)
    with torch.no_grad():
        step.position.zero_()
    return step


def _export(module: Any, inputs: tuple, dynamic: Any, scratch: Path, folder: Path, name: str) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = scratch / f"{name}.fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(module, inputs, str(fp32), dynamo=True, external_data=True, dynamic_shapes=dynamic)
    quantize_dynamic(
        str(fp32),
        str(folder / f"{name}.int8.onnx"),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
    )


def build_ort_artifact(model: Any, fast: Any, processor: Any, prompts: dict, pinned: dict, folder: Path) -> dict:
    """Export + int8-quantize vision, encoder and step; save embeddings/positions/tokenizer/config."""
    import numpy as np
    import torch
    from PIL import Image
    from torch.export import Dim

    from handler.florence.tasks import IMAGE_SIZE

    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / (folder.name + "-fp32")
    scratch.mkdir(parents=True, exist_ok=True)
    cfg = model.config.text_config
    heads, width, layers = cfg.decoder_attention_heads, cfg.d_model, cfg.decoder_layers
    pixel_values = fast.image_spec.to_pixels(Image.new("RGB", (640, 480)))
    marks: dict[str, float] = {}
    start = time.perf_counter()
    _export(peer_vision(model), (pixel_values,), None, scratch, folder, "vision")
    marks["vision_export_s"] = time.perf_counter() - start
    with torch.inference_mode():
        features = model.model.get_image_features(pixel_values).pooler_output
    embed = model.model.language_model.get_input_embeddings().weight.detach()
    ids = torch.tensor(prompts["<CAPTION>"])
    inputs_embeds = embed[ids].clone()[None]
    inputs_embeds[0, ids == model.config.image_token_id] = features[0]
    start = time.perf_counter()
    length = Dim("length", min=2, max=1024)
    _export(_encoder_module(model), (inputs_embeds,), ({1: length},), scratch, folder, "encoder")
    marks["encoder_export_s"] = time.perf_counter() - start
    with torch.inference_mode():
        cross_k, cross_v = _encoder_module(model)(inputs_embeds)
    past = Dim("past", min=0, max=1023)
    enc = Dim("enc", min=2, max=1024)
    self_k = torch.randn(layers, 1, heads, 20, width // heads)
    step_inputs = (torch.randn(1, 1, width), self_k, self_k.clone(), cross_k, cross_v)
    dynamic = (None, {3: past}, {3: past}, {3: enc}, {3: enc})
    start = time.perf_counter()
    _export(_step_module(model), step_inputs, dynamic, scratch, folder, "step")
    marks["step_export_s"] = time.perf_counter() - start
    # int8 embedding table with a per-row scale (the tied lm_head is inside step.int8.onnx already).
    table = embed.float().numpy()
    scale = np.abs(table).max(1) / 127
    scale[scale == 0] = 1
    np.save(folder / "embed_int8.npy", np.round(table / scale[:, None]).astype(np.int8))
    np.save(folder / "embed_scale.npy", scale.astype(np.float32))
    positions = model.model.language_model.decoder.embed_positions.weight.detach().float().numpy()
    np.save(folder / "dec_positions.npy", positions)
    processor.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    spec = fast.decode_spec
    (folder / "config.json").write_text(
        json.dumps(
            {
                "image_size": IMAGE_SIZE,
                "mean": list(fast.image_spec.mean),
                "std": list(fast.image_spec.std),
                "prompt_ids": prompts,
                "image_token_id": model.config.image_token_id,
                "start_id": spec.start_id,
                "eos_id": spec.eos_id,
                "decoder_layers": layers,
                "heads": heads,
                "d_model": width,
                "pinned": pinned,
            }
        )
    )
    return marks


def peer_vision(model: Any) -> Any:
    from model_build.bench.peer import _vision_module

    return _vision_module(model)


def folder_mib(folder: Path) -> dict[str, float]:
    sizes = {p.name: p.stat().st_size / 2**20 for p in sorted(folder.iterdir()) if p.is_file()}
    sizes["total"] = sum(sizes.values())
    return sizes


# ---------------------------------------------------------------- measurements


def teacher_forced_ort(model: Any, runner: OrtRunner, images: list, prompts: dict, pinned: dict, eos_id: int) -> list:
    """ORT path forced along fp32's greedy tokens; top-1 agreement and KL pooled over images, per task."""
    import torch

    from model_build.export.quality import _agreement_and_kl

    rows = []
    for task, new_tokens in pinned.items():
        refs, ours = [], []
        for image in images:
            pixel_values = torch.from_numpy(runner.pixels(image))
            ids = torch.tensor([prompts[task]])
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    pixel_values=pixel_values,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    num_beams=1,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            fp32_ids = out.sequences[0].tolist()[1:]
            _, logits = runner.greedy(runner.cross_kv(task, runner.image_features(image)), new_tokens, teacher=fp32_ids)
            refs.append(torch.stack(out.logits)[:, 0])
            ours.append(torch.stack([torch.from_numpy(row) for row in logits]))
        top1, kl = _agreement_and_kl(torch.cat(refs), torch.cat(ours), eos_id)
        rows.append({"task": task, "path": "ort", "steps": sum(len(r) for r in refs), "top1": top1, "mean_kl": kl})
    return rows


def interleaved(cases: dict, rounds: int) -> dict:
    """Per case and path: min and median seconds over `rounds` interleaved rounds (one warm-up each)."""
    samples: dict[str, dict[str, list[float]]] = {c: {p: [] for p in fns} for c, fns in cases.items()}
    for fns in cases.values():
        for fn in fns.values():
            fn()
    for _ in range(rounds):
        for case, fns in cases.items():
            for path, fn in fns.items():
                time.sleep(0.1)
                start = time.perf_counter()
                fn()
                samples[case][path].append(time.perf_counter() - start)
    return {
        c: {p: {"min_s": min(v), "median_s": statistics.median(v)} for p, v in by.items()} for c, by in samples.items()
    }


def cold_start(cmd: list[str], runs: int) -> dict:
    """Best of `runs` fresh processes (by first caption), with the wall time of the whole child."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    best: dict | None = None
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(["nice", "-n", "19", *cmd], capture_output=True, text=True, env=env, check=True)
        marks = json.loads(out.stdout.strip().splitlines()[-1])
        marks["child_wall_s"] = time.perf_counter() - start
        if best is None or marks["first_caption_s"] < best["first_caption_s"]:
            best = marks
    return best or {}


def install_sizes() -> dict[str, float]:
    """MiB on disk of each package directory in the venv's site-packages (what the Lambda image would ship)."""
    import numpy

    site = Path(numpy.__file__).resolve().parents[1]
    ort_stack = ["onnxruntime", "flatbuffers", "google", "packaging", "numpy", "numpy.libs", "tokenizers"]
    torch_stack = ["torch", "torchgen", "functorch", "sympy", "mpmath", "networkx", "jinja2", "markupsafe"]
    torch_stack += ["fsspec", "filelock", "numpy", "numpy.libs"]
    sizes: dict[str, float] = {}
    for name in dict.fromkeys(ort_stack + torch_stack + ["PIL", "pillow.libs"]):
        path = site / name
        if path.exists():
            sizes[name] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    sizes["ort_stack"] = sum(sizes.get(n, 0.0) for n in ort_stack)
    sizes["torch_stack"] = sum(sizes.get(n, 0.0) for n in torch_stack)
    sizes["site_packages"] = str(site)  # type: ignore[assignment]
    return sizes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ort-probe"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cold-runs", type=int, default=2)
    parser.add_argument("--cold-child", nargs=2, metavar=("FOLDER", "IMAGE"))
    args = parser.parse_args(argv)
    if args.cold_child:
        cold_child(*args.cold_child, args.threads)
        return 0

    import torch

    from handler.florence.engine import Engine
    from handler.florence.tasks import IMAGE_SIZE, Task
    from model_build.bench.baseline import base_model, base_prompt_ids, decoding_processor, random_images
    from model_build.export.quality import teacher_forced_fidelity
    from model_build.export.quantize import quantize_for_serving
    from model_build.export.serving_prep import prepare_for_serving
    from model_build.export.writer import write_artifact

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds}
    pinned = {"<CAPTION>": 20, "<OD>": 60}
    model, processor, prompts = base_model(0), decoding_processor(), base_prompt_ids()
    fast = prepare_for_serving(model, processor, prompt_ids=prompts)
    folder = out / "ort-artifact"
    results["export"] = build_ort_artifact(model, fast, processor, prompts, pinned, folder)
    results["ort_artifact_mib"] = folder_mib(folder)
    print(json.dumps(results), flush=True)
    runner = OrtRunner(folder, args.threads)
    images = random_images(2)
    image = images[0]

    baseline = quantize_for_serving(model)
    tokens = {Task.CAPTION: 20, Task.DETECT: 60}
    fidelity = teacher_forced_fidelity(model, baseline, fast, processor, images, prompts, tokens)
    results["quality"] = [
        {"task": r.task, "path": r.path, "steps": r.steps, "top1": r.top1_agreement, "mean_kl": r.mean_kl}
        for r in fidelity.rows
    ] + teacher_forced_ort(model, runner, images, prompts, pinned, fast.decode_spec.eos_id)
    print(json.dumps(results["quality"]), flush=True)
    del baseline

    engine = Engine(fast, None, new_tokens=tokens)
    cases = {
        "caption": {
            "ort": lambda: runner.run(image, ["<CAPTION>"], pinned),
            "served": lambda: engine.run(image, [Task.CAPTION]),
        },
        "<OD>": {
            "ort": lambda: runner.run(image, ["<OD>"], pinned),
            "served": lambda: engine.run(image, [Task.DETECT]),
        },
        "caption+<OD>": {
            "ort": lambda: runner.run(image, ["<CAPTION>", "<OD>"], pinned),
            "served": lambda: engine.run(image, [Task.CAPTION, Task.DETECT]),
        },
    }
    with torch.inference_mode():
        results["latency"] = interleaved(cases, args.rounds)
    print(json.dumps(results["latency"]), flush=True)

    image_path = out / "image.png"
    image.save(image_path)
    manifest = write_artifact(fast, processor, out / "served", base_id="bench", image_size=IMAGE_SIZE, tasks=list(Task))
    results["served_artifact_mib"] = sum(p.stat().st_size for p in (out / "served").rglob("*") if p.is_file()) / 2**20
    results["served_model_mib"] = manifest.model_bytes / 2**20
    del model, fast
    cases.clear()  # the timing closures hold the engine and the runner; free both before the children
    engine = runner = None  # type: ignore[assignment]
    probe = str(Path(__file__).resolve())
    ort_cmd = [sys.executable, probe, "--threads", str(args.threads), "--cold-child", str(folder), str(image_path)]
    served_cmd = [sys.executable, "-m", "model_build.bench.child", "served", str(out / "served"), str(image_path)]
    served_cmd += ["20", "60", "{}", str(args.threads)]
    results["cold_ort"] = cold_start(ort_cmd, args.cold_runs)
    results["cold_served"] = cold_start(served_cmd, args.cold_runs)
    results["install_mib"] = install_sizes()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
