"""EfficientDet (Tan, Pang, Le 2020) as a Detectron2 meta-architecture: ``EfficientDet``.

``MODEL.META_ARCHITECTURE: "EfficientDet"`` builds backbone (EfficientNet + BiFPN, any
registered backbone) -> :class:`EfficientDetHead` (separable class and box nets) on top of
Detectron2's RetinaNet machinery: its anchor generator (subclassed), anchor matching
(``Matcher``, subclassed), ``Box2BoxTransform``, box regression loss, batching, NMS and
post-processing. What differs from Detectron2's RetinaNet, each as effdet (rwightman's
EfficientDet) and the paper do it:

- anchors (:class:`EfficientDetAnchorGenerator`): base size ``anchor_scale * stride *
  2**(k / num_scales)``, shapes given as (width, height) factors of it, effdet's
  ``(1, 1), (1.4, 0.7), (0.7, 1.4)`` (not Detectron2's area-preserving ratios 0.5/1/2),
  centred at ``(i + 0.5) * stride``;
- matching (:class:`BestAnchorMatcher`): IoU >= 0.5 positive, below negative, nothing
  ignored, and every ground truth also takes its one best anchor (the first of equal
  IoUs), matched to it even where another ground truth overlaps that anchor more;
- losses: focal loss (alpha 0.25, gamma 1.5) and Huber box loss (delta 0.1, weight 50,
  averaged over the 4 coordinates, none for a regression target of exactly 0), both
  divided by the number of positive anchors + 1 of the batch (not Detectron2's running
  average);
- inference (``topk_over_all_levels=True``): the ``test_topk_candidates`` (5000) best
  (anchor, class) scores over all levels together, boxes decoded and clipped to the image,
  per-class NMS (IoU 0.5), the ``max_detections_per_image`` (100) best kept; scores below
  ``test_score_thresh`` (0.001, where effdet's COCO evaluator stops) dropped. In eager
  mode the whole batch is decoded at once: top-k on the logits of every image together,
  the best anchors first and then their classes (:func:`top_anchor_class_pairs`; the
  sigmoid, monotonic, only on the candidates), one gather of their regressions and
  anchors, one clipping, and NMS for the batch with the image index folded into the class,
  as Detectron2 folds classes (:func:`grouped_nms`); tracing and scripting keep the
  per-image loop.
  ``False`` gives Detectron2's RetinaNet rule (top-k per level, clipping after NMS).

Left as Detectron2 does it, differing from effdet only in a corner case: box decoding
clamps ``dw``, ``dh`` at ``log(1000 / 16)`` (boxes over 62x their anchor).
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat, nms
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import smooth_l1_loss
from torch import Tensor

from ..layers import LayerStyle
from ..layers.checks import check_positive, naming_keys
from .efficientdet_head import EfficientDetHead

__all__ = ["EFFICIENTDET_ANCHOR_SHAPES", "BestAnchorMatcher", "EfficientDet", "EfficientDetAnchorGenerator",
           "grouped_nms", "sparse_focal_loss", "top_anchor_class_pairs"]

# The head's arguments that MODEL.EFFICIENTDET keys set, for errors that name the key.
_HEAD_KEYS = {"norm": "MODEL.EFFICIENTDET.NORM", "activation": "MODEL.EFFICIENTDET.ACTIVATION"}

# effdet's anchor shapes: (width, height) factors of the base size, scale-major order.
EFFICIENTDET_ANCHOR_SHAPES = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def top_anchor_class_pairs(logits: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest of the ``(N, R, K)`` logits (``R`` anchors, ``K`` classes) of each
    image: ``(values, anchor indices, class indices)``, each ``(N, k)``, largest first.

    The same pairs as ``logits.flatten(1).topk(k)`` (up to the order of equal values) at a
    fraction of its cost on a CPU, where a top-k over all ``R * K`` pairs (4.4 million for
    D0 at 512 px) is the slowest step of inference: first the ``k`` anchors whose best
    class is largest, then the top-k over those anchors' ``k * K`` pairs. Exact: a pair
    among the ``k`` largest is at least the k-th largest anchor maximum (``k`` pairs, one
    per such anchor, are at least that), so its anchor is among those ``k``."""
    num_images, num_anchors, num_classes = logits.shape
    if k > num_anchors:  # fewer anchors than candidates: no anchor can be left out
        top_anchors = torch.arange(num_anchors, device=logits.device).expand(num_images, -1)
        rows = logits
    else:
        top_anchors = logits.amax(dim=2).topk(k, dim=1).indices  # (N, k)
        rows = torch.gather(logits, 1, top_anchors.unsqueeze(-1).expand(-1, -1, num_classes))  # (N, k, K)
    values, idxs = rows.flatten(1).topk(k, dim=1)
    anchor_idxs = torch.gather(top_anchors, 1, torch.div(idxs, num_classes, rounding_mode="floor"))
    return values, anchor_idxs, idxs % num_classes


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Detectron2's ``batched_nms`` (NMS within each group, kept indices by decreasing
    score) for the ``(R, 4)`` boxes, ``(R,)`` scores and ``(R,)`` integer groups of a whole
    batch on a CPU: one sort by group and one NMS per group's slice, where ``batched_nms``
    compares every box with every group id (8 images x 90 classes: 720 passes over 40,000
    boxes). On a GPU it is ``batched_nms`` (no host sync)."""
    if boxes.is_cuda or boxes.numel() == 0:
        return batched_nms(boxes, scores, groups, iou_threshold)
    order = torch.argsort(groups, stable=True)
    counts = torch.bincount(groups).tolist()
    kept = [members[nms(boxes[members], scores[members], iou_threshold)]
            for members in torch.split(order, counts) if len(members)]
    keep = torch.cat(kept)
    return keep[torch.sort(scores[keep], descending=True).indices]


def sparse_focal_loss(
    logits: Tensor, positives: Tuple[Tensor, ...], valid: Tensor, alpha: float, gamma: float
) -> Tensor:
    """The sigmoid focal loss (Lin et al. 2017), summed, of ``logits`` against targets that
    are 1 at the indices ``positives`` and 0 elsewhere, over the rows where ``valid``.

    Equal to fvcore's ``sigmoid_focal_loss(..., reduction="sum")`` (and effdet's) with
    one-hot targets, without building them: every element is scored as a negative,
    ``(1 - alpha) * p**gamma * -log(1 - p)``, then the few positives are re-scored as
    ``alpha * (1 - p)**gamma * -log(p)``. A third of the elementwise passes over the
    ``(N, R, K)`` logits, in log space (``p**gamma = exp(gamma * logsigmoid(x))``).

    Args:
        logits: ``(N, R, K)`` class logits.
        positives: index tensors ``(image, anchor, class)`` of the targets that are 1.
        valid: ``(N, R)``; rows where it is False (ignored anchors) add nothing.
    """
    def negative(x: Tensor) -> Tensor:  # log p = logsigmoid(x), -log(1 - p) = x - log p
        log_p = F.logsigmoid(x)
        return (1 - alpha) * torch.exp(gamma * log_p) * (x - log_p)

    def positive(x: Tensor) -> Tensor:  # log(1 - p) = logsigmoid(-x), -log p = -x - log(1 - p)
        log_q = F.logsigmoid(-x)
        return alpha * torch.exp(gamma * log_q) * (-x - log_q)

    negatives = negative(logits)
    if not bool(valid.all()):
        negatives = negatives * valid.unsqueeze(-1)
    scored = logits[positives]
    return negatives.sum() - negative(scored).sum() + positive(scored).sum()


class BestAnchorMatcher(Matcher):
    """effdet's anchor matching (TF's ``ArgMaxMatcher`` with ``force_match_for_each_row``):
    each anchor is matched to the ground truth it overlaps most, positive (label 1) at IoU
    >= ``threshold``, else negative (0); then every ground truth takes its single best
    anchor, the first of equal IoUs (anchors in Detectron2's order, which is effdet's), as
    a positive matched to that ground truth, even where another ground truth
    overlaps the anchor more; of several ground truths whose best anchor is the same, the
    first one has it.

    Detectron2's ``allow_low_quality_matches`` differs where IoUs are equal (it keeps every
    anchor tied for a ground truth's best IoU) and in whom a kept anchor regresses to (the
    ground truth it overlaps most). Boxes on whole pixels, as in the built-in dataset, tie
    often: anchors are centred at half strides, so a box centred on a stride's multiple has
    two to four equally good anchors.
    """

    def __init__(self, threshold: float):
        super().__init__([threshold], [0, 1], allow_low_quality_matches=False)

    def __call__(self, match_quality_matrix: Tensor) -> Tuple[Tensor, Tensor]:
        """``match_quality_matrix``: ``(G, A)`` IoUs of G ground truths with A anchors.
        Returns ``matches`` ``(A,)`` (index of the matched ground truth) and ``labels``
        ``(A,)`` (1 positive, 0 negative), as :class:`Matcher`."""
        matches, labels = super().__call__(match_quality_matrix)
        if match_quality_matrix.numel() == 0:
            return matches, labels
        num_gt = match_quality_matrix.shape[0]
        best_anchor = match_quality_matrix.argmax(dim=1)  # (G,): the first of equal IoUs
        forced_by = torch.full_like(matches, num_gt)
        forced_by.scatter_reduce_(0, best_anchor, torch.arange(num_gt, device=matches.device), reduce="amin")
        forced = forced_by < num_gt
        matches = torch.where(forced, forced_by, matches)
        labels = torch.where(forced, torch.ones_like(labels), labels)
        return matches, labels


@ANCHOR_GENERATOR_REGISTRY.register()
class EfficientDetAnchorGenerator(DefaultAnchorGenerator):
    """EfficientDet's anchors: at level ``l`` (stride ``s``), ``num_scales`` sizes
    ``anchor_scale * s * 2**(k / num_scales)``, each in every shape ``(w, h)`` of ``shapes``
    (a ``size * w`` by ``size * h`` box), centred at ``((i + offset) * s, (j + offset) * s)``.

    The order (location, then size, then shape) is Detectron2's and effdet's. For input
    sizes that are multiples of the coarsest stride the anchors equal effdet's; at other
    sizes effdet stretches its strides to ``image size / feature size``, these keep the
    exact strides of the feature maps.
    """

    @configurable
    def __init__(
        self,
        *,
        strides: Sequence[int],
        anchor_scale: float = 4.0,
        num_scales: int = 3,
        shapes: Sequence[Sequence[float]] = EFFICIENTDET_ANCHOR_SHAPES,
        offset: float = 0.5,
    ):
        """
        Args:
            strides: stride of each feature map, finest first (8, 16, ..., 128 for P3-P7).
            anchor_scale: base anchor size in strides (EfficientDet: 4; D7: 5).
            num_scales: sizes per octave.
            shapes: ``(width factor, height factor)`` pairs.
            offset: anchor centre within a stride cell (effdet: 0.5, the cell's centre).
        """
        if anchor_scale <= 0 or num_scales < 1 or not shapes:
            raise ValueError(f"anchor_scale={anchor_scale} must be > 0, num_scales={num_scales} >= 1 "
                             f"and shapes={list(shapes)} non-empty")
        bad = [s for s in shapes if len(s) != 2 or min(s) <= 0]
        if bad:
            raise ValueError(f"anchor shapes {bad} are not positive (width, height) factors")
        sizes = [[anchor_scale * s * 2 ** (k / num_scales) for k in range(num_scales)] for s in strides]
        self.shapes = [tuple(float(v) for v in s) for s in shapes]
        # The parent calls generate_cell_anchors(sizes, shapes) per level.
        super().__init__(sizes=sizes, aspect_ratios=[self.shapes] * len(strides), strides=list(strides),
                         offset=offset)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        ec = cfg.MODEL.EFFICIENTDET
        return {
            "strides": [s.stride for s in input_shape],
            "anchor_scale": ec.ANCHOR_SCALE,
            "num_scales": ec.NUM_SCALES,
            "shapes": ec.ANCHOR_SHAPES,
        }

    def generate_cell_anchors(self, sizes: Sequence[float], shapes: Sequence[Sequence[float]]) -> Tensor:
        """``(len(sizes) * len(shapes), 4)`` XYXY boxes centred at 0, size-major."""
        anchors = []
        for size in sizes:
            for width, height in shapes:
                half_w, half_h = size * width / 2.0, size * height / 2.0
                anchors.append([-half_w, -half_h, half_w, half_h])
        return torch.tensor(anchors)


@META_ARCH_REGISTRY.register()
class EfficientDet(RetinaNet):
    """EfficientDet: Detectron2's RetinaNet with EfficientDet's head, anchors, losses and
    post-processing (see the module docstring). Inputs and outputs are those of every
    Detectron2 meta-architecture; training returns ``{"loss_cls", "loss_box_reg"}``."""

    @configurable
    def __init__(
        self,
        *,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 1.5,
        huber_delta: float = 0.1,
        box_loss_weight: float = 50.0,
        test_score_thresh: float = 0.001,
        test_topk_candidates: int = 5000,
        test_nms_thresh: float = 0.5,
        topk_over_all_levels: bool = True,
        square_size: int = 0,
        **kwargs,
    ):
        """
        Args:
            focal_loss_alpha, focal_loss_gamma: of the classification focal loss.
            huber_delta: the Huber box loss is quadratic below this regression error and
                linear above (Detectron2's smooth L1 with ``beta = delta``, times ``delta``).
            box_loss_weight: factor of the box loss, which is averaged over the 4
                coordinates of the positive anchors.
            test_score_thresh: detections scoring at most this are dropped.
            test_topk_candidates: (anchor, class) pairs kept before NMS: over all levels
                together with ``topk_over_all_levels``, else per level.
            test_nms_thresh: IoU above which per-class NMS suppresses a box.
            topk_over_all_levels: effdet's candidate rule (True) or Detectron2's (False).
            square_size: pad every batch to this square (effdet's fixed input, e.g. 512
                for D0; images must fit); 0 pads as Detectron2 does, to the largest image.
            kwargs: the arguments of Detectron2's ``RetinaNet`` (``backbone``, ``head``,
                ``head_in_features``, ``anchor_generator``, ``box2box_transform``,
                ``anchor_matcher``, ``num_classes``, ``max_detections_per_image``,
                ``pixel_mean``, ``pixel_std``, ``input_format``, ...).
        """
        if huber_delta <= 0:
            raise ValueError(f"huber_delta={huber_delta} must be > 0")
        if square_size < 0:
            raise ValueError(f"square_size={square_size} must be >= 0")
        super().__init__(
            focal_loss_alpha=focal_loss_alpha,
            focal_loss_gamma=focal_loss_gamma,
            smooth_l1_beta=huber_delta,
            box_reg_loss_type="smooth_l1",
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
            **kwargs,
        )
        self.huber_delta = huber_delta
        self.box_loss_weight = box_loss_weight
        self.topk_over_all_levels = topk_over_all_levels
        self.square_size = square_size

    @classmethod
    def from_config(cls, cfg) -> Dict:
        ec = cfg.MODEL.EFFICIENTDET
        check_positive("MODEL.EFFICIENTDET.NUM_CLASSES", ec.NUM_CLASSES)
        with naming_keys(_HEAD_KEYS):
            style = LayerStyle(ec.NORM, ec.NORM_EPS, ec.NORM_MOMENTUM, bias_before_norm=ec.BIAS_BEFORE_NORM)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in ec.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.EFFICIENTDET.IN_FEATURES={list(ec.IN_FEATURES)}: {missing} not produced "
                             f"by the backbone, which produces {list(shapes)}")
        feature_shapes = [shapes[f] for f in ec.IN_FEATURES]
        widths = {s.channels for s in feature_shapes}
        if len(widths) != 1:
            raise ValueError(f"the head's levels {list(ec.IN_FEATURES)} must have equal channels: {widths}")
        anchor_generator = EfficientDetAnchorGenerator(cfg, feature_shapes)
        with naming_keys(_HEAD_KEYS):
            head = EfficientDetHead(
                in_channels=widths.pop(),
                num_levels=len(feature_shapes),
                num_anchors=anchor_generator.num_cell_anchors[0],
                num_classes=ec.NUM_CLASSES,
                num_repeats=ec.NUM_REPEATS,
                separable=ec.SEPARABLE_CONV,
                style=style,
                activation=ec.ACTIVATION,
                prior_prob=ec.PRIOR_PROB,
            )
        head.set_grad_checkpointing(ec.CHECKPOINT_ACTIVATIONS)
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(ec.IN_FEATURES),
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
            "anchor_matcher": BestAnchorMatcher(ec.IOU_THRESHOLD),
            "num_classes": ec.NUM_CLASSES,
            "focal_loss_alpha": ec.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": ec.FOCAL_LOSS_GAMMA,
            "huber_delta": ec.HUBER_DELTA,
            "box_loss_weight": ec.BOX_LOSS_WEIGHT,
            "test_score_thresh": ec.SCORE_THRESH_TEST,
            "test_topk_candidates": ec.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": ec.NMS_THRESH_TEST,
            "topk_over_all_levels": ec.TOPK_OVER_ALL_LEVELS,
            "square_size": ec.SQUARE_SIZE,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """Normalise and batch the images; with ``square_size``, pad to that square. On the
        CPU the batch is channels-last: the bottom-up network's depthwise convs run much
        faster so (oneDNN), with the same values up to rounding."""
        images = [(self._move_to_current_device(x["image"]) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        constraints: Dict[str, int] = dict(self.backbone.padding_constraints)
        if self.square_size > 0:
            for image in images:
                if image.shape[-2] > self.square_size or image.shape[-1] > self.square_size:
                    raise ValueError("an input image is larger than the square it is padded to "
                                     "(MODEL.EFFICIENTDET.SQUARE_SIZE): resize it first, or pad with 0")
            constraints["square_size"] = self.square_size
        size_divisibility = self.backbone.size_divisibility
        batch = ImageList.from_tensors(images, size_divisibility, padding_constraints=constraints)
        if batch.tensor.device.type == "cpu":
            batch = ImageList(batch.tensor.contiguous(memory_format=torch.channels_last), batch.image_sizes)
        return batch

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes) -> Dict[str, Tensor]:
        """effdet's losses: focal loss over every anchor and class, and Huber loss over the
        coordinates of the positive anchors, both divided by (positive anchors + 1); the
        box loss is also divided by 4 (coordinates) and multiplied by ``box_loss_weight``.

        Args: as Detectron2's ``RetinaNet.losses``.
        """
        gt_labels = torch.stack(gt_labels)  # (N, R): class, num_classes = background, -1 ignored
        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors.item() / len(gt_labels))
        normalizer = num_pos_anchors.to(pred_logits[0].dtype) + 1.0

        logits = cat(pred_logits, dim=1)  # (N, R, K)
        image_idxs, anchor_idxs = pos_mask.nonzero(as_tuple=True)
        positives = (image_idxs, anchor_idxs, gt_labels[image_idxs, anchor_idxs])
        alpha, gamma = self.focal_loss_alpha, self.focal_loss_gamma
        loss_cls = sparse_focal_loss(logits, positives, valid_mask, alpha, gamma)
        anchors = Boxes.cat(anchors).tensor  # (R, 4)
        matched_boxes = torch.stack(gt_boxes)[image_idxs, anchor_idxs]  # (P, 4)
        targets = self.box2box_transform.get_deltas(anchors[anchor_idxs], matched_boxes)
        deltas = cat(pred_anchor_deltas, dim=1)[image_idxs, anchor_idxs]  # (P, 4)
        # huber(x, delta) = delta * smooth_l1(x, beta=delta); as effdet, a coordinate whose
        # target is exactly 0 is not trained (frequent for boxes on whole pixels).
        huber = self.huber_delta * smooth_l1_loss(deltas, targets, beta=self.huber_delta, reduction="none")
        loss_box = self.box_loss_weight * (huber * (targets != 0)).sum() / 4.0
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box / normalizer}

    def forward_inference(self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]):
        """Detections of every image of the batch (see the module docstring): at once in
        eager mode, else image by image as Detectron2's RetinaNet (TorchScript has no
        ``super()``, hence its loop here)."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing() and self.topk_over_all_levels:
            return self._batched_inference(images, features, predictions)
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores = [x[img_idx].sigmoid_() for x in logits]
            image_deltas = [x[img_idx] for x in deltas]
            results.append(self.inference_single_image(anchors, scores, image_deltas, image_size))
        return results

    @torch.jit.unused
    def _batched_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        """:meth:`forward_inference` over the batch at once: the same detections as the
        per-image path (:meth:`inference_single_image`), in the same order."""
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        logits, deltas = torch.cat(logits, dim=1), torch.cat(deltas, dim=1)  # (N, R, K), (N, R, 4)
        anchors = torch.cat([a.tensor for a in self.anchor_generator(features)])  # (R, 4)
        num_images, num_classes = logits.shape[0], logits.shape[2]
        k = min(logits.shape[1] * num_classes, self.test_topk_candidates)
        # Top-k on the logits (the sigmoid is monotonic), the sigmoid on the candidates only.
        # Scores that round to one float32 value may come in another order than in the
        # per-image path, which ranks the scores: the same detections up to such ties.
        top_logits, anchor_idxs, classes = top_anchor_class_pairs(logits, k)  # (N, k) each, best first
        scores = top_logits.sigmoid()
        picked = torch.gather(deltas, 1, anchor_idxs.unsqueeze(-1).expand(-1, -1, 4))
        boxes = self.box2box_transform.apply_deltas(picked.reshape(-1, 4), anchors[anchor_idxs.reshape(-1)])
        sizes = torch.tensor(images.image_sizes, device=boxes.device, dtype=boxes.dtype)  # (N, 2): H, W
        upper = sizes[:, [1, 0, 1, 0]].repeat_interleave(k, dim=0)  # (N * k, 4): W, H, W, H
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        image_idxs = torch.arange(num_images, device=boxes.device).repeat_interleave(k)
        scores, classes = scores.reshape(-1), classes.reshape(-1)
        kept = torch.nonzero(scores > self.test_score_thresh).squeeze(1)
        keep = kept[grouped_nms(boxes[kept], scores[kept], (image_idxs * num_classes + classes)[kept],
                                self.test_nms_thresh)]  # by score, best first, all images
        keep = keep[torch.sort(image_idxs[keep], stable=True).indices]  # grouped by image, still by score
        counts = torch.bincount(image_idxs[keep], minlength=num_images).tolist()  # the one host sync
        results = []
        for image_size, chosen in zip(images.image_sizes, torch.split(keep, counts)):
            chosen = chosen[: self.max_detections_per_image]
            results.append(Instances(image_size, pred_boxes=Boxes(boxes[chosen]), scores=scores[chosen],
                                     pred_classes=classes[chosen]))
        return results

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_delta: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """Detections of one image from per-level scores ``(H_l * W_l * A, K)`` (after the
        sigmoid) and regressions ``(H_l * W_l * A, 4)``."""
        if self.topk_over_all_levels:
            pred = self._decode_over_all_levels(anchors, box_cls, box_delta, image_size)
        else:
            pred = self._decode_multi_level_predictions(
                anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates, image_size
            )
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]

    def _decode_over_all_levels(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_delta: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """effdet's candidates: the ``test_topk_candidates`` best (anchor, class) scores over
        all levels (those above ``test_score_thresh``), decoded and clipped to the image."""
        num_classes = box_cls[0].shape[1]
        scores = torch.cat(box_cls).flatten()
        num_candidates = scores.shape[0]
        if isinstance(num_candidates, Tensor):  # tracing: the count depends on the input size
            k = torch.clamp(num_candidates, max=self.test_topk_candidates)
        else:
            k = min(num_candidates, self.test_topk_candidates)
        top_scores, top_idxs = scores.topk(k)
        keep = top_scores > self.test_score_thresh
        top_scores, top_idxs = top_scores[keep], top_idxs[keep]
        anchor_idxs = torch.div(top_idxs, num_classes, rounding_mode="floor")
        all_anchors = torch.cat([a.tensor for a in anchors])[anchor_idxs]
        boxes = self.box2box_transform.apply_deltas(torch.cat(box_delta)[anchor_idxs], all_anchors)
        height, width = image_size[0], image_size[1]
        x0, y0, x1, y1 = boxes.unbind(dim=1)
        boxes = torch.stack([x0.clamp(min=0, max=width), y0.clamp(min=0, max=height),
                             x1.clamp(min=0, max=width), y1.clamp(min=0, max=height)], dim=1)
        return Instances(image_size, pred_boxes=Boxes(boxes), scores=top_scores,
                         pred_classes=top_idxs % num_classes)
