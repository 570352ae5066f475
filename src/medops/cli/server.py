"""`medops server ...`: run the team server; its users and machine tokens; log in to one.

`users` and `tokens` act on the state database directly, so they run on the server's host (or
anywhere that reaches its database): that is how the first admin is made. `login` and `logout`
talk to the server named by ``server.url``.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medops.cli.common import JsonOpt, ProjectOpt, handle_errors, load_project
from medops.cli.render import console, err_console, print_json

if TYPE_CHECKING:
    from medops.server.auth import Authenticator

server_app = typer.Typer(invoke_without_command=True)
users_app = typer.Typer(help="Users of the server and their roles.", no_args_is_help=True)
tokens_app = typer.Typer(help="Machine tokens (agent, serving, CI).", no_args_is_help=True)
server_app.add_typer(users_app, name="users")
server_app.add_typer(tokens_app, name="tokens")

ROLES = "viewer, trainer, approver or admin"
RoleOpt = typer.Option(..., "--role", help=f"Role: {ROLES}.")
PasswordStdinOpt = typer.Option(False, "--password-stdin",
                                help="Read the password from standard input (no prompt).")


@server_app.callback()
@handle_errors
def server(ctx: typer.Context,
           host: str = typer.Option("127.0.0.1", help="Address to listen on."),
           port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
           workers: int = typer.Option(1, min=1, max=64, help="Worker processes."),
           forwarded_allow_ips: str | None = typer.Option(
               None, help="Proxies whose X-Forwarded-* headers are trusted (comma-separated "
                          "addresses, or '*' on a private network; default 127.0.0.1)."),
           project: Path | None = ProjectOpt,
           log_level: str = typer.Option("info", help="debug, info, warning or error.")) -> None:
    """Run the team server; manage its users, tokens and logins.

    Without a command, runs the server over this project's state: the API under /api (its
    OpenAPI description at /api/openapi.json) and the dashboard. On the first start, with no
    user at all, MEDOPS_ADMIN_PASSWORD (12 characters or more) makes the user admin; or make
    one first with `medops server users add NAME --role admin`.

    Example: medops server --host 0.0.0.0 --port 8000 --workers 2
    """
    if ctx.invoked_subcommand is not None:
        return
    from medops.server.app import run_server
    from medops.server.settings import ServerSettings

    proj = load_project(project)
    settings = ServerSettings.from_config(proj.config, host=host, port=port, workers=workers,
                                         forwarded_allow_ips=forwarded_allow_ips)
    run_server(proj, settings, log_level)


def _who() -> str:
    """The actor the audit log records for a change made on the server's host."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in a bare container
        return "cli"


def _authenticator(project: Path | None) -> Authenticator:
    from medops.server.auth import Authenticator

    proj = load_project(project)
    return Authenticator(proj.state.db, audit=proj.state.audit)


def _password(from_stdin: bool, confirm: bool = True) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=confirm))


def _role(value: str) -> Any:
    from medops.server.auth import Role

    return Role.parse(value)


# -- users ----------------------------------------------------------------------------------
@users_app.command("add")
@handle_errors
def users_add(name: str = typer.Argument(..., help="User name."), role: str = RoleOpt,
              password_stdin: bool = PasswordStdinOpt,
              project: Path | None = ProjectOpt) -> None:
    """Add a user; the password (12 characters or more) is asked for, or read from stdin.

    Example: medops server users add dr-lee --role approver
    """
    auth = _authenticator(project)
    wanted = _role(role)
    user = auth.add_user(name, wanted, _password(password_stdin), by=_who())
    console.print(f"user {user.name} added ({user.role})", highlight=False)


@users_app.command("ls")
@handle_errors
def users_ls(project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """The users, their roles and whether they are disabled."""
    from rich.table import Table

    from medops.server.api.access import user_to_dict

    users = _authenticator(project).users()
    if json_out:
        print_json([user_to_dict(u) for u in users])
        return
    table = Table(title="Users")
    for col in ("name", "role", "state", "created"):
        table.add_column(col)
    for u in users:
        table.add_row(u.name, u.role, "[red]disabled[/red]" if u.disabled else "enabled",
                      u.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@users_app.command("set-role")
@handle_errors
def users_set_role(name: str = typer.Argument(..., help="User name."),
                   role: str = typer.Argument(..., help=f"New role: {ROLES}."),
                   project: Path | None = ProjectOpt) -> None:
    """Change a user's role (effective at their next request).

    Example: medops server users set-role dr-lee admin
    """
    user = _authenticator(project).set_role(name, _role(role), by=_who())
    console.print(f"user {user.name} is now {user.role}", highlight=False)


@users_app.command("disable")
@handle_errors
def users_disable(name: str = typer.Argument(..., help="User name."),
                  project: Path | None = ProjectOpt) -> None:
    """Disable a user: their sessions end and they cannot log in."""
    user = _authenticator(project).set_disabled(name, True, by=_who())
    console.print(f"user {user.name} disabled", highlight=False)


@users_app.command("enable")
@handle_errors
def users_enable(name: str = typer.Argument(..., help="User name."),
                 project: Path | None = ProjectOpt) -> None:
    """Enable a disabled user again."""
    user = _authenticator(project).set_disabled(name, False, by=_who())
    console.print(f"user {user.name} enabled", highlight=False)


@users_app.command("set-password")
@handle_errors
def users_set_password(name: str = typer.Argument(..., help="User name."),
                       password_stdin: bool = PasswordStdinOpt,
                       project: Path | None = ProjectOpt) -> None:
    """Set a user's password (their sessions end)."""
    auth = _authenticator(project)
    user = auth.set_password(name, _password(password_stdin), by=_who())
    console.print(f"password of {user.name} set", highlight=False)


# -- machine tokens -------------------------------------------------------------------------
@tokens_app.command("create")
@handle_errors
def tokens_create(name: str = typer.Argument(..., help="Token name (what uses it)."),
                  role: str = RoleOpt, project: Path | None = ProjectOpt,
                  json_out: bool = JsonOpt) -> None:
    """Make a machine token and print it once (only its hash is kept).

    The token alone goes to standard output, so `export MEDOPS_TOKEN=$(medops server tokens
    create ci --role approver)` works.

    Example: medops server tokens create gpu-agent --role trainer
    """
    from medops.server.api.access import token_to_dict

    token, record = _authenticator(project).create_token(name, _role(role), by=_who())
    if json_out:
        print_json({"token": token, **token_to_dict(record)})
        return
    err_console.print(f"token {record.name} ({record.role}) created; it is shown once, now:",
                      highlight=False)
    sys.stdout.write(token + "\n")


@tokens_app.command("ls")
@handle_errors
def tokens_ls(include_revoked: bool = typer.Option(False, "--all", help="Revoked ones too."),
              project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """The machine tokens (names and roles; their values are never kept)."""
    from rich.table import Table

    from medops.server.api.access import token_to_dict

    tokens = _authenticator(project).tokens(include_revoked)
    if json_out:
        print_json([token_to_dict(t) for t in tokens])
        return
    table = Table(title="Machine tokens")
    for col in ("name", "role", "created", "by", "state"):
        table.add_column(col)
    for t in tokens:
        table.add_row(t.name, t.role, t.created_at.strftime("%Y-%m-%d %H:%M"), t.created_by,
                      f"[red]revoked {t.revoked_at:%Y-%m-%d}[/red]" if t.revoked_at
                      else "active")
    console.print(table)


@tokens_app.command("revoke")
@handle_errors
def tokens_revoke(name: str = typer.Argument(..., help="Token name."),
                  project: Path | None = ProjectOpt) -> None:
    """Revoke a machine token: it stops working at once."""
    record = _authenticator(project).revoke_token(name, by=_who())
    console.print(f"token {record.name} revoked", highlight=False)


# -- logging in to a server -----------------------------------------------------------------
def _server_url(project: Path | None, url: str | None) -> tuple[str, Any]:
    from pydantic import ValidationError

    from medops.config.server import ServerConfig
    from medops.errors import ConfigError

    if url is not None:
        try:
            config = ServerConfig(url=url)
        except ValidationError as exc:
            reason = exc.errors()[0].get("msg", "invalid")
            raise ConfigError(f"--url {url!r}: {reason}") from None
    else:
        config = load_project(project).config.server
        if config.url is None:
            raise ConfigError("no server to log in to: set server.url in medops.yaml or give "
                              "--url https://...")
    assert config.url is not None
    return config.url, config


@server_app.command("login")
@handle_errors
def login(url: str | None = typer.Option(None, help="Server (default: server.url)."),
          user: str | None = typer.Option(None, "--user", help="User name (default: asked)."),
          password_stdin: bool = PasswordStdinOpt,
          project: Path | None = ProjectOpt) -> None:
    """Log in to the team server and keep the session token for later commands.

    Example: medops server login --user dr-lee
    """
    from medops.server.client import ServerClient, store_token

    base, config = _server_url(project, url)
    name = user or str(typer.prompt("User"))
    client = ServerClient(base, None, config.ca_file)
    answer = client.login(name, _password(password_stdin, confirm=False))
    path = store_token(base, str(answer["token"]))
    console.print(f"logged in to {base} as {answer['name']} ({answer['role']}) until "
                  f"{answer['expires_at']}; token kept in {path}", highlight=False,
                  soft_wrap=True)


@server_app.command("logout")
@handle_errors
def logout(url: str | None = typer.Option(None, help="Server (default: server.url)."),
           project: Path | None = ProjectOpt) -> None:
    """End the session of `medops server login` and forget its token."""
    from medops.errors import MedopsError
    from medops.server.client import ServerClient, forget_token, stored_token

    base, config = _server_url(project, url)
    token = stored_token(base)
    if token is None:
        console.print(f"not logged in to {base}", highlight=False)
        return
    try:
        ServerClient(base, token, config.ca_file).request("POST", "/api/logout")
    except MedopsError as exc:  # expired already, or the server is down: forget it anyway
        err_console.print(f"the server did not end the session: {exc}", highlight=False)
    forget_token(base)
    console.print(f"logged out of {base}", highlight=False)


def register_init() -> None:
    """`medops server init`, where the stack generator is installed."""
    import importlib

    try:
        module = importlib.import_module("medops.cli.server_init")
    except ModuleNotFoundError as exc:
        if exc.name != "medops.cli.server_init":
            raise
        return
    server_app.command("init")(module.server_init)


register_init()
