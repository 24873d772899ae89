"""Training metrics: one JSON object per logged step in metrics.jsonl, and tensorboard events."""

import json
import os
from collections.abc import Mapping

import numpy as np

from octo_like.utils.errors import InputError
from octo_like.utils.files import write_atomically, write_text_atomically


class MetricsWriter:
    """Appends to metrics.jsonl and tensorboard; with `active=False` (every process but the first
    of a multi-process run) it writes nothing.

    `resumed_step`: a run resumed from that checkpoint first drops the records logged after it
    (by the interrupted run, which the resumed one repeats), so each step has one record.
    """

    def __init__(self, run_dir: str, tensorboard: bool = True, active: bool = True, resumed_step: int | None = None):
        self.active = active
        if not active:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "metrics.jsonl")
        if resumed_step is not None and os.path.isfile(self.path):
            kept = [record for record in read_metrics(run_dir) if record["step"] <= resumed_step]
            write_text_atomically(self.path, "".join(json.dumps(record) + "\n" for record in kept))
        self._file = open(self.path, "a")
        self._summary = None
        if tensorboard:
            from flax.metrics.tensorboard import SummaryWriter

            self._summary = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        if not self.active:
            return
        values = {f"{prefix}{key}": float(np.asarray(value)) for key, value in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **values}) + "\n")
        self._file.flush()
        if self._summary is not None:
            for key, value in values.items():
                self._summary.scalar(key, value, int(step))

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        if self._summary is not None:
            self._summary.flush()
            self._summary.close()


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as file:
        return [json.loads(line) for line in file if line.strip()]


def plot_losses(run_dir: str) -> str:
    """loss.png in the run directory: train and val loss against the step (log scale), and the
    closed-loop success of the rollout evaluations (right axis) when the run had them."""
    from matplotlib.figure import Figure

    records = read_metrics(run_dir)
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    for key, label in (("train/loss", "train"), ("val/loss", "val")):
        points = [(record["step"], record[key]) for record in records if key in record]
        if points:
            axes.plot(*zip(*points), label=label, marker="." if label == "val" else None)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    handles, labels = axes.get_legend_handles_labels()
    success = sorted(
        (record["step"], record["rollout/mean_success"]) for record in records if "rollout/mean_success" in record
    )
    if success:
        success_axes = axes.twinx()
        success_axes.plot(*zip(*success), color="tab:green", marker="o", label="success (rollouts)")
        success_axes.set_ylabel("success rate")
        success_axes.set_ylim(0.0, 1.0)
        more_handles, more_labels = success_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axes.legend(handles, labels, loc="upper center")
    figure.tight_layout()
    path = os.path.join(run_dir, "loss.png")
    write_atomically(path, lambda temp_path: figure.savefig(temp_path, dpi=110))
    return path


def check_finite_metrics(step: int, metrics: dict, batch: dict) -> None:
    """Raises (one line) at the first non-finite metric of a train step, the loss and gradient norm
    first, naming the step and the datasets of its batch: a diverged run stops instead of saving."""
    names = [name for name in ("loss", "grad_norm") if name in metrics] + sorted(set(metrics) - {"loss", "grad_norm"})
    for name in names:
        values = np.ravel(metrics[name])
        if not np.isfinite(values).all():
            datasets = sorted(
                {raw.decode() if isinstance(raw, bytes) else str(raw) for raw in batch.get("dataset_name", [])}
            )
            raise InputError(
                f"training stopped at step {step}: train/{name} is {float(values[~np.isfinite(values)][0])} "
                f"on a batch from {', '.join(datasets) or 'unknown datasets'}; nothing was saved after the last "
                "good checkpoint (expected finite data and a stable learning rate)"
            )
