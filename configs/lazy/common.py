"""Parts shared by the LazyConfig (``.py``) configs: a RetinaNet or an EfficientDet around
any pyramid backbone, COCO data loaders, SGD and Detectron2's 1x schedule, training options.

Load a config with ``detectron2.config.LazyConfig.load`` (or ``tools/lazy_train_net.py``).
The functions here run when the config is loaded and return ``LazyCall`` trees; nothing
in them is needed to instantiate the result.

Channel counts are never written twice: the head reads the pyramid width from
``model.backbone.out_channels`` by ``${...}`` interpolation, and the BiFPN reads its
input channels from the bottom-up network's ``output_shape()`` when it is built.
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from bifpn_d2 import EfficientDet, EfficientDetAnchorGenerator, EfficientDetHead
from bifpn_d2.layers import LayerStyle

# Pixel statistics: MSRA ResNet weights take BGR in [0, 255] minus the mean; timm
# EfficientNets take RGB normalised with the ImageNet mean and std.
BGR_MEAN, BGR_STD = [103.530, 116.280, 123.675], [1.0, 1.0, 1.0]
RGB_MEAN, RGB_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def retinanet(
    backbone,
    num_convs: int = 4,
    head_norm: str = "",
    image_format: str = "BGR",
    num_classes: int = 80,
    anchor_scale: float = 4.0,
):
    """A RetinaNet over a P3-P7 pyramid ``backbone`` (a ``LazyCall`` with ``out_channels``).

    The head has ``num_convs`` 3x3 convs per branch, as wide as the pyramid; anchors are
    ``anchor_scale x stride`` with octave scales 2**(0, 1/3, 2/3) and ratios 0.5/1/2.
    """
    strides = [8, 16, 32, 64, 128]
    return L(RetinaNet)(
        backbone=backbone,
        head=L(RetinaNetHead)(
            # Resolved relative to each list item: . item, .. list, ... head, .... model.
            input_shape=[L(ShapeSpec)(channels="${....backbone.out_channels}") for _ in strides],
            num_classes="${..num_classes}",
            conv_dims=["${...backbone.out_channels}"] * num_convs,
            norm=head_norm,
            prior_prob=0.01,
            num_anchors=9,
        ),
        head_in_features=[f"p{level}" for level in range(3, 8)],
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[anchor_scale * s * 2 ** (k / 3) for k in range(3)] for s in strides],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=strides,
            offset=0.0,
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        anchor_matcher=L(Matcher)(thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        focal_loss_alpha=0.25,
        focal_loss_gamma=2.0,
        pixel_mean=BGR_MEAN if image_format == "BGR" else RGB_MEAN,
        pixel_std=BGR_STD if image_format == "BGR" else RGB_STD,
        input_format=image_format,
    )


def efficientdet(
    backbone,
    num_repeats: int = 3,
    head_norm: str = "SyncBN",
    num_classes: int = 80,
    anchor_scale: float = 4.0,
    max_level: int = 7,
):
    """EfficientDet (bifpn_d2's meta-architecture) over a P3-P``max_level`` pyramid
    ``backbone`` (a ``LazyCall`` with ``out_channels``): the LazyConfig form of
    ``configs/EfficientDet/Base-EfficientDet.yaml``.

    The head's class and box nets have ``num_repeats`` separable convs as wide as the
    pyramid, one ``head_norm`` per level; anchors are 3 scales x 3 shapes at
    ``anchor_scale x stride``. Losses and post-processing keep ``EfficientDet``'s defaults
    (effdet's: focal gamma 1.5, Huber delta 0.1 x 50, top 5000 over all levels, NMS 0.5).
    """
    levels = range(3, max_level + 1)
    num_scales = 3
    return L(EfficientDet)(
        backbone=backbone,
        head=L(EfficientDetHead)(
            in_channels="${..backbone.out_channels}",
            num_levels=len(levels),
            num_anchors=num_scales * 3,
            num_classes="${..num_classes}",
            num_repeats=num_repeats,
            style=L(LayerStyle)(norm=head_norm),
        ),
        head_in_features=[f"p{level}" for level in levels],
        anchor_generator=L(EfficientDetAnchorGenerator)(
            strides=[2**level for level in levels], anchor_scale=anchor_scale, num_scales=num_scales
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        anchor_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        pixel_mean=RGB_MEAN,
        pixel_std=RGB_STD,
        input_format="RGB",
    )


def coco_dataloader(
    image_format: str = "BGR",
    train_sizes=(640, 672, 704, 736, 768, 800),
    max_size_train: int = 1333,
    size_test: int = 800,
    max_size_test: int = 1333,
):
    """Train / test loaders and the COCO evaluator, on ``coco_2017_train`` / ``coco_2017_val``
    (override ``dataloader.*.dataset.names`` for other registered datasets)."""
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=train_sizes, sample_style="choice", max_size=max_size_train
                ),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format=image_format,
        ),
        total_batch_size=16,
        num_workers=4,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=size_test, max_size=max_size_test)],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=4,
    )
    dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
    return dataloader


def sgd(lr: float):
    """SGD with momentum 0.9, weight decay 1e-4 (none on norms); ``params.model`` is set
    to the model by the training script before instantiation."""
    return L(torch.optim.SGD)(
        params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
        lr=lr,
        momentum=0.9,
        weight_decay=1e-4,
    )


def schedule_1x():
    """Detectron2's 1x: 90k iterations at batch 16, x0.1 at 60k and 80k, 1k warmup."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[60000, 80000, 90000]),
        warmup_length=1000 / 90000,
        warmup_method="linear",
        warmup_factor=0.001,
    )


def train_options(output_dir: str, max_iter: int = 90000):
    """Options read by ``tools/lazy_train_net.py``; ``output_dir`` differs per config, so
    that two configs trained one after the other do not collide."""
    return dict(
        output_dir=output_dir,
        init_checkpoint="",
        max_iter=max_iter,
        amp=dict(enabled=False),
        ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
        checkpointer=dict(period=5000, max_to_keep=100),
        # Weight EMA (timm's ModelEmaV3), as MODEL_EMA of YAML configs: in checkpoints as
        # "ema", restored on --resume, used for evaluation when use_ema_weights.
        model_ema=dict(enabled=False, decay=0.9998, use_ema_weights=True),
        eval_period=0,  # evaluate once, after training
        log_period=20,
        device="cuda",
    )
