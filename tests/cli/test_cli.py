"""The command line, as a user types it (typer's runner, in process, on real projects)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medops.cli.main import app
from medops.demo.synthetic import make_synthetic_dataset

runner = CliRunner()


def medops(*args: str) -> tuple[int, str]:
    """Exit code and what the user sees; with --json, stdout alone (logs go to stderr)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_version_and_short_help() -> None:
    from medops import __version__

    assert medops("--version") == (0, f"medops {__version__}\n")
    code, out = medops("runs", "ls", "-h")
    assert code == 0 and "runs ls [OPTIONS]" in out and "Recent runs" in out


def test_init_scaffolds_and_refuses_to_overwrite(tmp_path: Path) -> None:
    code, out = medops("init", str(tmp_path / "p"))
    assert code == 0 and "created" in out
    assert (tmp_path / "p" / "medops.yaml").read_text().startswith("# medops project")
    code, out = medops("init", str(tmp_path / "p"))
    assert code == 2 and "--force" in out


@pytest.mark.parametrize(("name", "suggestion"), [("a/b: c", "a-b-c"), ("#x", "x"),
                                                  ("Chest X-ray (v2)", "chest-x-ray-v2")])
def test_init_refuses_a_bad_name_before_writing(tmp_path: Path, name: str,
                                                suggestion: str) -> None:
    code, out = medops("init", str(tmp_path / "p"), "--name", name)
    flat = " ".join(out.split())
    assert code == 2 and f"--name {name!r} is not a valid project name" in flat
    assert f"(e.g. {suggestion})" in flat
    assert not (tmp_path / "p").exists()


def test_init_quotes_a_name_yaml_would_read_as_a_bool(tmp_path: Path) -> None:
    from medops.project import Project

    assert medops("init", str(tmp_path / "p"), "--name", "true")[0] == 0
    assert Project.load(tmp_path / "p").config.project == "true"


def test_init_where_no_folder_can_be_made(tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    for target in (afile, afile / "p"):
        code, out = medops("init", str(target))
        assert code == 2 and f"{afile} is a file, not a folder" in " ".join(out.split())
    if Path("/proc/self").is_dir():  # a file system that refuses new folders, even to root
        code, out = medops("init", "/proc/medops-test")
        assert code == 2 and "cannot create a project in /proc/medops-test" in out


def test_init_adds_the_state_folder_to_an_existing_gitignore(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules")  # no final newline
    assert medops("init", str(tmp_path))[0] == 0
    assert medops("init", str(tmp_path), "--force")[0] == 0  # and only once
    assert (tmp_path / ".gitignore").read_text() == "node_modules\n.medops/\n"


def test_demo_refuses_a_folder_with_a_project(tmp_path: Path) -> None:
    medops("init", str(tmp_path), "--name", "mine")
    before = (tmp_path / "medops.yaml").read_text()
    code, out = medops("demo", "--dir", str(tmp_path), "--epochs", "1", "--no-loop")
    assert code == 2 and "--force" in out
    assert (tmp_path / "medops.yaml").read_text() == before


def test_demo_epochs_are_checked_before_a_folder_is_made(tmp_path: Path) -> None:
    from medops.cli.demo import run_demo
    from medops.errors import ConfigError

    code, out = medops("demo", "--dir", str(tmp_path / "d"), "--epochs", "0", "--no-loop")
    assert code == 2 and "--epochs" in out and "medops.yaml" not in out
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        run_demo(directory=tmp_path / "d", epochs=0, loop=False)
    assert not (tmp_path / "d").exists()


def test_a_bad_set_value_names_the_override_not_the_file(tmp_path: Path) -> None:
    medops("init", str(tmp_path))
    code, out = medops("run", "-C", str(tmp_path), "--set", "train.epochs=abc")
    assert code == 2 and "--set train.epochs=abc: " in out and "medops.yaml" not in out


def test_config_errors_exit_2_with_the_key(tmp_path: Path) -> None:
    medops("init", str(tmp_path / "p"))
    code, out = medops("run", "-C", str(tmp_path / "p"), "--set", "model.architecture=resnet-18")
    assert code == 2 and "did you mean 'resnet18'" in " ".join(out.split())
    (tmp_path / "elsewhere").mkdir()
    code, out = medops("runs", "ls", "-C", str(tmp_path / "elsewhere"))
    assert code == 2 and "medops init" in out


def test_a_network_that_cannot_be_found_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    medops("init", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mynet.py").write_text("def build(in_channels, num_classes): ...\n")
    for arch, says in [("models/mynet.py:buld", "nearest: build"),
                       ("models/mynte.py:build", "nearest: models/mynet.py"),
                       ("txv:densenet121-res224-al", "did you mean 'txv:densenet121-res224-all'")]:
        code, out = medops("run", "-C", str(tmp_path), "--set", f"model.architecture={arch}")
        assert code == 2 and says in " ".join(out.split()), out
    code, out = medops("runs", "ls", "-C", str(tmp_path), "--json")
    assert json.loads(out) == []  # no run was started


def test_empty_project_listings_and_unknown_run(tmp_path: Path) -> None:
    medops("init", str(tmp_path))
    code, out = medops("runs", "ls", "-C", str(tmp_path), "--json")
    assert code == 0 and json.loads(out) == []
    code, out = medops("runs", "show", "run-nope", "-C", str(tmp_path))
    assert code == 4 and "no run" in out
    code, out = medops("run", "-C", str(tmp_path))
    assert code == 5 and "no images" in out


def test_runs_ls_fits_an_80_column_terminal(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from medops.project import Project
    from medops.storage import RunStatus

    medops("init", str(tmp_path))
    state = Project.load(tmp_path).state
    for run_id, trigger in (("run-20261201-064013-95ec51", "manual"),
                            ("run-20261201-070000-0a1b2c", "data.arrived")):
        state.create_run(run_id, trigger, {}, ["ingest", "validate"])
        state.update_step(run_id, "ingest", status="succeeded")
        state.finish_run(run_id, RunStatus.INTERRUPTED)
    monkeypatch.setenv("COLUMNS", "80")
    code, out = medops("runs", "ls", "-C", str(tmp_path))
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith("run-")]
    assert code == 0 and len(rows) == 2 and all(len(line) <= 80 for line in lines), out
    assert all("interrupted" in row and "ingest" in row for row in rows), out
    assert rows[0].startswith("run-20261201-070000-0a1b2c  ")  # newest first, id whole


def test_data_import_npz_and_ls(tmp_path: Path, shared_data: Path) -> None:
    medops("init", str(tmp_path))
    npz = shared_data / "medmnist" / "breastmnist_28.npz"
    code, out = medops("data", "import", str(npz), "-C", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["new"] == 780
    code, out = medops("data", "ls", "-C", str(tmp_path), "--json")
    assert json.loads(out)["sources"] == {"npz:breastmnist_28.npz": {"pending": 780}}
    code, out = medops("data", "import", str(tmp_path / "missing.npz"), "-C", str(tmp_path))
    assert code == 2 and "cannot import" in out
    # the import is announced to the agent; the event log is filtered by a known kind only
    code, out = medops("events", "ls", "--kind", "data.arrived", "-C", str(tmp_path), "--json")
    assert [(e["kind"], e["payload"]["new"]) for e in json.loads(out)] == [("data.arrived", 780)]
    code, out = medops("events", "ls", "--kind", "model.deployed", "-C", str(tmp_path), "--json")
    assert code == 0 and json.loads(out) == []
    code, out = medops("events", "ls", "--kind", "data-arrived", "-C", str(tmp_path))
    assert code == 2 and "data.arrived" in out and "drift.detected" in out


@pytest.mark.slow
def test_run_show_and_models_ls(tmp_path: Path) -> None:
    medops("init", str(tmp_path))
    shutil.rmtree(tmp_path / "data" / "raw")
    make_synthetic_dataset(tmp_path / "data" / "raw", n_patients=10, images_per_patient=3,
                           size=32)
    code, out = medops("run", "-C", str(tmp_path), "--json", "--set", "train.epochs=2",
                       "--set", "gate.min=0")
    assert code == 0, out
    run = json.loads(out)
    assert run["status"] == "succeeded" and [s["status"] for s in run["steps"]] == \
        ["succeeded"] * 8
    code, out = medops("runs", "show", run["id"][:16], "-C", str(tmp_path))
    assert code == 0 and "register" in out and "test_auc" in out
    code, out = medops("models", "ls", "-C", str(tmp_path), "--json")
    versions = json.loads(out)
    assert code == 0 and versions[0]["aliases"] == ["candidate"]
    assert versions[0]["tags"]["approval"] == "pending"
    code, out = medops("data", "ls", "-C", str(tmp_path))
    assert code == 0 and "quarantined" in out
