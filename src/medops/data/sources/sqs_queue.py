"""What the sources that read an SQS queue of EventBridge events share: the AWS call with its
errors mapped to medops', receiving a batch, deleting it, and dead-lettering a message.

Deleting is always the caller's last step, after what the messages caused is stored (the
sources store the receipt handles in their cursor and delete them on the next poll); a message
received and not deleted comes back after the visibility timeout.
"""

from __future__ import annotations

import logging
from typing import Any

from medops.errors import ConfigError, DataError, DependencyMissingError

log = logging.getLogger(__name__)

ATTEMPTS = 3  # botocore's standard retry mode: exponential backoff with jitter between them
RECEIVES_PER_POLL = 10  # x 10 messages: at most 100 receipt handles in one cursor
REASON_ATTRIBUTE = "medops-reason"  # the message attribute a dead-lettered message carries
_REASON_MAX = 1000


def make_client(service: str, endpoint_url: str | None, region: str | None, what: str) -> Any:
    """A boto3 client; credentials come from boto3's usual chain (environment, profile,
    instance role), never from medops.yaml."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import NoRegionError
    except ImportError as exc:
        raise DependencyMissingError("boto3", "aws", what) from exc
    options: dict[str, Any] = {"retries": {"max_attempts": ATTEMPTS, "mode": "standard"},
                               "connect_timeout": 5, "read_timeout": 60}
    if endpoint_url and service == "medical-imaging":
        # botocore prefixes the host with "runtime-" for the frame and metadata calls, which
        # no local server or VPC endpoint answers to.
        options["inject_host_prefix"] = False
    try:
        return boto3.session.Session().client(service, endpoint_url=endpoint_url,
                                              region_name=region, config=Config(**options))
    except NoRegionError as exc:
        raise ConfigError(f"{what} has no AWS region; fix: set its region (or "
                          "AWS_DEFAULT_REGION)") from exc


def aws_call(client: Any, operation: str, where: str, allowed: str, **kwargs: Any
             ) -> dict[str, Any]:
    """One call; what botocore's retries could not mend becomes a medops error naming
    ``where`` and the fix (``allowed``: what the credentials must be allowed to do)."""
    from botocore import exceptions as bex

    try:
        result: dict[str, Any] = getattr(client, operation)(**kwargs)
        return result
    except bex.NoCredentialsError as exc:
        raise ConfigError(f"{where}: no AWS credentials found; fix: set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from exc
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError,
            bex.ConnectionClosedError) as exc:
        raise DataError(f"{where}: cannot reach the service after {ATTEMPTS} attempts "
                        f"({type(exc).__name__}); fix: check region/endpoint_url") from exc
    except bex.ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in {"AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
                    "InvalidClientTokenId"} or status == 403:
            raise ConfigError(f"{where}: {operation} was refused ({code or status}); fix: use "
                              f"credentials allowed to {allowed}") from exc
        raise DataError(f"{where}: {operation} failed: {code or status} "
                        f"{err.get('Message', '')}".rstrip()) from exc


class EventQueue:
    """One SQS queue read in batches (see the module docstring)."""

    def __init__(self, client: Any, url: str, where: str, *, wait_s: int, visibility_s: int,
                 dead_letter_url: str | None = None) -> None:
        self.client = client
        self.url = url
        self.where = where
        self.wait_s = wait_s
        self.visibility_s = visibility_s
        self.dead_letter_url = dead_letter_url

    def receive(self, receives: int = RECEIVES_PER_POLL) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``receives`` x 10 messages, hidden for the visibility timeout; and whether
        the queue likely holds more."""
        messages: list[dict[str, Any]] = []
        more = False
        for _ in range(receives):
            answer = self._call("receive_message", QueueUrl=self.url, MaxNumberOfMessages=10,
                                WaitTimeSeconds=self.wait_s, VisibilityTimeout=self.visibility_s)
            batch = answer.get("Messages", [])
            messages.extend(batch)
            more = len(batch) == 10
            if not batch:
                break
        return messages, more

    def delete(self, handles: list[str]) -> None:
        for start in range(0, len(handles), 10):
            entries = [{"Id": str(i), "ReceiptHandle": h}
                       for i, h in enumerate(handles[start:start + 10])]
            answer = self._call("delete_message_batch", QueueUrl=self.url, Entries=entries)
            for failed in answer.get("Failed", []):
                # An expired handle: the message was redelivered and is in a later batch.
                log.info("%s: delete failed (%s); it will be seen again", self.where,
                         failed.get("Code"))

    def dead_letter(self, message: dict[str, Any], reason: str) -> bool:
        """Send ``message`` to the dead-letter queue with ``reason`` as a message attribute,
        then delete it here; True when done. Without a dead-letter queue URL the message stays
        and comes back until the queue's redrive policy (maxReceiveCount) moves it: False."""
        if not self.dead_letter_url:
            return False
        attributes = {REASON_ATTRIBUTE: {"DataType": "String",
                                         "StringValue": reason[:_REASON_MAX]}}
        self._call("send_message", QueueUrl=self.dead_letter_url,
                   MessageBody=str(message.get("Body") or "(empty)"),
                   MessageAttributes=attributes)
        # Sent before deleted: a crash in between dead-letters it twice, never loses it.
        self.delete([message["ReceiptHandle"]])
        return True

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        return aws_call(self.client, operation, self.where,
                        "receive and delete on the queue (and send to its dead-letter queue)",
                        **kwargs)
