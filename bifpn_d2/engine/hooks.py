"""Training hooks of our own, added by the trainer next to Detectron2's."""

import torch
from detectron2.engine import HookBase

from ..layers import WeightedFusion

__all__ = ["FusionWeightLogger"]


class FusionWeightLogger(HookBase):
    """Every ``period`` iterations, put the normalised weights of every learnable fusion
    into the event storage as ``fusion/<module>/<k>`` (the factor applied to input ``k``;
    its mean over channels for channel-wise fusion),
    so that ``metrics.json`` and TensorBoard show how the model weighs its inputs over
    training (EfficientDet's Figure 6). Models without learnable fusions log nothing."""

    def __init__(self, period: int):
        self.period = period

    def before_train(self) -> None:
        model = self.trainer.model
        model = getattr(model, "module", model)  # DistributedDataParallel
        self._fusions = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, WeightedFusion) and m.weight is not None
        ]

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if not self._fusions or (next_iter % self.period and next_iter != self.trainer.max_iter):
            return
        storage = self.trainer.storage
        for name, fusion in self._fusions:
            with torch.no_grad():
                values = fusion.input_weights().tolist()
            for k, value in enumerate(values):
                storage.put_scalar(f"fusion/{name}/{k}", value, smoothing_hint=False)
