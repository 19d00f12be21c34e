"""Atomic, resumable training checkpoints.

A checkpoint is a directory `checkpoints/step-000100/` holding

    trainable.safetensors   the trainable parameters (and the model's buffers), by module name
    ema.safetensors         their EMA (only when EMA is on)
    state.pt                optimiser state, RNG states, step: plain tensors/numbers/strings,
                            written with torch.save and read back with weights_only=True

It is written under a temporary name (`.partial-step-000100-<pid>/`), every file and the
directory are fsynced, the directory is renamed into place, and only then is the pointer file
`checkpoints/latest` replaced (temp file + fsync + os.replace). A crash at any moment leaves
`latest` naming the previous complete checkpoint. What a crash leaves behind (`.partial-*`
folders and files of a dead process) is removed by `remove_orphans` when the next run starts.
A write that fails (a full disk) raises CheckpointWriteError and leaves the last checkpoint as it was.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

PARTIAL_PREFIX = ".partial-"
LATEST = "latest"
STATE_FILE = "state.pt"
WEIGHTS_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"


class CheckpointWriteError(OSError, ValueError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact.
    A ValueError too, so command lines that report user-fixable problems in one line do so."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but owned by someone else
        return True
    return True


def remove_orphans(folder: Path) -> list[Path]:
    """Remove the `.partial-*` folders and files that a crashed (killed) writer left in `folder`;
    those of a live process are left alone. Returns what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if not path.name.startswith(PARTIAL_PREFIX):
            continue
        tail = path.name.rsplit("-", 1)[-1]
        if tail.isdigit() and _pid_alive(int(tail)) and int(tail) != os.getpid():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path), fsync it, then os.replace it onto `path` (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{PARTIAL_PREFIX}{path.name}-{os.getpid()}"
    try:
        write(str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a .safetensors file (contiguous CPU copies, shared storage allowed)."""
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, tmp, metadata=metadata))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path}: cannot read the weights file ({err}); the file is damaged") from err


def write_checkpoint(root: Path, step: int, weights: Mapping[str, torch.Tensor],
                     ema: Mapping[str, torch.Tensor] | None, state: dict[str, Any],
                     keep: int) -> Path:
    """Write checkpoint `step` under `root` atomically, point `latest` at it, keep the newest
    `keep` checkpoints. Returns the checkpoint directory. CheckpointWriteError when the disk
    refuses (nothing half-written stays; `latest` still names the previous checkpoint)."""
    name = f"step-{step:07d}"
    final = root / name
    tmp = root / f"{PARTIAL_PREFIX}{name}-{os.getpid()}"
    try:
        _write_checkpoint_files(root, tmp, final, step, weights, ema, state)
        atomic_write(root / LATEST, lambda p: Path(p).write_text(name + "\n"))
    except OSError as err:
        previous = _readable_latest(root)
        kept = (f"the last complete checkpoint {previous} is kept and --resume continues from it"
                if previous else "no earlier checkpoint exists")
        raise CheckpointWriteError(
            err.errno, f"could not write checkpoint {name} in {root} "
                       f"({err.strerror or err}); {kept}; free disk space and run again") from err
    _prune(root, keep, protect=name)
    return final


def _readable_latest(root: Path) -> str | None:
    pointer = root / LATEST
    try:
        return pointer.read_text().strip() or None
    except OSError:
        return None


def _write_checkpoint_files(root: Path, tmp: Path, final: Path, step: int,
                            weights: Mapping[str, torch.Tensor],
                            ema: Mapping[str, torch.Tensor] | None, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()},
                  str(tmp / WEIGHTS_FILE), metadata={"step": str(step)})
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in ema.items()},
                      str(tmp / EMA_FILE), metadata={"step": str(step)})
        torch.save(state, str(tmp / STATE_FILE))
        for file in tmp.iterdir():
            _fsync_file(file)
        fsync_dir(tmp)
        if final.exists():  # a stale copy from an earlier, abandoned run
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(root: Path, keep: int, protect: str) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The directory `latest` names, or None when there is no complete checkpoint."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise ValueError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} "
                         f"to start afresh or point it at an earlier step-* directory")
    return path


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None,
                                          dict[str, Any]]:
    """(weights, ema or None, state) of a checkpoint directory; state read with weights_only."""
    try:
        weights = load_tensors(path / WEIGHTS_FILE)
        ema = load_tensors(path / EMA_FILE) if (path / EMA_FILE).is_file() else None
    except ValueError as err:
        raise ValueError(f"{err}; delete {path} and point {path.parent / LATEST} at an earlier "
                         f"step-* folder, or start afresh in a new output_dir") from None
    try:
        state = torch.load(str(path / STATE_FILE), map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of several types
        # torch's own message advises weights_only=False, which would run any code in the file:
        # it is not shown, and never followed.
        raise ValueError(f"{path / STATE_FILE}: the training state is damaged or not a state "
                         f"file written by this trainer ({type(err).__name__}); delete {path} "
                         f"and point {path.parent / LATEST} at an earlier step-* folder, or start "
                         f"afresh in a new output_dir") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{path / STATE_FILE}: not a training state written by this trainer; "
                         f"delete {path} and resume from an earlier step-* folder")
    return weights, ema, state
