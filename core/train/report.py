"""What a training run shows: the loss log (CSV), the loss curve (PNG, drawn with Pillow), and a
plain-text progress bar with ETA on stderr."""
from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import TextIO

from .checkpointing import atomic_write

CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "seconds")


class LossLog:
    """loss.csv, one row per step. Rows are buffered and written on `flush()`, which replaces the
    file atomically (a crash leaves the old file or the new one, never a half row); `truncate(step)`
    drops rows after `step` (used when resuming from a checkpoint older than the log). A damaged
    row (from an older, non-atomic writer) is skipped when reading, never fatal. The rows written
    are kept in memory too, so a flush formats them but never parses the file again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[dict[str, float]] = []
        self.skipped_rows = 0   # rows of the file on disk that could not be parsed
        self._rows: list[dict[str, float]] = []
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file _rows came from

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def read(self) -> list[dict[str, float]]:
        stamp = self._file_stamp()
        if stamp is None:
            return []
        if stamp != self._stamp:
            self._rows, self._stamp = self._parse(), stamp
        return list(self._rows)

    def _parse(self) -> list[dict[str, float]]:
        rows, self.skipped_rows = [], 0
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.DictReader(f):
                try:
                    parsed = {k: float(row[k]) for k in CSV_FIELDS}
                except (KeyError, TypeError, ValueError):
                    self.skipped_rows += 1
                    continue
                if all(math.isfinite(parsed[k]) for k in ("step", "seconds")):
                    rows.append(parsed)
                else:
                    self.skipped_rows += 1
        return rows

    def _replace(self, rows: list[dict[str, float]]) -> None:
        atomic_write(self.path, lambda tmp: _write_rows(tmp, rows))
        self._rows, self._stamp = rows, self._file_stamp()

    def truncate(self, step: int) -> None:
        self._replace([r for r in self.read() if r["step"] <= step])

    def add(self, step: int, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
        self.pending.append({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                             "seconds": seconds})

    def flush(self) -> None:
        if not self.pending:
            return
        first = self.pending[0]["step"]
        self._replace([r for r in self.read() if r["step"] < first] + self.pending)
        self.pending = []


def _write_rows(path: str, rows: list[dict[str, float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(row[k]) if k == "step" else repr(float(row[k])))
                             for k in CSV_FIELDS})


def render_loss_curve(steps: list[float], losses: list[float], path: Path,
                      size: tuple[int, int] = (720, 405)) -> Path:
    """Draw the loss per step (light) and its running mean over ~2% of the run (dark) as a PNG.

    The y axis is logarithmic when the losses are all positive and span more than a factor 10.
    """
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    pairs = [(s, v) for s, v in zip(steps, losses) if math.isfinite(v)]
    draw.text((left, 8), f"training loss ({len(pairs)} steps)", fill="black")
    if len(pairs) >= 2:
        xs, ys = zip(*pairs)
        log = min(ys) > 0 and max(ys) / min(ys) > 10
        tf = (lambda v: math.log10(v)) if log else (lambda v: v)
        lo, hi = tf(min(ys)), tf(max(ys))
        hi = hi if hi > lo else lo + 1e-12
        x0, x1 = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1

        def point(s: float, v: float) -> tuple[float, float]:
            px = left + (s - x0) / (x1 - x0) * (w - left - right)
            py = top + (hi - tf(v)) / (hi - lo) * (h - top - bottom)
            return px, py

        draw.rectangle([left, top, w - right, h - bottom], outline="gray")
        draw.line([point(s, v) for s, v in pairs], fill=(170, 190, 230), width=1)
        k = max(1, len(pairs) // 50)
        smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1])
                  for i in range(len(ys))]
        draw.line([point(s, v) for s, v in zip(xs, smooth)], fill=(20, 60, 160), width=2)
        scale = " (log scale)" if log else ""
        draw.text((4, top), f"{max(ys):.4g}", fill="black")
        draw.text((4, h - bottom - 12), f"{min(ys):.4g}", fill="black")
        draw.text((left, h - bottom + 6), f"step {int(x0)}", fill="black")
        draw.text((w - right - 90, h - bottom + 6), f"step {int(xs[-1])}", fill="black")
        draw.text((left + 220, 8), f"last {ys[-1]:.4g}{scale}", fill="black")
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def format_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """`[#####.....] 120/1000 12% loss 0.1234 lr 1.0e-04 2.31 it/s ETA 0:06:21` on stderr.

    On a terminal the line is redrawn in place; otherwise one line is printed every `every` steps
    (so logs stay readable)."""

    def __init__(self, total: int, start: int, every: int, stream: TextIO | None = None) -> None:
        self.total, self.start, self.every = total, start, max(1, every)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()

    def update(self, step: int, loss: float, lr: float) -> None:
        if not self.tty and step % self.every and step != self.total:
            return
        done = step - self.start
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        frac = step / self.total if self.total else 1.0
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        line = (f"[{bar}] {step}/{self.total} {100 * frac:3.0f}% loss {loss:.4f} lr {lr:.1e} "
                f"{rate:.2f} it/s ETA {format_seconds(eta) if math.isfinite(eta) else '?'}")
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
