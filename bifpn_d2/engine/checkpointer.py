"""Checkpoints that are never truncated: written to a temporary file, then renamed."""

import os
import tempfile
from typing import Any, Callable

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .output_dir import LAST_CHECKPOINT

__all__ = ["AtomicCheckpointer"]


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, flush it to disk,
    then rename it to ``path``: readers see the old file or the complete new one."""
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` whose ``.pth`` files and ``last_checkpoint`` pointer
    are replaced atomically (temporary file + ``os.replace``), never truncated in place."""

    def save(self, name: str, **kwargs: Any) -> None:
        """Save the model and every checkpointable (optimizer, scheduler, iteration) as
        ``<save_dir>/<name>.pth`` and point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        _atomic_write(
            os.path.join(self.save_dir, LAST_CHECKPOINT),
            lambda f: f.write(last_filename_basename.encode()),
        )
