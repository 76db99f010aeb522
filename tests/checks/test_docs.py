"""The docs name only what the code has: commands and flags parse, settings, error codes and routes exist.

Each check reads the docs' own text (README.md and docs/*.md) and compares it with the code's one source
for that fact: the CLI parsers, `handler/config.py`'s table and `Settings`, `handler/errors.py`, the
FastAPI app's routes and response models, the Batch Operations answer, the `events/` samples. Values a
reader fills in (`$COCO`, `<bucket>`) are replaced by a placeholder.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from handler import config, errors
from handler.backfill import parse_args as backfill_args
from model_build.cli import COMMANDS, build_parser
from model_build.commands import options
from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
INVOCATION = re.compile(r"python -m (model_build|handler\.backfill)(?=[\s`]|$)([^`#|;&)\n]*)")
PLACEHOLDER = "placeholder"


def _text(doc: Path) -> str:
    text = doc.read_text().replace("\\\n", " ")  # a shell line continued on the next
    return re.sub(r"(?<!`)`[^`\n]+\n[^`\n]+`(?!`)", lambda span: span[0].replace("\n", " "), text)  # wrapped span


def _invocations() -> list[tuple[str, str, list[str]]]:
    """(doc, program, argv) for every `python -m model_build ...` or `python -m handler.backfill ...` in the docs."""
    found = []
    for doc in DOCS:
        for program, written in INVOCATION.findall(_text(doc)):
            without_options = re.sub(r"\[[^\]]*\]", " ", written)  # [--optional flags] in a usage line
            filled = re.sub(r'"?\$\{?\w+\}?"?|<[^>]*>', PLACEHOLDER, without_options)
            argv = []
            for token in shlex.split(filled):
                if not token.isascii() or token == "...":  # a diagram's arrow or an elision ends the command
                    break
                argv.append(token)
            found.append((doc.name, program, argv))
    return found


INVOCATIONS = _invocations()


def _parse(parse: Any, argv: list[str]) -> str:
    """'' when `argv` parses (or asks for --help), else argparse's error line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse(argv)
    except SystemExit as exc:
        if exc.code:
            return err.getvalue().strip().splitlines()[-1]
    return ""


@pytest.fixture
def unchecked_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep flag types and bounds, drop the `check`s that look at the file system: docs name paths to be made."""
    bounded = options._checked
    monkeypatch.setattr(options, "_checked", lambda convert, low, high, check: bounded(convert, low, high, None))


def test_the_docs_invoke_every_command() -> None:
    named = {argv[0] for _, program, argv in INVOCATIONS if program == "model_build" and argv}
    assert named >= set(COMMANDS) - {"bench-scores"} and len(INVOCATIONS) > 40


@pytest.mark.parametrize(("doc", "program", "argv"), INVOCATIONS, ids=[" ".join(i[2]) or i[1] for i in INVOCATIONS])
def test_every_documented_invocation_parses(doc: str, program: str, argv: list[str], unchecked_paths: None) -> None:
    if program == "handler.backfill":
        if argv:  # bare mentions name the program, not an invocation
            assert _parse(backfill_args, argv) == "", f"{doc}: python -m handler.backfill {shlex.join(argv)}"
        return
    if not argv or argv[0] == PLACEHOLDER:  # `python -m model_build <command>`
        return
    if len(argv) == 1:  # the README's table names each command alone; its required flags come with --help
        assert argv[0] in COMMANDS, f"{doc}: no command {argv[0]!r}"
        return
    assert _parse(build_parser().parse_args, argv) == "", f"{doc}: python -m model_build {shlex.join(argv)}"


def _settings_table() -> dict[str, str]:
    """handler/config.py's docstring table: variable -> default column."""
    return dict(re.findall(r"^\| ([A-Z][A-Z0-9_]+) \| ([^|]+) \|", config.__doc__ or "", re.M))


def test_every_setting_in_the_table_is_read_from_the_environment() -> None:
    default = config.Settings.from_env({})
    for name in _settings_table():
        try:
            changed = config.Settings.from_env({name: "7"})
        except config.SettingError as exc:
            assert name in str(exc)
            continue
        assert changed != default, f"{name} is in the settings table but Settings.from_env does not read it"


def test_every_setting_read_is_in_the_table_and_in_serving_md() -> None:
    read = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', inspect.getsource(config.Settings.from_env)))
    read |= set(re.findall(r'"([A-Z][A-Z0-9_]+)"', inspect.getsource(config._log_level)))
    table = set(_settings_table())
    assert read == table
    serving = (REPO_ROOT / "docs" / "serving.md").read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"`([A-Z][A-Z0-9_]+)`", serving)) == table


def test_the_tables_defaults_are_the_settings_defaults() -> None:
    defaults = config.Settings()
    for name, column in _settings_table().items():
        value = getattr(defaults, name.lower())
        shown = column.strip()
        if shown == "(empty)":
            assert not value, name
        elif re.fullmatch(r"[\d_,.]+", shown):
            assert value == float(shown.replace("_", "").replace(",", "")), name
        elif name != "TORCH_THREADS":  # computed from the CPUs; the column says how
            assert str(value) == shown, name


def _error_rows() -> list[tuple[int, str]]:
    errors_section = (REPO_ROOT / "docs" / "serving.md").read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    return [(int(status), code) for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", errors_section, re.M)]


def test_every_documented_error_code_exists_with_its_status() -> None:
    vocabulary = {cls.code: cls.status for cls in _subclasses(errors.ServiceError) if "code" in vars(cls)}
    handler_source = "\n".join(path.read_text() for path in (REPO_ROOT / "handler").rglob("*.py"))
    rows = _error_rows()
    assert len(rows) >= 15
    for status, code in rows:
        if code in vocabulary:
            assert vocabulary[code] == status, code
        else:  # answered outside the vocabulary: FastAPI's own errors, the catch-alls
            assert f'"{code}"' in handler_source, code
    assert set(vocabulary) <= {code for _, code in rows}, "an error code the docs' table does not list"


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def test_the_endpoints_table_is_the_apps_routes() -> None:
    from fastapi.routing import APIRoute

    from handler.http.demo import router as demo_router
    from handler.http.routes import router

    # The routers the app includes, routes outside the OpenAPI schema too (HEAD /health).
    routes = [route for route in (*router.routes, *demo_router.routes) if isinstance(route, APIRoute)]
    served = {(method, route.path) for route in routes for method in route.methods}
    endpoints = (REPO_ROOT / "docs" / "serving.md").read_text().split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for methods, path in re.findall(r"^\| ([A-Z, ]+) \| `([^`?]+)", endpoints, re.M):
        documented |= {(method.strip(), path) for method in methods.split(",")}
    assert documented == served


def _json_examples() -> list[Any]:
    """Every JSON value docs/serving.md shows: ```json blocks, `{...}` spans and curl's `-d '{...}'` bodies.

    Schematic spans (`{"s3": ...}`, `"caption" | "detect"`) are not JSON and are left to the reader."""
    serving = (REPO_ROOT / "docs" / "serving.md").read_text()
    written = re.findall(r"```json\n(.*?)```", serving, re.S)
    written += re.findall(r"(?<!`)`(\{[^`]*\})`(?!`)", serving) + re.findall(r"-d '(\{[^']*\})'", serving)
    examples = []
    for text in written:
        with contextlib.suppress(ValueError):
            examples.append(json.loads(text))
    return examples


def _as_models_give_it(example: dict[str, Any]) -> bool:
    """True when a response model or the JSON request body reads `example` and writes it back unchanged."""
    from pydantic import ValidationError

    from handler.http import schemas
    from handler.inputs.payload import ImagePayload

    shapes = [schemas.CaptionResponse, schemas.DetectResponse, schemas.AnalyzeResponse, schemas.HealthResponse]
    for shape in [*shapes, schemas.ErrorResponse, ImagePayload]:
        with contextlib.suppress(ValidationError):
            if shape.model_validate(example).model_dump(exclude_none=True) == example:
                return True
    return False


def test_serving_md_json_examples_are_what_the_code_reads_and_answers() -> None:
    from handler.errors import InvalidRequest
    from handler.events import batch, notifications

    sample = json.loads((REPO_ROOT / "events" / "s3_batch_v2.json").read_text())
    batch_answer = batch.fail_every_task(sample, InvalidRequest("any"))
    sqs_sample = json.loads((REPO_ROOT / "events" / "sqs_s3_upload.json").read_text())
    examples = _json_examples()
    assert len(examples) >= 6
    for example in examples:
        if "invocationSchemaVersion" in example:
            assert set(example) == set(batch_answer), example
            assert [set(result) for result in example["results"]] == [set(batch_answer["results"][0])], example
        elif "batchItemFailures" in example:  # SQS's partial batch response, for the sample's own message
            assert example == notifications.batch_item_failures([sqs_sample["Records"][0]["messageId"]])
        else:
            assert _as_models_give_it(example), f"no response model or request body reads {example} as written"


def test_every_event_sample_is_named_in_deploy_md() -> None:
    """deploy.md says what each `events/` file is for; the handler tests send every one (test_event_samples.py)."""
    deploy = (REPO_ROOT / "docs" / "deploy.md").read_text()
    samples = sorted(path.name for path in (REPO_ROOT / "events").glob("*.json"))
    assert samples and [name for name in samples if name not in deploy] == []


def test_the_readmes_test_command_is_what_ci_runs() -> None:
    """README.md says its test command "is exactly what `.ci/run` does"."""
    ci_command = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command in (REPO_ROOT / "README.md").read_text().splitlines()


def _names_in_backticks() -> list[tuple[str, str]]:
    return [(doc.name, span) for doc in DOCS for span in re.findall(r"`([^`\s]+)`", doc.read_text())]


def test_every_repository_path_in_backticks_exists() -> None:
    missing = [
        (doc, span)
        for doc, span in _names_in_backticks()
        if re.fullmatch(r"(handler|model_build|tests|docs|events)/[\w./-]+", span)
        and not (REPO_ROOT / span.split(":")[0]).exists()
    ]
    assert missing == []


def test_every_dotted_python_name_in_backticks_exists() -> None:
    """`handler.service.analyze`, and names relative to their package (`service.analyze`, `export.fuse.fuse`)."""
    missing = []
    for doc, span in _names_in_backticks():
        dotted = re.sub(r"\(.*", "", span).split(":")[0]
        if re.fullmatch(r"(handler|model_build)(\.\w+)+", dotted):
            if not _resolves(dotted):
                missing.append((doc, span))
        elif re.fullmatch(r"[a-z_]\w*(\.\w+)+", dotted) and not re.search(FILE_SUFFIX, dotted):
            packages = [package for package in ("handler", "model_build") if _has_module(package, dotted)]
            if packages and not any(_resolves(f"{package}.{dotted}") for package in packages):
                missing.append((doc, span))
    assert missing == []


FILE_SUFFIX = r"\.(py|md|json|toml|yaml|pt|pkl|safetensors|html|csv|png|jpg|txt)$"
"""A file name, not a dotted Python name."""


def _has_module(package: str, dotted: str) -> bool:
    first = dotted.split(".", maxsplit=1)[0]
    return (REPO_ROOT / package / first).is_dir() or (REPO_ROOT / package / f"{first}.py").is_file()


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute, None)
            if found is None:
                return False
        return True
    return False


def test_the_checks_themselves_see_a_wrong_flag_and_a_wrong_setting(unchecked_paths: None) -> None:
    assert "unrecognized arguments: --no-such-flag" in _parse(build_parser().parse_args, ["fuse", "--no-such-flag"])
    assert not _resolves("handler.config.NO_SUCH_NAME") and _resolves("handler.config.Settings.from_env")


def _measured(name: str) -> dict[str, Any]:
    return json.loads((REPO_ROOT / "docs" / name).read_text())


def test_figures_quoted_from_a_measurement_file_are_that_files() -> None:
    """A figure the docs or the template attribute to a bench run reads as the run's JSON has it, rounded as
    written; a re-run that moves it fails here until the sentence is rewritten (a stale "~660 MiB" stood
    for the bench's 651, a "3.1 s" cold start for its 2.8)."""
    from tests.deploy.test_template_rules import WORST_SERVING_PEAK_MIB, cold_analyze_s

    photo_peak = round(_measured("benchmarks.json")["served_cold"]["peak_rss_mib"])
    artifact_mib = _measured("benchmarks.json")["served_artifact_mib"]
    first_caption = _measured("cost/bench-1-thread.json")["served_cold"]["first_caption_s"]
    quoted = {
        "template.yaml": [
            f"serves a photo in {photo_peak} MiB and the largest accepted image in {WORST_SERVING_PEAK_MIB} MiB",
            f"(~{cold_analyze_s():.1f} s to a first /analyze at 1769 MB",
        ],
        "docs/deploy.md": [
            f"peaks at {photo_peak} MiB RSS serving a photo (docs/benchmarks.md) and at {WORST_SERVING_PEAK_MIB} MiB",
            f"({cold_analyze_s():.1f} s to a first `/analyze` at 1,769 MB",
            f"cold starts ({first_caption:.1f} s to the first caption with one thread",
        ],
        "docs/build.md": [f"base-size `model.pt` ({artifact_mib:.1f} MiB, docs/benchmarks.md)"],
    }
    for name, sentences in quoted.items():
        text = " ".join((REPO_ROOT / name).read_text().split())
        text = re.sub(r"\s*#\s*", " ", text)  # a YAML comment continued on the next line
        assert [sentence for sentence in sentences if sentence not in text] == [], name


def test_deploy_md_cost_figures_are_what_its_commands_give() -> None:
    """§8's cost table is what the `cost` line above it prints, and its latency table is the two bench runs."""
    from model_build.bench.cost import CostConfig, latency_cases, run_cost
    from model_build.commands.options import config_from

    deploy = (REPO_ROOT / "docs" / "deploy.md").read_text()
    written = re.search(r"python -m model_build cost ([^\n#]*)", deploy)
    assert written, "deploy.md §8 shows no `python -m model_build cost` line"
    args = build_parser().parse_args(["cost", *shlex.split(written[1])])
    with contextlib.chdir(REPO_ROOT):
        table = run_cost(config_from(args, CostConfig()))
    assert table in deploy

    def cell(timing: dict[str, float]) -> str:
        return f"{timing['median_s']:.3f} ({timing['min_s']:.3f}–{timing['p90_s']:.3f})"

    runs = [_measured("cost/bench-1-thread.json"), _measured("cost/bench-2-threads.json")]
    bench_lines = re.findall(r"python -m model_build bench (.*)# -> docs/(cost/[\w-]+\.json)", deploy)
    assert len(bench_lines) == len(runs)
    for written_bench in bench_lines:
        config = vars(build_parser().parse_args(["bench", *shlex.split(written_bench[0])]))
        run = _measured(written_bench[1])
        timed = {case["served"]["runs"] for case in run["latency"]}
        shown = (config["threads"], config["runs"], config["fidelity_images"])
        assert shown == (run["threads"], *timed, run["fidelity"]["images"]), written_bench
    for case, row in (("caption+detect", "| `/analyze` ("), ("caption", "| caption |")):
        line = next(line for line in deploy.splitlines() if line.startswith(row) and "–" in line)
        assert line.endswith(" | ".join(cell(latency_cases(run)[case]["served"]) for run in runs) + " |"), line


def test_deploy_md_parameter_table_is_the_templates_defaults() -> None:
    """deploy.md §3 gives each parameter's default; template.yaml's `Parameters` are where it is set."""
    from tests.deploy.test_template_rules import load_template

    parameters = load_template()["Parameters"]
    section = (REPO_ROOT / "docs" / "deploy.md").read_text().split("## 3.", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`\w+`(?:(?: /|,) `\w+`)*) \| ([^|]+) \|", section, re.M)
    documented: dict[str, str] = {}
    for names, defaults in rows:
        values = [value.strip().strip("`") for value in re.split(r" / |, ", defaults)]
        for name, value in zip(re.findall(r"`(\w+)`", names), values, strict=True):
            documented[name] = "" if value == "empty" else re.sub(r" (MB|s)$", "", value)
    assert documented == {name: str(parameter.get("Default")) for name, parameter in parameters.items()}


def test_serving_md_limits_are_the_codes() -> None:
    """Each row of serving.md's Limits table names a setting or constant; its default column is the code's value."""
    from handler.inputs import images

    section = (REPO_ROOT / "docs" / "serving.md").read_text().split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| [^|]*?`([A-Z][A-Z0-9_]+)`[^|]* \| \**([\d,]+)\**", section, re.M)
    defaults = config.Settings()
    code = {
        "MAX_JPEG_SCANS": images.MAX_JPEG_SCANS,
        "MAX_BINARY_BODY_BYTES": config.MAX_BINARY_BODY_BYTES,
        **{name: getattr(defaults, name.lower()) for name in _settings_table()},
    }
    assert len(rows) == 5
    assert {name: int(shown.replace(",", "")) for name, shown in rows} == {name: code[name] for name, _ in rows}


def test_build_md_why_these_defaults_is_what_help_shows() -> None:
    """build.md's "Why these defaults" table gives the defaults `finetune --help` and `fuse --help` print."""
    import argparse

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    shown: dict[str, str] = {}
    for name in ("fuse", "finetune"):  # finetune's --image-size and --tasks are the trained ones
        for action in commands[name]._actions:
            said = re.search(r"\(default: ([^)]*)\)$", action.help or "")
            if action.option_strings and said:
                shown[action.option_strings[0]] = said[1]
    section = (REPO_ROOT / "docs" / "build.md").read_text().split("## Why these defaults", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([-\w/]+)` \| ([^|(]+)", section, re.M)
    assert len(rows) >= 9
    for flags, defaults in rows:
        for written_flag, written_value in zip(flags.split("/"), defaults.split(" / "), strict=True):
            flag = written_flag if written_flag.startswith("--") else f"--{written_flag}"
            value, expected = written_value.strip().strip("`"), shown[flag]
            assert value == expected or float(value) == float(expected), (flag, value, expected)
