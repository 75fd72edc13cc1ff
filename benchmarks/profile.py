"""Where an EfficientDet's time goes, ours against effdet's, stage by stage, in one process.

For one variant and batch size, each stage is timed on its own (its inputs computed once
beforehand), all stages of both detectors interleaved round by round
(:func:`~benchmarks.measure.interleaved_times`), medians in milliseconds:

- inference: batching and normalisation, bottom-up network, neck (BiFPN, with the top
  block), class and box nets, post-processing (scores, top-k, box decoding, NMS), and for
  ours Detectron2's rescaling of the detections (``detector_postprocess``);
- training step: forward to the losses, and forward + backward (the backward's share is
  their difference).

The stage sums are listed next to the whole call (pixels to detections), whose time also
holds what the stages leave out (Python between them). ``share`` is a stage's part of the
stage sum. Both detectors hold the same weights (:func:`~benchmarks.efficientdet_race.build_pair`).
"""

from typing import Any, Callable, Dict, List, Sequence

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from .efficientdet_race import _import_effdet, build_pair
from .measure import interleaved_times, median

__all__ = ["profile_rows"]


def _our_stages(model, pixels: torch.Tensor) -> Dict[str, Callable[[], Any]]:
    inputs = [{"image": image} for image in pixels]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        bottom_up = model.backbone.bottom_up(images.tensor)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        detections = model.forward_inference(images, features, predictions)
    height, width = pixels.shape[-2:]
    return {
        "batching + normalisation": lambda: model.preprocess_image(inputs),
        "bottom-up": lambda: model.backbone.bottom_up(images.tensor),
        "neck": lambda: model.backbone.pyramid(bottom_up),
        "class + box nets": lambda: model.head(features),
        "post-processing": lambda: model.forward_inference(images, features, predictions),
        "rescaling": lambda: [detector_postprocess(d, height, width) for d in detections],
        "whole": lambda: model(inputs),
    }


def _effdet_stages(bench, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
    from effdet.bench import _batch_detection, _post_process

    model = bench.model
    with torch.no_grad():
        x = (pixels - mean) / std
        bottom_up = model.backbone(x)
        features = model.fpn(list(bottom_up))  # effdet's fpn appends P6/P7 to the list it gets
        class_out, box_out = model.class_net(features), model.box_net(features)

    def post_process():
        cls, box, indices, classes = _post_process(class_out, box_out, bench.num_levels, bench.num_classes,
                                                   max_detection_points=bench.max_detection_points)
        return _batch_detection(x.shape[0], cls, box, bench.anchors.boxes, indices, classes, None, None,
                                max_det_per_image=bench.max_det_per_image, soft_nms=bench.soft_nms)

    return {
        "batching + normalisation": lambda: (pixels - mean) / std,
        "bottom-up": lambda: model.backbone(x),
        "neck": lambda: model.fpn(list(bottom_up)),
        "class + box nets": lambda: (model.class_net(features), model.box_net(features)),
        "post-processing": post_process,
        "whole": lambda: bench((pixels - mean) / std),
    }


def _training_stages(ours, bench_train, pixels: torch.Tensor, mean, std) -> Dict[str, Callable[[], Any]]:
    height, width = pixels.shape[-2:]
    scale = torch.tensor([width, height, width, height], dtype=torch.float)
    boxes = (torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]) * scale).to(pixels.device)
    classes = torch.tensor([0, 1], device=pixels.device)
    inputs = [{"image": image, "instances": Instances((height, width), gt_boxes=Boxes(boxes),
                                                      gt_classes=classes)} for image in pixels]
    target = {"bbox": boxes[:, [1, 0, 3, 2]].expand(len(pixels), -1, -1),
              "cls": (classes + 1.0).expand(len(pixels), -1)}

    def ours_forward(backward: bool):
        ours.zero_grad(set_to_none=True)
        with EventStorage():
            loss = sum(ours(inputs).values())
        if backward:
            loss.backward()

    def effdet_forward(backward: bool):
        bench_train.zero_grad(set_to_none=True)
        loss = bench_train((pixels - mean) / std, target)["loss"]
        if backward:
            loss.backward()

    return {
        "ours: forward (losses)": lambda: ours_forward(False),
        "ours: forward + backward": lambda: ours_forward(True),
        "effdet: forward (losses)": lambda: effdet_forward(False),
        "effdet: forward + backward": lambda: effdet_forward(True),
    }


def profile_rows(
    variant: str = "D0",
    batch_sizes: Sequence[int] = (1, 8),
    threads: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    config_root: str = "configs",
    size: Sequence[int] = (),
    device: str = "cpu",
) -> List[Dict[str, Any]]:
    """One row per (batch size, phase, stage) with ``ours ms``, ``effdet ms``, their ratio
    and each stage's share of its detector's stage sum; on ``device`` ("cpu", with
    ``threads``, or "cuda": every stage synchronised before and after)."""
    import copy

    effdet = _import_effdet()
    torch.set_num_threads(threads)
    name = f"efficientdet_{variant.lower()}"
    size = list(size) or list(effdet.get_efficientdet_config(name).image_size)
    device = torch.device(device)
    reference, ours = build_pair(variant, name, device, config_root, size)
    # .to(device): the benches build their anchors on the CPU
    bench = effdet.DetBenchPredict(reference).to(device).eval()
    bench_train = effdet.DetBenchTrain(copy.deepcopy(reference), create_labeler=True).to(device).train()
    ours_train = copy.deepcopy(ours).train()
    mean, std = ours.pixel_mean.view(1, 3, 1, 1), ours.pixel_std.view(1, 3, 1, 1)
    rows: List[Dict[str, Any]] = []
    for batch in batch_sizes:
        pixels = (torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0)) * 255).to(device)
        ours_stages, effdet_stages = _our_stages(ours, pixels), _effdet_stages(bench, pixels, mean, std)
        fns = {f"ours: {k}": v for k, v in ours_stages.items()}
        fns.update({f"effdet: {k}": v for k, v in effdet_stages.items()})
        with torch.no_grad():
            ms = {k: 1000 * median(v) for k, v in interleaved_times(fns, repeats, warmup, device).items()}
        ours_sum = sum(ms[f"ours: {k}"] for k in ours_stages if k != "whole")
        effdet_sum = sum(ms[f"effdet: {k}"] for k in effdet_stages if k != "whole")
        totals = ("stage sum", "whole")
        for stage in list(ours_stages)[:-1] + list(totals):
            o = ours_sum if stage == "stage sum" else ms[f"ours: {stage}"]
            e = effdet_sum if stage == "stage sum" else ms.get(f"effdet: {stage}")
            rows.append({
                "variant": variant, "input": f"{size[0]}x{size[1]}", "batch": batch, "device": device.type,
                "threads": threads if device.type == "cpu" else "-", "phase": "inference", "stage": stage,
                "ours ms": o, "effdet ms": e if e is not None else "-",
                "ours / effdet": o / e if e else "-",
                "ours share": o / ours_sum if stage not in totals else "-",
                "effdet share": e / effdet_sum if e is not None and stage not in totals else "-",
            })
        steps = _training_stages(ours_train, bench_train, pixels, mean, std)
        t = {k: 1000 * median(v) for k, v in interleaved_times(steps, repeats, warmup, device).items()}
        for stage, ours_ms, effdet_ms in (
            ("forward (losses)", t["ours: forward (losses)"], t["effdet: forward (losses)"]),
            ("backward", t["ours: forward + backward"] - t["ours: forward (losses)"],
             t["effdet: forward + backward"] - t["effdet: forward (losses)"]),
            ("whole step", t["ours: forward + backward"], t["effdet: forward + backward"]),
        ):
            rows.append({
                "variant": variant, "input": f"{size[0]}x{size[1]}", "batch": batch, "device": device.type,
                "threads": threads if device.type == "cpu" else "-", "phase": "training step", "stage": stage,
                "ours ms": ours_ms, "effdet ms": effdet_ms,
                "ours / effdet": ours_ms / effdet_ms, "ours share": "-", "effdet share": "-",
            })
    return rows
