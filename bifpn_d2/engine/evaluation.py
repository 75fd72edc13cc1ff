"""Evaluators chosen from a dataset's ``evaluator_type`` metadata, for every type Detectron2's
own ``tools/train_net.py`` knows, and the checks that run before training starts: each test
dataset is registered, has an evaluator, and the package that evaluator imports when it runs
is installed; test-time augmentation has a model it supports.

``evaluator_type`` -> evaluators (extra package they import when they run):

- ``coco``: ``COCOEvaluator``
- ``sem_seg``: ``SemSegEvaluator``
- ``coco_panoptic_seg``: ``SemSegEvaluator``, ``COCOEvaluator``, ``COCOPanopticEvaluator``
  (``panopticapi``)
- ``lvis``: ``LVISEvaluator`` (``lvis``)
- ``pascal_voc``: ``PascalVOCDetectionEvaluator``
- ``cityscapes_instance``, ``cityscapes_sem_seg``: ``CityscapesInstanceEvaluator``,
  ``CityscapesSemSegEvaluator`` (``cityscapesscripts``; one machine only)
"""

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from detectron2 import evaluation as ev
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils.file_io import PathManager
from PIL import Image
from torch import nn

from ..data import ensure_generated
from .config import ConfigError

__all__ = ["EVALUATOR_TYPES", "build_evaluator", "check_evaluation"]


@dataclass(frozen=True)
class _Evaluator:
    """How to build one evaluator: ``make(dataset_name, output_folder)``, and the module
    it imports only when it runs (``""``: none beyond Detectron2's dependencies)."""

    make: Callable[[str, str], ev.DatasetEvaluator]
    needs: str = ""
    install: str = ""  # how to get ``needs``
    one_machine: bool = False  # writes to one local folder from every process


def read_label_map(path: str, dtype=int) -> np.ndarray:
    """A label PNG as an ``(H, W)`` array. Detectron2's own reader asks numpy for a view
    (``copy=False``), which numpy 2 refuses for a PIL image."""
    with PathManager.open(path, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


_COCO = _Evaluator(lambda name, out: ev.COCOEvaluator(name, output_dir=out))
_SEM_SEG = _Evaluator(
    lambda name, out: ev.SemSegEvaluator(
        name, distributed=True, output_dir=out, sem_seg_loading_fn=read_label_map
    )
)
_PANOPTIC = _Evaluator(
    lambda name, out: ev.COCOPanopticEvaluator(name, out),
    "panopticapi",
    "pip install panopticapi-lite",
)
_CITYSCAPES = {"needs": "cityscapesscripts", "install": "pip install cityscapesscripts", "one_machine": True}

_LVIS = _Evaluator(lambda name, out: ev.LVISEvaluator(name, output_dir=out), "lvis", "pip install lvis")
_VOC = _Evaluator(lambda name, out: ev.PascalVOCDetectionEvaluator(name))
_CITYSCAPES_INSTANCE = _Evaluator(lambda name, out: ev.CityscapesInstanceEvaluator(name), **_CITYSCAPES)
_CITYSCAPES_SEM_SEG = _Evaluator(lambda name, out: ev.CityscapesSemSegEvaluator(name), **_CITYSCAPES)

# evaluator_type -> evaluators, as Detectron2's tools/train_net.py chooses them.
EVALUATOR_TYPES: Dict[str, Tuple[_Evaluator, ...]] = {
    "coco": (_COCO,),
    "sem_seg": (_SEM_SEG,),
    "coco_panoptic_seg": (_SEM_SEG, _COCO, _PANOPTIC),
    "lvis": (_LVIS,),
    "pascal_voc": (_VOC,),
    "cityscapes_instance": (_CITYSCAPES_INSTANCE,),
    "cityscapes_sem_seg": (_CITYSCAPES_SEM_SEG,),
}


def _evaluators_of(dataset_name: str) -> Tuple[_Evaluator, ...]:
    """The evaluators of a registered dataset, from its ``evaluator_type`` metadata.

    Raises:
        ConfigError: not registered, or a type no evaluator handles.
    """
    if dataset_name not in DatasetCatalog.list():
        raise ConfigError(f"DATASETS.TEST names {dataset_name!r}, which is not a registered dataset")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "")
    if evaluator_type not in EVALUATOR_TYPES:
        raise ConfigError(
            f"no evaluator for test dataset {dataset_name!r}: its evaluator_type is {evaluator_type!r}, "
            f"known types: {sorted(EVALUATOR_TYPES)}; set MetadataCatalog.get({dataset_name!r})"
            ".evaluator_type, or remove the dataset from DATASETS.TEST"
        )
    return EVALUATOR_TYPES[evaluator_type]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_evaluation(cfg: CfgNode, model: nn.Module, num_machines: int = 1) -> None:
    """Check, before training starts, that evaluating ``cfg.DATASETS.TEST`` (at the end of
    training, and every ``TEST.EVAL_PERIOD``) and ``TEST.AUG.ENABLED`` will work.

    Args:
        cfg: the training config.
        model: the model ``cfg`` builds (checked for test-time augmentation).
        num_machines: machines of the job (Cityscapes evaluators need one).

    Raises:
        ConfigError: the first problem, in one sentence.
    """
    for dataset_name in cfg.DATASETS.TEST:
        for evaluator in _evaluators_of(dataset_name):
            if evaluator.needs and not _installed(evaluator.needs):
                raise ConfigError(
                    f"evaluating {dataset_name!r} needs the package {evaluator.needs!r}, which is not "
                    f"installed ({evaluator.install})"
                )
            if evaluator.one_machine and num_machines > 1:
                raise ConfigError(f"the Cityscapes evaluators of {dataset_name!r} work on one machine only")
    if cfg.TEST.AUG.ENABLED:
        if not isinstance(model, GeneralizedRCNN):
            raise ConfigError(
                "TEST.AUG.ENABLED (test-time augmentation, Detectron2's GeneralizedRCNNWithTTA) needs "
                f"MODEL.META_ARCHITECTURE GeneralizedRCNN; this config builds {type(model).__name__}"
            )
        if cfg.MODEL.KEYPOINT_ON or cfg.MODEL.LOAD_PROPOSALS:
            raise ConfigError("TEST.AUG.ENABLED does not support MODEL.KEYPOINT_ON or MODEL.LOAD_PROPOSALS")


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> ev.DatasetEvaluator:
    """The evaluator(s) of ``dataset_name`` (see the table above), writing to
    ``output_folder`` (default ``OUTPUT_DIR/inference/<dataset_name>``); several are
    combined into one ``DatasetEvaluators``. A built-in synthetic dataset is generated first
    (the COCO evaluator reads its json file).

    Raises:
        ConfigError: as :func:`check_evaluation` for this dataset.
    """
    evaluators = _evaluators_of(dataset_name)
    ensure_generated(dataset_name)
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    built: List[ev.DatasetEvaluator] = [e.make(dataset_name, output_folder) for e in evaluators]
    return built[0] if len(built) == 1 else ev.DatasetEvaluators(built)
