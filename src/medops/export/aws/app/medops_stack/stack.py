"""MedopsStack: storage, the event queue and its rules, the image repositories, the roles; the
SageMaker parts come from :mod:`.sagemaker` once an image tag is given."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .params import CAPTURE_PREFIX, StackParams
from .sagemaker import add_endpoint, add_training_pipeline


class MedopsStack(cdk.Stack):
    """Storage, events, serving and training of one medops project (module docstring)."""

    def __init__(self, scope: Construct, construct_id: str, params: StackParams,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, stack_name=params.stack_name,
                         description=f"medops project {params.project}: storage, events, "
                                     "serving and training", **kwargs)
        self.params = params
        cdk.Tags.of(self).add("medops:project", params.project)
        self.raw_key, self.raw = self._bucket("Raw", "raw images (PHI)",
                                              params.raw_bucket_name, event_bridge=True)
        self.artifacts_key, self.artifacts = self._bucket("Artifacts", "models and datasets")
        self.capture_key, self.capture = self._bucket("Capture", "endpoint data capture (PHI)")
        self.dead_letters = sqs.Queue(
            self, "DeadLetters", encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
            retention_period=cdk.Duration.days(14))
        # The agent hides a received batch for 900 s while it ingests (sqs_visibility_s)
        self.queue = sqs.Queue(
            self, "Events", encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
            visibility_timeout=cdk.Duration.seconds(900),
            retention_period=cdk.Duration.days(14),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letters,
                                                  max_receive_count=5))
        self.train_repo = self._repository("TrainingImages", f"{params.stack_name}-train")
        self.serve_repo = self._repository("ServingImages", f"{params.stack_name}-serve")
        # Container credentials (MLFLOW_TRACKING_PASSWORD, ...) as a JSON object of variables;
        # CI writes the value, the template never holds one.
        self.runtime_env = secretsmanager.CfnSecret(
            self, "RuntimeEnv", secret_string="{}",
            description=f"medops {params.project}: environment variables of the containers")
        self.alarm_topic = self._alarm_topic()
        self.pipeline_name: str | None = None
        self.endpoint_name: str | None = None
        if params.image_tag is not None:
            self.endpoint_name = add_endpoint(self, params.image_tag)
            if params.sagemaker_pipeline:
                self.pipeline_name = add_training_pipeline(self, params.image_tag)
        self._rules()
        self.agent_role = self._agent_role()
        self.ci_role = self._ci_role() if params.github_repository else None
        self._outputs()

    # -- storage -------------------------------------------------------------------------------
    def _bucket(self, cid: str, purpose: str, name: str | None = None,
                event_bridge: bool = False) -> tuple[kms.Key, s3.Bucket]:
        key = kms.Key(self, f"{cid}Key", enable_key_rotation=True,
                      description=f"medops {self.params.project}: {purpose}",
                      removal_policy=cdk.RemovalPolicy.RETAIN)
        tiering = s3.LifecycleRule(
            id="intelligent-tiering",
            transitions=[s3.Transition(storage_class=s3.StorageClass.INTELLIGENT_TIERING,
                                       transition_after=cdk.Duration.days(0))],
            noncurrent_version_transitions=[s3.NoncurrentVersionTransition(
                storage_class=s3.StorageClass.INTELLIGENT_TIERING,
                transition_after=cdk.Duration.days(0))],
            abort_incomplete_multipart_upload_after=cdk.Duration.days(7))
        bucket = s3.Bucket(
            self, cid, bucket_name=name, encryption=s3.BucketEncryption.KMS,
            encryption_key=key, bucket_key_enabled=True, versioned=True, enforce_ssl=True,
            minimum_tls_version=1.2, block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[tiering], removal_policy=cdk.RemovalPolicy.RETAIN)
        if event_bridge:
            # Set on the resource itself: the construct's event_bridge_enabled would add a
            # custom resource whose role may change the notifications of every bucket.
            cfn = bucket.node.default_child
            assert isinstance(cfn, s3.CfnBucket)
            cfn.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
                event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(
                    event_bridge_enabled=True))
        return key, bucket

    def _repository(self, cid: str, name: str) -> ecr.Repository:
        return ecr.Repository(
            self, cid, repository_name=name, image_scan_on_push=True,
            encryption=ecr.RepositoryEncryption.KMS,
            lifecycle_rules=[ecr.LifecycleRule(max_image_count=100,
                                               description="keep the last 100 images")],
            removal_policy=cdk.RemovalPolicy.RETAIN)

    # -- events --------------------------------------------------------------------------------
    def _rules(self) -> None:
        p = self.params
        to_queue = targets.SqsQueue(self.queue, dead_letter_queue=self.dead_letters,
                                    retry_attempts=8, max_event_age=cdk.Duration.hours(24))
        if p.datastore_id is not None:
            imports = events.Rule(
                self, "HealthImagingImports", description="HealthImaging import jobs completed",
                event_pattern=events.EventPattern(
                    source=["aws.medical-imaging"], detail_type=["Import Job Completed"],
                    detail={"datastoreId": [p.datastore_id]}),
                targets=[to_queue])
            events.Rule(
                self, "HealthImagingImageSets", description="HealthImaging image sets created",
                event_pattern=events.EventPattern(
                    source=["aws.medical-imaging"], detail_type=["Image Set Created"],
                    detail={"datastoreId": [p.datastore_id]}),
                targets=[to_queue])
            if self.pipeline_name is not None:
                self._start_pipeline_on(imports, self.pipeline_name)
        key_filter = {"object": {"key": [{"prefix": p.raw_prefix}]}} if p.raw_prefix else {}
        events.Rule(
            self, "RawObjects", description=f"new objects under {p.raw_prefix or '/'} in the raw "
                                            "bucket",
            event_pattern=events.EventPattern(
                source=["aws.s3"], detail_type=["Object Created"],
                detail={"bucket": {"name": [self.raw.bucket_name]}, **key_filter}),
            targets=[to_queue])
        events.Rule(
            self, "ImagePushes", description="training or serving image pushed",
            event_pattern=events.EventPattern(
                source=["aws.ecr"], detail_type=["ECR Image Action"],
                detail={"action-type": ["PUSH"], "result": ["SUCCESS"],
                        "repository-name": [self.train_repo.repository_name,
                                            self.serve_repo.repository_name]}),
            targets=[to_queue])

    def _start_pipeline_on(self, rule: events.Rule, pipeline_name: str) -> None:
        """A second target on the rule: start the SageMaker pipeline (aws-cdk-lib has no L2
        target for it, so it is written on the rule's CloudFormation resource)."""
        role = iam.Role(
            self, "StartPipelineRole",
            assumed_by=iam.ServicePrincipal("events.amazonaws.com", conditions={
                "StringEquals": {"aws:SourceAccount": self.account}}),
            inline_policies={"start-pipeline": iam.PolicyDocument(statements=[
                iam.PolicyStatement(actions=["sagemaker:StartPipelineExecution"],
                                    resources=[self.pipeline_arn(pipeline_name)])])})
        cfn = rule.node.default_child
        assert isinstance(cfn, events.CfnRule)
        cfn.add_property_override("Targets.1", {
            "Id": "StartTrainingPipeline", "Arn": self.pipeline_arn(pipeline_name),
            "RoleArn": role.role_arn,
            "SageMakerPipelineParameters": {"PipelineParameterList": [
                {"Name": "Trigger", "Value": "healthimaging:import-job-completed"}]}})

    # -- alarms --------------------------------------------------------------------------------
    def _alarm_topic(self) -> sns.Topic:
        key = kms.Key(self, "AlarmsKey", enable_key_rotation=True,
                      description=f"medops {self.params.project}: alarm notifications")
        # CloudWatch publishes the alarms: it needs the key (the resource of a key policy
        # statement is the key itself)
        key.add_to_resource_policy(iam.PolicyStatement(
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=["*"]))
        topic = sns.Topic(self, "Alarms", master_key=key, enforce_ssl=True)
        topic.add_to_resource_policy(iam.PolicyStatement(
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["sns:Publish"], resources=[topic.topic_arn],
            conditions={"StringEquals": {"aws:SourceAccount": self.account}}))
        if self.params.alarm_email:
            topic.add_subscription(subscriptions.EmailSubscription(self.params.alarm_email))
        return topic

    # -- roles ---------------------------------------------------------------------------------
    def _agent_role(self) -> iam.Role:
        p = self.params
        statements = [
            iam.PolicyStatement(
                actions=["sqs:ReceiveMessage", "sqs:DeleteMessage",
                         "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"],
                resources=[self.queue.queue_arn]),
            # a message it cannot use goes to the dead-letter queue with the reason
            iam.PolicyStatement(actions=["sqs:SendMessage"],
                                resources=[self.dead_letters.queue_arn]),
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[
                self.raw.arn_for_objects(f"{p.raw_prefix}*")]),
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self.raw.bucket_arn],
                                conditions={"StringLike": {"s3:prefix": [f"{p.raw_prefix}*"]}}),
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[self.raw_key.key_arn]),
            iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                                resources=[self.artifacts.arn_for_objects("*")]),
            iam.PolicyStatement(actions=["s3:ListBucket"],
                                resources=[self.artifacts.bucket_arn]),
            iam.PolicyStatement(actions=["kms:Decrypt", "kms:GenerateDataKey"],
                                resources=[self.artifacts_key.key_arn]),
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[
                self.capture.arn_for_objects(f"{CAPTURE_PREFIX}*")]),
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self.capture.bucket_arn],
                                conditions={"StringLike": {"s3:prefix": [f"{CAPTURE_PREFIX}*"]}}),
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[self.capture_key.key_arn]),
        ]
        if p.datastore_id is not None:
            datastore = self.format_arn(service="medical-imaging", resource="datastore",
                                        resource_name=p.datastore_id)
            statements.append(iam.PolicyStatement(
                actions=["medical-imaging:GetImageSetMetadata", "medical-imaging:GetImageFrame",
                         "medical-imaging:SearchImageSets", "medical-imaging:GetDICOMImportJob"],
                resources=[datastore, f"{datastore}/imageset/*"]))
        if self.pipeline_name is not None:
            statements.append(iam.PolicyStatement(
                actions=["sagemaker:StartPipelineExecution"],
                resources=[self.pipeline_arn(self.pipeline_name)]))
        return iam.Role(
            self, "AgentRole", assumed_by=iam.AccountRootPrincipal(),
            description="the medops agent: reads the event queue, the raw prefix and the "
                        "datastore; keeps artifacts",
            inline_policies={"agent": iam.PolicyDocument(statements=statements)})

    def _ci_role(self) -> iam.Role:
        """The role GitHub Actions assumes through OIDC: push the images, write the runtime
        secret, deploy this stack through the CDK bootstrap roles. Only the main branch (and
        its `production` environment) may assume it."""
        repo = self.params.github_repository
        provider = self.format_arn(service="iam", region="", resource="oidc-provider",
                                   resource_name="token.actions.githubusercontent.com")
        principal = iam.WebIdentityPrincipal(provider, conditions={
            "StringEquals": {
                "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
                "token.actions.githubusercontent.com:sub": [
                    f"repo:{repo}:ref:refs/heads/main", f"repo:{repo}:environment:production"]},
        })
        push = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                "ecr:CompleteLayerUpload", "ecr:PutImage"]
        bootstrap = self.format_arn(service="iam", region="", resource="role",
                                    resource_name=f"cdk-hnb659fds-*-{self.account}-{self.region}")
        return iam.Role(
            self, "CiRole", assumed_by=principal, description=f"GitHub Actions of {repo}",
            inline_policies={"ci": iam.PolicyDocument(statements=[
                iam.PolicyStatement(actions=push, resources=[self.train_repo.repository_arn,
                                                             self.serve_repo.repository_arn]),
                iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]),
                iam.PolicyStatement(actions=["cloudformation:DescribeStacks"],
                                    resources=[self.stack_id]),
                iam.PolicyStatement(actions=["secretsmanager:PutSecretValue"],
                                    resources=[self.runtime_env.ref]),
                iam.PolicyStatement(actions=["sts:AssumeRole"], resources=[bootstrap])])})

    def image_pull(self, repo: ecr.Repository) -> list[iam.PolicyStatement]:
        return [
            iam.PolicyStatement(actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                                         "ecr:BatchCheckLayerAvailability"],
                                resources=[repo.repository_arn]),
            # the one action without resource-level permissions
            iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]),
        ]

    def log_statements(self, group: str) -> list[iam.PolicyStatement]:
        arn = self.format_arn(service="logs", resource="log-group", resource_name=group,
                              arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
        return [
            iam.PolicyStatement(actions=["logs:CreateLogGroup", "logs:DescribeLogStreams"],
                                resources=[arn]),
            iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                resources=[f"{arn}:log-stream:*"]),
        ]

    def read_runtime_env(self) -> iam.PolicyStatement:
        return iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"],
                                   resources=[self.runtime_env.ref])

    def container_env(self, **extra: Any) -> dict[str, Any]:
        p = self.params
        env: dict[str, Any] = {"MLFLOW_TRACKING_URI": p.mlflow_tracking_uri,
                               "MEDOPS_ENV_SECRET_ARN": self.runtime_env.ref, **extra}
        if p.mlflow_tracking_username:
            env["MLFLOW_TRACKING_USERNAME"] = p.mlflow_tracking_username
        return env

    def pipeline_arn(self, name: str) -> str:
        return self.format_arn(service="sagemaker", resource="pipeline", resource_name=name)

    def _outputs(self) -> None:
        values = {
            "RawBucketName": self.raw.bucket_name,
            "RawPrefix": self.params.raw_prefix or "/",
            "ArtifactsBucketName": self.artifacts.bucket_name,
            "CaptureBucketName": self.capture.bucket_name,
            "EventsQueueUrl": self.queue.queue_url,
            "DeadLetterQueueUrl": self.dead_letters.queue_url,
            "AgentRoleArn": self.agent_role.role_arn,
            "TrainingRepositoryUri": self.train_repo.repository_uri,
            "ServingRepositoryUri": self.serve_repo.repository_uri,
            "RuntimeEnvSecretArn": self.runtime_env.ref,
            "AlarmTopicArn": self.alarm_topic.topic_arn,
        }
        if self.endpoint_name is not None:
            values["EndpointName"] = self.endpoint_name
        if self.pipeline_name is not None:
            values["PipelineName"] = self.pipeline_name
        if self.ci_role is not None:
            values["CiRoleArn"] = self.ci_role.role_arn
        for key, value in values.items():
            cdk.CfnOutput(self, key, value=value)
