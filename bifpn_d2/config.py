"""The config keys bifpn_d2 adds to Detectron2's, with their defaults.

Call :func:`add_bifpn_config` on a Detectron2 config before ``merge_from_file``::

    cfg = get_cfg()
    add_bifpn_config(cfg)
    cfg.merge_from_file("configs/RetinaNet-R50-BiFPN.yaml")

Every new key has a default that works with Detectron2's own configs of every FPN
meta-architecture (RetinaNet, Faster / Mask / Cascade / Keypoint R-CNN, Panoptic FPN,
semantic FPN), so switching neck takes only ``MODEL.BACKBONE.NAME``: the BiFPN then takes
the width of ``MODEL.FPN.OUT_CHANNELS`` and pads images as Detectron2's FPN does, and its
cells are the neck study's recipe, chosen on its dev split (``docs/study.md``): 3 residual
cells with LN, and the levels above P5 joined after them: RetinaNet's P6/P7 by strided convs
from C5, as Detectron2's FPN makes them, R-CNN's P6 by a strided conv from the cells' P5.
EfficientDet's configs set EfficientDet's own cells explicitly.

The BiFPN keys take their defaults from the constructors' (:class:`CellOptions`,
:data:`BIFPN_STYLE`), so ``BiFPN(bottom_up, features, width, top_block=...)`` and a config
that only names the BiFPN builder build the same neck. ``check_choice`` and
``check_positive`` are :mod:`bifpn_d2.layers.checks`'s.
"""
from detectron2.config import CfgNode as CN

from .layers.checks import check_choice, check_positive
from .modeling.bifpn import BIFPN_STYLE, DEFAULT_NUM_CELLS
from .modeling.pyramid_cell import DEFAULT_CELL as _CELL

__all__ = ["add_bifpn_config", "check_choice", "check_positive"]


def add_bifpn_config(cfg: CN) -> CN:
    """Add the ``MODEL.BIFPN``, ``MODEL.EFFICIENTNET``, ``MODEL.EFFICIENTDET`` and extra
    ``MODEL.FPN`` keys in place (and return ``cfg``). Calling it twice is harmless."""
    # --- MODEL.FPN: Detectron2's keys keep their meaning; these extend them.
    # FUSE_TYPE (Detectron2: "sum" | "avg") also accepts "weighted", "softmax" and
    # "fast_normalized" with our FPN builders.
    cfg.MODEL.FPN.TOP_BLOCK = ""  # "" = maxpool for R-CNN builders, p6p7_c5 for RetinaNet
    # ones; or "maxpool" | "p6p7_c5" | "p6p7_p5" | "efficientdet"
    cfg.MODEL.FPN.FUSION_EPS = _CELL.fusion_eps  # 1e-4: epsilon of fast normalized fusion (both necks)
    # Pad input images to a multiple of this: -1 = the stride of the last input level, as
    # Detectron2's FPN (32 for res5); 0 = no padding (our necks resize to exact sizes and
    # need none, but Detectron2 heads such as SemSegFPNHead and checkpoints trained with
    # padding do); k > 0 = k. Read by our FPN and BiFPN builders.
    cfg.MODEL.FPN.SIZE_DIVISIBILITY = -1

    # --- MODEL.BIFPN: the BiFPN neck. It reads its inputs from MODEL.FPN.IN_FEATURES.
    cfg.MODEL.BIFPN = CN()
    # Width W; 0 = MODEL.FPN.OUT_CHANNELS (256 in Detectron2's configs), the width that
    # Detectron2's and LazyConfig heads are sized for. EfficientDet: 64 * 1.35**phi.
    cfg.MODEL.BIFPN.OUT_CHANNELS = 0
    cfg.MODEL.BIFPN.NUM_CELLS = DEFAULT_NUM_CELLS  # 3: depth D, repeated cells (EfficientDet: 3 + phi)
    # Coarsest level; 0 = 6 for R-CNN builders, 7 for RetinaNet ones, and under the
    # SemanticSegmentor meta-architecture the last level SEM_SEG_HEAD.IN_FEATURES reads.
    cfg.MODEL.BIFPN.MAX_LEVEL = 0
    cfg.MODEL.BIFPN.GRAPH = _CELL.graph  # "bifpn" | "panet" | "qufpn" (effdet's quad FPN)
    # The same key and values as MODEL.FPN.FUSE_TYPE: "fast_normalized" | "softmax" |
    # "weighted" | "sum" | "avg", or google/automl's channel-wise kinds (one weight per
    # channel per input): "channel_fast_normalized" | "channel_softmax".
    cfg.MODEL.BIFPN.FUSE_TYPE = _CELL.fusion  # "fast_normalized"
    # After each fusion: "swish" | "relu" | "relu6" | "none".
    cfg.MODEL.BIFPN.ACTIVATION = _CELL.activation  # "swish"
    cfg.MODEL.BIFPN.SEPARABLE_CONV = _CELL.separable_conv  # True: separable 3x3; False: dense 3x3
    # Levels whose cell nodes take a dense 3x3 even with SEPARABLE_CONV, e.g. [5]: the coarse
    # levels, where a dense conv costs few FLOPs. [] (the default): none.
    cfg.MODEL.BIFPN.DENSE_CONV_LEVELS = list(_CELL.dense_levels)
    # Detectron2's norm names: "BN" | "SyncBN" | "nnSyncBN" | "naiveSyncBN" | "naiveSyncBN_N"
    # | "FrozenBN" | "GN" | "LN" | "". LN by default: independent of the batch size (a
    # Detectron2 R-CNN config trains 2 images per GPU, too few for BN) and, unlike GN, no
    # statistics over a coarse level's few pixels (ahead of GN on the neck study's dev split
    # for RetinaNet, Faster and Mask R-CNN, level for semantic FPN); EfficientDet's configs
    # set BN or SyncBN.
    cfg.MODEL.BIFPN.NORM = BIFPN_STYLE.norm  # "LN"
    # EfficientDet's BN: eps 1e-3, momentum 0.01 (the defaults).
    cfg.MODEL.BIFPN.NORM_EPS = BIFPN_STYLE.norm_eps
    cfg.MODEL.BIFPN.NORM_MOMENTUM = BIFPN_STYLE.norm_momentum
    # TF "SAME" max-pool padding, and the redundant conv biases of TF EfficientDet, for tf_
    # checkpoints (both False by default).
    cfg.MODEL.BIFPN.SAME_PADDING = BIFPN_STYLE.same_padding
    cfg.MODEL.BIFPN.BIAS_BEFORE_NORM = BIFPN_STYLE.bias_before_norm
    # Levels above the last input. "" (the default): the neck study's choice for the flavour
    # (docs/study.md), "p6p7_c5_after" for RetinaNet builders, "p6p7_p5" for R-CNN ones.
    # Made before the cells (which fuse them): "p6p7_c5" (RetinaNet's strided 3x3 convs from
    # the last input, learned; one level, P6, for R-CNN pyramids) or "efficientdet" (1x1
    # conv + norm + max-pools, EfficientDet's). Made after the cells: from their last output,
    # "maxpool" (P6 only, as Detectron2's FPN makes Faster R-CNN's) or "p6p7_p5" (FCOS's
    # strided convs from P5); or "p6p7_c5_after" (RetinaNet's convs from C5, joined after the
    # cells: the FPN's own P6/P7, through no cell and no norm).
    cfg.MODEL.BIFPN.TOP_BLOCK = ""
    # The initial fusion weight of each node's edge from the cell's input at its level,
    # relative to the node's other edges (1: the equal split, EfficientDet's).
    cfg.MODEL.BIFPN.FUSION_INPUT_WEIGHT = _CELL.fusion_input_weight  # 1.0
    # Cell convs: "xavier_uniform" | "c2_xavier" (Detectron2's FPN).
    cfg.MODEL.BIFPN.CONV_INIT = _CELL.conv_init  # "xavier_uniform"
    # Residual cells: each cell whose inputs have the neck's width adds them to its outputs
    # and starts as the identity (zero-initialised output norm scales). False: EfficientDet's
    # plain cells, which train slower the deeper they are stacked (docs/neck_study.md).
    cfg.MODEL.BIFPN.RESIDUAL = _CELL.residual  # True
    # The initial scale of the norm ending each output node of a residual cell: 0 starts
    # every residual cell as the identity; > 0 as input + that fraction of its change.
    cfg.MODEL.BIFPN.RESIDUAL_SCALE = _CELL.residual_scale  # 0.0
    # Learning rate of the BiFPN's parameters (top block and cells) as a multiple of
    # SOLVER.BASE_LR; applied by bifpn_d2's trainer (tools/train_net.py).
    cfg.MODEL.BIFPN.LR_FACTOR = 1.0
    # Learning rate of the cells' fusion weights as a multiple of the neck's: in a short
    # schedule they stay near their equal initial split at 1 (docs/study.md).
    cfg.MODEL.BIFPN.FUSION_LR_FACTOR = 1.0
    # The neck's own learning-rate warmup: its parameters warm up over this many iterations
    # instead of SOLVER.WARMUP_ITERS (0: none, the neck starts at its full rate); -1: the
    # solver's warmup for all. Applied by bifpn_d2's trainer (engine/neck_warmup.py).
    cfg.MODEL.BIFPN.WARMUP_ITERS = -1
    # Run the cells in channels-last memory layout; the outputs are then channels-last
    # tensors (same values). Several times faster depthwise convs and pools on CPU.
    cfg.MODEL.BIFPN.CHANNELS_LAST = _CELL.channels_last  # True
    # Activation checkpointing of the cells: in training each cell keeps only its inputs
    # and recomputes its activations in the backward pass (less memory, more time per
    # step; outputs, gradients and norm statistics unchanged).
    cfg.MODEL.BIFPN.CHECKPOINT_ACTIVATIONS = False
    # Earlier names, kept so that a config still setting them gets an error naming the new
    # key: FUSION (now FUSE_TYPE) and FUSION_EPS (now MODEL.FPN.FUSION_EPS, both necks).
    cfg.MODEL.BIFPN.FUSION = ""
    cfg.MODEL.BIFPN.FUSION_EPS = -1.0

    # --- MODEL.EFFICIENTNET: the timm EfficientNet bottom-up network. Its outputs are
    # named c1..c5 (stride 2..32); point MODEL.FPN.IN_FEATURES at them, e.g. [c3, c4, c5].
    # MODEL.BACKBONE.FREEZE_AT applies: 0 trains all, k freezes blocks up to stride 2**k.
    cfg.MODEL.EFFICIENTNET = CN()
    cfg.MODEL.EFFICIENTNET.NAME = "efficientnet_b0"  # efficientnet_b0..b7, tf_efficientnet_b0..b7
    cfg.MODEL.EFFICIENTNET.WEIGHTS = ""  # local ImageNet weight file; "" = random init
    cfg.MODEL.EFFICIENTNET.NORM = "BN"  # Detectron2's names: "BN" | "FrozenBN" | "SyncBN" | "nnSyncBN"
    cfg.MODEL.EFFICIENTNET.DROP_PATH_RATE = 0.0  # stochastic depth (EfficientDet: 0.2)
    # Activation checkpointing of each stage of blocks (as MODEL.BIFPN.CHECKPOINT_ACTIVATIONS):
    # the bottom-up network holds most of a detector's activations.
    cfg.MODEL.EFFICIENTNET.CHECKPOINT_ACTIVATIONS = False

    # --- MODEL.EFFICIENTDET: the "EfficientDet" meta-architecture (MODEL.META_ARCHITECTURE).
    # Defaults are effdet's (rwightman's EfficientDet) and the paper's; TEST.DETECTIONS_PER_IMAGE
    # (100) caps the detections. Detectron2's MODEL.RETINANET keys are not read.
    cfg.MODEL.EFFICIENTDET = CN()
    cfg.MODEL.EFFICIENTDET.NUM_CLASSES = 80
    cfg.MODEL.EFFICIENTDET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Class and box nets: NUM_REPEATS convs (3, 3, 3, 4, 4, 4, 5, 5 for D0-D7) shared by all
    # levels, each followed by a norm of its own per level and the activation.
    cfg.MODEL.EFFICIENTDET.NUM_REPEATS = 3
    cfg.MODEL.EFFICIENTDET.SEPARABLE_CONV = True
    cfg.MODEL.EFFICIENTDET.NORM = "BN"  # as MODEL.BIFPN.NORM
    cfg.MODEL.EFFICIENTDET.NORM_EPS = 1e-3
    cfg.MODEL.EFFICIENTDET.NORM_MOMENTUM = 0.01
    cfg.MODEL.EFFICIENTDET.ACTIVATION = "swish"
    cfg.MODEL.EFFICIENTDET.BIAS_BEFORE_NORM = False  # redundant conv biases of TF EfficientDet
    cfg.MODEL.EFFICIENTDET.PRIOR_PROB = 0.01  # initial foreground probability of every logit
    # Activation checkpointing of the class and box nets (as MODEL.BIFPN.CHECKPOINT_ACTIVATIONS).
    cfg.MODEL.EFFICIENTDET.CHECKPOINT_ACTIVATIONS = False
    # Anchors: NUM_SCALES sizes ANCHOR_SCALE * stride * 2**(k / NUM_SCALES) (D7: scale 5), each
    # in every (width, height) shape; ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS are not read.
    cfg.MODEL.EFFICIENTDET.ANCHOR_SCALE = 4.0
    cfg.MODEL.EFFICIENTDET.NUM_SCALES = 3
    cfg.MODEL.EFFICIENTDET.ANCHOR_SHAPES = [[1.0, 1.0], [1.4, 0.7], [0.7, 1.4]]
    cfg.MODEL.EFFICIENTDET.IOU_THRESHOLD = 0.5  # positive at or above, negative below
    # Losses, divided by the positive anchors + 1: focal, and Huber on the box regressions.
    cfg.MODEL.EFFICIENTDET.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.EFFICIENTDET.FOCAL_LOSS_GAMMA = 1.5
    cfg.MODEL.EFFICIENTDET.HUBER_DELTA = 0.1
    cfg.MODEL.EFFICIENTDET.BOX_LOSS_WEIGHT = 50.0
    # Inference. TOPK_OVER_ALL_LEVELS True (effdet): the TOPK_CANDIDATES_TEST best
    # (anchor, class) scores over all levels, boxes clipped to the image, then NMS; False
    # (Detectron2's RetinaNet): TOPK_CANDIDATES_TEST per level, NMS, clipping afterwards.
    cfg.MODEL.EFFICIENTDET.TOPK_OVER_ALL_LEVELS = True
    cfg.MODEL.EFFICIENTDET.TOPK_CANDIDATES_TEST = 5000
    cfg.MODEL.EFFICIENTDET.SCORE_THRESH_TEST = 0.001  # effdet's COCO evaluator stops there
    cfg.MODEL.EFFICIENTDET.NMS_THRESH_TEST = 0.5
    # Pad every batch to this square (effdet's fixed input, e.g. 512 for D0); 0 = pad to the
    # largest image of the batch, as Detectron2 does.
    cfg.MODEL.EFFICIENTDET.SQUARE_SIZE = 0

    # --- Training recipe (EfficientDet's; off by default, so Detectron2 configs train as
    # Detectron2 trains them).
    # Scale jitter: (min, max) scales of a square input of side INPUT.MAX_SIZE_TRAIN: the
    # image is resized to that side times a random scale in [min, max] (aspect kept), then
    # randomly cropped (or padded) to the square, boxes clipped, then flipped as
    # INPUT.RANDOM_FLIP says. EfficientDet: (0.1, 2.0). () = off (Detectron2's resize).
    cfg.INPUT.SCALE_JITTER = ()
    # An exponential moving average of the weights (timm's ModelEmaV3), updated after every
    # step, saved in every checkpoint as "ema" and restored on --resume.
    cfg.MODEL_EMA = CN()
    cfg.MODEL_EMA.ENABLED = False
    cfg.MODEL_EMA.DECAY = 0.9998  # EfficientDet's; in (0, 1)
    # Evaluate with the EMA weights (periodic evaluation and --eval-only), and when loading
    # MODEL.WEIGHTS from a checkpoint that holds EMA weights, load those; False: the raw ones.
    cfg.MODEL_EMA.USE_EMA_WEIGHTS = True
    # torch.compile of the trained and evaluated model's network parts (bifpn_d2.compile):
    # "" = eager; else the backend, e.g. "inductor".
    cfg.MODEL.COMPILE = ""
    return cfg


