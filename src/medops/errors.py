"""The medops exception tree.

Every error medops raises on purpose derives from :class:`MedopsError`, and its message carries
the offending value and, where there is one, the fix::

    MedopsError
    ├── ConfigError                 medops.yaml is missing, malformed or has a bad value
    ├── DependencyMissingError      an optional backend is not installed (names the pip install)
    ├── DataError                   something is wrong with input data
    │   ├── UnreadableImageError    corrupt, truncated or not an image at all
    │   ├── UnsupportedImageError   a real image medops cannot use (no pixel data, unknown syntax)
    │   └── LabelError              missing or unknown labels
    ├── StoreError                  the state store cannot be reached or is inconsistent
    ├── NotFoundError               a run, item or model version that does not exist
    ├── PipelineError               a run cannot start, resume or finish
    │   └── StepFailedError         a step raised after all its retries
    ├── TrainingError               training cannot proceed
    │   └── WeightsUnavailableError pretrained weights cannot be loaded (offline, bad file)
    ├── RegistryError               MLflow tracking or the model registry refused an operation
    │   └── SignOffError            an approval, rejection or rollback the model's state forbids
    ├── RequestError                an HTTP request the server cannot accept (bad body or type)
    │   ├── PayloadTooLargeError    the request body or an image is over the configured limit
    │   ├── UnsupportedMediaError   a content type the endpoint does not take
    │   ├── NotAcceptableError      an Accept header asking for an answer type not offered
    │   ├── AuthenticationError     a missing or wrong bearer token, session or password
    │   └── PermissionDeniedError   an authenticated caller whose role does not allow the action
    └── UnavailableError            the server is not ready yet (no model loaded); retry later

The CLI maps these to exit codes in one place (:data:`EXIT_CODES`).
"""

from __future__ import annotations


class MedopsError(Exception):
    """Root of every error medops raises deliberately."""


class ConfigError(MedopsError):
    """The project configuration is missing or invalid."""


class DependencyMissingError(MedopsError):
    """An optional dependency is needed for this operation but is not installed."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = "") -> None:
        fix = f"pip install 'medops[{extra}]'" if extra else f"pip install {package}"
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"the package {package!r} is not installed{what}; fix: {fix}")
        self.package = package
        self.extra = extra


class DataError(MedopsError):
    """Input data is unusable."""


class UnreadableImageError(DataError):
    """The file is corrupt, truncated, or not an image."""


class UnsupportedImageError(DataError):
    """The file is a valid image container but medops cannot use its pixels."""


class LabelError(DataError):
    """Labels are missing or inconsistent."""


class StoreError(MedopsError):
    """The state store failed."""


class NotFoundError(MedopsError):
    """The requested object does not exist."""


class PipelineError(MedopsError):
    """A pipeline run cannot proceed."""


class StepFailedError(PipelineError):
    """A pipeline step failed after exhausting its retries."""

    def __init__(self, step: str, attempts: int, cause: BaseException) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {cause}")
        self.step = step
        self.attempts = attempts
        self.cause = cause


class TrainingError(MedopsError):
    """Training cannot proceed."""


class WeightsUnavailableError(TrainingError):
    """Pretrained weights cannot be obtained."""


class RegistryError(MedopsError):
    """MLflow tracking or the model registry failed."""


class SignOffError(RegistryError):
    """A sign-off that the model's current state forbids (e.g. rejecting the live champion)."""


class RequestError(MedopsError):
    """An HTTP request the server cannot accept."""


class PayloadTooLargeError(RequestError):
    """The request body, or an image in it, exceeds the configured limit."""


class UnsupportedMediaError(RequestError):
    """The request's content type is not one the endpoint takes."""


class NotAcceptableError(RequestError):
    """The request's Accept header names no answer type the endpoint offers."""


class AuthenticationError(RequestError):
    """The request lacks the configured bearer token or carries a wrong one."""


class PermissionDeniedError(RequestError):
    """The caller is known, but their role does not allow the action."""


class UnavailableError(MedopsError):
    """The service cannot answer yet (e.g. no model is loaded); retrying later may work."""


#: Exit codes of the CLI, most specific class first; anything else exits 1.
EXIT_CODES: tuple[tuple[type[MedopsError], int], ...] = (
    (ConfigError, 2),
    (DependencyMissingError, 3),
    (NotFoundError, 4),
    (DataError, 5),
    (StepFailedError, 6),
    (PipelineError, 6),
    (RegistryError, 7),
    (TrainingError, 8),
    (StoreError, 9),
)


def exit_code_for(error: BaseException) -> int:
    """The CLI exit code for ``error``; a failed step exits with its cause's code."""
    if isinstance(error, StepFailedError) and isinstance(error.cause, MedopsError):
        return exit_code_for(error.cause)
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return 1
