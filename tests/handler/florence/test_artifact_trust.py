"""A forged artifact cannot run code: the pickle loads with weights_only and an allow-list, every file
is covered by the manifest, file names stay in the folder, and an outside pin must match.

The forged pickles are real exploits: `test_the_forged_pickles_do_run_code_under_a_plain_load` shows
that an ordinary `torch.load` of them runs the payload (and, for one, still returns a working model).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from handler.app import app, lambda_handler
from handler.events.s3 import S3BatchError
from handler.florence.artifact import MAX_PICKLE_BYTES, ArtifactError, Manifest, load_artifact, sha256_file
from tests.conftest import REPO_ROOT
from tests.handler.events.test_s3 import BUCKET, s3, s3_event  # noqa: F401  (s3: the moto fixture)
from tests.handler.test_app import Context


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


# ---- The red-team table: forged artifacts, by attack class, through every door ----------------------------
#
# Each entry turns a copy of the real tiny artifact into a forged one (and, where the manifest would
# otherwise give it away, reseals the manifest's sha256 and size, as anyone who can write the folder can).
# Every one must leave the canary unwritten and be a 503 `model_unavailable` whose message names the fault,
# through the HTTP API, a direct invoke and an S3 upload event, with the process still serving afterwards.

CANARY_CODE = "open({canary!r}, 'w').write('ran')"
HANG_S = 30.0
"""A load slower than this counts as a hang (a refused one takes well under a second)."""


def _unicode(text: str) -> bytes:
    """The pickle opcode BINUNICODE with `text`."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _storage_tensor(key: str, location: str, numel: bytes, size: bytes) -> bytes:
    """`_rebuild_tensor_v2((storage, FloatStorage, key, location, numel), 0, (size,), (1,), False, {})`."""
    return (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(("
        + _unicode("storage")
        + b"ctorch\nFloatStorage\n"
        + _unicode(key)
        + _unicode(location)
        + numel
        + b"tQK\x00"
        + size
        + b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR."
    )


PICKLE_REFUSALS = {
    "GLOBAL os.system": "it names os.system, which is not on the allow-list",
    "STACK_GLOBAL builtins.eval": "not a model this service trusts",
    "INST os.system": "not a model this service trusts",
    "OBJ subprocess.call": "it names subprocess.call",
    "EXT1 (copyreg registry)": "not a model this service trusts",
    "importlib.import_module": "it names importlib.import_module",
    "functools.partial(exec)": "it names functools.partial",
    "operator.attrgetter": "it names operator.attrgetter",
    "getattr(__import__('os'), 'system')": "it names getattr",
    "torch._C": "it names torch._C._get_tracing_state",
    "torch.serialization.load": "it names torch.serialization.load",
    "UntypedStorage.from_file": "it names torch.storage.UntypedStorage.from_file",
    "_rebuild_from_type_v2(eval)": "it names eval",
    "persistent id not a storage": "Only persistent_load of storage",
    "storage on cuda": "CUDA",
    "storage key ../../etc/passwd": "failed locating file",
    "tensor past its storage": "not resizable",
    "storage size 2**31": "not resizable",
    "lists nested 200,000 deep": "holds a list",
    "memo read never written": "KeyError",
    "string declaring 4 GiB": "EOFError",
    "empty pickle": "EOFError",
    "a dict, not a model": "holds a dict",
}
"""What the 503 says for each hand-written pickle of `_pickles`."""


def _pickles(canary: Path) -> dict[str, bytes]:
    """Raw `data.pkl` payloads, each written by hand with the opcode it attacks through."""
    code = CANARY_CODE.format(canary=str(canary))
    touch = f"touch {canary}"
    return {
        "GLOBAL os.system": b"\x80\x02cos\nsystem\n" + _unicode(touch) + b"\x85R.",
        "STACK_GLOBAL builtins.eval": b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93" + _unicode(code) + b"\x85R.",
        "INST os.system": b"(ios\nsystem\nS'" + touch.encode() + b"'\n.",
        "OBJ subprocess.call": b"(csubprocess\ncall\n]" + _unicode("touch") + b"a" + _unicode(str(canary)) + b"ao.",
        "EXT1 (copyreg registry)": b"\x80\x02\x82\x01.",
        "importlib.import_module": b"\x80\x02cimportlib\nimport_module\n" + _unicode("os") + b"\x85R.",
        "functools.partial(exec)": b"\x80\x02cfunctools\npartial\ncbuiltins\nexec\n" + _unicode(code) + b"\x86R)R.",
        "operator.attrgetter": b"\x80\x02coperator\nattrgetter\n" + _unicode("system") + b"\x85R.",
        "getattr(__import__('os'), 'system')": (
            b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\n"
            + _unicode("os")
            + b"\x85R"
            + _unicode("system")
            + b"\x86R."
        ),
        "torch._C": b"\x80\x02ctorch._C\n_get_tracing_state\n)R.",
        "torch.serialization.load": b"\x80\x02ctorch.serialization\nload\n" + _unicode("/etc/passwd") + b"\x85R.",
        "UntypedStorage.from_file": b"\x80\x02ctorch.storage\nUntypedStorage.from_file\n"
        + _unicode("/etc/passwd")
        + b"\x85R.",
        "_rebuild_from_type_v2(eval)": (
            b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\ncbuiltins\neval\nctorch\nTensor\n"
            + _unicode(code)
            + b"\x85}tR."
        ),
        "persistent id not a storage": b"\x80\x02" + _unicode("module") + b"\x85Q.",
        "storage on cuda": _storage_tensor("0", "cuda:0", b"K\x04", b"K\x04"),
        "storage key ../../etc/passwd": _storage_tensor("../../../etc/passwd", "cpu", b"K\x04", b"K\x04"),
        "tensor past its storage": _storage_tensor("1", "cpu", b"K\x08", b"J\x00\x00\x00\x10"),
        "storage size 2**31": _storage_tensor("0", "cpu", b"J\xff\xff\xff\x7f", b"J\xff\xff\xff\x7f"),
        "lists nested 200,000 deep": b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".",
        "memo read never written": b"\x80\x02h\x07.",
        "string declaring 4 GiB": b"\x80\x02X\xff\xff\xff\xff" + b"a" * 10 + b".",
        "empty pickle": b"",
        "a dict, not a model": b"\x80\x02}.",
    }


def _reseal(folder: Path) -> None:
    """Point the manifest at the current model.pt, as anyone who can write the folder can."""
    model_path = folder / "model.pt"
    _rewrite_manifest(folder, model_sha256=sha256_file(model_path), model_bytes=model_path.stat().st_size)


def _members(tiny: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(tiny / "model.pt") as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _rezip(folder: Path, members: list[tuple[str, bytes]], deflated: tuple[str, ...] = ()) -> None:
    with warnings.catch_warnings():  # zipfile warns about the duplicate names some attacks write
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(folder / "model.pt", "w") as archive:
            for name, data in members:
                method = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
                archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    _reseal(folder)


Forge = Callable[[Path, Path, Path], None]
"""Turns the copy `folder` of the artifact `tiny` into a forged one; a payload would write `canary`."""


def _with_pickle(name: str) -> Forge:
    def forge(tiny: Path, folder: Path, canary: Path) -> None:
        payload = _pickles(canary)[name]
        _rezip(folder, [(n, payload if n.endswith("/data.pkl") else data) for n, data in _members(tiny)])

    return forge


Members = list[tuple[str, bytes]]


def _zip(change: Callable[[Members, bytes], Members], deflated: tuple[str, ...] = ()) -> Forge:
    """model.pt's members changed by `change(members, a pickle that runs code)`."""

    def forge(tiny: Path, folder: Path, canary: Path) -> None:
        _rezip(folder, change(_members(tiny), _pickles(canary)["GLOBAL os.system"]), deflated)

    return forge


def _model(change: Callable[[Any], Any]) -> Forge:
    """A well-formed pickle of the real model with its state changed: only the allow-listed classes."""

    def forge(tiny: Path, folder: Path, canary: Path) -> None:
        model = torch.load(tiny / "model.pt", weights_only=False)  # the trusted build's own model
        changed = change(model)  # a module when the attack pickles another root
        torch.save(changed if isinstance(changed, torch.nn.Module) else model, folder / "model.pt")
        _reseal(folder)

    return forge


def _manifest(change: Callable[[dict], object]) -> Forge:
    def forge(tiny: Path, folder: Path, canary: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return forge


def _replace(relative: str, make: Callable[[Path], object]) -> Forge:
    """Replace (or add) one file of the artifact: a link, a FIFO, a folder or other bytes."""

    def forge(tiny: Path, folder: Path, canary: Path) -> None:
        path = folder / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        make(path)

    return forge


def _not_a_zip(tiny: Path, folder: Path, canary: Path) -> None:
    (folder / "model.pt").write_bytes(b"\x80\x02}.")  # a bare pickle, as torch.save wrote before 1.6
    _reseal(folder)


def _link_to_the_real_model(tiny: Path, folder: Path, canary: Path) -> None:
    (folder / "model.pt").unlink()
    (folder / "model.pt").symlink_to(tiny / "model.pt")


def _set(path: str, value: object) -> Callable[[Any], None]:
    """Set the model attribute at dotted `path` (numbers index a ModuleList)."""

    def change(model: Any) -> None:
        *parents, name = path.split(".")
        owner = model
        for part in parents:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        setattr(owner, name, value(owner) if callable(value) else value)

    return change


def _fill(path: str, number: float) -> Callable[[Any], None]:
    return _set_tensor(path, lambda tensor: tensor.clone().fill_(number))


def _set_tensor(path: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Any], None]:
    *parents, name = path.split(".")

    def apply(model: Any) -> None:
        owner = model
        for part in parents:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        tensor = change(getattr(owner, name).detach())
        setattr(owner, name, torch.nn.Parameter(tensor, requires_grad=False) if name in owner._parameters else tensor)

    return apply


def _narrow_linear(path: str) -> Callable[[Any], None]:
    """An Int8Linear one input column short, consistently so (the next layer no longer fits)."""

    def change(model: Any) -> None:
        layer = _get(model, path)
        layer.weight_int8 = layer.weight_int8[:, :-1].contiguous()
        layer.in_features -= 1

    return change


def _get(model: Any, path: str) -> Any:
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def _spec(path: str, **fields: object) -> Callable[[Any], None]:
    return _set(path, lambda owner: dataclasses.replace(getattr(owner, path.rsplit(".", 1)[-1]), **fields))


def _hook(model: Any) -> None:
    model.text.lm_head.register_forward_pre_hook(set)  # `set` is on the allow-list; calling it is a TypeError


def _impostor(model: Any) -> Any:
    norm = model.text.enc_norm
    norm.runtime = "fast-florence2"  # what `is_fast` looks for
    return norm


def _huge_pickle(members: list[tuple[str, bytes]], _: bytes) -> list[tuple[str, bytes]]:
    # MAX_PICKLE_BYTES of list entries: 5.6M one-byte integers, a slow and large unpickle
    entries = b"K\x01" * (MAX_PICKLE_BYTES // 2)
    return [(n, b"\x80\x02](" + entries + b"e." if n.endswith("/data.pkl") else d) for n, d in members]


def _deflated_bomb(members: list[tuple[str, bytes]], _: bytes) -> list[tuple[str, bytes]]:
    # 64 MiB of pickle in a few hundred KB: one string of 'a's (600 MB took the process to 1.9 GB)
    bomb = b"\x80\x02X" + struct.pack("<I", 64 << 20) + b"a" * (64 << 20) + b"."
    return [(n, bomb if n.endswith("/data.pkl") else d) for n, d in members]


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


ATTACKS: dict[str, tuple[Forge, str]] = {
    # data.pkl written by hand: every opcode that names or calls something, and malformed structure
    **{f"pickle: {name}": (_with_pickle(name), refusal) for name, refusal in PICKLE_REFUSALS.items()},
    # zip container (torch.save format)
    "zip: data.pkl deflated (zip bomb)": (_zip(_deflated_bomb, deflated=("model/data.pkl",)), "compressed member"),
    "zip: a storage deflated": (_zip(lambda m, _: m, deflated=("model/data/0",)), "compressed member"),
    "zip: evil data.pkl after the real one": (_zip(lambda m, evil: [*m, ("model/data.pkl", evil)]), "same name"),
    "zip: evil data.pkl before the real one": (_zip(lambda m, evil: [("model/data.pkl", evil), *m]), "same name"),
    "zip: absolute member": (_zip(lambda m, _: [*m, ("/etc/cron.d/evil", b"x")]), "outside its folder"),
    "zip: ../ member": (_zip(lambda m, _: [*m, ("model/../../evil", b"x")]), "outside its folder"),
    "zip: pickle over the cap": (_zip(_huge_pickle), "is no model we build"),
    "zip: storage record missing": (
        _zip(lambda m, _: [x for x in m if x[0] != "model/data/0"]),
        "failed locating file",
    ),
    "zip: not a zip": (_not_a_zip, "not a torch.save archive"),
    # well-formed pickles of allow-listed classes whose state the runtime cannot serve
    "model: impostor root with runtime='fast-florence2'": (_model(_impostor), "model: is a LayerNorm"),
    "model: a child of the wrong class": (_model(_set("text", lambda o: o.vision.projector.norm)), "text: is a"),
    "model: int8 layer narrower than its input": (_model(_narrow_linear("text.enc_layers.0.fc1")), "shape"),
    "model: LayerNorm of the wrong width": (_model(_set_tensor("text.enc_norm.weight", lambda t: t[:-1])), "shape"),
    "model: int8 weights stored as float": (
        _model(_set_tensor("text.enc_layers.0.qkv.weight_int8", lambda t: t.float())),
        "dtype",
    ),
    "model: 3 scales for 384 rows": (
        _model(_set_tensor("text.enc_layers.0.qkv.weight_scale", lambda t: t[:3])),
        "values for",
    ),
    "model: 2 x 2 kernel in a 3 x 3 block": (
        _model(_set_tensor("vision.stages.0.0.conv1.weight", lambda t: t[:, :, :2, :2])),
        "conv1",
    ),
    "model: heads do not divide the width": (_model(_set("text.enc_layers.0.heads", 7)), "heads"),
    "model: decoder layers with other head counts": (_model(_set("text.dec_layers.1.heads", 1)), "heads"),
    "model: encoder positions too few for a prompt": (
        _model(_set_tensor("text.enc_positions", lambda t: t[:5])),
        "do not fit",
    ),
    "model: decoder positions too few for a decode": (
        _model(_set_tensor("text.dec_positions", lambda t: t[:5])),
        "the longest decode",
    ),
    "model: token ids past the vocabulary": (_model(_spec("decode_spec", eos_id=10**9)), "decode_spec.eos_id"),
    "model: prompt missing a task": (_model(lambda m: m.prompt_ids.pop("<OD>")), "is missing"),
    "model: prompt naming a token past the vocabulary": (
        _model(lambda m: m.prompt_ids["<CAPTION>"].append(10**9)),
        "prompt_ids",
    ),
    "model: image size the vision tower cannot fill": (_model(_spec("image_spec", size=1000)), "image-token slots"),
    "model: zero std": (_model(_spec("image_spec", std=(0.0, 0.0, 0.0))), "image_spec.std"),
    "model: NaN LayerNorm": (_model(_fill("text.enc_norm.weight", math.nan)), "NaN or infinite"),
    "model: inf positions": (_model(_fill("text.dec_positions", math.inf)), "NaN or infinite"),
    "model: NaN int8 scale": (_model(_fill("text.enc_layers.0.qkv.weight_scale", math.nan)), "NaN or infinite"),
    "model: NaN tied-head scale": (_model(_set("text.lm_head.scale", math.nan)), "lm_head.scale"),
    "model: tokenizer JSON that does not parse": (_model(_set("tokenizer_json", "{not json")), "tokenizer_json"),
    "model: a pickled forward hook": (_model(_hook), "_forward_pre_hooks"),
    "model: an instance attribute hiding a method": (
        _model(_set("text.lm_head.packed", None)),
        "overrides TiedInt8Head.packed",
    ),
    # manifest
    "manifest: hash mismatch": (_manifest(lambda m: m.update(model_sha256="0" * 64)), "does not match manifest"),
    "manifest: covers a missing processor file": (
        _manifest(lambda m: m["processor_sha256"].update({"vocab.json": "0" * 64})),
        "vocab.json",
    ),
    "manifest: sha256 is a number": (_manifest(lambda m: m.update(model_sha256=123)), "model_sha256 is int"),
    "manifest: processor hashes as a list": (
        _manifest(lambda m: m.update(processor_sha256=["tokenizer.json"])),
        "processor_sha256 is list",
    ),
    "manifest: python version as a number": (_manifest(lambda m: m.update(python=3)), "python is int"),
    "manifest: a sha256 that is not hex": (
        _manifest(lambda m: m["processor_sha256"].update({"tokenizer.json": "x"})),
        "64 hex",
    ),
    "manifest: format 99": (_manifest(lambda m: m.update(format_version=99)), "format 99"),
    "manifest: not JSON": (_replace("manifest.json", lambda p: p.write_text("{nope")), "not valid JSON"),
    "manifest: arrays nested 100,000 deep": (
        _replace("manifest.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
        "not valid JSON",
    ),
    "manifest: a JSON list": (_replace("manifest.json", lambda p: p.write_text("[]")), "not a JSON object"),
    "manifest: 2 MiB": (
        _replace("manifest.json", lambda p: p.write_bytes(b'{"x": "' + b"a" * (2 << 20) + b'"}')),
        "bytes; more than",
    ),
    "manifest: a FIFO": (_replace("manifest.json", _fifo), "not a plain file"),
    "manifest: a link to /dev/zero": (_replace("manifest.json", _link("/dev/zero")), "is a link"),
    "manifest: a link to itself": (_replace("manifest.json", lambda p: p.symlink_to(p)), "is a link"),
    "manifest: a folder": (_replace("manifest.json", lambda p: p.mkdir()), "is a folder"),
    # files the manifest covers
    "model.pt: a link to the real one": (_link_to_the_real_model, "is a link"),
    "model.pt: a link to /dev/zero": (_replace("model.pt", _link("/dev/zero")), "is a link"),
    "model.pt: a FIFO": (_replace("model.pt", _fifo), "not a plain file"),
    "processor file: a link to /etc/passwd": (_replace("processor/tokenizer.json", _link("/etc/passwd")), "is a link"),
    "processor file: a FIFO": (_replace("processor/tokenizer.json", _fifo), "not a plain file"),
    "processor: a link to /etc": (_replace("processor", _link("/etc")), "is not a folder"),
    "processor: an extra file": (_replace("processor/added.json", lambda p: p.write_text("{}")), "added.json"),
}


def _unblock_fifos(folder: Path) -> None:
    """Open every FIFO of `folder` for writing once, so a reader stuck on it (a hang) gets EOF."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_fifo():
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading it
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _within(seconds: float, folder: Path, call: Callable[[], Any]) -> Any:
    """`call()`, failing the test (not hanging it) when it takes longer than `seconds`."""
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(_capture(call)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        _unblock_fifos(folder)
        worker.join(5)
        pytest.fail(f"hung for over {seconds} s")
    result, error = outcome[0]
    if error is not None:
        raise error
    return result


def _capture(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except BaseException as exc:  # handed to the test's thread
        return None, exc


def _assert_model_unavailable(body: object, refusal: str) -> str:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"} and body["error"]["code"] == "model_unavailable", body
    message = body["error"]["message"]
    assert refusal in message, message
    assert "Traceback" not in message and "weights_only" not in message, message  # nor torch's advice to disable it
    return message


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_forged_artifact_is_a_503_through_every_door_and_runs_nothing(
    attack: str,
    s3,  # noqa: F811
    tiny_artifact: Path,
    tmp_path: Path,
    png_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forge, refusal = ATTACKS[attack]
    folder, canary = tmp_path / "forged", tmp_path / "canary"
    shutil.copytree(tiny_artifact, folder)
    forge(tiny_artifact, folder, canary)
    monkeypatch.setenv("ARTIFACT_DIR", str(folder))
    client = TestClient(app, raise_server_exceptions=False)

    response = _within(
        HANG_S, folder, lambda: client.post("/caption", content=png_bytes, headers={"content-type": "image/png"})
    )
    assert response.status_code == 503, response.text
    message = _assert_model_unavailable(response.json(), refusal)

    direct = {"task": "caption", "image_base64": base64.b64encode(png_bytes).decode()}
    assert _assert_model_unavailable(lambda_handler(direct, Context()), refusal) == message

    s3.put_object(Bucket=BUCKET, Key="upload.png", Body=png_bytes)
    with pytest.raises(S3BatchError) as raised:  # retried by Lambda: a fixed artifact may serve it
        lambda_handler(s3_event("upload.png"), Context())
    assert "'code': 'model_unavailable'" in str(raised.value) and refusal in str(raised.value)

    health = client.get("/health")  # the process is still up and says why there is no model
    assert health.status_code == 200 and health.json()["model_loaded"] is False
    assert refusal in health.json()["last_error"]
    assert not canary.exists(), "the forged artifact ran code"


def test_a_fixed_artifact_serves_after_a_refused_one(
    serving_env: Path, tiny_artifact: Path, tmp_path: Path, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load refused by the model check leaves nothing half-loaded: the fixed folder serves on the next try."""
    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    _model(_fill("text.enc_norm.weight", math.nan))(tiny_artifact, folder, tmp_path / "canary")
    monkeypatch.setenv("ARTIFACT_DIR", str(folder))
    monkeypatch.setenv("ARTIFACT_RETRY_S", "0")
    client = TestClient(app, raise_server_exceptions=False)
    post = lambda: client.post("/caption", content=png_bytes, headers={"content-type": "image/png"})
    assert post().status_code == 503
    shutil.rmtree(folder)
    shutil.copytree(tiny_artifact, folder)
    answer = post()
    assert answer.status_code == 200 and answer.json()["caption"], answer.text
    assert client.get("/health").json()["load_count"] == 2


def test_an_artifact_replaced_under_a_running_process_is_not_reloaded(
    serving_env: Path, tiny_artifact: Path, tmp_path: Path, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model loads once: files swapped in later (a forged pickle included) are never read by this process."""
    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    monkeypatch.setenv("ARTIFACT_DIR", str(folder))
    client = TestClient(app, raise_server_exceptions=False)
    post = lambda: client.post("/caption", content=png_bytes, headers={"content-type": "image/png"})
    first = post().json()
    forged = tmp_path / "forged"
    shutil.copytree(tiny_artifact, forged)
    _with_pickle("GLOBAL os.system")(tiny_artifact, forged, tmp_path / "canary")
    for name in ("model.pt", "manifest.json"):  # renamed over the originals, as a deploy tool would
        os.replace(forged / name, folder / name)
    second = post().json()
    assert (second["caption"], second["model_sha"]) == (first["caption"], first["model_sha"])
    assert client.get("/health").json()["load_count"] == 1
    assert not (tmp_path / "canary").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_finite_check_finds_one_bad_value_without_copying_the_tensor(
    dtype: torch.dtype, memory_format: torch.memory_format
) -> None:
    """A NaN or inf anywhere is found, and the check's temporaries stay small: whole-tensor ones (13.5 MiB
    at base size) stayed in the heap and raised serving's peak RSS."""
    from handler.florence.model_check import _finite

    weights = torch.randn(256, 96, 9, 9).to(dtype).contiguous(memory_format=memory_format)  # 2 M values
    tracemalloc.start()
    try:
        assert _finite(weights)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < weights.numel() * weights.element_size() / 8
    for index, bad in (((255, 95, 8, 8), math.nan), ((0, 0, 0, 0), math.inf), ((128, 40, 4, 2), -math.inf)):
        broken = weights.clone(memory_format=torch.preserve_format)
        broken[index] = bad
        assert not _finite(broken), (index, bad)
