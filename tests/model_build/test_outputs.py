"""Folders a command writes whole: only a new, empty or earlier such folder is written over, and only once complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from handler.florence.artifact import Manifest, load_artifact
from model_build.cli import main as cli
from model_build.data.synth import synthesize, write_val_split
from model_build.outputs import write_folder
from model_build.settings import UsageError


def _write_marked(folder: Path) -> str:
    (folder / "marker").write_text("new")
    return "done"


def test_a_folder_is_swapped_in_whole_and_a_failed_write_leaves_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert write_folder(out, _write_marked, marker="marker", what="ours") == "done"
    (out / "marker").write_text("old")

    def fails(folder: Path) -> None:
        (folder / "marker").write_text("half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        write_folder(out, fails, marker="marker", what="ours")
    assert (out / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left beside it
    write_folder(out, _write_marked, marker="marker", what="ours")
    assert (out / "marker").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_linked_folder_is_replaced_where_the_link_points(tmp_path: Path) -> None:
    write_folder(tmp_path / "v3", _write_marked, marker="marker", what="ours")
    (tmp_path / "current").symlink_to("v3")
    (tmp_path / "v3" / "marker").write_text("old")
    write_folder(tmp_path / "current", _write_marked, marker="marker", what="ours")
    assert (tmp_path / "current").is_symlink() and (tmp_path / "current" / "marker").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v3"]


def test_a_mount_point_is_refilled_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder mounted into a container cannot be renamed; its entries are replaced instead."""
    out = tmp_path / "out"
    write_folder(out, _write_marked, marker="marker", what="ours")
    (out / "stale").mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == out)
    monkeypatch.setattr(Path, "rename", _refuse_to_move_the_mount(out, Path.rename))
    write_folder(out, _write_marked, marker="marker", what="ours")
    assert sorted(p.name for p in out.iterdir()) == ["marker"] and (out / "marker").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _refuse_to_move_the_mount(mount: Path, rename):
    def guarded(self: Path, target):
        if self == mount:
            raise OSError(16, "Device or resource busy")
        return rename(self, target)

    return guarded


def test_a_folder_that_is_not_ours_is_never_written_over(tmp_path: Path) -> None:
    (tmp_path / "thesis.txt").write_text("four years")
    with pytest.raises(UsageError, match="is not empty and is not ours"):
        write_folder(tmp_path, _write_marked, marker="marker", what="ours")
    with pytest.raises(UsageError, match="is not empty and is not a synthetic dataset"):
        synthesize(tmp_path, train=1, val=1)
    with pytest.raises(UsageError, match=r"thesis\.txt is a file, not a folder"):
        write_folder(tmp_path / "thesis.txt", _write_marked, marker="marker", what="ours")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.txt"]


def test_synthetic_data_is_written_over_synthetic_data(tmp_path: Path) -> None:
    synthesize(tmp_path, train=1, val=1, seed=1)
    write_val_split(tmp_path, count=2, seed=2)
    assert len(json.loads((tmp_path / "annotations" / "instances_val2017.json").read_text())["images"]) == 2


def test_fuse_replaces_an_earlier_artifact_and_leaves_nothing_beside_it(tiny_artifact: Path, tmp_path: Path) -> None:
    data = tiny_artifact.parent / "synth"  # the session artifact's own gate data
    out = tmp_path / "artifact"
    argv = ["fuse", "--base", "tiny", "--data", str(data), "--out", str(out), "--parity-images", "1"]
    relaxed = ["--min-caption-agreement", "0", "--min-box-iou", "0"]
    assert cli([*argv, *relaxed]) == 0
    first = Manifest.read(out)
    assert cli([*argv, *relaxed, "--tasks", "caption"]) == 0
    assert Manifest.read(out).tasks == ["caption"] != first.tasks
    load_artifact(out)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
