"""Run bookkeeping on rank 0: a CSV row per epoch, TensorBoard when installed, PNG curves."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from spikezoo._optional import optional_dependency

__all__ = ["RunLog", "plot_curves"]


class RunLog:
    """Appends one row per epoch to ``<output>/log.csv`` (and TensorBoard scalars).

    Args:
        output: the run folder.
        tensorboard: also write TensorBoard events to ``<output>/tb`` if ``tensorboard`` is
            installed.
        append: keep the rows of a run being resumed (rows after ``start_epoch`` are dropped).
        start_epoch: the number of epochs already done (rows are numbered from 1).
    """

    def __init__(
        self, output: str | Path, tensorboard: bool, append: bool = False, start_epoch: int = 0
    ) -> None:
        self.path = Path(output) / "log.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, str]] = []
        if append and self.path.exists():
            with self.path.open(newline="") as file:
                self.rows = [r for r in csv.DictReader(file) if int(r["epoch"]) <= start_epoch]
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output) / "tb"), purge_step=start_epoch + 1)
        self._rewrite()

    def _rewrite(self) -> None:
        if not self.rows:
            self.path.write_text("")
            return
        # Epochs without evaluation (run.eval_every > 1) leave those columns empty.
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with self.path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record the metrics of ``epoch``."""
        row = {"epoch": str(epoch), **{k: f"{v:.6g}" for k, v in metrics.items()}}
        self.rows.append(row)
        self._rewrite()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def plot_curves(csv_path: str | Path, png_path: str | Path) -> Path:
    """Plot losses and accuracies of a ``log.csv`` over the epochs into ``png_path``."""
    with optional_dependency("plotting the training curves", extra="train"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    with Path(csv_path).open(newline="") as file:
        rows = list(csv.DictReader(file))
    epochs = [int(r["epoch"]) for r in rows]
    figure, (losses, accuracies) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key in rows[0] if rows else []:
        values = [float(r[key]) if r.get(key) else float("nan") for r in rows]
        if key.endswith("loss"):
            losses.plot(epochs, values, marker="o", label=key)
        elif "top" in key:
            accuracies.plot(epochs, values, marker="o", label=key)
    for axis, title in ((losses, "loss"), (accuracies, "accuracy (%)")):
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return Path(png_path)
