"""Logging in and out, who am I, and (admins only) users and machine tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from medops.errors import ConfigError, NotFoundError, RequestError, UnsupportedMediaError
from medops.server.auth import (
    SESSION_COOKIE,
    Principal,
    Role,
    authenticator_of,
    request_token,
    require,
)
from medops.server.settings import ServerSettings
from medops.storage.users import TokenRecord, UserRecord

Caller = Annotated[Principal, Depends(require(Role.VIEWER))]  # every role: anyone known
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
#: Login bodies are small; a larger one is refused before it is parsed.
MAX_LOGIN_BYTES = 4096


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    role: Role
    password: str = Field(min_length=1)


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = None


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    role: Role


@contextmanager
def client_errors() -> Iterator[None]:
    """A bad value the client sent (a ConfigError of the layer below) is a 400, not a 500."""
    try:
        yield
    except ConfigError as exc:
        raise RequestError(str(exc)) from None


def user_to_dict(u: UserRecord) -> dict[str, Any]:
    return {"name": u.name, "role": u.role, "disabled": u.disabled,
            "created_at": u.created_at.isoformat(), "updated_at": u.updated_at.isoformat()}


def token_to_dict(t: TokenRecord) -> dict[str, Any]:
    return {"name": t.name, "role": t.role, "created_by": t.created_by,
            "created_at": t.created_at.isoformat(),
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None}


def principal_to_dict(p: Principal) -> dict[str, Any]:
    return {"name": p.name, "role": p.role.value, "kind": p.kind}


async def _credentials(request: Request) -> tuple[str, str]:
    body = await request.body()
    if len(body) > MAX_LOGIN_BYTES:
        raise RequestError(f"the login body has {len(body)} bytes; at most {MAX_LOGIN_BYTES}")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            found = json.loads(body or b"{}")
        except ValueError:
            raise RequestError("the login body is not valid JSON; send "
                               '{"user": NAME, "password": PASSWORD}') from None
        if not isinstance(found, dict):
            raise RequestError('send {"user": NAME, "password": PASSWORD}')
    elif kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        found = dict(await request.form())
    else:
        raise UnsupportedMediaError(f"login takes JSON or a form, not {kind or 'no type'!r}: "
                                    "send user and password")
    user = found.get("user", found.get("username"))
    password = found.get("password")
    if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
        raise RequestError("login needs both user and password (strings)")
    return user, password


def secure_cookie(request: Request, settings: ServerSettings) -> bool:
    if settings.secure_cookies is not None:
        return settings.secure_cookies
    return request.url.scheme == "https"  # uvicorn applies a trusted X-Forwarded-Proto


def build(settings: ServerSettings) -> APIRouter:
    router = APIRouter(tags=["access"])

    @router.post("/login", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["user", "password"],
                                        "properties": {"user": {"type": "string"},
                                                       "password": {"type": "string"}}}},
        "application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["user", "password"],
            "properties": {"user": {"type": "string"}, "password": {"type": "string"}}}}}}})
    async def login(request: Request, response: Response) -> dict[str, Any]:
        """A session token for a user (also set as the HttpOnly cookie ``medops_session``)."""
        from starlette.concurrency import run_in_threadpool

        user, password = await _credentials(request)
        auth = authenticator_of(request)
        # argon2 takes tens of milliseconds of CPU: off the event loop
        principal = await run_in_threadpool(auth.authenticate_password, user, password)
        token = await run_in_threadpool(auth.create_session, principal)
        seconds = int(auth.session_hours * 3600)
        response.set_cookie(SESSION_COOKIE, token, max_age=seconds, httponly=True,
                            samesite="strict", secure=secure_cookie(request, settings),
                            path="/")
        expires = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return {"token": token, "expires_at": expires.isoformat(),
                **principal_to_dict(principal)}

    @router.post("/logout")
    def logout(request: Request, response: Response, caller: Caller) -> dict[str, Any]:
        """Log out: the caller's login token stops working (a machine token stays valid: an
        admin revokes it)."""
        token = request_token(request) or ""
        authenticator_of(request).logout(token)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=secure_cookie(request, settings))
        return {"logged_out": caller.kind == "user", **principal_to_dict(caller)}

    @router.get("/me")
    def me(caller: Caller) -> dict[str, Any]:
        """Who the credentials belong to, and their role."""
        return principal_to_dict(caller)

    # -- users (admins) -------------------------------------------------------------------
    @router.get("/users")
    def users(request: Request, admin: Admin) -> list[dict[str, Any]]:
        return [user_to_dict(u) for u in authenticator_of(request).users()]

    @router.post("/users", status_code=201)
    def add_user(request: Request, body: NewUser, admin: Admin) -> dict[str, Any]:
        with client_errors():
            record = authenticator_of(request).add_user(body.name, body.role, body.password,
                                                        by=admin.name)
        return user_to_dict(record)

    @router.patch("/users/{name}")
    def change_user(request: Request, name: str, body: UserChange,
                    admin: Admin) -> dict[str, Any]:
        """Change a user's role, enable or disable them, or set a new password (a disabled
        user or a new password ends the user's sessions)."""
        auth = authenticator_of(request)
        if body.role is None and body.disabled is None and body.password is None:
            raise RequestError("nothing to change: send role, disabled or password")
        with client_errors():
            if auth.store.user(name) is None:
                raise NotFoundError(f"no user {name!r}; GET /api/users lists them")
            if body.password is not None:
                auth.set_password(name, body.password, by=admin.name)
            if body.role is not None:
                auth.set_role(name, body.role, by=admin.name)
            if body.disabled is not None:
                auth.set_disabled(name, body.disabled, by=admin.name)
        record = auth.store.user(name)
        assert record is not None
        return user_to_dict(record)

    # -- machine tokens (admins) ----------------------------------------------------------
    @router.get("/tokens")
    def tokens(request: Request, admin: Admin,
               include_revoked: bool = False) -> list[dict[str, Any]]:
        return [token_to_dict(t) for t in authenticator_of(request).tokens(include_revoked)]

    @router.post("/tokens", status_code=201)
    def create_token(request: Request, body: NewToken, admin: Admin) -> dict[str, Any]:
        """A machine token; its value is in this answer only (store it now)."""
        with client_errors():
            token, record = authenticator_of(request).create_token(body.name, body.role,
                                                                   by=admin.name)
        return {"token": token, **token_to_dict(record)}

    @router.delete("/tokens/{name}")
    def revoke_token(request: Request, name: str, admin: Admin) -> dict[str, Any]:
        return token_to_dict(authenticator_of(request).revoke_token(name, by=admin.name))

    return router
