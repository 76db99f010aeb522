"""The template's scale-out pieces: the Batch Operations role, the concurrency cap, alarms and outputs.

The role is checked statement by statement against what a Batch Operations job needs (invoke the
function, read manifests, write reports), so a broadened policy fails here even though cfn-lint and
CloudFormation would accept it. Each rule is also run against a broken copy, so none can never fire.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from handler import backfill
from tests.deploy.test_template_rules import load_template

BATCH_PRINCIPAL = "batchoperations.s3.amazonaws.com"
ROLE = "BatchOperationsRole"
ALLOWED_ACTIONS = {
    "lambda:InvokeFunction": ("Function",),
    "s3:GetObject": ("${BatchPrefix}manifests/*",),
    "s3:GetObjectVersion": ("${BatchPrefix}manifests/*",),
    "s3:PutObject": ("${BatchPrefix}reports/*",),
    "s3:GetBucketLocation": ("florence-uploads-${Id}",),
}
"""Every action the role may have, and what each statement's resource must name."""
LAMBDA_MAX_EVENT_AGE_S = 21600
"""How long Lambda may keep an asynchronous event, retrying throttles, before it is discarded (6 h)."""


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def scale_out_problems(template: dict[str, Any]) -> list[str]:
    problems = []
    resources = template["Resources"]
    role = resources.get(ROLE, {}).get("Properties", {})
    trust = role.get("AssumeRolePolicyDocument", {}).get("Statement", [])
    principals = [s.get("Principal", {}).get("Service") for s in trust]
    if principals != [BATCH_PRINCIPAL]:
        problems.append(f"{ROLE} must be assumable by {BATCH_PRINCIPAL} only, not {principals}")
    if not all("aws:SourceAccount" in json.dumps(s.get("Condition", {})) for s in trust):
        problems.append(f"{ROLE}: trust lacks an aws:SourceAccount condition (confused deputy)")
    if role.get("ManagedPolicyArns"):
        problems.append(f"{ROLE}: managed policies grant more than a job needs")
    for policy in role.get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if statement.get("Effect") != "Allow":
                continue
            resource = json.dumps(statement.get("Resource"))
            for action in _as_list(statement["Action"]):
                if action not in ALLOWED_ACTIONS:
                    problems.append(f"{ROLE}: {action} is more than invoke, read manifests, write reports")
                elif not all(part in resource for part in ALLOWED_ACTIONS[action]) or '"*"' in resource:
                    problems.append(f"{ROLE}: {action} on {resource} is wider than {ALLOWED_ACTIONS[action]}")

    function = resources["Function"]["Properties"]
    parameter = template["Parameters"].get("ReservedConcurrency", {})
    reserved = json.dumps(function.get("ReservedConcurrentExecutions"))
    if not parameter.get("Default") or "CapConcurrency" not in reserved or "AWS::NoValue" not in reserved:
        problems.append("Function: ReservedConcurrency needs a default cap, and 0 must mean none (a Condition)")
    if parameter.get("MinValue") != 0:
        problems.append("ReservedConcurrency: 0 (no cap) must be allowed")
    # Throttled asynchronous (S3) invokes wait in Lambda's queue until MaximumEventAgeInSeconds, then
    # go to the dead-letter queue: under a cap, anything short of the 6 h maximum dead-letters bursts.
    event_age = function.get("EventInvokeConfig", {}).get("MaximumEventAgeInSeconds", LAMBDA_MAX_EVENT_AGE_S)
    if parameter.get("Default") and event_age < LAMBDA_MAX_EVENT_AGE_S:
        problems.append(
            f"Function: MaximumEventAgeInSeconds {event_age} under a concurrency cap dead-letters throttled uploads"
            f" older than {event_age} s; keep Lambda's maximum, {LAMBDA_MAX_EVENT_AGE_S}"
        )

    alarms = {k: r["Properties"] for k, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    watched = {(a.get("Namespace"), a.get("MetricName")) for a in alarms.values()}
    needed_alarms = (
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "AsyncEventAge"),  # throttled uploads waiting, hours before they are dead-lettered
    )
    for needed in needed_alarms:
        if needed not in watched:
            problems.append(f"no alarm on {needed[0]} {needed[1]}")
    for name, alarm in alarms.items():
        if "AlarmTopicArn" not in json.dumps(alarm.get("AlarmActions")):
            problems.append(f"{name}: does not notify the optional AlarmTopicArn")

    outputs = template.get("Outputs", {})
    for output in (*backfill.STACK_OUTPUTS.values(), *backfill.STACK_PREFIX_OUTPUTS):
        if output not in outputs:
            problems.append(f"output {output} (read by handler.backfill --stack) is missing")
    return problems


def test_template_scale_out_pieces_follow_the_rules() -> None:
    assert scale_out_problems(load_template()) == []


def _statements(t: dict[str, Any]) -> list[dict[str, Any]]:
    return t["Resources"][ROLE]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


BREAKAGES = {
    "any service may assume": (
        lambda t: t["Resources"][ROLE]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0].update(
            Principal={"Service": "lambda.amazonaws.com"}
        ),
        "assumable",
    ),
    "no source account": (
        lambda t: t["Resources"][ROLE]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0].pop("Condition"),
        "SourceAccount",
    ),
    "s3 wildcard": (lambda t: _statements(t)[1].update(Action="s3:*"), "more than invoke"),
    "reads every object": (lambda t: _statements(t)[1].update(Resource="*"), "wider"),
    "writes anywhere in the bucket": (
        lambda t: _statements(t)[2].update(Resource="arn:aws:s3:::florence-uploads-x/*"),
        "wider",
    ),
    "managed admin policy": (
        lambda t: t["Resources"][ROLE]["Properties"].update(ManagedPolicyArns=["arn:aws:iam::aws:policy/Admin"]),
        "managed policies",
    ),
    "no concurrency cap": (
        lambda t: t["Resources"]["Function"]["Properties"].pop("ReservedConcurrentExecutions"),
        "ReservedConcurrency",
    ),
    "throttled uploads age out": (
        lambda t: t["Resources"]["Function"]["Properties"]["EventInvokeConfig"].update(MaximumEventAgeInSeconds=3600),
        "MaximumEventAgeInSeconds",
    ),
    "no errors alarm": (lambda t: t["Resources"].pop("FunctionErrorAlarm"), "AWS/Lambda Errors"),
    "no dead-letter alarm": (lambda t: t["Resources"].pop("DeadLetterAlarm"), "AWS/SQS"),
    "no queue-wait alarm": (lambda t: t["Resources"].pop("EventAgeAlarm"), "AsyncEventAge"),
    "alarm tells no one": (
        lambda t: t["Resources"]["DeadLetterAlarm"]["Properties"].pop("AlarmActions"),
        "AlarmTopicArn",
    ),
    "no role output": (lambda t: t["Outputs"].pop("BatchOperationsRoleArn"), "BatchOperationsRoleArn"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_scale_out_rule_catches_its_breakage(breakage: str) -> None:
    template = copy.deepcopy(load_template())
    mutate, expected = BREAKAGES[breakage]
    mutate(template)
    assert any(expected in p for p in scale_out_problems(template)), scale_out_problems(template)


def test_batch_prefix_is_guarded_like_the_other_prefixes() -> None:
    template = load_template()
    pattern = template["Parameters"]["BatchPrefix"]["AllowedPattern"]
    assert re.fullmatch(pattern, "batch/") and not re.fullmatch(pattern, "") and not re.fullmatch(pattern, "batch")
    assertion = json.dumps(template["Rules"]["BatchPrefixIsItsOwn"])
    assert '"Ref": "UploadPrefix"' in assertion and '"Ref": "OutputPrefix"' in assertion
    assert template["Parameters"]["BatchPrefix"]["Default"] == backfill.BackfillConfig(bucket="b").batch_folder


def test_alarm_topic_is_optional() -> None:
    template = load_template()
    topic = template["Parameters"]["AlarmTopicArn"]
    assert topic["Default"] == "" and re.fullmatch(topic["AllowedPattern"], "")
    assert re.fullmatch(topic["AllowedPattern"], "arn:aws:sns:us-east-1:123456789012:ops")
    assert not re.fullmatch(topic["AllowedPattern"], "ops-topic")
