"""Export whole Detectron2 detectors (with any backbone, ours included) for deployment.

Three routes, as in Detectron2's ``tools/deploy/export_model.py``:

- ``tracing`` to TorchScript or ONNX: a :class:`~detectron2.export.TracingAdapter` turns
  the model into a function of one image tensor returning a tuple of tensors;
- ``scripting`` to TorchScript: :func:`~detectron2.export.scripting_with_instances`.

An exported model takes one ``(3, H, W)`` float image in the model's input format
(``cfg.INPUT.FORMAT``, pixel values 0-255, resized as ``DefaultPredictor`` does) of *any*
size, whatever the size it was exported with. It returns the detections of
:func:`raw_inference`: in that image's coordinates, before :func:`detector_postprocess`
rescales them to the original image. Traced outputs are flattened;
``adapter.outputs_schema`` rebuilds the ``Instances``.

Tracing fixes one decision of our necks at export time: whether a downsampling edge
needs the adaptive max-pool fallback of :class:`~bifpn_d2.layers.ResampleToLevel`. It
never does with ResNet or EfficientNet bottom-ups, whose level sizes are ``ceil(n / 2)``
of the level below at every input size.
"""
import io
import logging
import os
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils
from detectron2.data import transforms as T

# Importing detectron2.export also applies Detectron2's scripting patches (ResNet).
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

__all__ = [
    "ONNX_OPSET",
    "assert_instances_close",
    "export_and_verify",
    "export_onnx",
    "export_scripting",
    "export_tracing",
    "raw_inference",
    "run_onnx",
    "sample_image",
    "scripted_instances",
]

logger = logging.getLogger(__name__)
# The synthetic sample (height, width) before resizing: a 4:3 photo.
SYNTHETIC_SAMPLE_SIZE = (480, 640)

ONNX_OPSET = 17
_UNSUPPORTED = "export supports GeneralizedRCNN and DenseDetector models, not {}"

# Every Instances field the supported meta-architectures use at inference (scripting
# needs them declared up front).
_SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
}


def raw_inference(model: nn.Module, inputs: List[Dict[str, Tensor]]) -> List[Instances]:
    """Detections of a ``GeneralizedRCNN`` or a ``DenseDetector`` (RetinaNet, FCOS) in the
    coordinates of the (resized) input images, before ``detector_postprocess``.

    Raises:
        TypeError: another meta-architecture.
    """
    if isinstance(model, GeneralizedRCNN):
        return model.inference(inputs, do_postprocess=False)
    if isinstance(model, DenseDetector):
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        return model.forward_inference(images, features, model.head(features))
    raise TypeError(_UNSUPPORTED.format(type(model).__name__))


def _infer_one(model: nn.Module, image: Tensor) -> Instances:
    return raw_inference(model, [{"image": image}])[0]


def _tracing_adapter(model: nn.Module, image: Tensor) -> TracingAdapter:
    # eval() on the adapter too: exporters restore the adapter's mode, and with it the model's.
    return TracingAdapter(model.eval(), image, _infer_one).eval()


def export_tracing(model: nn.Module, image: Tensor) -> Tuple[torch.jit.ScriptModule, TracingAdapter]:
    """Trace ``model`` on ``image`` (``(3, H, W)``) into TorchScript.

    Returns:
        ``(traced, adapter)``: ``traced(image)`` gives a tuple of tensors, which
        ``adapter.outputs_schema`` turns back into ``Instances``.
    """
    adapter = _tracing_adapter(model, image)
    with torch.no_grad():
        # check_trace would re-run the model twice only to compare the same graph.
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
    return traced, adapter


def export_onnx(model: nn.Module, image: Tensor, opset: int = ONNX_OPSET) -> Tuple[bytes, TracingAdapter]:
    """Export ``model`` to ONNX by tracing on ``image``, with the image height and width as
    dynamic axes (input name ``"image"``).

    Returns:
        ``(onnx_bytes, adapter)``; the model's outputs are the flattened tensors that
        ``adapter.outputs_schema`` turns back into ``Instances``.
    """
    adapter = _tracing_adapter(model, image)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            adapter,
            (image,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            dynamic_axes={"image": {1: "height", 2: "width"}},
        )
    return buffer.getvalue(), adapter


class _ScriptableRCNN(nn.Module):
    """Dict-in, dict-out wrapper (TorchScript cannot return ``Instances`` to Python)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class _ScriptableDense(_ScriptableRCNN):
    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        # Under scripting a DenseDetector returns its results before postprocessing.
        instances = self.model(inputs)
        return [i.get_fields() for i in instances]


def export_scripting(model: nn.Module) -> torch.jit.ScriptModule:
    """Script ``model`` (a ``GeneralizedRCNN`` or ``DenseDetector``) into TorchScript.

    The result takes a tuple of ``{"image": (3, H, W)}`` dicts and returns, per image, a
    dict of the :func:`raw_inference` fields (boxes as ``(R, 4)`` tensors).
    """
    if isinstance(model, GeneralizedRCNN):
        wrapper: nn.Module = _ScriptableRCNN(model)
    elif isinstance(model, DenseDetector):
        wrapper = _ScriptableDense(model)
    else:
        raise TypeError(_UNSUPPORTED.format(type(model).__name__))
    return scripting_with_instances(wrapper.eval(), _SCRIPTING_FIELDS)


def scripted_instances(outputs: Dict[str, Tensor], image_size: Tuple[int, int]) -> Instances:
    """Rebuild ``Instances`` from one image's output dict of a scripted model."""
    return Instances(image_size, **outputs)


def run_onnx(onnx_model: Union[bytes, str], image: Tensor) -> List[Tensor]:
    """Run an exported ONNX model in onnxruntime (CPU) on one ``(3, H, W)`` image."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": image.detach().cpu().numpy()})
    return [torch.from_numpy(o) for o in outputs]


def assert_instances_close(
    expected: Instances, actual: Instances, rtol: float = 1e-5, atol: float = 1e-5, score_ties: float = 0.0
) -> float:
    """Check that two detection results hold the same detections, and return the largest
    absolute difference between matched values.

    Detections are matched one to one (greedily, in order), each to the first unmatched
    one whose every field (boxes, scores, classes, ...) is close: runtimes may order
    detections of (nearly) equal score differently, which is not an error. With
    ``score_ties > 0``, a detection left without a match is accepted when the other side
    has one left of the same class whose score differs by at most ``score_ties``: two
    overlapping candidates whose scores tie up to float rounding, of which NMS keeps
    whichever came first.

    Raises:
        AssertionError: the image sizes, counts or field names differ, or a detection
            has no match.
    """
    size_e, size_a = [[int(x) for x in r.image_size] for r in (expected, actual)]
    if size_e != size_a:
        raise AssertionError(f"image size {size_a}, expected {size_e}")
    fields_e, fields_a = _field_tensors(expected), _field_tensors(actual)
    if sorted(fields_e) != sorted(fields_a):
        raise AssertionError(f"fields {sorted(fields_a)}, expected {sorted(fields_e)}")
    if len(expected) != len(actual):
        raise AssertionError(f"{len(actual)} detections, expected {len(expected)}")
    if not fields_e or len(expected) == 0:
        return 0.0
    # (R, F) matrices, one row per detection, so that all fields are compared at once.
    e = torch.cat([fields_e[k].reshape(len(expected), -1).double() for k in sorted(fields_e)], dim=1)
    a = torch.cat([fields_a[k].reshape(len(actual), -1).double() for k in sorted(fields_e)], dim=1)
    close = ((e[:, None] - a[None]).abs() <= atol + rtol * a[None].abs()).all(dim=2)  # (R, R)
    worst = 0.0
    unmatched = torch.ones(len(actual), dtype=torch.bool)
    left: List[int] = []
    for i in range(len(expected)):
        candidates = torch.nonzero(close[i] & unmatched).flatten()
        if len(candidates) == 0:
            left.append(i)
            continue
        j = candidates[0]
        unmatched[j] = False
        worst = max(worst, (e[i] - a[j]).abs().max().item())
    scores, classes = fields_e.get("scores"), fields_e.get("pred_classes")
    for i in left:
        ties = torch.zeros(len(actual), dtype=torch.bool)
        if score_ties > 0 and scores is not None and classes is not None:
            ties = unmatched & (fields_a["pred_classes"] == classes[i])
            ties &= (fields_a["scores"].double() - scores[i].double()).abs() <= score_ties
        if not ties.any():
            raise AssertionError(
                f"detection {i} {e[i].tolist()} has no match within rtol={rtol}, atol={atol} "
                f"(fields {sorted(fields_e)}); nearest: {a[(e[i] - a).abs().amax(dim=1).argmin()].tolist()}"
            )
        unmatched[torch.nonzero(ties).flatten()[0]] = False
    return worst


def _field_tensors(instances: Instances) -> Dict[str, Tensor]:
    return {k: v.tensor if isinstance(v, Boxes) else v for k, v in instances.get_fields().items()}


def sample_image(cfg: CfgNode, path: Optional[str]) -> torch.Tensor:
    """A ``(3, H, W)`` float image in ``cfg.INPUT.FORMAT``, resized as ``DefaultPredictor``
    resizes: read from ``path``, or random pixels (fixed seed) when ``path`` is None."""
    if path is None:
        pixels = np.random.default_rng(0).integers(0, 256, size=(*SYNTHETIC_SAMPLE_SIZE, 3), dtype=np.uint8)
    else:
        pixels = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    pixels = resize.get_transform(pixels).apply_image(pixels)
    return torch.as_tensor(np.ascontiguousarray(pixels.astype("float32").transpose(2, 0, 1)))


def export_and_verify(
    model: torch.nn.Module, image: torch.Tensor, fmt: str, method: str, output_dir: str
) -> str:
    """Export ``model`` (eval mode) to ``output_dir``, run the file once on ``image`` and
    compare with the PyTorch outputs. Returns the path written.

    Raises:
        AssertionError: the exported model's outputs differ from the PyTorch model's.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "model.onnx" if fmt == "onnx" else "model.ts")
    inputs = [{"image": image}]
    with torch.no_grad():
        expected = raw_inference(model, inputs)[0]
        if method == "scripting":
            torch.jit.save(export_scripting(model), path)
            actual = scripted_instances(torch.jit.load(path)(tuple(inputs))[0], expected.image_size)
        elif fmt == "torchscript":
            traced, adapter = export_tracing(model, image)
            torch.jit.save(traced, path)
            actual = adapter.outputs_schema(torch.jit.load(path)(image))
        else:
            onnx_bytes, adapter = export_onnx(model, image)
            with open(path, "wb") as f:
                f.write(onnx_bytes)
            actual = adapter.outputs_schema(tuple(run_onnx(path, image)))
    if method == "tracing":
        logger.info("Inputs schema: %s", adapter.inputs_schema)
        logger.info("Outputs schema: %s", adapter.outputs_schema)
    # onnxruntime's kernels round differently from PyTorch's, and boxes are in pixels: for
    # ONNX, 1e-3 relative and 2e-4 of the image's longer side absolute (0.06 px at 320).
    if fmt == "onnx":
        rtol, atol = 1e-3, max(1e-3, 2e-4 * max(image.shape[1:]))
    else:
        rtol = atol = 1e-5
    diff = assert_instances_close(expected, actual, rtol=rtol, atol=atol)
    logger.info("Wrote %s; it runs on a %s image and matches PyTorch (%d detections, max abs diff %.3g)",
                path, "x".join(map(str, image.shape[1:])), len(expected), diff)
    return path
