"""Metrics as JSON lines (one record per logged step and per epoch) and the progress bar of an epoch."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cytoself_jax.jsonio import read_json_lines


class MetricsLog:
    """Append-only JSON lines at path. Each record has 'kind' ('step' or 'epoch'), 'epoch' and 'step'. A partial
    last line (a run stopped mid-append) is ignored when reading and removed by truncate_after.
    path None: records are dropped (the processes other than the first of a multi-host run)."""

    def __init__(self, path: Path | None):
        self.path = None if path is None else Path(path)

    def truncate_after(self, epoch: int, step: int) -> None:
        """Keep only the records of a checkpoint `step` taken with `epoch` epochs completed (at an epoch's end or
        in epoch `epoch`): the work a resume redoes is logged again, once."""
        if self.path is None or not self.path.exists():
            return
        keep = [r for r in read_json_lines(self.path)
                if r["epoch"] < epoch or (r["epoch"] == epoch and r["kind"] == "step" and r["step"] <= step)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.path)  # never half a log, even when the disk fills up here

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(clean) + "\n")
        except OSError as err:  # a full disk: the error names the errno only; name the file too
            raise OSError(err.errno, err.strerror, str(self.path)) from None

    def read(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return []
        return read_json_lines(self.path)


class EpochProgress:
    """A tqdm bar over the images of one epoch: images/s, ETA and the latest loss."""

    def __init__(self, epoch: int, max_epochs: int, images: int, disable: bool = False):
        self.bar = tqdm(total=images, unit="img", unit_scale=True, desc=f"epoch {epoch + 1}/{max_epochs}",
                        disable=disable, dynamic_ncols=True)
        self.start = time.perf_counter()
        self.images = 0  # counted here: a disabled tqdm bar counts nothing

    def update(self, images: int, loss: float | None = None) -> None:
        self.images += images
        self.bar.update(images)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> float:
        """Close the bar; returns images/s over the epoch."""
        self.bar.close()
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0
