"""EfficientDet-D0: EfficientNet-B0 (c3-c5) -> BiFPN (64 channels, 3 cells, P3-P7) ->
EfficientDet's head (3 separable repeats) at 512 px; the LazyConfig twin of
``configs/EfficientDet/EfficientDet-D0.yaml``."""

from detectron2.config import LazyCall as L

from bifpn_d2 import BiFPN, CellOptions, EfficientDetTopBlock, EfficientNetBackbone
from bifpn_d2.layers import LayerStyle

from .common import coco_dataloader, efficientdet, schedule_1x, sgd, train_options

model = efficientdet(
    backbone=L(BiFPN)(
        bottom_up=L(EfficientNetBackbone)(
            model_name="efficientnet_b0",
            out_features=["c3", "c4", "c5"],
            norm="SyncBN",
            drop_path_rate=0.2,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=64,
        num_cells=3,
        # P6, P7: EfficientDet's 1x1 conv + max-pools over c5 (EfficientNet-B0: 320 channels)
        top_block=L(EfficientDetTopBlock)(
            in_channels=320, out_channels=64, num_levels=2, in_feature="c5", style="${..style}"
        ),
        cell=L(CellOptions)(fusion="fast_normalized", residual=False),  # EfficientDet's plain cells
        style=L(LayerStyle)(norm="SyncBN"),
    ),
    num_repeats=3,
    head_norm="SyncBN",
)
dataloader = coco_dataloader(
    image_format="RGB", train_sizes=(512,), max_size_train=512, size_test=512, max_size_test=512
)
optimizer = sgd(lr=0.01)
lr_multiplier = schedule_1x()
train = train_options(output_dir="output/lazy/EfficientDet-D0")
train["model_ema"]["enabled"] = True  # EfficientDet's weight EMA, decay 0.9998 (evaluation uses it)
# EfficientDet's scale jitter 0.1-2.0x with a random 512 px square crop, as INPUT.SCALE_JITTER
# of the YAML configs (here the train mapper keeps Detectron2's resize unless you set it):
#   from bifpn_d2.data.scale_jitter import scale_jitter_augmentations
#   dataloader.train.mapper.augmentations = L(scale_jitter_augmentations)(
#       size=512, min_scale=0.1, max_scale=2.0)
