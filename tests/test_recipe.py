"""EfficientDet's training recipe as config keys: weight EMA (MODEL_EMA) and scale jitter
with a square crop (INPUT.SCALE_JITTER), each at a tiny size on the CPU."""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog

from bifpn_d2.data import TINY_OVERRIDES
from bifpn_d2.data.scale_jitter import build_train_mapper
from bifpn_d2.engine import AtomicCheckpointer, ConfigError, Trainer, load_config
from bifpn_d2.engine.config import build_checked_model

CONFIG = "synthetic/RetinaNet-R18-BiFPN.yaml"
TINY = [*TINY_OVERRIDES, "MODEL.BIFPN.NUM_CELLS", "1", "MODEL.BIFPN.OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "64", "TEST.EVAL_PERIOD", "0", "SOLVER.WARMUP_ITERS", "0"]
EMA = ["MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.5"]


def _cfg(tmp_path, *opts):
    return load_config(CONFIG, [*TINY, "OUTPUT_DIR", str(tmp_path), *opts])


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return any(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


def _record_evaluations(monkeypatch, models: list) -> None:
    """Trainer.test (every evaluation) only records the model it was given."""
    def test(cls, cfg, model, evaluators=None):
        models.append(model)
        return {}

    monkeypatch.setattr(Trainer, "test", classmethod(test))


def test_ema_follows_the_weights_and_is_what_evaluation_uses(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, *EMA, "SOLVER.MAX_ITER", "3")
    evaluated = []
    _record_evaluations(monkeypatch, evaluated)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    initial = {k: v.clone() for k, v in trainer.model_ema.module.state_dict().items()}
    trainer.train()
    ema = trainer.model_ema.module
    assert _differs(ema, trainer.model), "after steps the EMA weights differ from the raw ones"
    assert any(not torch.equal(initial[k], v) for k, v in ema.state_dict().items()), "the EMA moved"
    # decay 0.5: each step the EMA goes half-way to the weights (timm skips the first step's decay)
    assert evaluated and all(m is ema for m in evaluated), "evaluation ran on the EMA weights"
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert "ema" in saved and set(saved["ema"]) == {f"module.{k}" for k in ema.state_dict()}


def test_evaluation_on_raw_weights_when_asked(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, *EMA, "MODEL_EMA.USE_EMA_WEIGHTS", "False", "SOLVER.MAX_ITER", "1")
    evaluated = []
    _record_evaluations(monkeypatch, evaluated)
    trainer = Trainer(cfg)
    trainer.train()
    assert evaluated and all(m is trainer.model for m in evaluated)


def test_resume_restores_the_ema_and_weights_only_loads_choose(tmp_path, monkeypatch):
    _record_evaluations(monkeypatch, [])
    cfg = _cfg(tmp_path, *EMA, "SOLVER.MAX_ITER", "2")
    first = Trainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    path = str(tmp_path / "model_final.pth")
    saved = torch.load(path, weights_only=False)

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    for k, v in resumed.model_ema.module.state_dict().items():
        assert torch.equal(v, saved["ema"][f"module.{k}"]), k
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k  # resuming restores the raw weights

    # A model without EMA loading that checkpoint: EMA weights by default, raw ones when asked.
    plain = _cfg(tmp_path)
    for use_ema, source in ((True, "ema"), (False, "model")):
        model = build_checked_model(plain)
        AtomicCheckpointer(model, use_ema_weights=use_ema).resume_or_load(path, resume=False)
        for k, v in model.state_dict().items():
            expected = saved["ema"][f"module.{k}"] if source == "ema" else saved["model"][k]
            assert torch.equal(v, expected), (source, k)


@pytest.mark.parametrize(
    "opts, words",
    [
        (["MODEL_EMA.DECAY", "1.5"], "MODEL_EMA.DECAY=1.5 is not valid; it must lie in (0, 1)"),
        (["MODEL_EMA.DECAY", "0.0"], "MODEL_EMA.DECAY=0.0 is not valid"),
        (["INPUT.SCALE_JITTER", "(2.0, 0.1)"], "INPUT.SCALE_JITTER=(2.0, 0.1) is not valid"),
        (["INPUT.SCALE_JITTER", "(0.0, 2.0)"], "0 < min <= max"),
        (["INPUT.SCALE_JITTER", "(0.5,)"], "INPUT.SCALE_JITTER=(0.5,) is not valid"),
        (["SOLVER.BASE_LR", "-1"], "SOLVER.BASE_LR=-1.0 is not valid; it must be > 0"),
        (["INPUT.MIN_SIZE_TRAIN", "(0,)"], "INPUT.MIN_SIZE_TRAIN=(0,) is not valid"),
    ],
)
def test_bad_recipe_values_name_the_key(opts, words, tmp_path):
    with pytest.raises(ConfigError) as info:
        _cfg(tmp_path, *opts)
    assert words in str(info.value)


def test_an_integer_for_a_float_key_is_a_float(tmp_path):
    assert _cfg(tmp_path, "SOLVER.BASE_LR", "1").SOLVER.BASE_LR == 1.0


def test_scale_jitter_gives_the_square_crop_with_boxes_clipped(tmp_path):
    cfg = _cfg(tmp_path, "INPUT.SCALE_JITTER", "(0.1, 2.0)", "INPUT.MAX_SIZE_TRAIN", "96")
    mapper = build_train_mapper(cfg)
    dataset = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    np.random.seed(0)
    counts, originals = [], []
    for record in dataset * 4:
        out = mapper(record)
        assert tuple(out["image"].shape[-2:]) == (96, 96), "every image is the square"
        boxes = out["instances"].gt_boxes.tensor
        assert (boxes >= 0).all() and (boxes <= 96).all(), "boxes clipped to the crop"
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all(), "no empty box kept"
        counts.append(len(boxes))
        originals.append(len(record["annotations"]))
    assert min(counts) < max(counts) and counts != originals, "scales and crops vary the instances"
    # One object, scale ~2: the crop is about a quarter of the image and often misses it.
    smallest = min((a for r in dataset for a in r["annotations"]), key=lambda a: a["bbox"][2] * a["bbox"][3])
    record = next(r for r in dataset if any(a is smallest for a in r["annotations"]))
    single = dict(record, annotations=[smallest])
    big = build_train_mapper(_cfg(tmp_path, "INPUT.SCALE_JITTER", "(1.9, 2.0)", "INPUT.MAX_SIZE_TRAIN", "96"))
    counts = [len(big(dict(single))["instances"]) for _ in range(30)]
    assert 0 in counts and 1 in counts, counts


def test_scale_jitter_trains_through_empty_crops(tmp_path):
    """Training steps at scale jitter (including crops without objects) give finite losses."""
    cfg = _cfg(tmp_path, "INPUT.SCALE_JITTER", "(1.9, 2.0)", "SOLVER.MAX_ITER", "2")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert np.isfinite(trainer.storage.history("total_loss").latest())


@pytest.mark.parametrize("clip_type", ["full_model", "norm"])
def test_gradient_clipping_of_the_whole_model(clip_type, tmp_path):
    """CLIP_TYPE full_model (effdet's) scales all gradients by one factor to a total norm of
    CLIP_VALUE; Detectron2's "norm" clips each parameter on its own."""
    clip = ["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type,
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "10.0"]
    plain_sgd = ["SOLVER.BASE_LR", "1.0", "SOLVER.MOMENTUM", "0.0", "SOLVER.WEIGHT_DECAY", "0.0",
                 "SOLVER.WEIGHT_DECAY_NORM", "0.0"]
    cfg = _cfg(tmp_path, *clip, *plain_sgd)
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.zeros(2))
    model.b = torch.nn.Parameter(torch.zeros(2))
    optimizer = Trainer.build_optimizer(cfg, model)
    model.a.grad = torch.tensor([30.0, 40.0])  # norm 50
    model.b.grad = torch.tensor([0.0, 5.0])  # norm 5: the whole model's is sqrt(2525)
    optimizer.step()
    if clip_type == "full_model":
        scale = 10.0 / 2525 ** 0.5
        torch.testing.assert_close(model.a.detach(), -torch.tensor([30.0, 40.0]) * scale)
        torch.testing.assert_close(model.b.detach(), -torch.tensor([0.0, 5.0]) * scale)
    else:
        torch.testing.assert_close(model.a.detach(), -torch.tensor([6.0, 8.0]))
        torch.testing.assert_close(model.b.detach(), -torch.tensor([0.0, 5.0]))


def test_efficientdet_configs_hold_the_recipe():
    for name in ("EfficientDet-D0", "EfficientDet-D7x"):
        cfg = load_config(f"EfficientDet/{name}.yaml", ["MODEL.DEVICE", "cpu"])
        assert cfg.INPUT.SCALE_JITTER == (0.1, 2.0)
        assert cfg.MODEL_EMA.ENABLED and cfg.MODEL_EMA.DECAY == 0.9998
        clip = cfg.SOLVER.CLIP_GRADIENTS
        assert clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE == 10.0
        assert cfg.SOLVER.WEIGHT_DECAY == 4e-5 and cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR" and cfg.SOLVER.WARMUP_ITERS > 0


def test_scale_jitter_from_lazy_config():
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig, instantiate

    from bifpn_d2.data.scale_jitter import scale_jitter_augmentations
    from bifpn_d2.engine.config import resolve_config_file

    cfg = LazyConfig.load(resolve_config_file("lazy/EfficientDet-D0.py"))
    jitter = L(scale_jitter_augmentations)(size=512, min_scale=0.1, max_scale=2.0)
    cfg.dataloader.train.mapper.augmentations = jitter
    names = [type(a).__name__ for a in instantiate(cfg.dataloader.train.mapper).augmentations.augs]
    assert names == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert cfg.train.model_ema.enabled
