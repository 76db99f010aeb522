"""Project rules for template.yaml and Dockerfile.lambda that cfn-lint and hadolint do not know.

cfn-lint accepts a 900 s timeout behind API Gateway, an S3 trigger on the prefix the function writes
to, and an API without binary media types; each of those breaks this service in production. Every
rule is also run against a broken copy of the template, so a rule that can never fire fails here.
"""

from __future__ import annotations

import copy
import ctypes
import json
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pytest

from handler.config import API_GATEWAY_TIMEOUT_S, Settings
from handler.errors import GATEWAY_ERRORS, error_body
from tests.conftest import REPO_ROOT

if TYPE_CHECKING:
    from setuptools import Extension

ROOT = REPO_ROOT
TEMPLATE = ROOT / "template.yaml"
DOCKERFILE = ROOT / "Dockerfile.lambda"

LAMBDA_MAX_MEMORY_MB = 10240
WORST_SERVING_PEAK_MIB = 981
"""Florence-2-base int8 serving's peak RSS for the largest image it accepts (a MAX_IMAGE_PIXELS RGBA
PNG, then a drawn `/detect` of it: 981 MiB with the C decoder step; a 640 x 480 photo: 637, docs/benchmarks.json), measured by docs/probes/worst_image_memory.py. Every memory
size the template allows must hold it with MEMORY_HEADROOM, or Lambda kills the runtime mid-request."""
MEMORY_HEADROOM = 1.25
MB_PER_MIB = 2**20 / 10**6
COLD_BENCH = ROOT / "docs" / "cost" / "bench-1-thread.json"
"""The bench run behind the default memory size (one CPU's worth): its cold start and latencies."""
REQUIRED_BINARY_TYPES = {"image~1*", "multipart~1form-data"}
S3_EVENT_NAMES = {
    "s3:TestEvent",
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
    "s3:ObjectRemoved:DeleteMarkerCreated",
    "s3:ObjectRestore:*",
    "s3:ObjectRestore:Post",
    "s3:ObjectRestore:Completed",
    "s3:ObjectRestore:Delete",
    "s3:ReducedRedundancyLostObject",
    "s3:Replication:*",
    "s3:Replication:OperationFailedReplication",
    "s3:Replication:OperationMissedThreshold",
    "s3:Replication:OperationReplicatedAfterThreshold",
    "s3:Replication:OperationNotTracked",
    "s3:LifecycleExpiration:*",
    "s3:LifecycleExpiration:Delete",
    "s3:LifecycleExpiration:DeleteMarkerCreated",
    "s3:LifecycleTransition",
    "s3:IntelligentTiering",
    "s3:ObjectTagging:*",
    "s3:ObjectTagging:Put",
    "s3:ObjectTagging:Delete",
    "s3:ObjectAcl:Put",
}


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template with `!Ref`/`!Sub` short tags decoded the way cfn-lint reads them."""
    from cfnlint.decode import decode

    template, matches = decode(str(path))
    assert template is not None, matches
    return json.loads(json.dumps(template, default=str))  # plain dicts, so tests can copy and edit


def resolve(template: dict[str, Any], value: Any) -> Any:
    """A literal, or the default of the parameter a `Ref` names (what a plain `sam deploy` uses)."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        parameter = template.get("Parameters", {}).get(value["Ref"])
        return parameter.get("Default") if parameter else None
    return value


def bounds(template: dict[str, Any], value: Any) -> list[Any]:
    """Every value a property can take: the literal, or a parameter's default and min/max."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        parameter = template.get("Parameters", {}).get(value["Ref"], {})
        return [parameter[k] for k in ("Default", "MinValue", "MaxValue") if k in parameter]
    return [value]


def cold_analyze_s() -> float:
    """A cold copy's first /analyze, measured: process start to a first caption, plus what /analyze adds."""
    bench = json.loads(COLD_BENCH.read_text())
    served = {row["name"]: row["served"]["median_s"] for row in bench["latency"]}
    return bench["served_cold"]["first_caption_s"] + served["caption+detect"] - served["caption"]


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def sam_s3_events(function: dict[str, Any]) -> list[dict[str, Any]]:
    events = function.get("Properties", {}).get("Events", {})
    return [e["Properties"] for e in events.values() if e.get("Type") == "S3"]


def s3_triggers(template: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The S3 notifications that invoke function `name`: SAM S3 events (`Events`, `Filter`) and buckets'
    `NotificationConfiguration.LambdaConfigurations` naming its ARN (`Event`, `Filter`), as written."""
    own = {"Fn::GetAtt": [name, "Arn"]}
    bucket_configs = [
        config
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::S3::Bucket"
        for config in resource.get("Properties", {})
        .get("NotificationConfiguration", {})
        .get("LambdaConfigurations", [])
        if config.get("Function") in (own, f"{name}.Arn")
    ]
    return sam_s3_events(template["Resources"][name]) + bucket_configs


def s3_invoke_problems(template: dict[str, Any], name: str) -> list[str]:
    """S3 may invoke the function only from the buckets meant to: a permission for `s3.amazonaws.com`
    without `SourceArn` lets any bucket of the account (any bucket at all without `SourceAccount`) do so."""
    problems = []
    if sam_s3_events(template["Resources"][name]):
        problems.append(f"{name}: a SAM S3 event's generated permission names no bucket (no SourceArn)")
    for key, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] != "AWS::Lambda::Permission" or props.get("Principal") != "s3.amazonaws.com":
            continue
        if not props.get("SourceArn") or not props.get("SourceAccount"):
            problems.append(f"{key}: lets S3 invoke {name} without naming the bucket (SourceArn) and account")
    return problems


NO_VALUE = object()
"""What `!Ref AWS::NoValue` evaluates to: the property is left out."""


def evaluate(template: dict[str, Any], value: Any, parameters: dict[str, str]) -> Any:
    """`value` as CloudFormation resolves it for these parameter values (defaults for the rest): Ref,
    Fn::If with the template's conditions, Fn::Equals, Fn::Not, Fn::Sub, Fn::Select and Fn::Split."""

    def ev(v: Any) -> Any:
        if not isinstance(v, dict) or len(v) != 1:
            return v
        ((function, args),) = v.items()
        if function == "Ref":
            if args == "AWS::NoValue":
                return NO_VALUE
            return parameters.get(args, template["Parameters"][args].get("Default"))
        if function == "Condition":
            return ev(template["Conditions"][args])
        if function == "Fn::If":
            condition, then, otherwise = args
            return ev(then) if ev(template["Conditions"][condition]) else ev(otherwise)
        if function == "Fn::Equals":
            return ev(args[0]) == ev(args[1])
        if function == "Fn::Not":
            return not ev(args[0])
        if function == "Fn::Select":
            return ev(args[1])[int(ev(args[0]))]
        if function == "Fn::Split":
            return ev(args[1]).split(ev(args[0]))
        if function == "Fn::Sub":
            text, names = (args, {}) if isinstance(args, str) else args
            return re.sub(
                r"\$\{([^}]+)\}", lambda m: str(ev(names[m[1]]) if m[1] in names else ev({"Ref": m[1]})), text
            )
        raise AssertionError(f"evaluate() does not know {function}")

    return ev(value)


CORS_SAMPLES = (
    "",
    "*",
    "https://app.example.com",
    "https://a.example,http://localhost:5173",
    "https://a.example, http://b.example",
)
"""CorsAllowOrigins values the gateway responses are checked under: off, any origin, one, and several."""
MESSAGE = "Too Many Requests"


def gateway_problems(template: dict[str, Any], name: str) -> list[str]:
    """API Gateway answers auth failures, throttling, oversized bodies and timeouts itself, before the function:
    each needs a gateway response in the one error shape (handler/errors.py GATEWAY_ERRORS) that carries the
    CORS header the function would send, or a browser page on another origin sees a failed fetch, no status."""
    problems = []
    responses = template["Resources"][name].get("Properties", {}).get("GatewayResponses", {})
    for kind, (status, code) in GATEWAY_ERRORS.items():
        response = responses.get(kind)
        if response is None:
            problems.append(f"{name}: no GatewayResponses {kind}: API Gateway answers it without CORS headers")
            continue
        if status is not None and str(response.get("StatusCode")) != str(status):
            problems.append(f"{name}: {kind} answers {response.get('StatusCode')}, not {status}")
        body = response.get("ResponseTemplates", {}).get("application/json", "")
        try:
            shaped = json.loads(body.replace("$context.error.messageString", json.dumps(MESSAGE)))
        except ValueError:
            shaped = None
        if shaped != error_body(code, MESSAGE):
            problems.append(f"{name}: {kind}'s body {body!r} is not the error shape with code {code!r}")
        header = response.get("ResponseParameters", {}).get("Headers", {}).get("Access-Control-Allow-Origin", NO_VALUE)
        for origins in CORS_SAMPLES:
            allowed = Settings.from_env({"CORS_ALLOW_ORIGINS": origins}).cors_allow_origins
            expected = f"'{allowed[0]}'" if allowed else NO_VALUE  # one static value: the first origin
            got = evaluate(template, header, {"CorsAllowOrigins": origins})
            if got != expected:
                shown = "no header" if got is NO_VALUE else repr(got)
                problems.append(
                    f"{name}: {kind} sends {shown} as Access-Control-Allow-Origin with CorsAllowOrigins={origins!r}"
                )
    return problems


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def template_problems(template: dict[str, Any]) -> list[str]:
    """Everything in the template that breaks the service although CloudFormation would accept it."""
    problems = []
    for name, function in functions(template).items():
        props = function.get("Properties", {})
        memory = [float(v) for v in bounds(template, props.get("MemorySize", 128))]
        if max(memory) > LAMBDA_MAX_MEMORY_MB:
            problems.append(
                f"{name}: MemorySize can reach {max(memory):.0f} MB, Lambda's maximum is {LAMBDA_MAX_MEMORY_MB}"
            )
        needed_mb = MEMORY_HEADROOM * WORST_SERVING_PEAK_MIB * MB_PER_MIB
        if min(memory) < needed_mb:
            problems.append(
                f"{name}: MemorySize can be {min(memory):.0f} MB, no headroom over the {WORST_SERVING_PEAK_MIB} MiB"
                f" a request for the largest accepted image peaks at (needs {needed_mb:.0f} MB)"
            )
        timeout = [float(v) for v in bounds(template, props.get("Timeout", 3))]
        if min(timeout) < 2 * cold_analyze_s():
            problems.append(
                f"{name}: Timeout can be {min(timeout):.0f} s, under twice a cold first /analyze"
                f" ({cold_analyze_s():.1f} s measured): cold copies would time out loading the model, over and over"
            )
        if max(timeout) > API_GATEWAY_TIMEOUT_S:
            problems.append(
                f"{name}: Timeout can reach {max(timeout):.0f} s, API Gateway stops waiting at {API_GATEWAY_TIMEOUT_S} s"
            )

        env = props.get("Environment", {}).get("Variables", {})
        output_prefix = str(resolve(template, env.get("OUTPUT_PREFIX", Settings.output_prefix)) or "")
        output_elsewhere = bool(resolve(template, env.get("OUTPUT_BUCKET", "")))
        triggers = s3_triggers(template, name)
        if triggers:
            problems += s3_invoke_problems(template, name)
        for trigger in triggers:
            for event in _as_list(trigger.get("Events", trigger.get("Event"))):
                if event not in S3_EVENT_NAMES:
                    problems.append(f"{name}: {event!r} is not an S3 event name")
            rules = trigger.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            prefixes = [
                str(resolve(template, r["Value"]) or "") for r in rules if str(r.get("Name")).lower() == "prefix"
            ]
            prefix = prefixes[0] if prefixes else ""
            if not prefix:
                problems.append(f"{name}: S3 trigger has no prefix filter, so every result would trigger it again")
            elif not output_elsewhere and (output_prefix.startswith(prefix) or prefix.startswith(output_prefix)):
                problems.append(
                    f"{name}: trigger prefix {prefix!r} overlaps OUTPUT_PREFIX {output_prefix!r}: results re-trigger"
                )
        log_group = template["Resources"].get(str(props.get("LoggingConfig", {}).get("LogGroup", {}).get("Ref")), {})
        if not log_group.get("Properties", {}).get("RetentionInDays"):
            problems.append(
                f"{name}: logs go to a group that never expires (no LoggingConfig group with RetentionInDays)"
            )
        if triggers and not (
            props.get("DeadLetterQueue") or props.get("EventInvokeConfig", {}).get("DestinationConfig")
        ):
            problems.append(
                f"{name}: failed asynchronous S3 invocations are dropped (no DeadLetterQueue or OnFailure destination)"
            )

    policies = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::S3::BucketPolicy"]
    for bucket in (k for k, r in template["Resources"].items() if r["Type"] == "AWS::S3::Bucket"):
        denies_plain_http = any(
            policy.get("Bucket") == {"Ref": bucket}
            and any(
                statement.get("Effect") == "Deny" and '"aws:SecureTransport": "false"' in json.dumps(statement)
                for statement in policy["PolicyDocument"]["Statement"]
            )
            for policy in policies
        )
        if not denies_plain_http:
            problems.append(f"{bucket}: accepts requests over plain HTTP (no Deny on aws:SecureTransport false)")

    apis = {
        k: r
        for k, r in template["Resources"].items()
        if r["Type"] in ("AWS::Serverless::Api", "AWS::ApiGateway::RestApi")
    }
    if not apis:
        problems.append("no REST API in the template")
    for name, api in apis.items():
        declared = set(api.get("Properties", {}).get("BinaryMediaTypes", []))
        if missing := REQUIRED_BINARY_TYPES - declared:
            problems.append(f"{name}: BinaryMediaTypes lacks {sorted(missing)}; API Gateway would mangle uploads")
        problems += gateway_problems(template, name)
    return problems


# --- the real template ---------------------------------------------------------------------------


def test_template_follows_the_project_rules() -> None:
    assert template_problems(load_template()) == []


def _function(template: dict[str, Any]) -> dict[str, Any]:
    return next(iter(functions(template).values()))["Properties"]


def _set_output_prefix(t: dict[str, Any], value: str) -> None:
    _function(t)["Environment"]["Variables"]["OUTPUT_PREFIX"] = value


def _set_trigger_prefix(t: dict[str, Any], value: str) -> None:
    _trigger(t)["Filter"]["S3Key"]["Rules"][0]["Value"] = value


def _trigger(t: dict[str, Any]) -> dict[str, Any]:
    return s3_triggers(t, next(iter(functions(t))))[0]


def _trigger_through_sam(t: dict[str, Any]) -> None:
    """The trigger as a SAM S3 event instead of the bucket's own notification."""
    config = t["Resources"]["UploadsBucket"]["Properties"].pop("NotificationConfiguration")["LambdaConfigurations"][0]
    t["Resources"].pop("UploadInvokePermission")
    properties = {"Bucket": {"Ref": "UploadsBucket"}, "Events": config["Event"], "Filter": config["Filter"]}
    _function(t)["Events"] = {"Upload": {"Type": "S3", "Properties": properties}}


def _function_resource(t: dict[str, Any]) -> dict[str, Any]:
    return next(iter(functions(t).values()))


def _gateway_response(t: dict[str, Any], kind: str) -> dict[str, Any]:
    return t["Resources"]["Api"]["Properties"]["GatewayResponses"][kind]


BREAKAGES = {
    "memory over 10240": (lambda t: t["Parameters"]["MemorySize"].update(MaxValue=20480), "Lambda's maximum"),
    "memory too small": (lambda t: t["Parameters"]["MemorySize"].update(Default=1024), "no headroom"),
    "memory floor too small": (lambda t: t["Parameters"]["MemorySize"].update(MinValue=1024), "no headroom"),
    "timeout over API limit": (lambda t: t["Parameters"]["Timeout"].update(Default=60), "API Gateway"),
    "literal timeout": (lambda t: _function(t).update(Timeout=300), "API Gateway"),
    "timeout under a cold start": (lambda t: t["Parameters"]["Timeout"].update(MinValue=3), "cold first /analyze"),
    "bad event name": (
        lambda t: _trigger(t).update(Event="s3:ObjectCreated:Upload"),
        "not an S3 event",
    ),
    "output under trigger": (lambda t: _set_output_prefix(t, "uploads/results/"), "overlaps"),
    "trigger under output": (lambda t: _set_trigger_prefix(t, "results/in/"), "overlaps"),
    "no prefix": (lambda t: _trigger(t).pop("Filter"), "no prefix filter"),
    "any bucket may invoke": (
        lambda t: t["Resources"]["UploadInvokePermission"]["Properties"].pop("SourceArn"),
        "without naming the bucket",
    ),
    "trigger through SAM": (_trigger_through_sam, "names no bucket"),
    "no DLQ": (lambda t: [_function(t).pop("DeadLetterQueue"), _function(t).pop("EventInvokeConfig")], "dropped"),
    "logs never expire": (lambda t: _function(t).pop("LoggingConfig"), "never expires"),
    "plain HTTP to the bucket": (lambda t: t["Resources"].pop("UploadsBucketPolicy"), "plain HTTP"),
    "no binary types": (lambda t: t["Resources"]["Api"]["Properties"].pop("BinaryMediaTypes"), "BinaryMediaTypes"),
    "throttling in API Gateway's own answer": (
        lambda t: t["Resources"]["Api"]["Properties"]["GatewayResponses"].pop("THROTTLED"),
        "no GatewayResponses THROTTLED",
    ),
    "a gateway response without CORS": (
        lambda t: _gateway_response(t, "INTEGRATION_TIMEOUT")["ResponseParameters"]["Headers"].clear(),
        "sends no header as Access-Control-Allow-Origin with CorsAllowOrigins='*'",
    ),
    "a gateway response with CORS always on": (
        lambda t: _gateway_response(t, "DEFAULT_4XX")["ResponseParameters"]["Headers"].update(
            {"Access-Control-Allow-Origin": "'*'"}
        ),
        "with CorsAllowOrigins=''",
    ),
    "a gateway response in API Gateway's shape": (
        lambda t: _gateway_response(t, "DEFAULT_5XX")["ResponseTemplates"].update(
            {"application/json": '{"message": $context.error.messageString}'}
        ),
        "is not the error shape",
    ),
    "multipart missing": (
        lambda t: t["Resources"]["Api"]["Properties"].update(BinaryMediaTypes=["image~1*"]),
        "multipart~1form-data",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_rule_catches_its_breakage(breakage: str) -> None:
    template = copy.deepcopy(load_template())
    mutate, expected = BREAKAGES[breakage]
    mutate(template)
    problems = template_problems(template)
    assert any(expected in p for p in problems), problems


def api_gateway_matches(resource_path: str, request_path: str) -> bool:
    """API Gateway's REST matching: a literal segment matches itself, `{name}` one segment, and a
    greedy `{name+}` one or more segments, never none (so `/{proxy+}` does not cover `/`)."""
    parts = []
    for segment in resource_path.strip("/").split("/") if resource_path != "/" else []:
        if re.fullmatch(r"\{\w+\+\}", segment):
            parts.append(r"[^/]+(?:/[^/]+)*")
        elif re.fullmatch(r"\{\w+\}", segment):
            parts.append(r"[^/]+")
        else:
            parts.append(re.escape(segment))
    return re.fullmatch("/" + "/".join(parts), request_path) is not None


def _proxied_paths(template: dict[str, Any]) -> list[str]:
    """The API's resource paths whose every method is a Lambda proxy integration of the function."""
    paths = template["Resources"]["Api"]["Properties"]["DefinitionBody"]["paths"]
    return [
        path
        for path, methods in paths.items()
        if (method := methods.get("x-amazon-apigateway-any-method"))
        and method["x-amazon-apigateway-integration"]["type"] == "aws_proxy"
        and "${Function.Arn}" in json.dumps(method["x-amazon-apigateway-integration"]["uri"])
    ]


def test_api_gateway_matcher_follows_greedy_path_rules() -> None:
    assert api_gateway_matches("/{proxy+}", "/caption") and api_gateway_matches("/{proxy+}", "/docs/oauth2-redirect")
    assert not api_gateway_matches("/{proxy+}", "/") and api_gateway_matches("/", "/")
    assert api_gateway_matches("/items/{id}", "/items/7") and not api_gateway_matches("/items/{id}", "/items/7/x")


def test_every_route_the_app_serves_reaches_the_function_through_the_api() -> None:
    """Each path FastAPI answers (the demo page at `/` included) must have an API Gateway resource
    that proxies it to the function; otherwise API Gateway answers 403 before the function runs."""
    from handler.http.api import create_app

    app = create_app()
    served = sorted({*app.openapi()["paths"], *(route.path for route in app.routes if hasattr(route, "path"))})
    proxied = _proxied_paths(load_template())
    unreachable = [path for path in served if not any(api_gateway_matches(p, path) for p in proxied)]
    assert "/" in served and unreachable == [], f"API Gateway resources {proxied} never reach {unreachable}"


def test_results_in_another_bucket_may_share_the_prefix() -> None:
    template = load_template()
    _set_output_prefix(template, "uploads/")
    _function(template)["Environment"]["Variables"]["OUTPUT_BUCKET"] = "results-bucket"
    assert template_problems(template) == []


def test_cloudformation_rule_guards_deploy_time_prefixes() -> None:
    """Parameter overrides bypass the defaults checked above; the template's own Rules must stop equal prefixes."""
    template = load_template()
    params = template["Parameters"]
    for name in ("UploadPrefix", "OutputPrefix"):
        assert not re.fullmatch(params[name]["AllowedPattern"], ""), f"{name} may be empty"
        assert not re.fullmatch(params[name]["AllowedPattern"], "uploads"), f"{name} may lack a trailing '/'"
    assertion = json.dumps(template["Rules"])
    assert '"Ref": "UploadPrefix"' in assertion and '"Ref": "OutputPrefix"' in assertion


PREFIX_PARAMETERS = ("UploadPrefix", "OutputPrefix", "BatchPrefix")
CANDIDATE_PREFIXES = (
    "uploads/",
    "results/",
    "batch/",
    "uploads/results/",
    "results/uploads/",
    "uploads/batch/",
    "a/b/c/",
)


def test_prefix_parameters_that_differ_never_nest() -> None:
    """CloudFormation Rules can only compare whole values (`Fn::Equals`), not test a prefix, so the
    parameter patterns must make "different" imply "disjoint": results under the upload prefix would
    re-trigger the function for every result, and uploads under the output prefix would all be skipped."""
    params = load_template()["Parameters"]
    admitted = {
        name: [p for p in CANDIDATE_PREFIXES if re.fullmatch(params[name]["AllowedPattern"], p)]
        for name in PREFIX_PARAMETERS
    }
    nested = [
        (first, a, second, b)
        for first in PREFIX_PARAMETERS
        for second in PREFIX_PARAMETERS
        if first != second
        for a in admitted[first]
        for b in admitted[second]
        if a != b and b.startswith(a)
    ]
    assert all(admitted.values()) and nested == [], nested


def test_s3_policy_is_limited_to_the_two_prefixes() -> None:
    template = load_template()
    statements = [s for p in _function(template)["Policies"] for s in p["Statement"]]
    for statement in statements:
        actions = _as_list(statement["Action"])
        assert all(a.startswith("s3:") and "*" not in a for a in actions), statement
        resource = json.dumps(statement["Resource"])
        if any(a in ("s3:GetObject", "s3:PutObject") for a in actions):
            assert "${UploadPrefix}*" in resource or "${OutputPrefix}*" in resource, statement
        if "s3:PutObject" in actions:
            assert "${OutputPrefix}*" in resource and "${UploadPrefix}" not in resource, "may write uploads"


# --- the image -----------------------------------------------------------------------------------


def _stages(text: str) -> list[list[tuple[str, str]]]:
    """Each stage's instructions as (KEYWORD, arguments), from its FROM on, continuation lines joined."""
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    steps = [(l.split(" ", 1)[0].upper(), l.split(" ", 1)[1]) for l in lines]
    starts = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    return [steps[start:end] for start, end in zip(starts, [*starts[1:], len(steps)], strict=True)]


def _final_stage(text: str) -> list[tuple[str, str]]:
    return _stages(text)[-1]


def test_image_matches_the_handler_and_lambda_conventions() -> None:
    stage = _final_stage(DOCKERFILE.read_text())
    env = " ".join(rest for keyword, rest in stage if keyword == "ENV")
    assert f"ARTIFACT_DIR={Settings.artifact_dir}" in env, (
        "image bakes the artifact where handler/config.py does not look"
    )
    for cache in ("HOME", "HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        assert re.search(rf"\b{cache}=/tmp(/|\s|$)", env), f"{cache} must point into /tmp (read-only filesystem)"
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    entrypoint = json.loads(next(rest for keyword, rest in stage if keyword == "ENTRYPOINT"))
    command = json.loads(next(rest for keyword, rest in stage if keyword == "CMD"))
    assert entrypoint[-2:] == ["-m", "awslambdaric"] and command == ["handler.app.lambda_handler"]

    import importlib

    module, _, attribute = command[0].rpartition(".")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_sam_builds_this_dockerfile() -> None:
    metadata = _function_resource(load_template())["Metadata"]
    assert (ROOT / metadata["DockerContext"] / metadata["Dockerfile"]).resolve() == DOCKERFILE
    artifact_arg = metadata.get("DockerBuildArgs", {}).get("ARTIFACT_SRC")
    assert artifact_arg and f"ARG ARTIFACT_SRC={artifact_arg}" in DOCKERFILE.read_text()


def _pin_script() -> str:
    """The build stage's shell step that turns manifest.json + the serve extra into pip inputs."""
    joined = re.sub(r"\\\n", "", DOCKERFILE.read_text())
    step = next(l for l in joined.splitlines() if l.startswith("RUN python -c"))
    return step[len("RUN ") :].split(" && python -m venv")[0]


def test_image_build_pins_the_artifacts_runtime(tiny_artifact: Path, tmp_path: Path) -> None:
    """Run the Dockerfile's pinning step on a real manifest: same torch/transformers, serve extra only."""
    import platform
    import subprocess
    import sys

    import tomllib

    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    shell = _pin_script().replace("python -c", f"{sys.executable} -c", 1)
    subprocess.run(["sh", "-c", shell], cwd=tmp_path, check=True)
    torch_pin = f"torch=={manifest['torch'].split('+')[0]}"
    assert (tmp_path / "torch.txt").read_text().split() == [torch_pin]
    assert (tmp_path / "constraints.txt").read_text().split() == [
        torch_pin,
        f"transformers=={manifest['transformers']}",
    ]
    serve = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert (tmp_path / "requirements.txt").read_text().split("\n")[:-1] == serve
    assert not any(
        name in (tmp_path / "requirements.txt").read_text() for name in ("peft", "pycocotools", "matplotlib")
    )

    major, minor, _ = platform.python_version_tuple()
    manifest["python"] = f"{major}.{int(minor) + 1}.0"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    mismatch = subprocess.run(["sh", "-c", shell], cwd=tmp_path, capture_output=True, text=True)
    assert mismatch.returncode != 0 and "BASE_IMAGE" in mismatch.stderr


def _setup_extension() -> Extension:
    """The one extension setup.py declares (its `setup()` call captured, nothing built)."""
    import runpy
    from unittest import mock

    declared: dict[str, Any] = {}
    with mock.patch("setuptools.setup", lambda **kwargs: declared.update(kwargs)):
        runpy.run_path(str(ROOT / "setup.py"))
    (extension,) = declared["ext_modules"]
    return extension


def _copy_build_inputs(workdir: Path, build: list[tuple[str, str]]) -> None:
    """What the build stage's plain COPY steps put in its WORKDIR (the artifact's manifest aside), in `workdir`."""
    for keyword, rest in build:
        if keyword == "COPY" and "$" not in rest and not rest.startswith("--"):
            *sources, target = rest.split()
            for source in sources:
                destination = workdir / target / Path(source).name if target.endswith("/") else workdir / target
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / source, destination)


def _run_build_stage_compile(workdir: Path, build: list[tuple[str, str]]) -> subprocess.CompletedProcess:
    """The build stage's compile step, run in `workdir` with this interpreter standing in for the image's venv."""
    steps = [rest for keyword, rest in build if keyword == "RUN" and "setup.py build_ext" in rest]
    assert steps, "the build stage never runs setup.py build_ext: the image would ship no decoder step in C"
    shell = steps[0].replace("/opt/venv/bin/python", sys.executable)
    return subprocess.run(["sh", "-c", shell], cwd=workdir, capture_output=True, text=True, timeout=300)


def test_image_compiles_the_decoder_step_in_the_build_stage_and_ships_it(tmp_path: Path) -> None:
    """The build stage compiles setup.py's extension from what it copies in; the final stage copies the library
    into the folder it is loaded from (after handler/, so a host's build never stands in) and has no compiler."""
    if shutil.which(str(sysconfig.get_config_var("CC")).split()[0]) is None:
        pytest.skip("no C compiler to run the build stage's compile step with")
    stages = _stages(DOCKERFILE.read_text())
    build, final = next(s for s in stages if s[0][1].lower().endswith(" as build")), stages[-1]
    extension = _setup_extension()
    package, _, stem = extension.name.rpartition(".")
    folder = package.replace(".", "/")
    library = f"{folder}/{stem}{sysconfig.get_config_var('EXT_SUFFIX')}"
    workdir = PurePosixPath(next(rest for keyword, rest in build if keyword == "WORKDIR"))

    _copy_build_inputs(tmp_path / "good", build)
    built = _run_build_stage_compile(tmp_path / "good", build)
    assert built.returncode == 0 and (tmp_path / "good" / library).is_file(), built.stdout + built.stderr
    assert ctypes.CDLL(str(tmp_path / "good" / library)).fl_best_isa() in (0, 1, 2)

    copies = [(i, rest.split()) for i, (keyword, rest) in enumerate(final) if keyword == "COPY"]
    shipped = [
        (i, arguments[-1])
        for i, arguments in copies
        if arguments[0] == "--from=build" and PurePosixPath(arguments[1]) in (workdir / folder, workdir / library)
    ]
    assert [target for _, target in shipped] == [f"${{LAMBDA_TASK_ROOT}}/{folder}/"], final
    handler_copy = next(i for i, arguments in copies if arguments[0] == "handler/")
    assert shipped[0][0] > handler_copy, "handler/ from the build context is copied over the compiled library"
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert not re.search(r"\b(apt-get|gcc|setup\.py)\b", runs), "the final stage installs or runs a compiler"

    if platform.machine() == "x86_64":  # where its kernels run, a library that does not build stops the build
        _copy_build_inputs(tmp_path / "broken", build)
        (tmp_path / "broken" / extension.sources[0]).write_text("#error not C\n")
        failed = _run_build_stage_compile(tmp_path / "broken", build)
        assert failed.returncode != 0 and "did not compile" in failed.stderr, failed.stdout + failed.stderr


def test_cors_preflight_alone_skips_auth_and_only_when_cors_is_on() -> None:
    """A browser's preflight carries no key or signature: with CorsAllowOrigins set, OPTIONS must reach
    the function unauthenticated (or API Gateway answers 403 without CORS headers); every other method,
    and OPTIONS without CORS, keeps AuthType's auth."""
    template = load_template()
    assert template["Conditions"]["AllowCors"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CorsAllowOrigins"}, ""]}]}
    assert template["Parameters"]["CorsAllowOrigins"]["Default"] == ""
    variables = template["Resources"]["Function"]["Properties"]["Environment"]["Variables"]
    assert variables["CORS_ALLOW_ORIGINS"] == {"Ref": "CorsAllowOrigins"}
    paths = template["Resources"]["Api"]["Properties"]["DefinitionBody"]["paths"]
    for path in _proxied_paths(template):
        any_method, options = paths[path]["x-amazon-apigateway-any-method"], paths[path]["options"]
        auth = {"Fn::If": ["UseIam", [{"sigv4": []}], {"Fn::If": ["UseApiKey", [{"api_key": []}], []]}]}
        assert any_method["security"] == auth, path
        assert options["security"] == {"Fn::If": ["AllowCors", [], auth]}, path
        assert options["x-amazon-apigateway-integration"] == any_method["x-amazon-apigateway-integration"], path
        assert options.get("parameters") == any_method.get("parameters"), path
    pattern = re.compile(template["Parameters"]["CorsAllowOrigins"]["AllowedPattern"])
    for good in ("", "*", "https://app.example.com", "https://a.example,http://localhost:5173"):
        assert pattern.fullmatch(good), good
    # uppercase too: API Gateway's own answers carry the first origin as written, and browsers compare it exactly
    for bad in ("https://app.example.com/", "app.example.com", "*,https://a.example", "https://App.example.com"):
        assert not pattern.fullmatch(bad), bad


def test_api_gateways_own_answers_reach_a_browser_in_the_error_shape() -> None:
    """What SAM deploys: every gateway response type in the API's OpenAPI body, at its status, in the one
    error shape, allowing the first listed origin exactly when CorsAllowOrigins is set."""
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    template = load_template()
    template["Resources"]["Function"]["Properties"]["ImageUri"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/f:1"
    deployed = Translator(managed_policy_map={}, sam_parser=Parser()).translate(template, parameter_values={})
    responses = deployed["Resources"]["Api"]["Properties"]["Body"]["x-amazon-apigateway-gateway-responses"]
    assert set(responses) == set(GATEWAY_ERRORS)
    for kind, (status, code) in GATEWAY_ERRORS.items():
        response = responses[kind]
        assert response.get("statusCode") == (str(status) if status else None), kind
        body = response["responseTemplates"]["application/json"]
        assert json.loads(body.replace("$context.error.messageString", '"Forbidden"')) == error_body(code, "Forbidden")
        header = response["responseParameters"]["gatewayresponse.header.Access-Control-Allow-Origin"]
        served = {
            origins: evaluate(deployed, header, {"CorsAllowOrigins": origins})
            for origins in ("", "*", "https://app.example.com", "https://a.example,http://localhost:5173")
        }
        assert served == {
            "": NO_VALUE,
            "*": "'*'",
            "https://app.example.com": "'https://app.example.com'",
            "https://a.example,http://localhost:5173": "'https://a.example'",
        }, kind
