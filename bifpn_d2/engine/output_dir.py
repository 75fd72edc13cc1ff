"""The training output directory: what counts as a previous run, and the checks that keep
a fresh training from writing over one."""

import os
import tempfile
from typing import List

from .config import ConfigError

__all__ = ["LAST_CHECKPOINT", "OVERWRITE_ENV", "check_output_dir", "checkpoints_in", "forget_previous_run"]

OVERWRITE_ENV = "BIFPN_D2_OVERWRITE"
LAST_CHECKPOINT = "last_checkpoint"


def checkpoints_in(output_dir: str) -> List[str]:
    """Names of the checkpoint files (``*.pth``, ``last_checkpoint``) directly in
    ``output_dir``, sorted; empty if the directory does not exist."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir) if n.endswith(".pth") or n == LAST_CHECKPOINT)


def check_output_dir(output_dir: str, fresh_training: bool, overwrite: bool) -> None:
    """Create ``output_dir`` and make sure that a file can be written in it; for a fresh
    training, make sure it holds no checkpoints unless ``overwrite``.

    Raises:
        ConfigError: the directory cannot be created or written, or would be overwritten.
    """
    if not output_dir:
        raise ConfigError("OUTPUT_DIR is empty; give it a directory, e.g. `OUTPUT_DIR output/run1`")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(f"OUTPUT_DIR {output_dir!r} is not writable: {reason}") from None
    existing = checkpoints_in(output_dir)
    if fresh_training and existing and not overwrite:
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise ConfigError(
            f"OUTPUT_DIR {output_dir!r} already holds checkpoints ({shown}); refusing to train "
            "over them. Use --resume to continue that run, another OUTPUT_DIR, or --overwrite "
            f"(or {OVERWRITE_ENV}=1) to start afresh there"
        )


def forget_previous_run(output_dir: str) -> None:
    """Before an explicit overwrite: drop the old run's metrics and checkpoint pointer, so
    that its curves are not mixed with the new ones and ``--resume`` cannot pick up a
    stale checkpoint. The ``.pth`` files are replaced one by one as the new run saves."""
    for name in ("metrics.json", LAST_CHECKPOINT):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)
