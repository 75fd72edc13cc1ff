"""compile_model / MODEL.COMPILE: torch.compile of the network parts, outputs equal to eager
(inductor on the CPU at a small size), training through the compiled parts, checkpoints
unchanged, bad backends refused."""
import copy

import pytest
import torch
from _tiny_models import training_input
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from bifpn_d2 import compile_model
from bifpn_d2.data import TINY_OVERRIDES
from bifpn_d2.engine import ConfigError, Trainer, load_config
from bifpn_d2.export import assert_instances_close

SMALL = [*TINY_OVERRIDES, "MODEL.BIFPN.NUM_CELLS", "1", "MODEL.BIFPN.OUT_CHANNELS", "64",
         "MODEL.FPN.OUT_CHANNELS", "64"]
RETINANET = "synthetic/RetinaNet-R18-BiFPN.yaml"
RCNN = "synthetic/FasterRCNN-R18-BiFPN.yaml"
TOL = 1e-4  # float32 rounding of fused kernels


def _model(config: str):
    torch.manual_seed(0)
    return build_model(load_config(config, SMALL)).eval()


def _image(seed: int = 0, size=(96, 128)):
    return {"image": torch.rand(3, *size, generator=torch.Generator().manual_seed(seed)) * 255}


def test_inductor_inference_equals_eager():
    """Backbone and head compiled by inductor (static shapes): raw outputs within 1e-4 and
    the same detections; the state dict keeps its names."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = _model(RETINANET)
    compiled = compile_model(copy.deepcopy(eager), dynamic=False)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    inputs = [_image()]
    with torch.no_grad():
        images = eager.preprocess_image(inputs).tensor
        expected = eager.head([eager.backbone(images)[f] for f in eager.head_in_features])
        actual = compiled.head([compiled.backbone(images)[f] for f in compiled.head_in_features])
        for e, a in zip(sum(expected, []), sum(actual, [])):
            torch.testing.assert_close(a, e, rtol=0, atol=TOL)
        assert_instances_close(compiled(inputs)[0]["instances"], eager(inputs)[0]["instances"],
                               rtol=0, atol=1e-3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2, "backbone and head were compiled"


@pytest.mark.parametrize("config", [RETINANET, RCNN], ids=["retinanet", "faster_rcnn"])
def test_training_step_through_compiled_parts(config):
    """One training step (AOTAutograd traces forward and backward; the aot_eager backend
    keeps it quick): the same losses and gradients as eager."""
    eager = _model(config).train()
    compiled = compile_model(copy.deepcopy(eager), backend="aot_eager")
    batch = [training_input(96, 128, seed=s) for s in range(2)]
    losses = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        torch.manual_seed(0)  # the R-CNN samplers draw proposals at random
        with EventStorage():
            loss = model(copy.deepcopy(batch))
        sum(loss.values()).backward()
        losses[name] = loss
    for key in losses["eager"]:
        torch.testing.assert_close(losses["compiled"][key], losses["eager"][key], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_bad_backend_is_named():
    with pytest.raises(ValueError, match="compile backend 'tensorrt-ish' is not one of .*inductor"):
        compile_model(_model(RETINANET), backend="tensorrt-ish")
    with pytest.raises(ConfigError, match="MODEL.COMPILE='bogus' is not valid"):
        load_config(RETINANET, [*SMALL, "MODEL.COMPILE", "bogus"])


def test_model_compile_key_compiles_the_trainers_model():
    cfg = load_config(RETINANET, [*SMALL, "MODEL.COMPILE", "aot_eager"])
    model = Trainer.build_model(cfg)
    assert model.backbone._compiled_call_impl is not None and model.head._compiled_call_impl is not None
    assert getattr(build_model(load_config(RETINANET, SMALL)).backbone, "_compiled_call_impl", None) is None
