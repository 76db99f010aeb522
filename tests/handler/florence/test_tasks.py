"""The one parser of task lists (API query, direct invokes, Batch `userArguments`, the CLIs)."""

from __future__ import annotations

import pytest

from handler.florence.tasks import Task, tasks_from


@pytest.mark.parametrize(
    "value, expected",
    [
        ("caption", [Task.CAPTION]),
        ("detect,caption", [Task.DETECT, Task.CAPTION]),
        ("caption,", [Task.CAPTION]),  # a stray comma, as hand-typed userArguments carry
        (" caption , ,detect ,caption", [Task.CAPTION, Task.DETECT]),
        (["detect", ""], [Task.DETECT]),
        (None, [Task.CAPTION]),
        ("", [Task.CAPTION]),
    ],
)
def test_task_lists_parse_in_order_without_duplicates_or_blanks(value: object, expected: list[Task]) -> None:
    assert tasks_from(value, default=[Task.CAPTION]) == expected


@pytest.mark.parametrize(
    "value, says",
    [
        (",", "at least one"),
        (" , ", "at least one"),
        ("caption,segment", "segment"),
        (7, "comma-separated"),
        (["caption", 1], "comma-separated"),
    ],
)
def test_task_lists_that_name_no_task_or_an_unknown_one_say_why(value: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        tasks_from(value)
