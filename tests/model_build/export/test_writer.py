"""The writer checks at build time what the handler checks at load time: the allow-listed pickle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handler.florence.artifact import ArtifactError, Manifest, load_artifact
from handler.florence.tasks import Task
from model_build.export.writer import write_artifact


class _Processor:
    """Just what `write_artifact` needs of a processor: files saved into its folder."""

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "tokenizer.json").write_text("{}")


def test_a_model_holding_a_class_off_the_allow_list_fails_the_build(tiny_artifact: Path, tmp_path: Path) -> None:
    model = torch.load(tiny_artifact / "model.pt", weights_only=False)
    write = lambda out: write_artifact(model, _Processor(), out, base_id="tiny", image_size=384, tasks=[Task.CAPTION])
    manifest = write(tmp_path / "ok")
    assert manifest.processor_sha256.keys() == {"tokenizer.json"}
    assert load_artifact(tmp_path / "ok").manifest == Manifest.read(tmp_path / "ok")
    model.vision.extra = torch.nn.ReLU()  # a module class the handler does not allow
    with pytest.raises(ArtifactError, match=r"torch\.nn\.modules\.activation\.ReLU"):
        write(tmp_path / "refused")
