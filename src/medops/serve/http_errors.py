"""The one place that maps medops errors to HTTP status codes, and the JSON error body.

Every error answer has the same shape::

    {"error": {"status": 415, "type": "UnsupportedMediaError", "message": "..."},
     "request_id": "..."}

Bad input is always a 4xx with a message saying what was wrong and what is accepted; a 500
means a bug in medops, and its message never echoes the request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medops.errors import (
    AuthenticationError,
    ConfigError,
    DataError,
    LabelError,
    MedopsError,
    NotAcceptableError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RegistryError,
    RequestError,
    SignOffError,
    StoreError,
    UnavailableError,
    UnsupportedMediaError,
)

log = logging.getLogger(__name__)

#: Most specific class first; a MedopsError not listed here is a server fault (500).
HTTP_STATUS: tuple[tuple[type[MedopsError], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (LabelError, 422),  # feedback naming a class the model does not have
    (PayloadTooLargeError, 413),
    (UnsupportedMediaError, 415),
    (NotAcceptableError, 406),
    (RequestError, 400),
    (NotFoundError, 404),
    (DataError, 400),  # unreadable or unusable image: the client sent it
    (UnavailableError, 503),
    (SignOffError, 409),  # e.g. rejecting the live champion (the team server's sign-off)
    (RegistryError, 502),  # MLflow refused or cannot be reached
    (StoreError, 503),  # the state database cannot be reached; retrying later may work
    (ConfigError, 500),
)


def status_for(error: BaseException) -> int:
    for cls, code in HTTP_STATUS:
        if isinstance(error, cls):
            return code
    return 500


def error_body(status: int, kind: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": {"status": status, "type": kind, "message": message},
            "request_id": request_id}


def error_response(status: int, kind: str, message: str, request: Request) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    request.state.error_type = kind  # for the error counter of the metrics middleware
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(status, kind, message, request_id), status_code=status,
                        headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Render medops errors, validation errors and HTTP errors as the JSON body above."""

    async def medops_error(request: Request, exc: Exception) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
        return error_response(status, type(exc).__name__, str(exc), request)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: "
            f"{e.get('msg', 'invalid')}" for e in exc.errors())
        return error_response(422, "ValidationError", f"invalid request body: {problems}",
                              request)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, "HTTPError", str(exc.detail), request)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "InternalError",
                              f"internal error ({type(exc).__name__}); see the server log",
                              request)

    app.add_exception_handler(MedopsError, medops_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
