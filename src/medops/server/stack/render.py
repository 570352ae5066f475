"""Rendering the stack's templates (Jinja2, strict) and writing the shared project folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from medops.config import CONFIG_FILE, load_config
from medops.errors import ConfigError

if TYPE_CHECKING:
    import jinja2

#: output path under the stack folder -> (template file, file mode or None for the default)
TEMPLATES: dict[str, tuple[str, int | None]] = {
    "compose.yaml": ("compose.yaml", None),
    "README.md": ("README.md", None),
    "nginx/nginx.conf": ("nginx.conf", 0o644),  # read by nginx's unprivileged workers too
    "mlflow/auth.ini": ("auth.ini", 0o644),
    "mlflow/users.py": ("users.py", 0o644),
    "minio/mlflow-policy.json": ("mlflow-policy.json", 0o644),
    "postgres/init-databases.sh": ("init-databases.sh", 0o755),
}

#: the project the stack's medops services share: its state on the stack's PostgreSQL, its
#: models on the stack's MLflow (over HTTP, as the `medops` user), its files in the folder
#: mounted at /project, serving behind a bearer token. No credential is written here.
PROJECT_SETTINGS: dict[str, dict[str, str]] = {
    "storage": {"state": "postgresql+psycopg://medops@postgres:5432/medops",
                "tracking": "http://mlflow:5000/mlflow"},
    "serve": {"host": "0.0.0.0", "token_env": "MEDOPS_SERVE_TOKEN"},
}


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    # StrictUndefined: a misspelt variable fails the render instead of writing an empty value
    return jinja2.Environment(loader=jinja2.FunctionLoader(_source), autoescape=False,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def _source(name: str) -> str:
    return (resources.files("medops.server.stack") / "templates" / name).read_text()


def render(template: str, context: dict[str, object]) -> str:
    return _environment().get_template(template).render(context)


@dataclass(frozen=True)
class ProjectFile:
    path: Path
    created: bool


def write_project(folder: Path, name: str, domain: str, https_port: int) -> ProjectFile:
    """``folder/medops.yaml`` for the stack, unless one is there (it is the team's: never
    overwritten). The scaffold of `medops init` with :data:`PROJECT_SETTINGS` and the public
    MLflow UI filled in, checked by loading it."""
    from medops.project import Project

    path = folder / CONFIG_FILE
    if path.exists():
        return ProjectFile(path, created=False)
    Project.init(folder, name=name)
    text = path.read_text()
    public = "" if https_port == 443 else f":{https_port}"
    settings = {**PROJECT_SETTINGS,
                "server": {"mlflow_ui": f"https://{domain}{public}/mlflow"}}
    for section, values in settings.items():
        for key, value in values.items():
            text = _set(text, section, key, value)
    path.write_text(text)
    config = load_config(path)
    for section, values in settings.items():
        for key, value in values.items():
            if getattr(getattr(config, section), key) != value:
                raise ConfigError(f"{path}: {section}.{key} did not take the stack's value "
                                  f"{value!r}; set it by hand")
    return ProjectFile(path, created=True)


def _set(text: str, section: str, key: str, value: str) -> str:
    """``section.key: value`` in the YAML ``text``, keeping its comments: the key's line in
    the section's block is rewritten, or added; a missing section is appended."""
    block = re.search(rf"^{re.escape(section)}:[^\n]*\n(?:(?:[ \t]+[^\n]*|)\n)*", text,
                      re.MULTILINE)
    if block is None:
        return text.rstrip("\n") + f"\n\n{section}:\n  {key}: {value}\n"
    body = block.group(0)
    line = re.compile(rf"^(?P<indent>[ \t]+){re.escape(key)}:[ \t]*(?P<value>[^#\n]*?)"
                      rf"(?P<comment>[ \t]+#[^\n]*)?$", re.MULTILINE)
    found = line.search(body)
    if found is None:
        first = body.index("\n") + 1
        new_body = body[:first] + f"  {key}: {value}\n" + body[first:]
    else:
        line_text = f"{found.group('indent')}{key}: {value}"
        comment = found.group("comment")
        if comment:  # keep the comment's column where the new value leaves room
            column = found.start("comment") - found.start() + len(comment) - len(comment.lstrip())
            line_text = line_text.ljust(column - 1) + " " + comment.lstrip()
        new_body = body[:found.start()] + line_text + body[found.end():]
    return text[:block.start()] + new_body + text[block.end():]
