"""`medops export aws`: the CDK app it writes, checked offline three ways: the stack's resources
with aws_cdk.assertions (in this process), `cdk synth` with the real CDK CLI on the exported
folder, and cfn-lint on the template the CLI wrote."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from medops.cli.main import app
from medops.config import MedopsConfig, parse_config
from medops.errors import ConfigError
from medops.export import AwsExport, AwsOptions, export_aws, stack_name

pytest.importorskip("aws_cdk", reason="aws-cdk-lib is not installed (pip install -e '.[dev]')")

REPO = Path(__file__).resolve().parents[2]
DATASTORE = "0123456789abcdef0123456789abcdef"
STACK = "medops-chest-xray"
CONFIG: dict[str, Any] = {
    "project": "chest-xray",
    "storage": {"tracking": "https://mlflow.example.org"},
    "data": {"sources": {
        "ahi": {"kind": "healthimaging", "datastore_id": DATASTORE},
        "bucket": {"kind": "s3", "uri": "s3://chest-raw-images/incoming/chest/"},
    }},
}
# jsii's Node warns about Node 20 on every start; the CLI checks for new versions online
CDK_ENV = {"JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
           "CDK_DISABLE_VERSION_CHECK": "true", "CDK_DISABLE_CLI_TELEMETRY": "true"}


def _config(**changes: Any) -> MedopsConfig:
    return parse_config({**CONFIG, **changes})


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> AwsExport:
    options = AwsOptions(image_tag="abc123", github_repository="hospital/chest-xray")
    return export_aws(_config(), tmp_path_factory.mktemp("aws") / "app", options)


@pytest.fixture(scope="module")
def cli_synth(exported: AwsExport) -> Iterator[subprocess.Popen[str] | None]:
    """`cdk synth` on the exported folder, started at once so that it runs while this process
    synthesizes the same stack (the two take about as long as each other)."""
    if shutil.which("npm") is None:
        yield None
        return
    tools = subprocess.run([str(REPO / "scripts" / "node-tools")], capture_output=True,
                           text=True, check=True, timeout=300).stdout.strip()
    # cdk.json runs `python3 app.py`: this venv's python3, which has aws-cdk-lib
    path = os.pathsep.join([str(Path(sys.executable).parent), tools, os.environ["PATH"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDK_", "AWS_"))}
    proc = subprocess.Popen(
        [str(Path(tools) / "cdk"), "synth", "--no-notices", "--no-version-reporting", "-q"],
        cwd=exported.folder, env={**env, **CDK_ENV, "PATH": path},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _load_stack_module(folder: Path) -> ModuleType:
    """The exported app's package ``medops_stack``, imported as `cdk` runs it: from its folder.
    Every export copies the same package, so a second folder reuses the first import."""
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("medops_stack")
    finally:
        sys.path.remove(str(folder))


def _synth(folder: Path) -> dict[str, Any]:
    """The template of the exported app's stack, built in this process from its cdk.json."""
    for key, value in CDK_ENV.items():
        os.environ.setdefault(key, value)
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    module = _load_stack_module(folder)
    context = json.loads((folder / "cdk.json").read_text())["context"]
    params = module.StackParams.from_context(context)
    stack = module.MedopsStack(cdk.App(), params.stack_name, params)
    return dict(Template.from_stack(stack).to_json())


@pytest.fixture(scope="module")
def template(exported: AwsExport, cli_synth: subprocess.Popen[str] | None) -> dict[str, Any]:
    return _synth(exported.folder)


@pytest.fixture(scope="module")
def bare_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A project with no cloud source and no image pushed yet."""
    folder = tmp_path_factory.mktemp("aws-bare") / "app"
    export_aws(parse_config({"project": "bare"}), folder)
    return _synth(folder)


# -- helpers: templates as plain values ------------------------------------------------------
def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def _one(template: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    found = _resources(template, kind)
    assert len(found) == 1, f"{len(found)} {kind}"
    ((logical_id, resource),) = found.items()
    return logical_id, resource


def _text(value: Any) -> Any:
    """A CloudFormation value as text: Ref X -> ${X}, GetAtt X.Arn -> ${X.Arn}, Join joined."""
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            return f"${{{arg}}}"
        if fn == "Fn::GetAtt":
            return f"${{{arg[0]}.{arg[1]}}}"
        if fn == "Fn::Join":
            return arg[0].join(str(_text(part)) for part in arg[1])
        if fn == "Fn::Select":
            return f"${{select {arg[0]} of {_text(arg[1])}}}"
        if fn == "Fn::Split":
            return f"${{split {arg[0]} {_text(arg[1])}}}"
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [_text(s) for policy in role["Properties"].get("Policies", [])
            for s in policy["PolicyDocument"]["Statement"]]


def _role(template: dict[str, Any], prefix: str) -> dict[str, Any]:
    (role,) = [r for k, r in _resources(template, "AWS::IAM::Role").items()
               if k.startswith(prefix)]
    return role


def _grants(role: dict[str, Any]) -> dict[str, set[str]]:
    """action -> the resources it is allowed on"""
    out: dict[str, set[str]] = {}
    for statement in _statements(role):
        assert statement["Effect"] == "Allow"
        for action in _listed(statement["Action"]):
            out.setdefault(action, set()).update(_listed(statement["Resource"]))
    return out


def _logical(template: dict[str, Any], kind: str, prefix: str) -> str:
    (logical_id,) = [k for k in _resources(template, kind) if k.startswith(prefix)]
    return logical_id


# -- the event rules ---------------------------------------------------------------------------
def test_each_rule_matches_its_events_and_sends_them_to_the_queue(
        template: dict[str, Any]) -> None:
    queue = _logical(template, "AWS::SQS::Queue", "Events")
    dlq = _logical(template, "AWS::SQS::Queue", "DeadLetters")
    raw = _logical(template, "AWS::S3::Bucket", "Raw")
    repos = [f"${{{_logical(template, 'AWS::ECR::Repository', name)}}}"
             for name in ("TrainingImages", "ServingImages")]
    patterns = {k.rstrip("0123456789ABCDEF"): r["Properties"]
                for k, r in _resources(template, "AWS::Events::Rule").items()}
    assert {k: _text(p["EventPattern"]) for k, p in patterns.items()} == {
        "HealthImagingImports": {"source": ["aws.medical-imaging"],
                                 "detail-type": ["Import Job Completed"],
                                 "detail": {"datastoreId": [DATASTORE]}},
        "HealthImagingImageSets": {"source": ["aws.medical-imaging"],
                                   "detail-type": ["Image Set Created"],
                                   "detail": {"datastoreId": [DATASTORE]}},
        "RawObjects": {"source": ["aws.s3"], "detail-type": ["Object Created"],
                       "detail": {"bucket": {"name": [f"${{{raw}}}"]},
                                  "object": {"key": [{"prefix": "incoming/chest/"}]}}},
        "ImagePushes": {"source": ["aws.ecr"], "detail-type": ["ECR Image Action"],
                        "detail": {"action-type": ["PUSH"], "result": ["SUCCESS"],
                                   "repository-name": repos}},
    }
    for props in patterns.values():
        first = _text(props["Targets"][0])
        assert first["Arn"] == f"${{{queue}.Arn}}"
        assert first["DeadLetterConfig"] == {"Arn": f"${{{dlq}.Arn}}"}
    # EventBridge may write to the queue only for these rules
    (policy,) = [_text(p["Properties"]) for p in
                 _resources(template, "AWS::SQS::QueuePolicy").values()
                 if _text(p["Properties"]["Queues"]) == [f"${{{queue}}}"]]
    statements = policy["PolicyDocument"]["Statement"]
    senders = [s for s in statements if s["Effect"] == "Allow"]
    assert [s["Condition"] for s in statements if s["Effect"] == "Deny"] == [
        {"Bool": {"aws:SecureTransport": "false"}}]
    assert {s["Principal"]["Service"] for s in senders} == {"events.amazonaws.com"}
    assert {s["Condition"]["ArnEquals"]["aws:SourceArn"] for s in senders} == {
        f"${{{k}.Arn}}" for k in _resources(template, "AWS::Events::Rule")}


def test_the_import_rule_also_starts_the_training_pipeline(template: dict[str, Any]) -> None:
    rule = next(r for k, r in _resources(template, "AWS::Events::Rule").items()
                if k.startswith("HealthImagingImports"))
    target = _text(rule["Properties"]["Targets"][1])
    assert target["Arn"].endswith(f":pipeline/{STACK}-train")
    assert target["SageMakerPipelineParameters"]["PipelineParameterList"] == [
        {"Name": "Trigger", "Value": "healthimaging:import-job-completed"}]
    role = _role(template, "StartPipelineRole")
    assert _grants(role) == {"sagemaker:StartPipelineExecution": {target["Arn"]}}
    assert target["RoleArn"].startswith("${StartPipelineRole")
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "events.amazonaws.com"}


# -- IAM ---------------------------------------------------------------------------------------
def test_every_statement_names_its_actions_and_resources(template: dict[str, Any]) -> None:
    assert not _resources(template, "AWS::IAM::ManagedPolicy")
    roles = _resources(template, "AWS::IAM::Role")
    assert len(roles) == 6  # agent, serving, training, pipeline, start-pipeline, CI
    statements = [s for r in roles.values() for s in _statements(r)]
    statements += [_text(s) for p in _resources(template, "AWS::IAM::Policy").values()
                   for s in p["Properties"]["PolicyDocument"]["Statement"]]
    for role in roles.values():
        assert "ManagedPolicyArns" not in role["Properties"]
    for s in statements:
        actions, resources = _listed(s["Action"]), _listed(s["Resource"])
        assert all("*" not in a for a in actions), s
        if "*" in resources:  # the one action that has no resource-level permissions
            assert actions == ["ecr:GetAuthorizationToken"], s


def test_the_agent_reads_only_its_queue_prefix_and_datastore(template: dict[str, Any]) -> None:
    grants = _grants(_role(template, "AgentRole"))
    queue = f"${{{_logical(template, 'AWS::SQS::Queue', 'Events')}.Arn}}"
    raw = f"${{{_logical(template, 'AWS::S3::Bucket', 'Raw')}.Arn}}"
    datastore = ("arn:${AWS::Partition}:medical-imaging:${AWS::Region}:${AWS::AccountId}:"
                 f"datastore/{DATASTORE}")
    for action in ("GetImageSetMetadata", "GetImageFrame", "SearchImageSets",
                   "GetDICOMImportJob"):
        assert grants[f"medical-imaging:{action}"] == {datastore, f"{datastore}/imageset/*"}
    for action in ("ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility"):
        assert grants[f"sqs:{action}"] == {queue}
    assert f"{raw}/incoming/chest/*" in grants["s3:GetObject"]
    assert not any(r.startswith(raw) and r != f"{raw}/incoming/chest/*"
                   for r in grants["s3:GetObject"])
    assert "s3:PutObject" not in grants or not any(r.startswith(raw)
                                                   for r in grants["s3:PutObject"])
    assert grants["sagemaker:StartPipelineExecution"] == {
        f"arn:${{AWS::Partition}}:sagemaker:${{AWS::Region}}:${{AWS::AccountId}}:pipeline/"
        f"{STACK}-train"}


def test_the_ci_role_is_for_the_main_branch_of_one_repository(template: dict[str, Any]) -> None:
    role = _role(template, "CiRole")
    trust = _text(role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0])
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Condition"]["StringEquals"] == {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub": [
            "repo:hospital/chest-xray:ref:refs/heads/main",
            "repo:hospital/chest-xray:environment:production"]}
    grants = _grants(role)
    repos = {f"${{{k}.Arn}}" for k in _resources(template, "AWS::ECR::Repository")}
    assert grants["ecr:PutImage"] == repos
    assert grants["secretsmanager:PutSecretValue"] == {"${RuntimeEnv}"}


# -- storage and queues ------------------------------------------------------------------------
def test_each_bucket_is_encrypted_versioned_private_tls_only_and_tiered(
        template: dict[str, Any]) -> None:
    buckets = _resources(template, "AWS::S3::Bucket")
    keys = _resources(template, "AWS::KMS::Key")
    policies = {_text(p["Properties"]["Bucket"]): p["Properties"]["PolicyDocument"]
                for p in _resources(template, "AWS::S3::BucketPolicy").values()}
    assert sorted(k.rstrip("0123456789ABCDEF") for k in buckets) == ["Artifacts", "Capture",
                                                                      "Raw"]
    used_keys = set()
    for logical_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert bucket["DeletionPolicy"] == "Retain"
        (sse,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
        key = sse["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]["Fn::GetAtt"][0]
        assert keys[key]["Properties"]["EnableKeyRotation"] is True
        used_keys.add(key)
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True}
        (rule,) = props["LifecycleConfiguration"]["Rules"]
        assert rule["Transitions"] == [{"StorageClass": "INTELLIGENT_TIERING",
                                        "TransitionInDays": 0}]
        deny = [s for s in policies[f"${{{logical_id}}}"]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   and s["Action"] == "s3:*" and s["Principal"] == {"AWS": "*"} for s in deny)
        assert any(s["Condition"] == {"NumericLessThan": {"s3:TlsVersion": 1.2}} for s in deny)
        events_on = props.get("NotificationConfiguration", {}).get("EventBridgeConfiguration")
        assert events_on == ({"EventBridgeEnabled": True} if logical_id.startswith("Raw")
                             else None)
    assert len(used_keys) == 3  # one key per bucket
    assert buckets[_logical(template, "AWS::S3::Bucket", "Raw")]["Properties"][
        "BucketName"] == "chest-raw-images"


def test_the_queue_sends_what_fails_five_times_to_the_dead_letter_queue(
        template: dict[str, Any]) -> None:
    queues = _resources(template, "AWS::SQS::Queue")
    queue = queues[_logical(template, "AWS::SQS::Queue", "Events")]["Properties"]
    dlq = _logical(template, "AWS::SQS::Queue", "DeadLetters")
    assert _text(queue["RedrivePolicy"]) == {"deadLetterTargetArn": f"${{{dlq}.Arn}}",
                                             "maxReceiveCount": 5}
    assert queue["VisibilityTimeout"] == 900  # the agent's sqs_visibility_s
    assert all(q["Properties"]["SqsManagedSseEnabled"] for q in queues.values())


# -- serving -----------------------------------------------------------------------------------
def test_the_endpoint_scales_from_1_to_5_on_invocations_per_instance(
        template: dict[str, Any]) -> None:
    endpoint_id, endpoint = _one(template, "AWS::SageMaker::Endpoint")
    assert endpoint["Properties"]["EndpointName"] == STACK
    # a deploy of a new image keeps the instance count scaling reached
    assert endpoint["Properties"]["RetainAllVariantProperties"] is True
    target_id, target = _one(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    props = target["Properties"]
    assert (props["MinCapacity"], props["MaxCapacity"]) == (1, 5)
    assert props["ServiceNamespace"] == "sagemaker"
    assert props["ResourceId"] == f"endpoint/{STACK}/variant/AllTraffic"
    assert props["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert endpoint_id in target["DependsOn"]
    assert _text(props["RoleARN"]).endswith(  # the service-linked role, not one of ours
        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
    _, policy = _one(template, "AWS::ApplicationAutoScaling::ScalingPolicy")
    props = policy["Properties"]
    assert props["PolicyType"] == "TargetTrackingScaling"
    assert props["ScalingTargetId"] == {"Ref": target_id}
    tracking = props["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
    assert tracking["TargetValue"] == 100


def test_the_endpoint_captures_into_the_capture_bucket_and_raises_alarms(
        template: dict[str, Any]) -> None:
    capture = _logical(template, "AWS::S3::Bucket", "Capture")
    _, config = _one(template, "AWS::SageMaker::EndpointConfig")
    data_capture = _text(config["Properties"]["DataCaptureConfig"])
    assert data_capture["EnableCapture"] is True
    assert data_capture["DestinationS3Uri"] == f"s3://${{{capture}}}/endpoint"
    assert data_capture["KmsKeyId"].startswith("${CaptureKey")
    (variant,) = config["Properties"]["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 1 and variant["InstanceType"] == "ml.m5.xlarge"
    _, model = _one(template, "AWS::SageMaker::Model")
    container = _text(model["Properties"]["PrimaryContainer"])
    assert container["Image"].endswith(":abc123")
    assert container["Environment"]["MEDOPS_MODEL"] == "chest-xray-classifier@champion"
    assert not any("PASSWORD" in k for k in container["Environment"])
    alarms = {a["Properties"]["MetricName"]: a["Properties"]
              for a in _resources(template, "AWS::CloudWatch::Alarm").values()}
    assert set(alarms) == {"ModelLatency", "Invocation5XXErrors"}
    for alarm in alarms.values():
        assert alarm["Namespace"] == "AWS/SageMaker"
        assert {"Name": "EndpointName", "Value": STACK} in alarm["Dimensions"]
        assert alarm["AlarmActions"] == [{"Ref": _one(template, "AWS::SNS::Topic")[0]}]
    assert alarms["ModelLatency"]["Threshold"] == 1_000_000  # 1 s in microseconds


# -- training ----------------------------------------------------------------------------------
def test_the_pipeline_trains_the_image_on_managed_spot_with_checkpoints(
        template: dict[str, Any]) -> None:
    _, pipeline = _one(template, "AWS::SageMaker::Pipeline")
    props = pipeline["Properties"]
    assert props["PipelineName"] == f"{STACK}-train"
    definition = json.loads(_text(props["PipelineDefinition"]["PipelineDefinitionBody"]))
    (step,) = definition["Steps"]
    assert step["Type"] == "Training"
    args = step["Arguments"]
    artifacts = _logical(template, "AWS::S3::Bucket", "Artifacts")
    assert args["AlgorithmSpecification"]["TrainingImage"].endswith(":abc123")
    assert args["EnableManagedSpotTraining"] is True
    stop = args["StoppingCondition"]
    assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"] > 0
    assert args["CheckpointConfig"] == {"S3Uri": f"s3://${{{artifacts}}}/sagemaker/checkpoints",
                                        "LocalPath": "/opt/ml/checkpoints"}
    assert args["RoleArn"].startswith("${TrainingRole")
    assert {p["Name"] for p in definition["Parameters"]} >= {"Trigger"}
    grants = _grants(_role(template, "PipelineRole"))
    assert grants["iam:PassRole"] == {args["RoleArn"]}


def test_without_a_datastore_or_an_image_the_stack_leaves_those_parts_out(
        bare_template: dict[str, Any]) -> None:
    kinds = {r["Type"] for r in bare_template["Resources"].values()}
    assert not {k for k in kinds if k.startswith(("AWS::SageMaker::",
                                                  "AWS::ApplicationAutoScaling::"))}
    sources = [r["Properties"]["EventPattern"]["source"]
               for r in _resources(bare_template, "AWS::Events::Rule").values()]
    assert sorted(sources) == [["aws.ecr"], ["aws.s3"]]
    grants = _grants(_role(bare_template, "AgentRole"))
    assert not [a for a in grants if a.startswith(("medical-imaging:", "sagemaker:"))]
    raw = _logical(bare_template, "AWS::S3::Bucket", "Raw")
    assert f"${{{raw}.Arn}}/incoming/*" in grants["s3:GetObject"]
    assert "BucketName" not in bare_template["Resources"][raw]["Properties"]


# -- parameters --------------------------------------------------------------------------------
def test_the_stack_refuses_bad_context_values_naming_the_key(exported: AwsExport) -> None:
    module = _load_stack_module(exported.folder)
    context = json.loads((exported.folder / "cdk.json").read_text())["context"]
    for change, words in [({"medops:min_instances": "3", "medops:max_instances": "2"},
                           "medops:min_instances"),
                          ({"medops:datastore_id": "not-a-datastore"}, "medops:datastore_id"),
                          ({"medops:serving_instance_type": "m5.large"},
                           "medops:serving_instance_type"),
                          ({"medops:image_tag": "x", "medops:mlflow_tracking_uri": ""},
                           "medops:mlflow_tracking_uri"),
                          ({"medops:imagetag": "x"}, "unknown context key 'medops:imagetag'"),
                          ({"medops:max_instances": "five"}, "medops:max_instances='five'")]:
        with pytest.raises(module.ParameterError, match=words):
            module.StackParams.from_context({**context, **change})
    # strings from `-c KEY=VALUE` are converted
    params = module.StackParams.from_context({**context, "medops:max_instances": "3",
                                              "medops:sagemaker_pipeline": "false"})
    assert params.max_instances == 3 and params.sagemaker_pipeline is False


def test_export_fills_the_parameters_from_medops_yaml(exported: AwsExport) -> None:
    context = json.loads((exported.folder / "cdk.json").read_text())["context"]
    assert context == {
        "medops:project": "chest-xray", "medops:stack_name": STACK,
        "medops:model_name": "chest-xray-classifier", "medops:datastore_id": DATASTORE,
        "medops:raw_bucket_name": "chest-raw-images", "medops:raw_prefix": "incoming/chest/",
        "medops:serving_instance_type": "ml.m5.xlarge", "medops:min_instances": 1,
        "medops:max_instances": 5, "medops:training_instance_type": "ml.g4dn.xlarge",
        "medops:image_tag": "abc123", "medops:mlflow_tracking_uri": "https://mlflow.example.org",
        "medops:github_repository": "hospital/chest-xray"}
    written = {p.relative_to(exported.folder).as_posix() for p in exported.files}
    assert written == {"README.md", "app.py", "cdk.json", "requirements.txt",
                       "medops_stack/__init__.py", "medops_stack/params.py",
                       "medops_stack/stack.py", "medops_stack/sagemaker.py"}
    assert stack_name("Chest_X.ray" * 5) == "medops-chest-x-raychest-x-raychest-x-ray"


@pytest.mark.parametrize(("config", "options", "words"), [
    ({"data": {"sources": {"a": {"kind": "s3", "uri": "s3://one/x/"},
                           "b": {"kind": "s3", "uri": "s3://two/y/"}}}}, {}, "--raw-uri"),
    ({}, {"datastore_id": "ABC"}, "32 lowercase"),
    ({}, {"min_instances": 3, "max_instances": 2}, "1 <= min <= max"),
    ({"storage": {}}, {"image_tag": "abc"}, "--mlflow-uri"),
    ({}, {"raw_uri": "bucket/prefix"}, "s3://BUCKET/PREFIX/"),
    ({}, {"serving_instance_type": "m5.large"}, "not a SageMaker instance type"),
])
def test_export_refuses_what_cannot_deploy_and_says_how_to_fix_it(
        tmp_path: Path, config: dict[str, Any], options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        export_aws(_config(**config), tmp_path / "app", AwsOptions(**options))
    assert not (tmp_path / "app").exists()


def test_medops_export_aws_writes_the_app_and_keeps_an_existing_one(tmp_path: Path) -> None:
    project = tmp_path / "chest"
    project.mkdir()
    (project / "medops.yaml").write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "infra"
    args = ["export", "aws", "--out", str(out), "-C", str(project), "--max-instances", "3",
            "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["stack"] == STACK and answer["context"]["medops:max_instances"] == 3
    assert json.loads((out / "cdk.json").read_text())["app"] == "python3 app.py"
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0


# -- the real CDK CLI and cfn-lint ----------------------------------------------------------------
def test_cdk_synth_and_cfn_lint_pass_on_the_exported_app(
        exported: AwsExport, template: dict[str, Any],
        cli_synth: subprocess.Popen[str] | None) -> None:
    if cli_synth is None:
        pytest.skip("npm is not installed: the CDK CLI cannot run (install Node.js >= 18)")
    output, _ = cli_synth.communicate(timeout=180)
    assert cli_synth.returncode == 0, output
    written = exported.folder / "cdk.out" / f"{STACK}.template.json"
    synthesized = json.loads(written.read_text())
    assert sorted(synthesized["Resources"]) == sorted(template["Resources"])
    lint = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(written)],
                          capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
