"""``/login`` and ``/logout``: the browser's way in and out, over the API's authenticator."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from medops.errors import AuthenticationError
from medops.server.auth import SESSION_COOKIE, authenticator_of, request_token
from medops.server.dashboard.web import (
    LOGIN_CSRF_COOKIE,
    Dashboard,
    csrf_ok,
    new_login_csrf,
    redirect,
    safe_next,
)


def add_routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        if dash.principal(request) is not None:
            return redirect(request, safe_next(next))
        return _form(dash, request, safe_next(next), None, 200)

    @router.post("/login", response_class=HTMLResponse, include_in_schema=False)
    def login(request: Request, username: str = Form(""), password: str = Form(""),
              next: str = Form("/"), login_csrf: str = Form("")) -> Response:
        target = safe_next(next)
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
        if not expected or not login_csrf or expected != login_csrf:
            return _form(dash, request, target, "The login form expired; try again.", 403)
        auth = authenticator_of(request)
        try:
            principal = auth.authenticate_password(username.strip(), password)
        except AuthenticationError as exc:
            return _form(dash, request, target, str(exc), 401)
        token = auth.create_session(principal)
        done = redirect(request, target)
        done.set_cookie(SESSION_COOKIE, token, max_age=int(auth.session_hours * 3600),
                        httponly=True, samesite="strict", secure=dash.secure_cookies(request),
                        path="/")
        done.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return done

    @router.post("/logout", include_in_schema=False)
    def logout_form(request: Request, csrf: str = Form("")) -> Response:
        if request_token(request) and not csrf_ok(request, csrf):
            return Response("the form's CSRF token does not belong to this login; reload the "
                            "page", status_code=403, media_type="text/plain")
        return _logout(request)

    # A cross-site GET carries no SameSite=Strict cookie, so this cannot log anyone out from
    # another site; it is the link a person types.
    @router.get("/logout", include_in_schema=False)
    def logout_link(request: Request) -> Response:
        return _logout(request)


def _logout(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        authenticator_of(request).logout(token)
    done = redirect(request, "/login")
    done.delete_cookie(SESSION_COOKIE, path="/")
    return done


def _form(dash: Dashboard, request: Request, target: str, message: str | None,
          status_code: int) -> Response:
    token = new_login_csrf()
    page = dash.render(request, "login.html", None, status_code=status_code, next=target,
                       message=message, login_csrf=token)
    page.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                    secure=dash.secure_cookies(request), path="/login")
    return page
