"""The neck race: our necks against their references, neck alone, in one process.

A race pits a reference neck and ours, holding the same weights, against each other on
the same precomputed bottom-up features (:class:`PrecomputedFeatures`):

- ``bifpn-d0`` / ``bifpn-d3``: effdet's ``efficientdet_d0`` / ``efficientdet_d3`` BiFPN
  vs our :class:`BiFPN` with its weights converted by ``convert_effdet_state_dict``;
- ``fpn-r50``: Detectron2's ``FPN`` over ResNet-50 (P2-P6) vs our :class:`WeightedFPN`
  with the same state dict. Detectron2's FPN fails on a size that is not a multiple of 32:
  it then gets the input padded as its ``ImageList`` would, and the row's note says so.

BN statistics and fusion weights of the reference are randomised first, so that equal
outputs are not trivial. Ratios in a row are ours / reference (< 1: ours is faster or
smaller); :data:`TARGETS` are their upper bounds.
"""

from typing import Any, Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bifpn_d2 import (
    BiFPN,
    CellOptions,
    EfficientDetTopBlock,
    MaxPoolTopBlock,
    WeightedFPN,
    fold_for_inference,
)
from bifpn_d2.convert import convert_effdet_state_dict
from bifpn_d2.layers import LayerStyle

from .measure import count_parameters, interleaved_times, median, peak_memory_bytes
from .models import PrecomputedFeatures

__all__ = [
    "CASES",
    "EFFDET_MODELS",
    "TARGETS",
    "Contestants",
    "bifpn_contestants",
    "contestants",
    "fpn_contestants",
    "race",
    "race_name",
    "target_rows",
]

CASES = ("bifpn-d0", "bifpn-d3", "fpn-r50")
EFFDET_MODELS = {"bifpn-d0": "efficientdet_d0", "bifpn-d3": "efficientdet_d3"}
# Upper bounds on ours / reference; "infer_ratio" etc. are the row's columns.
TARGETS = {
    "bifpn": {"infer_ratio": 0.8, "folded_ratio": 0.6, "train_ratio": 0.9, "train_mem_ratio": 1.0},
    "fpn": {"infer_ratio": 1.05},
}

Outputs = Callable[[], Sequence[torch.Tensor]]


class Contestants:
    """Both necks of one race, ready to run on their (precomputed) inputs.

    ``call_reference(reference_inputs)`` runs the reference and returns its outputs as a
    list; ``ours(our_inputs)`` returns a dict.
    """

    def __init__(
        self,
        reference: nn.Module,
        call_reference: Callable[[Any], Sequence[torch.Tensor]],
        reference_inputs: Any,
        ours: nn.Module,
        our_inputs: Any,
        note: str,
    ):
        self.reference = reference
        self.call_reference = call_reference
        self.reference_inputs = reference_inputs
        self.ours = ours
        self.our_inputs = our_inputs
        self.note = note
        self.folded = fold_for_inference(ours)

    def run_reference(self) -> Sequence[torch.Tensor]:
        return self.call_reference(self.reference_inputs)

    def run_ours(self) -> List[torch.Tensor]:
        return list(self.ours(self.our_inputs).values())

    def run_folded(self) -> List[torch.Tensor]:
        return list(self.folded(self.our_inputs).values())

    def reference_in_channels_last(self) -> Outputs:
        """The reference on channels-last copies of its inputs (made once, here)."""
        inputs = self.reference_inputs
        if isinstance(inputs, dict):
            copies: Any = {k: v.contiguous(memory_format=torch.channels_last) for k, v in inputs.items()}
        else:
            copies = [v.contiguous(memory_format=torch.channels_last) for v in inputs]
        return lambda: self.call_reference(copies)


def _randomise_norms_and_fusions(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics/affines and fusion weights, so outputs really test the
    weight conversion (fresh modules have identity BNs and equal fusion weights)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                for tensor, (low, high) in (
                    (m.running_mean, (-0.5, 0.5)),
                    (m.running_var, (0.5, 2.0)),
                    (m.weight, (0.5, 1.5)),
                    (m.bias, (-0.2, 0.2)),
                ):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
        for name, p in module.named_parameters():
            if name.endswith("edge_weights"):
                p.copy_(torch.rand(p.shape, generator=generator) * 1.9 + 0.1)


def bifpn_contestants(case: str, size: List[int], batch: int, device: torch.device) -> Contestants:
    """effdet's EfficientDet neck vs our BiFPN with its converted weights, on ``batch``
    random images of ``size = [H, W]`` (square, a multiple of 128)."""
    from effdet import create_model

    name = EFFDET_MODELS[case]
    if size[0] != size[1] or size[0] % 128:
        raise ValueError(f"{case}: effdet needs a square size divisible by 128, got {size}")
    generator = torch.Generator().manual_seed(0)
    effdet = create_model(name, pretrained=False, pretrained_backbone=False, image_size=tuple(size))
    _randomise_norms_and_fusions(effdet.fpn, generator)
    effdet = effdet.to(device).eval()
    images = torch.randn(batch, 3, *size, generator=generator).to(device)
    with torch.no_grad():
        features = [f.contiguous() for f in effdet.backbone(images)]
    config = effdet.config
    names = [f"c{config.min_level + i}" for i in range(len(features))]
    stand_in = PrecomputedFeatures.like(
        dict(zip(names, features)), {n: 2 ** (config.min_level + i) for i, n in enumerate(names)}
    )
    tf_weights = name.startswith("tf_")
    # effdet's neck: BN, its top block (1x1 conv + max-pools over the last input), plain cells
    style = LayerStyle("BN", same_padding=tf_weights, bias_before_norm=tf_weights)
    num_extra = config.max_level - (config.min_level + len(names) - 1)
    top_block = EfficientDetTopBlock(features[-1].shape[1], config.fpn_channels, num_extra, names[-1], style)
    ours = BiFPN(stand_in, names, config.fpn_channels, config.fpn_cell_repeats, top_block,
                 CellOptions(residual=False), style)
    converted, _ = convert_effdet_state_dict(effdet.state_dict(), ours)
    ours.load_state_dict({k: v for k, v in converted.items() if not k.startswith("bottom_up.")})
    ours = ours.to(device).eval()
    # effdet's BiFpn.forward appends P6/P7 to the list it gets: it gets a fresh one each call.
    return Contestants(
        effdet.fpn,
        lambda x: effdet.fpn(list(x)),
        features,
        ours,
        dict(zip(names, features)),
        note=f"effdet {name}",
    )


def fpn_contestants(size: List[int], batch: int, device: torch.device) -> Contestants:
    """Detectron2's FPN (R50, P2-P6, max-pool P6) vs our WeightedFPN with its weights, on
    ``batch`` random images of ``size = [H, W]``."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import FPN, build_resnet_backbone
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    cfg = get_cfg()
    in_features = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.OUT_FEATURES = in_features
    torch.manual_seed(0)
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3)).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=generator).to(device)
    padded_size = [-(-s // 32) * 32 for s in size]
    with torch.no_grad():
        ours_in = {k: v for k, v in resnet(images).items() if k in in_features}
        # ImageList pads bottom/right with zeros up to the size divisibility.
        padded = F.pad(images, [0, padded_size[1] - size[1], 0, padded_size[0] - size[0]])
        reference_in = ours_in if padded_size == size else resnet(padded)
    strides = {k: v.stride for k, v in resnet.output_shape().items()}
    reference = FPN(
        PrecomputedFeatures.like(reference_in, strides), in_features, 256, "", LastLevelMaxPool(), "sum"
    )
    ours = WeightedFPN(
        PrecomputedFeatures.like(ours_in, strides), in_features, 256, "", MaxPoolTopBlock("p5"), "sum"
    )
    ours.load_state_dict(reference.state_dict())
    reference, ours = reference.to(device).eval(), ours.to(device).eval()
    note = "detectron2 FPN"
    if padded_size != size:
        try:
            with torch.no_grad():
                reference(ours_in)
            note += f" (also runs at {size[0]}x{size[1]})"
        except RuntimeError as e:
            first_line = str(e).splitlines()[0]
            note += (
                f" fails at {size[0]}x{size[1]} ({first_line}); it gets the input padded to "
                f"{padded_size[0]}x{padded_size[1]}, ours the unpadded one"
            )
    return Contestants(reference, lambda x: list(reference(x).values()), reference_in, ours, ours_in, note)


def contestants(case: str, size: List[int], batch: int, device: torch.device) -> Contestants:
    """The contestants of ``case`` (one of :data:`CASES`)."""
    if case == "fpn-r50":
        return fpn_contestants(size, batch, device)
    return bifpn_contestants(case, size, batch, device)


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("nan")
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def _backward(run: Outputs) -> None:
    sum(o.sum() for o in run()).backward()


def _train_step(module: nn.Module, run: Outputs) -> None:
    module.zero_grad(set_to_none=True)
    _backward(run)


def _train_memory(module: nn.Module, run: Outputs, device: torch.device) -> float:
    """Peak MiB of one forward + backward, gradients freed before (not during) it."""
    module.zero_grad(set_to_none=True)
    return peak_memory_bytes(lambda: _backward(run), device) / 2**20


def _inference_columns(
    c: Contestants, device: torch.device, repeats: int, warmup: int, memory: bool, channels_last: bool
) -> Dict[str, Any]:
    """Output differences, then inference times (eval, ``no_grad``) of the reference, ours
    and ours folded, interleaved, their ratios and (with ``memory``) peak memories."""
    row: Dict[str, Any] = {}
    with torch.no_grad():
        reference_out = c.run_reference()
        row["max_diff"] = _max_diff(reference_out, c.run_ours())
        row["folded_max_diff"] = _max_diff(reference_out, c.run_folded())

    def no_grad(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn()

        return run

    contenders = {
        "ref": no_grad(c.run_reference),
        "our": no_grad(c.run_ours),
        "folded": no_grad(c.run_folded),
    }
    if channels_last:
        contenders["ref_cl"] = no_grad(c.reference_in_channels_last())
    infer = interleaved_times(contenders, repeats, warmup, device)
    for name, times in infer.items():
        row[f"{name}_infer_ms"] = 1000 * median(times)
    row["infer_ratio"] = row["our_infer_ms"] / row["ref_infer_ms"]
    row["folded_ratio"] = row["folded_infer_ms"] / row["ref_infer_ms"]
    if channels_last:
        row["infer_ratio_vs_ref_cl"] = row["our_infer_ms"] / row["ref_cl_infer_ms"]
        row["folded_ratio_vs_ref_cl"] = row["folded_infer_ms"] / row["ref_cl_infer_ms"]
    if memory:
        row["ref_infer_mem_MB"] = peak_memory_bytes(no_grad(c.run_reference), device) / 2**20
        row["our_infer_mem_MB"] = peak_memory_bytes(no_grad(c.run_ours), device) / 2**20
    return row


def _training_columns(
    c: Contestants, device: torch.device, repeats: int, warmup: int, memory: bool
) -> Dict[str, Any]:
    """Training-step times (train mode, forward + backward of the summed outputs) of the
    reference and ours, interleaved, their ratio and (with ``memory``) peak memories."""
    row: Dict[str, Any] = {}
    c.reference.train()
    c.ours.train()
    steps = {
        "ref": lambda: _train_step(c.reference, c.run_reference),
        "our": lambda: _train_step(c.ours, c.run_ours),
    }
    times = interleaved_times(steps, repeats, warmup, device)
    row["ref_train_ms"] = 1000 * median(times["ref"])
    row["our_train_ms"] = 1000 * median(times["our"])
    row["train_ratio"] = row["our_train_ms"] / row["ref_train_ms"]
    if memory:
        row["ref_train_mem_MB"] = _train_memory(c.reference, c.run_reference, device)
        row["our_train_mem_MB"] = _train_memory(c.ours, c.run_ours, device)
        row["train_mem_ratio"] = row["our_train_mem_MB"] / row["ref_train_mem_MB"]
    c.reference.eval()
    c.ours.eval()
    return row


def race_name(case: str, size: List[int], batch: int) -> str:
    """``"bifpn-d0 512x512 bs8"``: a race's ``race`` column."""
    return f"{case} {size[0]}x{size[1]} bs{batch}"


def race(
    case: str,
    size: List[int],
    batch: int,
    device: torch.device,
    repeats: int,
    warmup: int,
    train: bool = True,
    memory: bool = True,
    reference_channels_last: bool = False,
) -> Dict[str, Any]:
    """Run one race; returns its result row (times in ms, memory in MiB).

    Args:
        case: one of :data:`CASES`; ``size``: ``[H, W]`` of the images; ``batch``: images.
        repeats, warmup: measured and discarded rounds of :func:`interleaved_times`.
        train: also time a training step and, with ``memory``, measure its peak memory.
        memory: measure peak memory (see ``MEMORY_METHODS``).
        reference_channels_last: also time the reference on channels-last inputs.
    Returns:
        the race's name and settings, parameter counts, output differences, the
        inference and training columns and, last, the reference's ``note``.
    """
    c = contestants(case, size, batch, device)
    row = {
        "race": race_name(case, size, batch),
        "case": case,
        "size": f"{size[0]}x{size[1]}",
        "batch": batch,
        "threads": torch.get_num_threads(),
        "runs": repeats,
        "ref_params": count_parameters(c.reference),
        "our_params": count_parameters(c.ours),
    }
    row.update(_inference_columns(c, device, repeats, warmup, memory, reference_channels_last))
    if train:
        row.update(_training_columns(c, device, repeats, warmup, memory))
    row["reference"] = c.note
    return row


def target_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (race, targeted ratio): the measured ratio, the bound and whether met."""
    out = []
    for row in rows:
        for metric, bound in TARGETS[row["case"].split("-")[0]].items():
            if metric in row:
                out.append(
                    {
                        "race": row["race"],
                        "metric": metric,
                        "ratio": row[metric],
                        "target": f"<= {bound}",
                        "met": "yes" if row[metric] <= bound else "NO",
                        "inputs": "reference's padded" if "padded" in row["reference"] else "same",
                    }
                )
    return out
