"""The training progress bar (rich): epoch, batches, last loss and validation AUC."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """A context manager; a no-op when ``enabled`` is False."""

    def __init__(
        self, *, enabled: bool, epochs: int, steps_per_epoch: int, start_epoch: int
    ) -> None:
        self.epochs = epochs
        self._progress: Progress | None = None
        self._task = None
        if enabled:
            # stderr: the bar must not mix with output a caller pipes from stdout
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                refresh_per_second=4,
            )
            self._task = self._progress.add_task(
                self._describe(start_epoch, None),
                total=epochs * steps_per_epoch,
                completed=(start_epoch - 1) * steps_per_epoch,
            )

    def _describe(self, epoch: int, last: tuple[float, float] | None) -> str:
        text = f"epoch {min(epoch, self.epochs)}/{self.epochs}"
        if last is not None:
            text += f"  loss {last[0]:.4f}  val AUC {last[1]:.4f}"
        return text

    def advance(self, steps: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, steps)

    def epoch_done(self, epoch: int, train_loss: float, val_auc: float) -> None:
        """Show the finished epoch's training loss and validation AUC."""
        if self._progress is not None and self._task is not None:
            text = self._describe(epoch + 1, (train_loss, val_auc))
            self._progress.update(self._task, description=text)

    def __enter__(self) -> TrainProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
