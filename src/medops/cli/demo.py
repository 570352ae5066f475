"""`medops demo`: the whole training half of the lifecycle, offline, in a fresh project."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from medops.cli.render import RichReporter, console, run_detail
from medops.pipeline import PipelineRunner
from medops.project import Project, import_source

# Small enough for a laptop CPU in about a minute; the recipe itself is the project default.
# ~115 training images are two batches of the default 64: batches of 16 give the optimizer and
# the weight average enough steps, and no early stopping, since a 20-image validation set can
# peak by chance in the first epoch.
_SYNTHETIC_OVERRIDES: dict[str, Any] = {"train.epochs": 12, "train.patience": 12,
                                        "train.batch_size": 16, "preprocess.size": [32, 32]}


def run_demo(data: Path | None = None, directory: Path | None = None,
             epochs: int | None = None) -> Project:
    root = directory or Path(tempfile.mkdtemp(prefix="medops-demo-"))
    Project.init(root, name="medops-demo", force=True)
    overrides: dict[str, Any] = {} if data else dict(_SYNTHETIC_OVERRIDES)
    if epochs is not None:
        overrides["train.epochs"] = epochs
    project = Project.load(root, overrides)
    console.rule("[bold]medops demo")
    console.print(f"project: {root}")
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
    with RichReporter() as reporter:
        record = PipelineRunner(project, reporter).run("demo")
    console.print(run_detail(record))
    _explain(project, record.id)
    return project


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
    if reg.get("registered"):
        console.print(f"registered [bold]{reg['name']}[/bold] version {reg['version']} with alias "
                      f"'{reg['alias']}' and approval=pending")
    else:
        console.print(f"gate failed, nothing registered: {reg.get('reasons')}")
    tracking = project.config.storage.tracking
    console.rule("[bold]try next")
    console.print(
        f"cd {project.root}\n"
        "medops runs ls                 # the run you just made\n"
        f"medops runs show {run_id[:18]}   # steps, timings, outputs\n"
        "medops models ls               # versions, tags, aliases\n"
        "medops run                     # again: nothing is recomputed but training\n"
        f"mlflow ui --backend-store-uri {tracking}   # params, metrics, plots, the model",
        highlight=False)
