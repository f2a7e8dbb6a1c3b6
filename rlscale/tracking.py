"""Where metrics go: the run's metrics table (CSV, one row per iteration) and a W&B run.

W&B is offline by default (runs land under RUN_DIR/wandb and can be uploaded later with
``wandb sync``); ``tracking.wandb_mode=disabled`` switches it off. The table is appended row
by row and rewritten only when a new column first appears, so a crash loses at most the
iteration in flight.

A finished run also keeps its table gzipped (``metrics.csv.gz``, rewritten only when the table
changed): a study's records keep that copy in git (its ``metrics.csv`` files are ignored for
their size), so an analysis can be rerun from a clone; readers take ``metrics_path``, which
falls back to it, and a run resumed where only the copy is left starts from it.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Literal, cast

from rlscale.util import atomic_write_bytes, atomic_write_text

METRICS = "metrics.csv"
PACKED_METRICS = "metrics.csv.gz"


def metrics_path(run_dir: str | os.PathLike) -> Path:
    """A run's metrics table: metrics.csv, or its gzip copy where only that is there (a clone of
    a study's records). pandas reads either."""
    path = Path(run_dir) / METRICS
    packed = path.with_name(PACKED_METRICS)
    return packed if not path.exists() and packed.exists() else path


def pack_metrics(run_dir: str | os.PathLike) -> Path | None:
    """Write metrics.csv.gz beside a run's metrics.csv, unless it already holds the same table
    (then it is left as it is, so git sees no change where there is none; no timestamp or
    name goes inside either); None where the run has no table."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None
    packed = path.with_name(PACKED_METRICS)
    table = path.read_bytes()
    if not packed.is_file() or gzip.decompress(packed.read_bytes()) != table:
        atomic_write_bytes(packed, gzip.compress(table, compresslevel=9, mtime=0))
    return packed


class MetricsTable:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] = []
        packed = self.path.with_name(PACKED_METRICS)
        if not self.path.exists() and packed.is_file():  # a clone's records: continue from the copy
            atomic_write_bytes(self.path, gzip.decompress(packed.read_bytes()))
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.reader(f)
                self.columns = next(reader, [])

    def truncate_after(self, iteration: int) -> None:
        """Drop rows past `iteration` (used on resume, so no iteration is duplicated)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            text = f.read()
        whole = text[: text.rfind("\n") + 1]  # a last line without its end is a row a stop cut short: dropped
        rows = list(csv.DictReader(io.StringIO(whole, newline="")))
        kept = [r for r in rows if int(float(r["iteration"])) <= iteration]
        if len(kept) < len(rows) or whole != text:
            self._rewrite(self.columns, kept)

    def last_value(self, column: str) -> float:
        """The last non-empty, non-NaN value of `column` (NaN if none): what a resumed run
        carries on from, e.g. its latest evaluation."""
        if not self.path.exists() or column not in self.columns:
            return math.nan
        last = math.nan
        with open(self.path, newline="") as f:
            for r in csv.DictReader(f):
                v = r.get(column) or ""
                if v and not math.isnan(float(v)):
                    last = float(v)
        return last

    def _rewrite(self, columns: list[str], rows: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())
        self.columns = columns

    def append(self, row: dict) -> None:
        row = {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        new = [k for k in row if k not in self.columns]
        if new or not self.path.exists():
            rows = []
            if self.path.exists():
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self._rewrite(self.columns + new, rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)


class WandbRun:
    """A thin wrapper: nothing is imported or written when mode is 'disabled'."""

    def __init__(self, mode: str, run_dir: Path, project: str, name: str, group: str | None,
                 config: dict, job_type: str = "train", resume_id: str | None = None):
        self.run = None
        if mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(
            mode=cast(Literal["online", "offline", "disabled", "shared"], mode),  # wandb checks the value
            dir=str(run_dir), project=project, name=name, group=group, config=config,
            job_type=job_type, id=resume_id, resume="allow" if resume_id else None, reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    @property
    def id(self) -> str | None:
        return self.run.id if self.run else None

    def log(self, metrics: dict, step: int) -> None:
        if self.run:
            self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def summary(self, values: dict) -> None:
        if self.run:
            for k, v in values.items():
                self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run:
            self.run.finish(exit_code=exit_code)
            self.run = None


class Progress:
    """Env steps done: a tqdm bar on a terminal; elsewhere (a log file, a Ray job's log) a plain
    line every `interval_s` seconds and at the end, since a bar's carriage returns turn into
    hundreds of updates per line there."""

    def __init__(self, total: int, initial: int, stream=None, interval_s: float = 10.0, desc: str = "env steps"):
        self.total, self.n, self.desc = total, initial, desc
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._clock = time.monotonic
        self._last = self._clock()
        self._postfix: dict[str, str] = {}
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True,
                            file=self.stream, desc=desc)

    def update(self, n: int, **postfix: str) -> None:
        """Set the count to `n` (absolute) with the given postfix fields."""
        n = min(n, self.total)
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            self.bar.set_postfix(postfix, refresh=False)
            return
        self.n, self._postfix = n, postfix
        now = self._clock()
        if now - self._last >= self.interval_s:
            self._last = now
            self._line()

    def _line(self) -> None:
        fields = " ".join(f"{k}={v}" for k, v in self._postfix.items())
        pct = 100.0 * self.n / self.total if self.total else 100.0
        print(f"{self.desc}: {self.n}/{self.total} ({pct:.0f}%) {fields}".rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line()
