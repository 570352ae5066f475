"""The SageMaker half of the stack, added once images are pushed: the endpoint (its scaling
and alarms) and the training pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aws_cdk as cdk
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker

from .params import CAPTURE_PREFIX, SAGEMAKER_PREFIX

if TYPE_CHECKING:
    from .stack import MedopsStack

VARIANT = "AllTraffic"
CHECKPOINTS = "/opt/ml/checkpoints"


def add_endpoint(stack: MedopsStack, tag: str) -> str:
    """The SageMaker model, endpoint config and endpoint of the serving image, its scaling
    and alarms; returns the endpoint's name."""
    p = stack.params
    name = p.stack_name
    role = iam.Role(
        stack, "ServingRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
        description="the SageMaker endpoint's containers",
        inline_policies={"serving": iam.PolicyDocument(statements=[
            *stack.image_pull(stack.serve_repo),
            iam.PolicyStatement(actions=["s3:PutObject"], resources=[
                stack.capture.arn_for_objects(f"{CAPTURE_PREFIX}*")]),
            iam.PolicyStatement(actions=["kms:Encrypt", "kms:GenerateDataKey"],
                                resources=[stack.capture_key.key_arn]),
            iam.PolicyStatement(actions=["s3:GetObject"],
                                resources=[stack.artifacts.arn_for_objects("*")]),
            iam.PolicyStatement(actions=["kms:Decrypt"],
                                resources=[stack.artifacts_key.key_arn]),
            *stack.log_statements(f"/aws/sagemaker/Endpoints/{name}"),
            stack.read_runtime_env()])})
    model = sagemaker.CfnModel(
        stack, "Model", execution_role_arn=role.role_arn,
        primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
            image=stack.serve_repo.repository_uri_for_tag(tag),
            environment=stack.container_env(MEDOPS_MODEL=f"{p.model_name}@champion")))
    config = sagemaker.CfnEndpointConfig(
        stack, "EndpointConfig",
        production_variants=[sagemaker.CfnEndpointConfig.ProductionVariantProperty(
            variant_name=VARIANT, model_name=model.attr_model_name,
            initial_instance_count=p.min_instances, instance_type=p.serving_instance_type,
            initial_variant_weight=1.0)],
        data_capture_config=sagemaker.CfnEndpointConfig.DataCaptureConfigProperty(
            enable_capture=True, initial_sampling_percentage=p.capture_percent,
            destination_s3_uri=stack.capture.s3_url_for_object(CAPTURE_PREFIX.rstrip("/")),
            kms_key_id=stack.capture_key.key_arn,
            capture_options=[
                sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Input"),
                sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Output")],
            capture_content_type_header=(
                sagemaker.CfnEndpointConfig.CaptureContentTypeHeaderProperty(
                    json_content_types=["application/json"]))))
    # a new model keeps the instance count scaling reached (not the config's initial one)
    endpoint = sagemaker.CfnEndpoint(
        stack, "Endpoint", endpoint_name=name,
        endpoint_config_name=config.attr_endpoint_config_name,
        retain_all_variant_properties=True)
    _scaling(stack, endpoint, name)
    _alarms(stack, name)
    return name


def _scaling(stack: MedopsStack, endpoint: sagemaker.CfnEndpoint, name: str) -> None:
    p = stack.params
    # Application Auto Scaling's own service-linked role: no role of ours to over-grant
    linked = iam.Role.from_role_arn(
        stack, "ScalingRole", stack.format_arn(
            service="iam", region="", resource="role",
            resource_name="aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
                          "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"),
        mutable=False)
    target = appscaling.ScalableTarget(
        stack, "ScalingTarget", service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
        resource_id=f"endpoint/{name}/variant/{VARIANT}",
        scalable_dimension="sagemaker:variant:DesiredInstanceCount",
        min_capacity=p.min_instances, max_capacity=p.max_instances, role=linked)
    target.node.add_dependency(endpoint)
    target.scale_to_track_metric(
        "InvocationsPerInstance", target_value=float(p.invocations_per_instance),
        predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
        scale_out_cooldown=cdk.Duration.minutes(1), scale_in_cooldown=cdk.Duration.minutes(5))


def _alarms(stack: MedopsStack, name: str) -> None:
    dims = {"EndpointName": name, "VariantName": VARIANT}
    latency = cloudwatch.Alarm(
        stack, "LatencyAlarm",
        alarm_description=f"p90 model latency over {stack.params.latency_alarm_ms} ms",
        metric=cloudwatch.Metric(namespace="AWS/SageMaker", metric_name="ModelLatency",
                                 dimensions_map=dims, statistic="p90",
                                 period=cdk.Duration.minutes(1)),
        threshold=stack.params.latency_alarm_ms * 1000,  # the metric is in microseconds
        evaluation_periods=5, datapoints_to_alarm=3,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
    errors = cloudwatch.Alarm(
        stack, "ServerErrorsAlarm", alarm_description="the endpoint answered 5xx",
        metric=cloudwatch.Metric(namespace="AWS/SageMaker",
                                 metric_name="Invocation5XXErrors", dimensions_map=dims,
                                 statistic="Sum", period=cdk.Duration.minutes(5)),
        threshold=1, evaluation_periods=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
    for alarm in (latency, errors):
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(stack.alarm_topic))


def add_training_pipeline(stack: MedopsStack, tag: str) -> str:
    """The SageMaker pipeline whose one step trains the training image on managed spot;
    returns its name."""
    p = stack.params
    name = f"{p.stack_name}-train"
    training_role = iam.Role(
        stack, "TrainingRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
        description="the SageMaker training jobs of the pipeline",
        inline_policies={"training": iam.PolicyDocument(statements=[
            *stack.image_pull(stack.train_repo),
            iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[
                stack.artifacts.arn_for_objects(f"{SAGEMAKER_PREFIX}*")]),
            iam.PolicyStatement(actions=["s3:ListBucket"],
                                resources=[stack.artifacts.bucket_arn],
                                conditions={"StringLike": {
                                    "s3:prefix": [f"{SAGEMAKER_PREFIX}*"]}}),
            iam.PolicyStatement(actions=["kms:Decrypt", "kms:GenerateDataKey"],
                                resources=[stack.artifacts_key.key_arn]),
            *stack.log_statements("/aws/sagemaker/TrainingJobs"),
            stack.read_runtime_env()])})
    pipeline_role = iam.Role(
        stack, "PipelineRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
        description="the SageMaker pipeline: starts and watches its training jobs",
        inline_policies={"pipeline": iam.PolicyDocument(statements=[
            iam.PolicyStatement(
                actions=["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob",
                         "sagemaker:StopTrainingJob", "sagemaker:AddTags"],
                resources=[stack.format_arn(service="sagemaker", resource="training-job",
                                           resource_name="pipelines-*")]),
            iam.PolicyStatement(
                actions=["iam:PassRole"], resources=[training_role.role_arn],
                conditions={"StringEquals": {
                    "iam:PassedToService": "sagemaker.amazonaws.com"}})])})
    output = stack.artifacts.s3_url_for_object(f"{SAGEMAKER_PREFIX}output")
    checkpoints = stack.artifacts.s3_url_for_object(f"{SAGEMAKER_PREFIX}checkpoints")
    hours = p.max_training_hours * 3600
    definition = {
        "Version": "2020-12-01",
        "Metadata": {},
        "Parameters": [
            {"Name": "Trigger", "Type": "String", "DefaultValue": "manual"},
            {"Name": "TrainingInstanceType", "Type": "String",
             "DefaultValue": p.training_instance_type},
        ],
        "Steps": [{
            "Name": "Train",
            "Type": "Training",
            "Arguments": {
                "AlgorithmSpecification": {
                    "TrainingImage": stack.train_repo.repository_uri_for_tag(tag),
                    "TrainingInputMode": "File"},
                "RoleArn": training_role.role_arn,
                "OutputDataConfig": {"S3OutputPath": output,
                                     "KmsKeyId": stack.artifacts_key.key_arn},
                "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 50,
                                   "InstanceType": {"Get": "Parameters.TrainingInstanceType"}},
                # managed spot: SageMaker waits for capacity up to the same time again, and
                # restarts a reclaimed job with /opt/ml/checkpoints copied back from S3
                "EnableManagedSpotTraining": True,
                "StoppingCondition": {"MaxRuntimeInSeconds": hours,
                                      "MaxWaitTimeInSeconds": 2 * hours},
                "CheckpointConfig": {"S3Uri": checkpoints, "LocalPath": CHECKPOINTS},
                "Environment": stack.container_env(
                    MEDOPS_TRIGGER={"Get": "Parameters.Trigger"}),
            },
        }],
    }
    sagemaker.CfnPipeline(
        stack, "TrainingPipeline", pipeline_name=name, role_arn=pipeline_role.role_arn,
        pipeline_description=f"medops {p.project}: train, gate and register",
        pipeline_definition={"PipelineDefinitionBody": stack.to_json_string(definition)})
    return name
