"""RetinaNet R50 with a BiFPN neck (160 channels, 6 residual cells, P3-P7 with P6/P7 learned
from res5), Detectron2's 1x schedule: the LazyConfig twin of
``configs/COCO-Detection/RetinaNet-R50-BiFPN_1x.yaml``."""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from bifpn_d2 import BiFPN, ConvP6P7TopBlock
from bifpn_d2.layers import LayerStyle

from .common import coco_dataloader, retinanet, schedule_1x, sgd, train_options

model = retinanet(
    backbone=L(BiFPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=160,
        num_cells=6,  # residual cells (BiFPN's default), the neck study's recipe, as the YAML twin
        top_block=L(ConvP6P7TopBlock)(in_channels=2048, out_channels=160, in_feature="res5"),  # P6, P7
        style=L(LayerStyle)(norm="SyncBN"),
    ),
    num_convs=4,
)
dataloader = coco_dataloader()
optimizer = sgd(lr=0.01)
lr_multiplier = schedule_1x()
train = train_options(output_dir="output/lazy/RetinaNet-R50-BiFPN_1x")
train["init_checkpoint"] = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
