"""Our EfficientDet D0-D7x against effdet's (rwightman's EfficientDet), in one process.

A *pair* is effdet's model ``effdet_name`` (random weights) and ours, built from our
``configs/EfficientDet/EfficientDet-<variant>.yaml`` with the effdet model's flavour
(``tf_`` models: TF "same" padding and redundant biases; bottom-up name, stochastic depth)
and effdet's class count, holding effdet's weights (:func:`convert_effdet_detector`): the
two compute the same function. The config's widths, depths, repeats, anchor scale and
levels are checked against effdet's config on the way.

- :func:`size_rows`: parameters and fvcore FLOPs (multiply-adds) of both networks
  (backbone + BiFPN + class and box nets, one image at the config's size), next to the
  paper's figures and our shipped config (80 classes);
- :func:`race_rows`: wall-clock medians, interleaved round by round, of
  - inference: pixels (0-255) -> normalised batch -> network -> detections (effdet's
    ``DetBenchPredict``; ours: :func:`~bifpn_d2.export.raw_inference`, and the same on
    ``fold_for_inference(ours)``);
  - training step: pixels + boxes -> losses -> backward (effdet's ``DetBenchTrain`` with
    its anchor labeler; ours: the model in training mode);
  effdet as shipped and in channels-last memory format (model and input), its faster one
  being "effdet best". Ratios are ours / effdet best. On the CPU, or on a GPU in fp32
  and in mixed precision (``torch.autocast`` with float16, for both networks alike).
  With ``compiled``, inference also as ``torch.compile`` (inductor, static shapes) makes
  it: ours through :func:`bifpn_d2.compile_model` (backbone and head), effdet's network
  (its ``DetBenchPredict`` model) compiled the same way; the rows then give both compiled
  times, ``ours compiled / effdet compiled``, ``ours compiled / ours`` and the seconds
  the first (compiling) call of each took.

Not imported by ``import bifpn_d2``; needs ``effdet``.
"""
import contextlib
import copy
import itertools
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from bifpn_d2.compile import compile_model
from bifpn_d2.convert import box_channel_order, convert_effdet_detector
from bifpn_d2.engine.config import load_config
from bifpn_d2.export import raw_inference
from bifpn_d2.modeling.fold import fold_for_inference

from .measure import count_flops, count_parameters, interleaved_times, median
from .zoo import EFFICIENTDET_PAPER

__all__ = [
    "PAPER",
    "PRECISIONS",
    "RACE_TARGET",
    "LITE_VARIANTS",
    "VARIANTS",
    "build_pair",
    "config_path",
    "race_rows",
    "size_rows",
]

VARIANTS = ("D0", "D1", "D2", "D3", "D4", "D5", "D6", "D7", "D7x")
# effdet's tf_efficientdet_lite* (EfficientDet-Lite, not in the paper)
LITE_VARIANTS = ("Lite0", "Lite1", "Lite2", "Lite3", "Lite4")
# Published (params M, GFLOPs): the paper's Table 2 for D0-D7, google/automl's README for D7x.
PAPER = {f"D{phi}": (params, gflops) for phi, (_, params, gflops, _) in EFFICIENTDET_PAPER.items()}
PAPER["D7x"] = (77.0, 410.0)
RACE_TARGET = 0.7  # ours / effdet's best, every row
PRECISIONS = ("fp32", "amp")  # "amp": float16 autocast (on a GPU)
# Ground-truth boxes of every image of the training step, as fractions of (W, H, W, H).
_BOXES = torch.tensor([[0.1, 0.1, 0.3, 0.25], [0.4, 0.3, 0.8, 0.7], [0.05, 0.5, 0.95, 0.98]])
_CLASSES = torch.tensor([0, 1, 2])


def config_path(variant: str, config_root: str = "configs") -> str:
    """``configs/EfficientDet/EfficientDet-<variant>.yaml``."""
    return os.path.join(config_root, "EfficientDet", f"EfficientDet-{variant}.yaml")


def _import_effdet():
    try:
        import effdet
    except ImportError as e:
        raise ImportError("comparing with effdet needs it installed: pip install effdet") from e
    return effdet


def _our_config(variant: str, effdet_config: Any, config_root: str):
    """Our config of ``variant`` in the flavour of ``effdet_config``; checks that both
    describe the same network."""
    cfg = load_config(config_path(variant, config_root), ["MODEL.DEVICE", "cpu"])
    bc, ec = cfg.MODEL.BIFPN, cfg.MODEL.EFFICIENTDET
    ours = (bc.OUT_CHANNELS, bc.NUM_CELLS, ec.NUM_REPEATS, ec.ANCHOR_SCALE, len(ec.IN_FEATURES),
            (bc.FUSION or bc.FUSE_TYPE) == "sum", cfg.INPUT.MIN_SIZE_TEST)
    theirs = (effdet_config.fpn_channels, effdet_config.fpn_cell_repeats, effdet_config.box_class_repeats,
              effdet_config.anchor_scale, effdet_config.num_levels, effdet_config.fpn_name == "bifpn_sum",
              effdet_config.image_size[0])
    if ours != theirs:
        raise ValueError(f"{config_path(variant, config_root)} (width, cells, repeats, anchor scale, levels, "
                         f"sum fusion, size) = {ours} but effdet's {effdet_config.name} has {theirs}")
    tf_padding = effdet_config.pad_type == "same"
    cfg.MODEL.EFFICIENTNET.NAME = effdet_config.backbone_name
    cfg.MODEL.EFFICIENTNET.DROP_PATH_RATE = (effdet_config.backbone_args or {}).get("drop_path_rate", 0.0)
    cfg.MODEL.BIFPN.SAME_PADDING = tf_padding
    cfg.MODEL.BIFPN.BIAS_BEFORE_NORM = ec.BIAS_BEFORE_NORM = effdet_config.redundant_bias
    cfg.MODEL.EFFICIENTNET.NORM = bc.NORM = ec.NORM = "BN"  # one process, as effdet's plain BN
    ec.NUM_CLASSES = effdet_config.num_classes
    cfg.MODEL.WEIGHTS = ""
    return cfg


def build_pair(
    variant: str,
    effdet_name: str,
    device: torch.device,
    config_root: str = "configs",
    image_size: Optional[Sequence[int]] = None,
) -> Tuple[nn.Module, nn.Module]:
    """``(effdet's model, ours)`` with the same (random) weights, in eval mode on ``device``;
    effdet's is built for ``image_size`` (default: its own, the config's size)."""
    effdet = _import_effdet()
    cfg = _our_config(variant, effdet.get_efficientdet_config(effdet_name), config_root)
    size = {"image_size": list(image_size)} if image_size else {}
    reference = effdet.create_model(effdet_name, pretrained=False, pretrained_backbone=False, **size)
    cfg.MODEL.DEVICE = device.type
    ours = build_model(cfg)
    state, missing, unexpected = convert_effdet_detector(reference.state_dict(), ours)
    if missing or unexpected:
        raise ValueError(f"{effdet_name} -> {variant}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    ours.load_state_dict(state)
    return reference.to(device).eval(), ours.eval()


class _Network(nn.Module):
    """A detector's network alone (no pre- or post-processing): ``x -> (outputs, ...)``,
    class then box outputs per level, for FLOP counting."""

    def __init__(self, model: nn.Module, ours: bool):
        super().__init__()
        self.model = model
        self.ours = ours

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.ours:
            features = self.model.backbone(x)
            logits, boxes = self.model.head([features[f] for f in self.model.head_in_features])
        else:
            logits, boxes = self.model(x)
        return tuple(logits) + tuple(boxes)


def size_rows(
    variants: Sequence[str] = VARIANTS,
    config_root: str = "configs",
    flops: bool = True,
    on_row: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> List[Dict[str, Any]]:
    """Parameters and FLOPs of ours and effdet's ``tf_efficientdet_<variant>`` (effdet's
    ports of the paper's TensorFlow models: 90 classes, redundant biases), one image at the
    config's size, plus our shipped config's parameters (80 classes, no redundant biases).
    ``on_row`` is called with each row as it is measured."""
    rows = []
    device = torch.device("cpu")
    for variant in variants:
        reference, ours = build_pair(variant, f"tf_efficientdet_{variant.lower()}", device, config_root)
        size = reference.config.image_size
        shipped = load_config(config_path(variant, config_root), ["MODEL.DEVICE", "cpu"])
        shipped.MODEL.DEVICE = "meta"
        with torch.device("meta"):
            shipped_params = count_parameters(build_model(shipped))
        row: Dict[str, Any] = {
            "variant": variant,
            "input": f"{size[0]}x{size[1]}",
            "params_M": count_parameters(ours) / 1e6,
            "effdet_params_M": count_parameters(reference) / 1e6,
            "paper_params_M": PAPER.get(variant, ("-", "-"))[0],
            "shipped_config_params_M": shipped_params / 1e6,
        }
        row["params_ratio"] = row["params_M"] / row["effdet_params_M"]
        if flops:
            x = torch.zeros(1, 3, *size)
            row["GFLOPs"] = count_flops(_Network(ours, True), (x,)) / 1e9
            row["effdet_GFLOPs"] = count_flops(_Network(reference, False), (x,)) / 1e9
            row["paper_GFLOPs"] = PAPER.get(variant, ("-", "-"))[1]
            row["GFLOPs_ratio"] = row["GFLOPs"] / row["effdet_GFLOPs"]
        rows.append(row)
        if on_row is not None:
            on_row(row)
        del reference, ours
    return rows


def _pixels(batch: int, size: Sequence[int], seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed)) * 255


class _Networks:
    """Both detectors in every form a race times, built once per variant on ``device``:
    effdet's prediction and training benches, as shipped and channels-last; ours, folded,
    and a copy in training mode."""

    def __init__(self, reference: nn.Module, ours: nn.Module, device: torch.device):
        effdet = _import_effdet()
        reference_cl = copy.deepcopy(reference).to(memory_format=torch.channels_last)
        # .to(device): the benches build their anchors on the CPU
        self.predict = effdet.DetBenchPredict(reference).to(device).eval()
        self.predict_cl = effdet.DetBenchPredict(reference_cl).to(device).eval()
        self.train, self.train_cl = (
            effdet.DetBenchTrain(copy.deepcopy(model), create_labeler=True).to(device).train()
            for model in (reference, reference_cl)
        )
        self.ours = ours.eval()
        self.folded = fold_for_inference(ours)
        self.reference = reference
        self.ours_compiled: Optional[nn.Module] = None
        self.predict_compiled: Optional[nn.Module] = None
        self.ours_train = copy.deepcopy(ours).train()
        self.mean = ours.pixel_mean.view(1, 3, 1, 1)
        self.std = ours.pixel_std.view(1, 3, 1, 1)

    def compile(self, mode: Optional[str] = None) -> None:
        """Compiled copies for inference (static shapes: each batch size compiles anew);
        ``mode``: as ``torch.compile``'s (e.g. "reduce-overhead": CUDA graphs on a GPU)."""
        effdet = _import_effdet()
        self.ours_compiled = compile_model(copy.deepcopy(self.ours), mode=mode, dynamic=False)
        network = copy.deepcopy(self.reference)
        network.compile(mode=mode, dynamic=False)
        self.predict_compiled = effdet.DetBenchPredict(network).to(self.mean.device).eval()


class _Contestants:
    """The callables of one race (one variant, size and batch): each runs one inference or
    one training step of ``networks`` from the same pixels."""

    def __init__(self, networks: _Networks, pixels: torch.Tensor):
        device = pixels.device
        height, width = pixels.shape[-2:]
        self.net = networks
        self.pixels = pixels
        self.pixels_cl = pixels.contiguous(memory_format=torch.channels_last)
        scale = torch.tensor([width, height, width, height], dtype=torch.float)
        boxes, classes = (_BOXES * scale).to(device), _CLASSES.to(device)
        batch = len(pixels)
        # effdet: (y0, x0, y1, x1) boxes, classes from 1
        self.target = {"bbox": boxes[:, [1, 0, 3, 2]].expand(batch, -1, -1),
                       "cls": (classes + 1.0).expand(batch, -1)}
        self.inputs = [{"image": image, "instances": Instances((height, width), gt_boxes=Boxes(boxes),
                                                              gt_classes=classes)} for image in pixels]

    def _normalised(self, channels_last: bool) -> torch.Tensor:
        pixels = self.pixels_cl if channels_last else self.pixels
        return (pixels - self.net.mean) / self.net.std

    def inference(self) -> Dict[str, Callable[[], Any]]:
        images = [{"image": x["image"]} for x in self.inputs]
        fns = {
            "effdet": lambda: self.net.predict(self._normalised(False)),
            "effdet channels-last": lambda: self.net.predict_cl(self._normalised(True)),
            "ours": lambda: raw_inference(self.net.ours, images),
            "ours folded": lambda: raw_inference(self.net.folded, images),
        }
        if self.net.ours_compiled is not None:
            fns["effdet compiled"] = lambda: self.net.predict_compiled(self._normalised(False))
            fns["ours compiled"] = lambda: raw_inference(self.net.ours_compiled, images)
        return fns

    def compile_seconds(self) -> Dict[str, float]:
        """Seconds of the first call of each compiled contestant (compiling for this batch)."""
        fns = self.inference()
        seconds = {}
        for label in ("effdet compiled", "ours compiled"):
            start = time.perf_counter()
            with torch.no_grad():
                fns[label]()
            seconds[f"{label} first call s"] = time.perf_counter() - start
        return seconds

    def training(self) -> Dict[str, Callable[[], Any]]:
        def effdet_step(bench: nn.Module, channels_last: bool) -> None:
            bench.zero_grad(set_to_none=True)
            bench(self._normalised(channels_last), self.target)["loss"].backward()

        def our_step() -> None:
            self.net.ours_train.zero_grad(set_to_none=True)
            with EventStorage():
                losses = self.net.ours_train(self.inputs)
            sum(losses.values()).backward()

        return {
            "effdet": lambda: effdet_step(self.net.train, False),
            "effdet channels-last": lambda: effdet_step(self.net.train_cl, True),
            "ours": our_step,
        }


@torch.no_grad()
def _relative_difference(reference: nn.Module, ours: nn.Module, x: torch.Tensor) -> float:
    """The largest ``max |ours - effdet| / max |effdet|`` over the network's outputs (class
    logits, box regressions in effdet's order) on ``x``."""
    expected, actual = _Network(reference, False)(x), _Network(ours, True)(x)
    num_levels = len(actual) // 2
    order = box_channel_order(ours.head.num_anchors)
    expected = expected[:num_levels] + tuple(e[:, order] for e in expected[num_levels:])
    return max(((a - e).abs().max() / e.abs().max()).item() for a, e in zip(actual, expected))


def _in_precision(fn: Callable[[], Any], device: torch.device, precision: str) -> Callable[[], Any]:
    """``fn`` run in ``precision``: "fp32", or "amp" (autocast to float16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")

    amp = precision == "amp"

    def run() -> Any:
        with torch.autocast(device.type, dtype=torch.float16) if amp else contextlib.nullcontext():
            return fn()

    return run


def race_rows(
    variants: Sequence[str] = ("D0", "D3"),
    batch_sizes: Sequence[int] = (1, 8),
    threads: Sequence[int] = (1, 2),
    repeats: int = 5,
    warmup: int = 1,
    sizes: Optional[Dict[str, Sequence[int]]] = None,
    config_root: str = "configs",
    on_row: Optional[Callable[[Dict[str, Any]], None]] = None,
    device: str = "cpu",
    precisions: Sequence[str] = ("fp32",),
    compiled: bool = False,
    compile_mode: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Race ours against effdet's ``efficientdet_<variant>`` (PyTorch padding, the flavour
    of our configs): for each variant, thread count (CPU) or precision (GPU) and batch
    size, an inference row and a training-step row (see the module docstring).

    Args:
        sizes: input ``[H, W]`` per variant (default: the config's, e.g. 512 for D0); effdet
            builds its anchors and BiFPN for that size.
        repeats, warmup: measured and discarded rounds of :func:`interleaved_times`.
        on_row: called with each row as it is measured.
        device: "cpu" or "cuda"; on "cuda" ``threads`` is ignored.
        precisions: "fp32" and/or "amp" (float16 autocast; "amp" needs ``device="cuda"``).
        compiled: also race compiled inference (see the module docstring).
        compile_mode: ``torch.compile``'s ``mode`` for both compiled contestants (default:
            torch's; "reduce-overhead" replays CUDA graphs on a GPU).
    Returns:
        rows with milliseconds per contestant (medians) and ``ours / effdet best`` ratios.
    """
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"precisions must be among {PRECISIONS}, got {unknown}")
    effdet = _import_effdet()
    device = torch.device(device)
    if device.type == "cpu" and "amp" in precisions:
        raise ValueError("precision 'amp' is raced on a GPU only (device='cuda')")
    if device.type == "cuda":
        threads = [torch.get_num_threads()]
    rows = []
    for variant in variants:
        name = f"efficientdet_{variant.lower()}"
        size = list((sizes or {}).get(variant) or effdet.get_efficientdet_config(name).image_size)
        reference, ours = build_pair(variant, name, device, config_root, size)
        difference = _relative_difference(reference, ours, torch.randn(1, 3, *size, device=device))
        networks = _Networks(reference, ours, device)
        if compiled:
            networks.compile(compile_mode)
        for num_threads in threads:
            torch.set_num_threads(num_threads)
            where = {"threads": num_threads} if device.type == "cpu" else {"device": device.type}
            for batch in batch_sizes:
                contestants = _Contestants(networks, _pixels(batch, size).to(device))
                first_calls = contestants.compile_seconds() if compiled else {}
                phases = (("inference", contestants.inference()), ("training step", contestants.training()))
                for precision, (phase, fns) in itertools.product(precisions, phases):
                    fns = {label: _in_precision(fn, device, precision) for label, fn in fns.items()}
                    with torch.no_grad() if phase == "inference" else torch.enable_grad():
                        times = interleaved_times(fns, repeats, warmup, device=device)
                    ms = {k: 1000 * median(v) for k, v in times.items()}
                    best = min(ms["effdet"], ms["effdet channels-last"])
                    row = {"variant": variant, "input": f"{size[0]}x{size[1]}", "batch": batch, **where,
                           "precision": precision, "phase": phase, **{f"{k} ms": v for k, v in ms.items()},
                           "ours / effdet best": ms["ours"] / best}
                    if "ours folded" in ms:
                        row["ours folded / effdet best"] = ms["ours folded"] / best
                    if "ours compiled" in ms:
                        row["ours compiled / effdet compiled"] = ms["ours compiled"] / ms["effdet compiled"]
                        row["ours compiled / ours"] = ms["ours compiled"] / ms["ours"]
                        row["compile mode"] = compile_mode or "default"
                        row.update(first_calls)
                    row["target"] = RACE_TARGET
                    row["output difference (relative)"] = difference
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    return rows

