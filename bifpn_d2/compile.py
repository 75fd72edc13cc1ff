"""``torch.compile`` for detectors: the network parts compiled in place, Detectron2's
pre- and post-processing (``ImageList``, ``Instances``, NMS) left eager.

    from bifpn_d2 import compile_model
    compiled = compile_model(model)          # the same object; state-dict keys unchanged
    outputs = model(inputs)                  # first call per input size compiles

or ``MODEL.COMPILE inductor`` in a YAML config (``tools/train_net.py`` then trains and
evaluates the compiled model). What is compiled (:data:`COMPILED_PARTS`): the backbone
(bottom-up network and neck) of every meta-architecture, the head of RetinaNet and
EfficientDet, and the RPN head and box head of R-CNNs. Outputs equal eager ones up to
float rounding (``tests/test_compile.py``: 1e-4 on the CPU).

Each part is compiled with ``nn.Module.compile``, so checkpoints, ``state_dict`` names and
DDP see the module they always saw. ``dynamic=None`` (torch's default) compiles once for
the first input size and once more, with dynamic shapes, when another size arrives; give
``dynamic=False`` with a fixed input size (e.g. EfficientDet's square, and on a GPU
``mode="reduce-overhead"`` for CUDA graphs).
"""

from typing import List, Optional

import torch
from torch import nn

__all__ = ["COMPILED_PARTS", "compile_backends", "compile_model"]

# Attribute paths of the parts that are compiled when a model has them.
COMPILED_PARTS = ("backbone", "head", "proposal_generator.rpn_head", "roi_heads.box_head")


def _part(model: nn.Module, path: str) -> Optional[nn.Module]:
    module: Optional[nn.Module] = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def compile_backends() -> List[str]:
    """The ``backend`` names ``torch.compile`` accepts here (``inductor``, ``eager``, ...)."""
    return sorted(set(torch._dynamo.list_backends()) | {"eager", "aot_eager"})


def compile_model(
    model: nn.Module,
    backend: str = "inductor",
    mode: Optional[str] = None,
    dynamic: Optional[bool] = None,
    fullgraph: bool = False,
) -> nn.Module:
    """Compile ``model``'s network parts (:data:`COMPILED_PARTS`) in place and return
    ``model``. ``backend``, ``mode``, ``dynamic``, ``fullgraph``: as ``torch.compile``.

    Raises:
        ValueError: an unknown ``backend`` (the message lists torch's), or a model with
            none of the parts.
    """
    if backend not in compile_backends():
        raise ValueError(f"compile backend {backend!r} is not one of {compile_backends()}")
    compiled: List[str] = []
    for path in COMPILED_PARTS:
        part = _part(model, path)
        if part is not None:
            part.compile(backend=backend, mode=mode, dynamic=dynamic, fullgraph=fullgraph)
            compiled.append(path)
    if not compiled:
        raise ValueError(f"{type(model).__name__} has none of the parts that are compiled: {COMPILED_PARTS}")
    return model
