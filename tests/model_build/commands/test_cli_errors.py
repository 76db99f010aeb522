"""Every wrong invocation of `python -m model_build` ends with one line naming the problem and a non-zero exit.

Flags are vetted before any work (argparse's exit 2, naming the flag); inputs that only loading can judge
exit 1 with one line; Ctrl-C exits 130. None of them may print a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from handler.florence.artifact import sha256_file
from model_build.base.tiny import EMBEDDED_DIR
from model_build.cli import COMMANDS, INTERRUPTED_EXIT, build_parser, main
from model_build.finetune.lora import ADAPTER_CONFIG, ADAPTER_INFO, ADAPTER_WEIGHTS
from tests.conftest import REPO_ROOT, cli_failure, run_python


def _adapter(folder: Path, *, config: str | None = None, info: str | None = None, weights: bytes | None = None) -> Path:
    """An adapter folder in the layout `finetune` writes, each file replaceable by damaged bytes."""
    folder.mkdir(parents=True)
    save_file({"lora_A": np.zeros((2, 2), dtype=np.float32)}, str(folder / ADAPTER_WEIGHTS))
    info_fields = {"base": "tiny", "image_size": 384, "tasks": ["caption"], "lora": {}}
    info_fields["adapter_sha256"] = sha256_file(folder / ADAPTER_WEIGHTS)
    (folder / ADAPTER_CONFIG).write_text(config if config is not None else json.dumps({"r": 8}))
    (folder / ADAPTER_INFO).write_text(info if info is not None else json.dumps(info_fields))
    if weights is not None:
        (folder / ADAPTER_WEIGHTS).write_bytes(weights)
    return folder


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(EMBEDDED_DIR / "config.json", config_only / "config.json")
    good = _adapter(tmp_path / "adapter-ok")
    truncated = (good / ADAPTER_WEIGHTS).read_bytes()[:-8]
    bad_manifest = tmp_path / "bad-manifest"
    bad_manifest.mkdir()
    (bad_manifest / "manifest.json").write_text('{"model_sha256": ')
    (tmp_path / "empty").mkdir()
    fifo_manifest = tmp_path / "fifo-manifest"  # reading it would wait for a writer forever
    fifo_manifest.mkdir()
    os.mkfifo(fifo_manifest / "manifest.json")
    linked_manifest = tmp_path / "linked-manifest"  # reading it would never end
    linked_manifest.mkdir()
    (linked_manifest / "manifest.json").symlink_to("/dev/zero")
    dataset = tmp_path / "my-coco"  # a user's data, with no val2017 split: nothing may write over it
    (dataset / "train2017").mkdir(parents=True)
    (dataset / "train2017" / "000000000009.jpg").write_bytes(b"a photo")
    (dataset / "annotations").mkdir()
    (dataset / "annotations" / "instances_train2017.json").write_text("{}")
    bases = {}
    for name, drop in (
        ("no-tokenizer", "tokenizer.json"),
        ("no-processor", "processor_config.json"),
        ("cut-weights", ""),
    ):
        bases[name] = shutil.copytree(EMBEDDED_DIR, tmp_path / name)
        if drop:
            (bases[name] / drop).unlink()
    weights = bases["cut-weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a download cut short
    return {
        **bases,
        "dataset": dataset,
        "file": a_file,
        "empty": tmp_path / "empty",
        "config-only": config_only,
        "missing": tmp_path / "no" / "such" / "folder",
        "bad-config": _adapter(tmp_path / "bad-config", config='{"r": 8,'),
        "bad-info": _adapter(tmp_path / "bad-info", info="[]"),
        "bad-weights": _adapter(tmp_path / "bad-weights", weights=b"\x10\x00\x00\x00\x00\x00\x00\x00{"),
        "truncated-weights": _adapter(tmp_path / "truncated-weights", weights=truncated),
        "bad-manifest": bad_manifest,
        "fifo-manifest": fifo_manifest,
        "linked-manifest": linked_manifest,
        "under-file": a_file / "out",
        "adapter-ok": good,
    }


USAGE_ERRORS = [
    # (argv with {place} names, the flag argparse names, what the message must say)
    ("finetune --base {empty}", "--base", "has no config.json"),
    ("finetune --base {file}", "--base", "has no config.json"),
    ("finetune --base {config-only}", "--base", "has a config.json but no weights"),
    ("finetune --base {missing}", "--base", "no such folder"),
    ("finetune --base microsoft/Florence-2-base", "--base", "remote-code Florence-2 checkpoint"),
    ("finetune --base {no-tokenizer}", "--base", "has no tokenizer (tokenizer.json or vocab.json)"),
    ("finetune --base {no-processor}", "--base", "has no image processor (processor_config.json or"),
    ("fuse --base {cut-weights}", "--base", "model.safetensors is not a readable safetensors file"),
    ("finetune --run-dir {under-file}", "--run-dir", "is a file, not a folder"),
    ("finetune --run-dir {file}", "--run-dir", "is a file; give a folder"),
    ("finetune --steps -1", "--steps", "must be at least 1, not -1"),
    ("finetune --steps 0", "--steps", "must be at least 1, not 0"),
    ("finetune --max-images 0", "--max-images", "must be at least 1"),
    ("finetune --batch-size 0", "--batch-size", "must be at least 1"),
    ("finetune --image-size 100", "--image-size", "multiple of 32"),
    ("finetune --lora-r 0", "--lora-r", "must be at least 1"),
    ("finetune --lora-alpha 0", "--lora-alpha", "must be at least 1"),
    ("finetune --seed 99999999999999999999", "--seed", "must be at most 9.22337e+18"),
    ("synth --seed 99999999999999999999", "--seed", "must be at most 9.22337e+18"),
    ("rehearse --seed 99999999999999999999", "--seed", "must be at most 9.22337e+18"),
    ("finetune --steps abc", "--steps", "invalid int value: 'abc'"),
    ("finetune --lr nan", "--lr", "must be a finite number, not nan"),
    ("finetune --lr inf", "--lr", "must be a finite number, not inf"),
    ("finetune --lr abc", "--lr", "invalid float value: 'abc'"),
    ("finetune --lr 1e300", "--lr", "must be above 0 and at most 1, not 1e+300"),  # was the optimizer's overflow
    ("finetune --lr 1e40", "--lr", "must be above 0 and at most 1, not 1e+40"),
    ("finetune --lr 0", "--lr", "must be above 0 and at most 1, not 0"),  # was an adapter that does nothing
    ("finetune --lr=-1", "--lr", "must be above 0 and at most 1, not -1"),
    ("pretrain-tiny --lr 1e300", "--lr", "must be above 0 and at most 1, not 1e+300"),
    ("finetune --weight-decay 1e300", "--weight-decay", "must be at most 1, not 1e300"),
    ("finetune --lora-dropout 1", "--lora-dropout", "must be at least 0 and below 1, not 1"),
    ("finetune --lora-alpha 1" + "0" * 400, "--lora-alpha", "must be at most 65536"),  # was alpha / r's overflow
    ("finetune --weight-decay inf", "--weight-decay", "must be a finite number, not inf"),
    ("finetune --lora-dropout nan", "--lora-dropout", "must be a finite number, not nan"),
    ("fuse --base tiny --min-box-iou nan", "--min-box-iou", "must be a finite number, not nan"),
    ("fuse --base tiny --baseline-slack=-inf", "--baseline-slack", "must be a finite number, not -inf"),
    ("finetune --tasks caption,segment", "--tasks", "unknown task 'segment'"),
    ("finetune --tasks=", "--tasks", "name at least one task (caption, detect), not ''"),
    ("fuse --base tiny --tasks=", "--tasks", "name at least one task"),
    ("eval --base tiny --tasks=", "--tasks", "name at least one task"),
    ("fuse --adapter {empty}", "--adapter", "no adapter_model.safetensors"),
    ("fuse --adapter {missing}", "--adapter", "no adapter_model.safetensors"),
    ("fuse --adapter {bad-config}", "--adapter", "adapter_config.json is not valid JSON"),
    ("fuse --adapter {bad-info}", "--adapter", "build_info.json is not a JSON object"),
    ("fuse --adapter {bad-weights}", "--adapter", "not a readable safetensors file"),
    ("fuse --adapter {truncated-weights}", "--adapter", "not a readable safetensors file"),
    ("fuse --adapter {adapter-ok} --out {under-file}", "--out", "is a file, not a folder"),
    ("fuse --base tiny --out {dataset}", "--out", "is not empty and is not an artifact (it has no manifest.json)"),
    ("fuse --base tiny --parity-images 0", "--parity-images", "must be at least 1"),
    ("fuse --base tiny --min-box-iou -0.1", "--min-box-iou", "must be at least 0"),
    ("fuse --base {config-only}", "--base", "no weights"),
    ("fuse", None, "give --adapter (a finetune run folder) or --base"),
    ("eval {empty}", "MODEL", "no adapter_model.safetensors"),
    ("eval {file}", "MODEL", "is not a folder"),
    ("eval {config-only}", "MODEL", "holds a model, not a finetune run's adapter; pass it as --base"),
    ("fuse --adapter {config-only}", "--adapter", "holds a model, not a finetune run's adapter; pass it as --base"),
    ("eval {bad-manifest}", "MODEL", "manifest.json"),
    ("eval {fifo-manifest}", "MODEL", "manifest.json is special, not a plain file"),
    ("eval {linked-manifest}", "MODEL", "manifest.json is a link, not a plain file"),
    ("eval", None, "give a model folder"),
    ("eval --base tiny --max-images 0", "--max-images", "must be at least 1"),
    ("eval --base tiny --batch-size 0", "--batch-size", "must be at least 1"),
    ("eval --base tiny --out {under-file}/report.json", "--out", "is a file, not a folder"),
    ("eval --base tiny --out {empty}", "--out", "is a folder; give a file name"),
    ("eval --base tiny --caption-style fancy", "--caption-style", "invalid choice: 'fancy'"),
    ("eval --base tiny --tasks segment", "--tasks", "unknown task 'segment'"),
    ("quality --images 0", "--images", "must be at least 1"),
    ("quality --base-images 0", "--base-images", "must be at least 1"),
    ("quality --data {file}", "--data", "is a file"),
    ("synth --out {under-file}", "--out", "is a file, not a folder"),
    ("synth --out {dataset}", "--out", "is not empty and is not a synthetic dataset"),
    ("synth --train -1", "--train", "must be at least 1"),
    ("synth --val 0", "--val", "must be at least 1"),
    ("bench --quick --runs 0", "--runs", "must be at least 1"),
    ("bench --quick --threads 0", "--threads", "must be at least 1"),
    ("bench --quick --warmup -1", "--warmup", "must be at least 0"),
    ("bench --quick --caption-tokens 0", "--caption-tokens", "must be at least 1"),
    ("bench --quick --out {under-file}", "--out", "is a file, not a folder"),
    ("bench-scores --quick --runs 0", "--runs", "must be at least 1"),
    ("bench-scores --quick --threads 0", "--threads", "must be at least 1"),
    ("rehearse --steps 0", "--steps", "must be at least 1"),
    ("rehearse --threads -1", "--threads", "must be at least 0"),
    ("rehearse --batch-size 0", "--batch-size", "must be at least 1"),
    ("rehearse --out {dataset}", "--out", "is not empty and is not a rehearsal's folder"),
    ("rehearse --out {file}", "--out", "is a file; give a folder"),
    ("cost", None, "the following arguments are required: --measured"),
    ("cost --measured abc", None, "expected MEMORY_MB=path/to/benchmarks.json"),
    ("cost --measured 1769={file}", None, "is not a bench run's benchmarks.json"),
    ("cost --measured 1769={file} --out {empty}", "--out", "is a folder; give a file name"),
    ("pretrain-tiny --steps 0", "--steps", "must be at least 1"),
    ("pretrain-tiny --out {dataset}", "--out", "is not empty and is not a model written by pretrain-tiny"),
    ("pretrain-tiny --val-dir {dataset}", "--val-dir", "is not empty and is not a synthetic dataset"),
    ("pretrain-tiny --workers 0", "--workers", "must be at least 1"),
    ("pretrain-tiny --easy-share 1", "--easy-share", "must be at least 0 and below 1, not 1"),
    ("demo --steps 0", "--steps", "must be at least 1"),
    ("demo --port 70000", "--port", "must be at most 65535"),
    ("demo --data {dataset}", "--data", "is not empty and is not a synthetic dataset"),
    ("demo --out {dataset}", "--out", "is not empty and is not an artifact"),
    ("quality --data {dataset}", "--data", "is not empty and is not a synthetic dataset"),
    ("demo --base {empty}", "--base", "has no config.json"),
    ("nosuchcommand", None, "invalid choice: 'nosuchcommand'"),
]


@pytest.mark.parametrize(("argv", "flag", "message"), USAGE_ERRORS, ids=[case[0] for case in USAGE_ERRORS])
def test_a_wrong_invocation_is_a_usage_error_naming_the_problem(
    argv: str, flag: str | None, message: str, places: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = cli_failure([part.format_map(places) for part in argv.split()], capsys)
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert "error: " in last and message in last, err
    if flag is not None:
        assert f"argument {flag}" in last, err


@pytest.mark.parametrize("damage", ["resized config", "missing weights"])
def test_a_base_whose_weights_do_not_make_its_model_is_one_line_and_exit_1(damage: str, tmp_path: Path) -> None:
    """Before, the first was a RuntimeError traceback, and the second trained on randomly filled layers."""
    from safetensors.numpy import load_file

    from model_build.data.synth import synthesize

    base = shutil.copytree(EMBEDDED_DIR, tmp_path / "base")
    if damage == "resized config":
        config = json.loads((base / "config.json").read_text())
        config["text_config"]["d_model"] *= 2
        (base / "config.json").write_text(json.dumps(config))
        message = "weights of other shapes than its config.json says"
    else:
        tensors = load_file(str(base / "model.safetensors"))
        save_file({k: v for k, v in tensors.items() if "encoder.layers.1." not in k}, str(base / "model.safetensors"))
        message = "weights are missing from its checkpoint (e.g. model.language_model.encoder.layers.1."
    # A fresh process: transformers logs its load report, which pytest's captured streams would garble.
    data = synthesize(tmp_path / "data", train=1, val=1, seed=3)
    result = run_python("-m", "model_build", "eval", "--base", str(base), "--max-images", "1", "--data", str(data))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"python -m model_build eval: error: could not load '{base}': ")
    )
    assert message in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["eval --base tiny", "finetune --base tiny --run-dir {run}"])
def test_an_image_size_past_the_text_encoders_positions_is_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """768 px is 577 image tokens; the tiny model's encoder has 512 positions. Before: an IndexError traceback."""
    from model_build.data.synth import synthesize

    data = synthesize(tmp_path / "data", train=1, val=1, seed=3)
    argv = [*command.format(run=tmp_path / "run").split(), "--data", str(data), "--image-size", "768"]
    status, err = cli_failure([*argv, "--tasks", "caption"], capsys)
    assert status == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "error: --image-size 768 gives 577 image tokens, which with a 10-token prompt are more than the 512 "
            "positions of the text encoder of 'tiny'; the largest size that fits is 704"
        )
    )


@pytest.mark.parametrize("command", ["fuse --base {base}", "eval --base {base}", "eval {adapter}"])
def test_fuse_and_eval_read_the_data_before_any_model(
    command: str, places: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that would fail to load shows the order: the data's error comes first, before the minutes of loading."""
    from safetensors.numpy import load_file

    base = shutil.copytree(EMBEDDED_DIR, tmp_path / "base")
    tensors = load_file(str(base / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "encoder.layers.1." not in k}, str(base / "model.safetensors"))
    argv = command.format(base=base, adapter=places["adapter-ok"]).split()
    status, err = cli_failure([*argv, "--data", str(places["empty"])], capsys)
    assert status == 2
    assert f"error: {places['empty'] / 'annotations'}" in err.strip().splitlines()[-1]


def test_no_refused_output_folder_lost_a_file(places: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """What the refusals above protect: the user's dataset is there, byte for byte, after each command."""
    dataset = places["dataset"]
    before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    for argv in (["fuse", "--base", "tiny", "--out"], ["synth", "--out"], ["pretrain-tiny", "--out"]):
        assert cli_failure([*argv, str(dataset)], capsys)[0] == 2
    assert {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before


def test_a_taken_port_stops_the_demo_before_it_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, err = cli_failure(["demo", "--port", str(port), "--data", str(tmp_path / "data")], capsys)
    assert status == 2
    assert f"argument --port: cannot serve on 127.0.0.1:{port}: Address already in use" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("flag", ["--base tiny", "--image-size 768"])
def test_eval_refuses_overrides_an_artifact_would_ignore(
    flag: str, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = cli_failure(["eval", str(tiny_artifact), *flag.split()], capsys)
    assert status == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith("error: --base and --image-size apply to a base or an adapter; an artifact carries its own")
    )


def test_a_tampered_artifact_is_one_line_and_exit_1(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tampered = shutil.copytree(tiny_artifact, tmp_path / "tampered")
    with (tampered / "model.pt").open("ab") as handle:
        handle.write(b"x")
    status, err = cli_failure(
        ["eval", str(tampered), "--max-images", "1", "--data", str(tiny_artifact.parent / "synth")], capsys
    )
    assert status == 1
    assert err.strip().splitlines() == [
        f"python -m model_build eval: error: model.pt is {(tampered / 'model.pt').stat().st_size} bytes, "
        f"manifest says {(tiny_artifact / 'model.pt').stat().st_size}"
    ]


def test_a_forged_model_is_one_line_and_exit_1(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model.pt whose hashes match but whose model the runtime cannot serve (a NaN norm), refused at load."""
    import torch

    from handler.florence.artifact import sha256_file

    forged = shutil.copytree(tiny_artifact, tmp_path / "forged")
    model = torch.load(forged / "model.pt", weights_only=False)  # the trusted build's own model
    model.text.enc_norm.weight.data.fill_(float("nan"))
    torch.save(model, forged / "model.pt")
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest.update(model_sha256=sha256_file(forged / "model.pt"), model_bytes=(forged / "model.pt").stat().st_size)
    (forged / "manifest.json").write_text(json.dumps(manifest))
    status, err = cli_failure(
        ["eval", str(forged), "--max-images", "1", "--data", str(tiny_artifact.parent / "synth")], capsys
    )
    assert status == 1
    assert err.strip().splitlines() == [
        "python -m model_build eval: error: model.pt is not a model this runtime can serve: "
        "text.enc_norm.weight: holds NaN or infinite values"
    ]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "offline",
    [
        {"HF_HUB_OFFLINE": "1"},
        # No HF_HUB_OFFLINE, the hub unreachable: huggingface_hub retried on a closed client and raised a RuntimeError.
        {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"},
    ],
    ids=["HF_HUB_OFFLINE", "hub-unreachable"],
)
def test_a_hub_id_while_offline_is_one_line_and_exit_1(offline: dict[str, str], tiny_artifact: Path) -> None:
    # A fresh process: huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT once, at import.
    env = {name: value for name, value in os.environ.items() if name not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    data = ["--data", str(tiny_artifact.parent / "synth")]  # eval reads the data first
    result = subprocess.run(
        [sys.executable, "-m", "model_build", "eval", "--base", "florence-community/Florence-2-base", *data],
        cwd=REPO_ROOT,
        env=dict(env, PYTHONPATH=str(REPO_ROOT), **offline),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("python -m model_build eval: error: could not load 'florence-community/Florence-2-base'")
    assert "Offline?" in line


def test_what_only_the_loaded_base_and_data_can_judge_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_build.data.synth import synthesize

    data = synthesize(tmp_path / "data", train=1, val=1, seed=3)
    argv = ["finetune", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--tasks", "detect"]
    status, err = cli_failure([*argv, "--batch-size", "4", "--steps", "1"], capsys)
    assert status == 2
    assert "1 training samples cannot fill one batch of 4" in err.strip().splitlines()[-1]
    status, err = cli_failure([*argv, "--batch-size", "1", "--steps", "1", "--target-modules", "no_such_proj"], capsys)
    assert status == 2
    assert "--target-modules: Target modules {'no_such_proj'} not found" in err.strip().splitlines()[-1]
    status, err = cli_failure([*argv, "--batch-size", "1", "--steps", "1", "--lora-r", "1000000000"], capsys)
    assert status == 2  # peft would allocate 512 GB for it: a traceback
    rank = "--lora-r 1000000000 is more than the rank a target layer can have on this base (128, its smaller side)"
    assert err.strip().splitlines()[-1].endswith(f"{rank}: a larger r adds weights, not rank")


def test_an_adapter_that_does_not_fit_its_base_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import load_file

    from model_build.data.synth import synthesize

    data = synthesize(tmp_path / "data", train=1, val=1, seed=3)
    run = tmp_path / "run"
    argv = ["finetune", "--data", str(data), "--run-dir", str(run), "--steps", "1", "--batch-size", "1"]
    assert main([*argv, "--tasks", "detect", "--checkpoint-every", "1"]) == 0
    weights = run / "adapter" / ADAPTER_WEIGHTS
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first.replace("q_proj", "k_proj")] = tensors.pop(first)  # trained for another layer than the base has
    save_file(tensors, str(weights))
    info = json.loads((run / "adapter" / ADAPTER_INFO).read_text())
    assert (
        cli_failure(["eval", str(run), "--data", str(data)], capsys)[1]
        .strip()
        .endswith(
            f"{weights} is not the adapter its build_info.json describes (sha256 differs): "
            "written partly, or copied from another run; rerun `finetune`"
        )
    )
    (run / "adapter" / ADAPTER_INFO).write_text(json.dumps({**info, "adapter_sha256": sha256_file(weights)}))
    capsys.readouterr()
    status, err = cli_failure(["eval", str(run), "--data", str(data)], capsys)
    assert status == 2
    assert f"adapter in {run / 'adapter'} does not fit base 'tiny': missing [" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_names_every_default(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if not isinstance(action, argparse._HelpAction) and not action.required:
            assert "default" in (action.help or ""), (command, action.option_strings or action.dest)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


CTRL_C_RUNS = {
    # command -> (argv after it, given its output folder; whether its work has started, given folder and pid)
    "synth": (
        lambda out: ["--out", str(out), "--train", "100000", "--val", "1"],
        lambda out, pid: any((out / "train2017").glob("*.jpg")),
    ),
    "pretrain-tiny": (  # Ctrl-C reaches the scene-drawing workers too: none may print a traceback
        lambda out: (
            ["--out", str(out / "model"), "--run-dir", str(out / "run"), "--val-dir", str(out / "val")]
            + ["--full-scenes", "100000", "--workers", "2"]
        ),
        lambda out, pid: len(_children(pid)) >= 2,
    ),
    "rehearse": (  # ... and the stage's child interpreter
        lambda out: ["--out", str(out), "--no-full-size"],
        lambda out, pid: (out / "stages" / "base.json").is_file() and bool(_children(pid)),
    ),
}


@pytest.mark.parametrize("command", sorted(CTRL_C_RUNS))
def test_ctrl_c_exits_130_without_a_traceback(command: str, tmp_path: Path) -> None:
    arguments, started = CTRL_C_RUNS[command]
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "model_build", command, *arguments(out)],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job is
    )
    deadline = time.monotonic() + 120
    while not started(out, process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    _, err = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED_EXIT
    assert err.strip().splitlines()[-1] == f"python -m model_build {command}: interrupted"
    assert "Traceback" not in err and "Process " not in err, err
