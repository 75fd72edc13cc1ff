#!/usr/bin/env python
"""Race our necks against their references, neck alone, in one process.

Cases (``--cases``):

- ``bifpn-d0``: our BiFPN vs effdet's ``efficientdet_d0`` BiFPN (64 ch, 3 cells) at
  ``--d0-size`` (512);
- ``bifpn-d3``: the same for ``efficientdet_d3`` (160 ch, 6 cells) at ``--d3-size`` (896);
- ``fpn-r50``: our :class:`WeightedFPN` vs Detectron2's ``FPN`` over ResNet-50, P2-P6,
  at ``--fpn-sizes`` (800x800 and 800x1333, Detectron2's test size, whose 1333 is not a
  multiple of 32: Detectron2's FPN fails on it, so it is given the input padded to
  800x1344 as its ``ImageList`` would, and the row says so).

For each case, size and batch size: the reference's bottom-up network (random weights)
computes features once; the reference neck and ours (built on
:class:`PrecomputedFeatures`, holding the reference's weights: effdet's via
``convert_effdet_state_dict``, Detectron2's under the same names) get those same
tensors. Before timing, BN statistics and fusion weights of the reference are
randomised (so equality is not trivial) and the largest output difference is printed.
Then, with the same threads:

- inference (eval, ``no_grad``): reference, ours, ours folded (``fold_for_inference``),
  interleaved round by round; medians;
- training step (train mode, forward + backward of the sum of the outputs): reference
  and ours, interleaved; medians;
- peak memory of one training step and one inference, same method for both (see
  :data:`MEMORY_METHODS`).

Ratios are ours / reference (< 1: ours is faster or smaller), next to the targets.
Writes ``race.csv``, ``race.md`` and ``race.png`` to ``--output-dir``.

Example::

    python tools/neck_race.py --cases bifpn-d0 bifpn-d3 --batch-sizes 1 8 --repeats 7 --threads 1

On a shared machine, use fewer threads than there are free cores: an OpenMP thread that
waits for a core held by another process stalls every parallel op of both contestants.
"""

import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bifpn_d2 import BiFPN, MaxPoolTopBlock, WeightedFPN, fold_for_inference
from bifpn_d2.benchmark import (
    MEMORY_METHODS,
    PrecomputedFeatures,
    count_parameters,
    interleaved_times,
    markdown_table,
    median,
    parse_size,
    peak_memory_bytes,
    plot_bars,
    write_csv,
    write_text,
)
from bifpn_d2.convert import convert_effdet_state_dict

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
    """effdet's EfficientDet neck vs our BiFPN with its converted weights."""
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
    ours = BiFPN(
        stand_in,
        names,
        config.fpn_channels,
        config.fpn_cell_repeats,
        config.max_level,
        same_padding=tf_weights,
        bias_before_norm=tf_weights,
    )
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
    """Detectron2's FPN (R50, P2-P6, max-pool P6) vs our WeightedFPN with its weights."""
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


def race(c: Contestants, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Run every measurement of one race; returns one result row (times in ms)."""
    repeats, warmup, train, memory = args.repeats, args.warmup, not args.no_train, not args.no_memory
    row: Dict[str, Any] = {}
    row["ref_params"] = count_parameters(c.reference)
    row["our_params"] = count_parameters(c.ours)
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
    if args.reference_channels_last:
        contenders["ref_cl"] = no_grad(c.reference_in_channels_last())
    infer = interleaved_times(contenders, repeats, warmup, device)
    for name, times in infer.items():
        row[f"{name}_infer_ms"] = 1000 * median(times)
    row["infer_ratio"] = row["our_infer_ms"] / row["ref_infer_ms"]
    row["folded_ratio"] = row["folded_infer_ms"] / row["ref_infer_ms"]
    if args.reference_channels_last:
        row["infer_ratio_vs_ref_cl"] = row["our_infer_ms"] / row["ref_cl_infer_ms"]
        row["folded_ratio_vs_ref_cl"] = row["folded_infer_ms"] / row["ref_cl_infer_ms"]
    if memory:
        row["ref_infer_mem_MB"] = peak_memory_bytes(no_grad(c.run_reference), device) / 2**20
        row["our_infer_mem_MB"] = peak_memory_bytes(no_grad(c.run_ours), device) / 2**20
    if train:
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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--d0-size", type=int, default=512, help="square input side for bifpn-d0")
    parser.add_argument("--d3-size", type=int, default=896, help="square input side for bifpn-d3")
    parser.add_argument("--fpn-sizes", nargs="+", default=["800x800", "800x1333"], help="HxW for fpn-r50")
    parser.add_argument("--repeats", type=int, default=7, help="measured rounds (medians over these)")
    parser.add_argument("--warmup", type=int, default=2, help="discarded rounds before measuring")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-train", action="store_true", help="skip training-step times and memory")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    parser.add_argument(
        "--reference-channels-last",
        action="store_true",
        help="also time the reference's inference on channels-last copies of its inputs (informative: "
        "ours converts on CPU by itself; the targets compare with the reference as shipped)",
    )
    parser.add_argument("--output-dir", default="output/neck_race")
    return parser.parse_args(argv)


def races(args: argparse.Namespace) -> List[Tuple[str, List[int], int]]:
    """(case, size, batch) of every race requested."""
    out = []
    for case in args.cases:
        if case == "fpn-r50":
            sizes = [parse_size(s) for s in args.fpn_sizes]
        else:
            sizes = [[args.d0_size] * 2 if case == "bifpn-d0" else [args.d3_size] * 2]
        out += [(case, size, batch) for size in sizes for batch in args.batch_sizes]
    return out


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Run the races given on the command line; returns the result rows."""
    args = parse_args(argv)
    logging.getLogger("timm").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"{args.warmup} warmup + {args.repeats} measured rounds, interleaved; memory: "
        f"{MEMORY_METHODS[device.type]}",
        flush=True,
    )
    rows = []
    for case, size, batch in races(args):
        label = f"{case} {size[0]}x{size[1]} bs{batch}"
        print(f"\n== {label}", flush=True)
        if case == "fpn-r50":
            contestants = fpn_contestants(size, batch, device)
        else:
            contestants = bifpn_contestants(case, size, batch, device)
        row = {
            "race": label,
            "case": case,
            "size": f"{size[0]}x{size[1]}",
            "batch": batch,
            "threads": torch.get_num_threads(),
            "runs": args.repeats,
        }
        row.update(race(contestants, args, device))
        row["reference"] = contestants.note
        rows.append(row)
        print(markdown_table([row], [k for k in row if k not in ("race", "case", "reference")]), end="")
        print(f"reference: {row['reference']}", flush=True)
        del contestants

    columns = [
        "race",
        "ref_params",
        "our_params",
        "max_diff",
        "folded_max_diff",
        "ref_infer_ms",
        "our_infer_ms",
        "folded_infer_ms",
        "infer_ratio",
        "folded_ratio",
        "ref_train_ms",
        "our_train_ms",
        "train_ratio",
        "ref_infer_mem_MB",
        "our_infer_mem_MB",
        "ref_train_mem_MB",
        "our_train_mem_MB",
        "train_mem_ratio",
    ]
    if args.reference_channels_last:
        columns += ["ref_cl_infer_ms", "infer_ratio_vs_ref_cl", "folded_ratio_vs_ref_cl"]
    targets = target_rows(rows)
    text = (
        f"# Neck race ({device}, {args.threads} threads, medians of {args.repeats} interleaved runs)\n\n"
        + markdown_table(rows, columns)
        + "\nReferences: "
        + "; ".join(f"{r['race']}: {r['reference']}" for r in rows)
        + f"\n\nPeak memory: {MEMORY_METHODS[device.type]}.\n\n## Targets (ours / reference)\n\n"
        + markdown_table(targets)
    )
    print("\n" + text)
    os.makedirs(args.output_dir, exist_ok=True)
    write_csv(rows, os.path.join(args.output_dir, "race.csv"))
    write_text(text, os.path.join(args.output_dir, "race.md"))
    ratio_names = ["infer_ratio", "folded_ratio", "train_ratio", "train_mem_ratio"]
    plot_bars(
        [r["race"] for r in rows],
        {name: [r.get(name, float("nan")) for r in rows] for name in ratio_names},
        "ours / reference (lower is better)",
        os.path.join(args.output_dir, "race.png"),
        title=f"Neck race, {device}, {args.threads} threads",
        reference_lines={"parity (1.0)": 1.0},
    )
    print(f"wrote race.csv, race.md, race.png to {args.output_dir}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
