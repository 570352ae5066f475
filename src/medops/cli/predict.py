"""`medops predict` and `medops batch-predict`: the registered model on files, folders, S3,
in this process or on a Spark cluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from medops.cli.common import (
    JsonOpt,
    ProjectOpt,
    handle_errors,
    ignore_stop_signals,
    load_project,
)
from medops.cli.render import console, err_console, print_json
from medops.config.enums import ExecutorKind

if TYPE_CHECKING:
    from medops.config.schema import ExecutorConfig
    from medops.executor import Executor
    from medops.serve.batch import OutputFormat, Predictor

ModelOpt = typer.Option(None, "--model", help="NAME@ALIAS or NAME/VERSION (default: the "
                                              "project's model @champion).")
EndpointOpt = typer.Option(None, "--endpoint-url",
                           help="S3-compatible endpoint for s3:// URIs (MinIO, a local S3).")
BatchSizeOpt = typer.Option(32, "--batch-size", min=1, help="Images per forward pass.")
_SHOWN_ERRORS = 20  # the output file has every error; the terminal shows the first ones


def _predictor(project: Path | None, model: str | None, batch_size: int) -> Predictor:
    from medops.api import Session

    return Session(load_project(project)).predictor(model, batch_size)


def _files(endpoint_url: str | None) -> Any:
    from medops.serve.batch import Files

    return Files(endpoint_url)


@handle_errors
def predict(files: list[str] = typer.Argument(..., help="DICOM, PNG or JPEG files (or s3://)."),
            model: str | None = ModelOpt, batch_size: int = BatchSizeOpt,
            endpoint_url: str | None = EndpointOpt, project: Path | None = ProjectOpt,
            json_out: bool = JsonOpt) -> None:
    """Predict files now: probabilities, label or findings per file.

    Exits 5 when a file could not be read or decoded (its row says why).

    Example: medops predict scan1.dcm scan2.png --model chest-xray-classifier@champion --json
    """
    from rich.table import Table

    from medops.errors import DataError, exit_code_for

    predictor = _predictor(project, model, batch_size)
    uris = [f if f.startswith("s3://") else str(Path(f).resolve()) for f in files]
    rows = predictor.predict(uris, _files(endpoint_url))
    records = rows.astype(object).where(rows.notna(), None).to_dict(orient="records")
    if json_out:
        print_json(records)
    elif predictor.model.labels.multilabel:
        console.print(_findings_table(predictor, records))
    else:
        table = Table(title=f"{predictor.name} v{predictor.version}")
        probs = [c for c in rows.columns if c.startswith("p_")]
        for col in ("file", "label", *probs, "error"):
            table.add_column(col, overflow="fold")
        for r in records:
            table.add_row(r["uri"], r["label"] or "-",
                          *(f"{r[c]:.4f}" if r[c] is not None else "-" for c in probs),
                          r["error"] or "")
        console.print(table)
    if rows["error"].notna().any():
        raise typer.Exit(exit_code_for(DataError()))


_TOP_FINDINGS = 3  # a multi-label table names the most probable findings; --json has all


def _findings_table(predictor: Predictor, records: list[dict[str, Any]]) -> Any:
    """One row per file: its positive findings (at the model's thresholds) and the most
    probable findings with their probabilities: a model may have 18 findings, too many
    columns for a terminal."""
    from rich.table import Table

    table = Table(title=f"{predictor.name} v{predictor.version}")
    for col in ("file", "findings", "most probable", "error"):
        table.add_column(col, overflow="fold")
    for r in records:
        probs = {c: r[f"p_{c}"] for c in predictor.model.classes if r[f"p_{c}"] is not None}
        top = sorted(probs.items(), key=lambda kv: -kv[1])[:_TOP_FINDINGS]
        table.add_row(r["uri"], r["label"] or "-",
                      ", ".join(f"{c} {p:.3f}" for c, p in top) or "-", r["error"] or "")
    return table


@handle_errors
def batch_predict(source: str = typer.Argument(
                      ..., help="A folder, a Parquet manifest (column uri) or an s3:// prefix."),
                  out: str = typer.Option(
                      ..., "--out", help="A folder (local or s3://; ends with '/' or has no "
                      "suffix) for the Parquet tables predictions/ and errors/, or one "
                      ".parquet or .csv file (local executor only)."),
                  model: str | None = ModelOpt,
                  fmt: str | None = typer.Option(
                      None, "--format", help="parquet or csv (default: from --out)."),
                  executor: str | None = typer.Option(
                      None, "--executor", help="local (this process) or spark (default: the "
                      "project's executor.kind)."),
                  master: str | None = typer.Option(
                      None, "--master", help="The Spark master: local[*], spark://HOST:PORT, "
                      "yarn, k8s://... (default: the project's executor.master; implies "
                      "--executor spark)."),
                  chunk_size: int = typer.Option(
                      256, "--chunk-size", min=1, help="Files per part file at most: what a "
                      "killed run or a lost Spark task has to redo."),
                  batch_size: int = BatchSizeOpt, endpoint_url: str | None = EndpointOpt,
                  project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Predict a folder, manifest or S3 prefix into Parquet tables.

    Every image found is predicted, here or on a Spark cluster, into OUT/predictions/ and
    OUT/errors/ (or one file, where OUT ends in .parquet or .csv). Resumable: a re-run skips
    files already predicted. Bad files are listed in the errors table and the summary; they
    never stop the batch.

    Example: medops batch-predict s3://raw/xrays/ --out s3://processed/predictions/ --executor spark
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from medops.api import Session
    from medops.serve.batch import batch_output
    from medops.serve.batch import batch_predict as run_batch

    session = Session(load_project(project))
    cfg = _executor_config(session.config.executor, executor, master)
    spark = cfg.kind is ExecutorKind.SPARK
    # a bad --out fails before the model loads
    target = batch_output(out, _format(fmt), spark=spark)
    predictor = session.predictor(model, batch_size)
    progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err_console, transient=True,
                        disable=json_out or not err_console.is_terminal)
    with _batch_executor(cfg) as runner, progress:
        task = progress.add_task(f"{predictor.name} v{predictor.version}"
                                 f"{f' on spark {cfg.master}' if spark else ''}", total=None)
        try:
            summary = run_batch(predictor, source, out, target.format,
                                files=_files(endpoint_url), chunk_size=chunk_size,
                                executor=runner, on_progress=lambda done, total: progress.update(
                                    task, completed=done, total=total))
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]: run the same command again; it "
                              "skips every file already written")
            ignore_stop_signals()
            raise typer.Exit(130) from None
    if json_out:
        print_json(summary.to_dict())
        return
    console.print(f"{summary.out}: {summary.predicted} predicted, {summary.skipped} already "
                  f"done, {summary.failed} failed, of {summary.total} files "
                  f"({summary.model} v{summary.version}, {summary.seconds:.1f}s)",
                  highlight=False)
    for e in summary.errors[:_SHOWN_ERRORS]:
        console.print(f"[yellow]failed[/yellow] {escape(e['uri'])}: {escape(e['error'])}",
                      highlight=False)
    if len(summary.errors) > _SHOWN_ERRORS:
        where = target.errors if target.folder else f"the error column of {summary.out}"
        console.print(f"... and {len(summary.errors) - _SHOWN_ERRORS} more: see {where}",
                      highlight=False)


def _executor_config(project: ExecutorConfig, kind: str | None,
                     master: str | None) -> ExecutorConfig:
    """The project's executor settings with --executor and --master over them."""
    from medops.errors import ConfigError

    choices = (ExecutorKind.LOCAL, ExecutorKind.SPARK)
    if kind is None:
        # --master names a Spark cluster; a project whose map steps run serially or in a
        # local pool predicts in this process either way
        chosen = ExecutorKind.SPARK if master or project.kind is ExecutorKind.SPARK \
            else ExecutorKind.LOCAL
    else:
        try:
            chosen = ExecutorKind(kind.lower())
        except ValueError:
            chosen = None
        if chosen not in choices:
            raise ConfigError(f"--executor {kind!r}: expected one of "
                              f"{', '.join(c.value for c in choices)}")
        if master and chosen is not ExecutorKind.SPARK:
            raise ConfigError(f"--master {master} names a Spark master, but --executor is "
                              f"{kind}; drop --master or use --executor spark")
    update: dict[str, Any] = {"kind": chosen}
    if master:
        update["master"] = master
    return project.model_copy(update=update)


@contextmanager
def _batch_executor(cfg: ExecutorConfig) -> Iterator[Executor | None]:
    """The Spark executor for a Spark batch (its session starts with the job), else None: a
    local batch predicts in this process, its threads decoding and torch's using the cores."""
    if cfg.kind is not ExecutorKind.SPARK:
        yield None
        return
    from medops.executor import make_executor

    with make_executor(cfg) as executor:
        yield executor


def _format(fmt: str | None) -> OutputFormat | None:
    from medops.errors import ConfigError
    from medops.serve.batch import OutputFormat

    if fmt is None:
        return None
    try:
        return OutputFormat(fmt.lower())
    except ValueError:
        raise ConfigError(f"--format {fmt!r}: expected one of "
                          f"{', '.join(f.value for f in OutputFormat)}") from None
