"""`medops demo`: the whole lifecycle, offline, in a fresh project.

First the training half (ingest to register) on synthetic DICOM; then, unless ``--no-loop``,
the loop (:mod:`medops.cli.demo.loop`, with the server, agent and clients of
:mod:`medops.cli.demo.services`): the model is served, a new detector's images drift, the agent
retrains and the server swaps to the new version. A timeline ends it
(:mod:`medops.cli.demo.timeline`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from medops.cli.common import interruptible_runner
from medops.cli.render import RichReporter, console, run_detail
from medops.config import CONFIG_FILE
from medops.errors import ConfigError
from medops.project import Project, import_source

# Small enough for a laptop CPU; the recipe itself is the project default. ~130 training
# images are two batches of the default 64: batches of 16 give the optimizer and the weight
# average enough steps, and no early stopping, since a 20-image validation set can peak by
# chance in the first epoch. Six epochs reach a test AUC of ~1.0 here (the best epoch of
# twelve was the fifth); steps over a few hundred small images finish before a process pool
# would have started.
_SYNTHETIC_SETTINGS: dict[str, Any] = {"train.epochs": 6, "train.patience": 6,
                                       "train.batch_size": 16, "preprocess.size": [32, 32],
                                       "executor.kind": "serial"}


def run_demo(data: Path | None = None, directory: Path | None = None,
             epochs: int | None = None, loop: bool = True, force: bool = False) -> Project:
    """``force``: overwrite the medops.yaml ``directory`` already holds (else refused)."""
    from medops.cli.demo.loop import LOOP_SETTINGS, missing_dependency, run_loop
    from medops.cli.demo.timeline import Timeline, timeline_table
    from medops.registry import CHAMPION

    timeline = Timeline()
    skip = _why_no_loop(data, loop, missing_dependency())
    settings: dict[str, Any] = {} if data else dict(_SYNTHETIC_SETTINGS)
    if skip is None:
        settings.update(LOOP_SETTINGS)
    if epochs is not None:
        settings["train.epochs"] = epochs
        if "train.patience" in settings:  # no early stopping in the synthetic recipe
            settings["train.patience"] = epochs
    # checked before anything is made, so bad settings leave no half-made project behind
    config_text = _config_with(settings) if settings else None
    if directory is not None and (directory / CONFIG_FILE).exists() and not force:
        raise ConfigError(f"--dir {directory} already holds a project ({CONFIG_FILE}); the demo "
                          "would overwrite its configuration and add synthetic data: give a "
                          "new folder, or add --force")
    root = directory or Path(tempfile.mkdtemp(prefix="medops-demo-"))
    Project.init(root, name="medops-demo", force=force)
    if config_text is not None:
        (root / CONFIG_FILE).write_text(config_text)
    project = Project.load(root)
    console.rule("[bold]medops demo")
    console.print(f"project: {root}" + (" (the demo's settings are in its medops.yaml)"
                                        if settings else ""), highlight=False)
    if data is None:
        from medops.demo.synthetic import make_synthetic_dataset

        ds = make_synthetic_dataset(root / "data" / "raw", n_patients=48)
        syntaxes = sorted({str(s.name) for s in ds.transfer_syntaxes})
        console.print(
            f"generated a SYNTHETIC chest-radiograph-like DICOM dataset (not real patients): "
            f"{sum(ds.class_counts.values())} images of {ds.n_patients} patients, classes "
            f"{ds.class_counts}, transfer syntaxes {syntaxes}, plus "
            f"{len(ds.broken_files)} deliberately broken files to show quarantine")
    else:
        result = import_source(project, data)
        console.print(f"imported {data}: {result['items']} items with their published split")
    with RichReporter() as reporter, interruptible_runner(project, reporter) as runner:
        record = runner.run("demo")
    console.print(run_detail(record))
    _explain(project, record.id)
    if skip is not None:
        console.print(f"[yellow]the loop is skipped[/yellow]: {skip}", highlight=False)
        _try_next(project, record.id, looped=False)
        return project
    if project.registry.by_alias(CHAMPION) is None:
        console.print("[yellow]the loop is skipped[/yellow]: the first model did not pass its "
                      "gate, so nothing is live to serve and monitor", highlight=False)
        _try_next(project, record.id, looped=False)
        return project
    run_loop(project, timeline)
    console.print(timeline_table(project, timeline))
    _try_next(project, record.id, looped=True)
    return project


def _why_no_loop(data: Path | None, loop: bool, missing: str | None) -> str | None:
    if not loop:
        return "--no-loop"
    if data is not None:
        return ("it serves, drifts and retrains on synthetic DICOM files; a MedMNIST file holds "
                "arrays, so run `medops demo` without --data to see it")
    if missing is not None:
        return f"the agent's packages are not installed; fix: {missing}"
    return None


def _config_with(settings: dict[str, Any]) -> str:
    """The validated medops.yaml of ``settings`` (dotted keys) on the defaults, so the commands
    a user runs in the folder afterwards see the demo's configuration."""
    import yaml

    from medops.config import parse_config, render_template, set_dotted

    raw = yaml.safe_load(render_template("medops-demo"))
    for dotted, value in settings.items():
        set_dotted(raw, dotted, value)
    parse_config(raw, origin="the demo's configuration")
    header = ("# medops demo: the defaults of `medops init` (run it for the commented file) "
              "with the demo's settings\n")
    return header + yaml.safe_dump(raw, sort_keys=False)


def _explain(project: Project, run_id: str) -> None:
    from medops.storage import ItemStatus

    record = project.state.get_run(run_id)
    out = {s.name: s.outputs for s in record.steps}
    quarantined = project.state.items(ItemStatus.QUARANTINED)
    console.rule("[bold]what happened")
    if quarantined:
        console.print(f"{len(quarantined)} file(s) quarantined, the rest went on:")
        for item in quarantined:
            console.print(f"  {Path(item.uri).name}: {item.reason}", highlight=False)
    split = out.get("split", {})
    console.print(f"dataset version {split.get('dataset_version')} "
                  f"(patient-level split: {split.get('counts')})")
    metrics = out.get("evaluate", {}).get("metrics", {})
    console.print("test metrics: " + ", ".join(
        f"{k[5:]}={v:.3f}" for k, v in metrics.items()
        if k in ("test_auc", "test_accuracy", "test_balanced_accuracy")))
    reg = out.get("register", {})
    if not reg.get("registered"):
        console.print(f"gate failed, nothing registered: {reg.get('reasons')}")
    elif reg.get("approval") == "approved":
        console.print(f"registered [bold]{reg['name']}[/bold] version {reg['version']}; it "
                      "passed its gate and registry.approval is auto in this demo, so it is "
                      "the live champion (clinical projects keep `manual` and sign off with "
                      "`medops models approve`)")
    else:
        console.print(f"registered [bold]{reg['name']}[/bold] version {reg['version']} with alias "
                      f"'{reg['alias']}' and approval=pending")


def _try_next(project: Project, run_id: str, looped: bool) -> None:
    tracking = project.config.storage.tracking
    name = project.config.model_name
    console.rule("[bold]try next")
    lines = [f"cd {project.root}",
             "medops runs ls                 # the runs: " + (
                 "the demo's and the one drift started" if looped else "the one you just made"),
             f"medops runs show {run_id}   # steps, timings, outputs",
             "medops models ls               # versions, tags, aliases"]
    if looped:
        lines += [
            "medops events ls               # what arrived, what the agent decided and why",
            f"medops models history {name}   # which version was live when, and who said so",
            "medops monitor                 # drift and quality of the live model now (HTML "
            "report)",
            "medops serve --port 8080       # then: curl -H 'content-type: application/dicom' "
            "--data-binary @$(ls traffic/nodule/*.dcm | head -1) localhost:8080/invocations",
            "medops agent                   # the loop for real: drop images into data/raw"]
    else:
        lines += [f"medops models approve {name} 1 --by NAME --note WHY   # make it live",
                  "medops run                     # again: nothing is recomputed but training"]
    lines.append(f"mlflow ui --backend-store-uri {tracking}   # params, metrics, plots, models")
    console.print("\n".join(lines), highlight=False)
