"""Network and cloud sources in medops.yaml (``data.sources``), one model per kind.

Each source has a name (its key under ``data.sources``) and a ``kind`` that picks the model:

    data:
      sources:
        pacs: {kind: dicomweb, url: "http://pacs:8042/dicom-web", orthanc_changes: true}
        bucket: {kind: s3, uri: "s3://scans/chest/", endpoint_url: "http://minio:9000"}
        cloud: {kind: sqs, queue_url: "https://sqs.eu-west-1.amazonaws.com/1111/medops-events",
                s3: {uri: "s3://raw/incoming/"}, ecr: {repositories: [medops-train]}}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medops.config.agent import Duration
from medops.config.uris import check_http_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3SourceConfig(_Strict):
    kind: Literal["s3"]
    uri: str  # s3://bucket/prefix/
    endpoint_url: str | None = None  # MinIO or a local server; None: AWS
    region: str | None = None
    labels_from_folders: bool = True  # the first path part under the prefix is the label
    max_keys: int = Field(1000, ge=1, le=1000)  # listing page size and objects per poll


class DicomwebSourceConfig(_Strict):
    kind: Literal["dicomweb"]
    url: str  # the DICOMweb root, e.g. http://orthanc:8042/dicom-web
    filters: dict[str, str] = Field(default_factory=dict)  # QIDO-RS search keys, e.g. Modality
    orthanc_changes: bool = False  # use Orthanc's /changes feed as the new-data cursor
    token_env: str | None = None  # environment variable holding a bearer token
    label_tag: str | None = None  # a DICOM keyword whose value is the label, if any
    orthanc_url: str | None = None  # Orthanc's REST root; None: url without its /dicom-web
    page_size: int = Field(100, ge=1, le=1000)  # instances per poll
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url", "orthanc_url")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url(v, "http://pacs:8042/dicom-web")


class DicomScpSourceConfig(_Strict):
    kind: Literal["dicom-scp"]
    ae_title: str = "MEDOPS"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aets: list[str] = Field(default_factory=list)  # empty: accept none
    storage: str = ".medops/received"  # where instances are written before they are indexed
    quiet_seconds: float = Field(30.0, gt=0)  # a series is complete after this long unchanged
    min_free_mb: int = Field(1024, ge=0)  # refuse (out of resources) under this much free disk
    label_tag: str | None = None
    # Received files hold PHI: delete them this long after their series was ingested (0: at
    # once). None keeps them. A purged instance sent again is still a duplicate, not new data.
    keep_received: Duration | None = None

    @field_validator("ae_title", "allowed_calling_aets")
    @classmethod
    def _ae_titles(cls, v: str | list[str]) -> str | list[str]:
        for title in [v] if isinstance(v, str) else v:  # PS3.5: AE is 1-16 chars, no backslash
            if not title.strip() or len(title) > 16 or "\\" in title or not title.isprintable():
                raise ValueError(f"{title!r} is not a valid AE title (1-16 printable characters, "
                                 "no backslash)")
        return [t.strip() for t in v] if isinstance(v, list) else v.strip()


class HealthImagingSourceConfig(_Strict):
    kind: Literal["healthimaging"]
    datastore_id: str
    region: str | None = None
    endpoint_url: str | None = None  # a local server in tests; None: AWS
    sqs_queue_url: str | None = None  # EventBridge events delivered through SQS
    sqs_endpoint_url: str | None = None  # a local SQS (tests, VPC endpoint); None: AWS
    sqs_wait_s: int = Field(0, ge=0, le=20)  # SQS long polling per receive
    sqs_visibility_s: int = Field(900, ge=1, le=43200)  # a batch stays hidden while ingested
    image_set_ids: list[str] = Field(default_factory=list)  # a manual trigger: exactly these
    label_tag: str | None = None


class SqsHealthImagingConfig(_Strict):
    """The HealthImaging datastore whose events the feed imports (others are refused)."""

    datastore_id: str
    region: str | None = None  # None: the feed's region
    endpoint_url: str | None = None  # a local server in tests; None: AWS


class SqsS3Config(_Strict):
    """The bucket prefix whose ``Object Created`` events the feed imports (others are refused)."""

    uri: str  # s3://bucket/prefix/
    region: str | None = None  # None: the feed's region
    endpoint_url: str | None = None  # MinIO or a local server; None: AWS
    labels_from_folders: bool = True  # the first path part under the prefix is the label


class SqsEcrConfig(_Strict):
    """Which repositories' pushes become ``image.pushed`` events."""

    repositories: list[str] = Field(default_factory=list)  # empty: any repository


class SqsSourceConfig(_Strict):
    """An SQS queue of EventBridge events (the queue ``medops export aws`` creates): HealthImaging
    image sets and S3 objects are imported, ECR pushes become ``image.pushed`` events. A kind
    left out (``healthimaging``, ``s3``, ``ecr`` unset) is refused like any malformed message."""

    kind: Literal["sqs"]
    queue_url: str
    dead_letter_queue_url: str | None = None  # None: the queue's redrive policy moves refusals
    region: str | None = None
    endpoint_url: str | None = None  # a local SQS (tests, VPC endpoint); None: AWS
    wait_s: int = Field(0, ge=0, le=20)  # SQS long polling per receive
    visibility_s: int = Field(900, ge=1, le=43200)  # a batch stays hidden while ingested
    healthimaging: SqsHealthImagingConfig | None = None
    s3: SqsS3Config | None = None
    ecr: SqsEcrConfig | None = None
    remember: int = Field(10_000, ge=100, le=1_000_000)  # newest versions kept in the cursor

    @field_validator("queue_url", "dead_letter_queue_url")
    @classmethod
    def _queue_urls(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url(
            v, "https://sqs.eu-west-1.amazonaws.com/111122223333/medops-events")


class XnatSourceConfig(_Strict):
    kind: Literal["xnat"]
    url: str
    project: str
    user_env: str | None = None  # environment variables holding the credentials
    password_env: str | None = None
    scan_type: str | None = None  # which scan of each session to take (regex on the type)
    label_field: str | None = None  # a subject field holding the label

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_http_url(v, "https://xnat.example.org")


RemoteSourceConfig = Annotated[
    S3SourceConfig | DicomwebSourceConfig | DicomScpSourceConfig | HealthImagingSourceConfig
    | SqsSourceConfig | XnatSourceConfig,
    Field(discriminator="kind"),
]
