"""Checkpoints that are never truncated (written to a temporary file, then renamed), and
that load the weight EMA they hold into the model when asked to."""

import os
import tempfile
from typing import Any, Callable, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .ema import ema_model_weights
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
    are replaced atomically (temporary file + ``os.replace``), never truncated in place.

    With ``use_ema_weights``, loading weights only (``MODEL.WEIGHTS``, ``--eval-only``:
    ``load(path, checkpointables=[])``) from a checkpoint that holds a weight EMA
    (``"ema"``, see :mod:`.ema`) gives the model the EMA weights. Resuming a training
    (``--resume``) always restores the raw weights, and the EMA if the trainer keeps one.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, use_ema_weights: bool = False,
                 **checkpointables: Any):
        super().__init__(model, save_dir, **checkpointables)
        self.use_ema_weights = use_ema_weights
        self._model_gets_ema = False

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Any:
        self._model_gets_ema = self.use_ema_weights and checkpointables == []
        try:
            return super().load(path, checkpointables)
        finally:
            self._model_gets_ema = False

    def _load_model(self, checkpoint: Any) -> Any:
        ema = ema_model_weights(checkpoint) if self._model_gets_ema else None
        if ema is not None:
            self.logger.info("Loading the checkpoint's EMA weights (MODEL_EMA.USE_EMA_WEIGHTS)")
            checkpoint["model"] = ema
        return super()._load_model(checkpoint)

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
