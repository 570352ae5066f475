"""`medops init --ci github`: CI/CD for the repository that holds a medops project.

It writes a GitHub Actions workflow (``.github/workflows/medops.yml``): lint, tests, and the
pipeline on a small sample dataset that must pass the project's gate on every change; on main,
the training and serving images built and pushed to the stack's repositories, then the AWS stack
deployed with them. The workflow names the secrets it needs and never holds one.

Files the workflow builds on are written beside it when the repository lacks them: the two
Dockerfiles and their entry point (``docker/``), a ``.dockerignore`` that keeps data and local
state out of the images, and the CDK app (``infra/aws``, as `medops export aws` writes it).
Existing files are kept unless ``force``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from importlib.resources import files
from pathlib import Path

from medops import __version__
from medops.config import MedopsConfig
from medops.errors import ConfigError
from medops.export.aws import export_aws, stack_name

WORKFLOW = Path(".github/workflows/medops.yml")
INFRA_DIR = "infra/aws"
SAMPLE_DATA = "tests/data/sample"
# the extras the images need: S3 and HealthImaging (aws), the team database (postgres)
MEDOPS_SPEC = f"medops[aws,postgres]=={__version__}"
_SUPPORT = {  # written when missing: (template, destination)
    "train.Dockerfile": Path("docker/train.Dockerfile"),
    "serve.Dockerfile": Path("docker/serve.Dockerfile"),
    "entrypoint.sh": Path("docker/entrypoint.sh"),
    "dockerignore": Path(".dockerignore"),
}


class CiProvider(str, Enum):
    GITHUB = "github"


@dataclass(frozen=True)
class CiFiles:
    """What `medops init --ci` wrote, and what it kept because it was there already."""

    written: tuple[Path, ...]
    kept: tuple[Path, ...]


def write_ci(root: Path, config: MedopsConfig, provider: CiProvider = CiProvider.GITHUB,
             force: bool = False, sample_data: str = SAMPLE_DATA,
             medops_spec: str = MEDOPS_SPEC) -> CiFiles:
    """Write the CI workflow of the project at ``root`` (see the module docstring)."""
    if provider is not CiProvider.GITHUB:  # the one provider; the enum leaves room for more
        raise ConfigError(f"--ci {provider.value!r}: known providers: github")
    if Path(sample_data).is_absolute() or ".." in Path(sample_data).parts:
        raise ConfigError(f"the sample data {sample_data!r} must be a folder inside the "
                          "repository (a relative path such as tests/data/sample)")
    values = {"__PROJECT__": config.project, "__STACK_NAME__": stack_name(config.project),
              "__SAMPLE_DATA__": sample_data, "__INFRA_DIR__": INFRA_DIR,
              "__MEDOPS_SPEC__": medops_spec}
    written: list[Path] = []
    kept: list[Path] = []
    plan = {"github-workflow.yml": WORKFLOW, **_SUPPORT}
    try:
        for template, relative in plan.items():
            target = root / relative
            if target.exists() and not force and relative != WORKFLOW:
                kept.append(target)
                continue
            if target.exists() and not force:
                raise ConfigError(f"{target} already exists; use --force to write it again")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_render(template, values))
            if target.suffix == ".sh":
                target.chmod(0o755)
            written.append(target)
    except OSError as exc:
        raise ConfigError(f"cannot write the CI files into {root}: {exc.strerror or exc}") \
            from None
    infra = root / INFRA_DIR
    if (infra / "cdk.json").exists() and not force:
        kept.append(infra)
    else:
        written.extend(export_aws(config, infra, force=force).files)
    return CiFiles(tuple(written), tuple(kept))


def _render(template: str, values: dict[str, str]) -> str:
    text = files("medops.export").joinpath("templates").joinpath(template).read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    left = re.findall(r"__[A-Z][A-Z_]*__", text)
    if left:  # a template and this module disagree: a bug in medops, not in the project
        raise AssertionError(f"template {template} has placeholders left: {left}")
    return text
