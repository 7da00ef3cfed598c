"""The onnxruntime backend: models exported to ONNX, run on the CPU in fp32.

- `export_onnx` / `OnnxModel`: a classifier as a graph over a float batch (the `onnx` inference
  mode exports in memory; `optik export` writes the file).
- `export_detector` / `OnnxDetector`: a torchvision detector as a graph over one float image of
  any size; the graph resizes, normalises and scales the boxes back itself, as the model does.
- `classifier_export` / `detector_export`: either, with the package's task, class names and
  preprocessing in the ONNX metadata (`optik` key, JSON), checked against PyTorch before it is
  returned (the task of a package calls the one that fits it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from optik.errors import ModelError

METADATA_KEY = "optik"
# onnxruntime against PyTorch: probabilities and scores within this, boxes within BOX_TOLERANCE pixels.
TOLERANCE = 1e-3
BOX_TOLERANCE = 1.0


def session(model: bytes | str, threads: int | None = None):
    """An onnxruntime CPU session whose threads do not spin (they would take the cores the image
    decoders need between batches)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """A classifier's session called like the module it was exported from: a float batch in, the
    first output back as a tensor."""

    def __init__(self, model: bytes | str, threads: int | None = None):
        super().__init__()
        self.session = session(model, threads)
        self.input = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: array})[0])


class OnnxDetector(nn.Module):
    """A detector's session called like a torchvision detector: a list of float (3, H, W) images in
    [0, 1], a list of {boxes, labels, scores[, masks]} back. One run per image (sizes differ).

    With `resize` ({min_size, max_size, fixed_size} of the model's transform), the graph was
    exported without its resize (see `export_detector`): images are resized here, by torchvision's
    own function, and boxes scaled back to the image after the run. A resize inside the graph
    computes its output size in float32, which for some sizes gives a row or column fewer than
    PyTorch (320x400 at a max_size of 320: 255 rows, not 256): different pixels, different objects.
    """

    def __init__(self, model: bytes | str, resize: dict | None = None, threads: int | None = None):
        super().__init__()
        self.session = session(model, threads)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [output.name for output in self.session.get_outputs()]
        self.resize = resize

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        from torchvision.models.detection.transform import _resize_image_and_masks, resize_boxes

        results = []
        for image in images:
            image = image.detach().float().cpu()
            resized = image
            if self.resize is not None:
                fixed = self.resize["fixed_size"]
                resized = _resize_image_and_masks(
                    image,
                    float(self.resize["min_size"]),
                    float(self.resize["max_size"]),
                    None,
                    tuple(fixed) if fixed else None,
                )[0]
            arrays = self.session.run(None, {self.input: resized.contiguous().numpy()})
            output = {name: torch.from_numpy(array) for name, array in zip(self.outputs, arrays)}
            if resized.shape != image.shape:
                output["boxes"] = resize_boxes(output["boxes"], list(resized.shape[-2:]), list(image.shape[-2:]))
            results.append(output)
        return results


def resize_of(model: nn.Module) -> dict | None:
    """What `OnnxDetector` needs to resize as the model does; None for mask models (their masks are
    pasted at the graph's input size, so the graph must see the original image)."""
    transform = getattr(model, "transform", None)
    if (
        transform is None
        or getattr(model, "roi_heads", None) is not None
        and getattr(model.roi_heads, "has_mask", lambda: False)()
    ):
        return None
    fixed = getattr(transform, "fixed_size", None)
    return {
        "min_size": int(transform.min_size[-1]),
        "max_size": int(transform.max_size),
        "fixed_size": list(fixed) if fixed else None,
    }


def export_onnx(
    model: nn.Module, example: torch.Tensor, target=None, dynamic_batch: bool = True, names=("images", "outputs")
):
    """Exports a classifier (eval) for inputs shaped like `example` to `target` (a path or file-like;
    None: returns the bytes). The batch axis is dynamic unless `dynamic_batch` is False."""
    buffer = io.BytesIO() if target is None else target
    axes = {names[0]: {0: "batch"}, names[1]: {0: "batch"}} if dynamic_batch else None
    with exporting_quietly():
        # a value turned into Python (an `if` on a tensor) would be frozen into the graph: refuse the export
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.onnx.export(
            copy.deepcopy(model).eval().cpu(),
            (example.detach().clone().cpu().contiguous(),),
            buffer,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue() if target is None else None


def export_detector(model: nn.Module, example: torch.Tensor, resize_outside: bool = False) -> bytes:
    """A torchvision detector (eval) as ONNX bytes: input `image` (3, H, W) float in [0, 1] with
    H and W free; outputs named as the model's output dict, with a free object count.

    `resize_outside`: the graph leaves the image at its size (the caller resizes, as
    `OnnxDetector` does, and scales the boxes back). torchvision writes its detectors for tracing
    (its resize and box code take the traced path), so its TracerWarnings are expected here;
    outputs are checked by `detector_export`.
    """
    model = copy.deepcopy(model).eval().cpu()
    if resize_outside:
        model.transform.resize = lambda image, target=None: (image, target)
    with torch.no_grad():
        names = list(model([example])[0].keys())
    buffer = io.BytesIO()
    axes = {"image": {1: "height", 2: "width"}, **{name: {0: "objects"} for name in names}}
    with exporting_quietly():
        torch.onnx.export(
            model,
            ([example.detach().clone().cpu()],),
            buffer,
            input_names=["image"],
            output_names=names,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


@contextlib.contextmanager
def exporting_quietly():
    """Gradients and warnings off, and the exporter's output silenced (see `_output_silenced`)."""
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), _output_silenced():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _output_silenced():
    """stdout and stderr at the file-descriptor level off (C++ writes included): the exporter dumps
    the whole graph on stdout when an operator has no ONNX form (the exception says which, and
    callers report it), and stdout may carry results."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        yield
    finally:
        for fd, copy_ in zip((1, 2), saved):
            os.dup2(copy_, fd)
            os.close(copy_)


@dataclass
class OnnxExport:
    """An exported and checked model: the ONNX bytes and how closely onnxruntime matched PyTorch."""

    data: bytes
    task: str
    images: int
    compared: int  # images (classifier) or objects (detector) compared
    max_diff: float  # probabilities (classifier) or scores (detector)
    max_box_diff: float = 0.0  # pixels (detector)
    summary: str = ""  # how it was checked, in one line
    unchecked: bool = False  # a detector that found no object in the check images: nothing was compared


@contextlib.contextmanager
def export_errors():
    """Turns a failed export (an operator without an ONNX form, a traced branch...) into a ModelError that says what to do."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the exporter raises, the user's answer is the torch backend
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(
            f"this model cannot be exported to ONNX ({type(exc).__name__}: {reason[:300]}); run it with the torch backend"
        ) from None


def classifier_export(
    model: nn.Module, preprocess: dict, meta: dict, dynamic_batch: bool = True, count: int = 16
) -> OnnxExport:
    """A classifier as ONNX bytes with `meta`, checked on `count` random inputs: raises ModelError when
    onnxruntime and PyTorch disagree (top-1 differs, or probabilities beyond 1e-3)."""
    size = int(preprocess["image_size"])
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    meta = {**meta, "batch": None if dynamic_batch else count}
    data = with_metadata(export_onnx(model, images[:1] if dynamic_batch else images, dynamic_batch=dynamic_batch), meta)
    with torch.no_grad():
        expected = model(images).softmax(-1).numpy()
    got = OnnxModel(data)(images).softmax(-1).numpy()
    diff, same = float(np.abs(got - expected).max()), int((got.argmax(1) == expected.argmax(1)).sum())
    if diff > TOLERANCE or same != count:
        raise ModelError(
            f"the ONNX export does not match PyTorch (top-1 {same}/{count}, probabilities differ by {diff:.2e})"
        )
    return OnnxExport(
        data,
        "classify",
        count,
        count,
        diff,
        summary=f"onnxruntime matches PyTorch on {count} inputs (same top-1, probabilities within {diff:.1e})",
    )


def detector_export(
    model: nn.Module, preprocess: dict, meta: dict, check_images: list[Image.Image] | None, limits: dict
) -> OnnxExport:
    """A detector as ONNX bytes with `meta`, checked on `check_images` (default: synthetic pictures):
    raises ModelError when an object of one has no match in the other (same label, box within 1 px,
    score within 1e-3)."""
    size = int(preprocess.get("image_size") or 320)
    pictures = check_images or check_pictures(size)
    tensors = [torch.from_numpy(np.array(p.convert("RGB"))).permute(2, 0, 1).float().div(255) for p in pictures]
    meta = {**meta, "resize": resize_of(model)}
    data = with_metadata(export_detector(model, tensors[0], resize_outside=meta["resize"] is not None), meta)
    runtime = OnnxDetector(data, resize=meta["resize"])
    compared, score_diff, box_diff = 0, 0.0, 0.0
    for tensor in tensors:
        with torch.no_grad():
            expected = model([tensor])[0]
        got = runtime([tensor])[0]
        pairs, missing = match_detections(
            got, expected, floor=limits["score_threshold"] or 0.05, cap=limits["detections_per_image"] or 100
        )
        if missing:
            raise ModelError(
                f"the ONNX export does not match PyTorch: {missing} object(s) of one have no match in the other "
                f"(same label, box within {BOX_TOLERANCE:g} px, score within {TOLERANCE:g})"
            )
        compared += len(pairs)
        for i, j in pairs:
            score_diff = max(score_diff, float((got["scores"][i] - expected["scores"][j]).abs()))
            box_diff = max(box_diff, float((got["boxes"][i] - expected["boxes"][j]).abs().max()))
    summary = (
        f"onnxruntime matches PyTorch on {len(tensors)} images, {compared} objects (same labels, "
        f"boxes within {box_diff:.2g} px, scores within {score_diff:.1e})"
    )
    return OnnxExport(
        data, "detect", len(tensors), compared, score_diff, box_diff, summary=summary, unchecked=not compared
    )


def match_detections(
    got: dict, expected: dict, floor: float = 0.05, cap: int = 100
) -> tuple[list[tuple[int, int]], int]:
    """Pairs (got index, expected index) of the same label with boxes within BOX_TOLERANCE px and
    scores within TOLERANCE, each object in at most one pair, and how many objects found no partner.

    Only objects scoring clearly above `floor` (the model's score threshold) and, when the model
    kept its maximum of `cap` objects, above the lowest kept score must find a partner: a score on
    the edge may fall either side of it.
    """

    def must_match(output: dict) -> torch.Tensor:
        scores = output["scores"].float()
        edge = max(floor, float(scores.min()) if len(scores) >= cap else 0.0)
        return scores > edge + TOLERANCE

    def near(a: dict, i: int, b: dict) -> torch.Tensor:
        return (
            (b["labels"] == a["labels"][i])
            & ((b["boxes"].float() - a["boxes"][i].float()).abs().amax(dim=1) <= BOX_TOLERANCE)
            & ((b["scores"].float() - a["scores"][i].float()).abs() <= TOLERANCE)
        )

    pairs, missing, taken = [], 0, set()
    for i in torch.nonzero(must_match(got)).flatten().tolist():
        free = [j for j in torch.nonzero(near(got, i, expected)).flatten().tolist() if j not in taken]
        missing += not free
        if free:
            pairs.append((i, free[0]))
            taken.add(free[0])
    used = {i for i, _ in pairs}
    for j in torch.nonzero(must_match(expected)).flatten().tolist():
        if j in taken:
            continue
        free = [i for i in torch.nonzero(near(expected, j, got)).flatten().tolist() if i not in used]
        missing += not free
        used.update(free[:1])
    return pairs, missing


def check_pictures(size: int, count: int = 4, seed: int = 0) -> list[Image.Image]:
    """Noisy pictures with a few filled rectangles and ellipses, at sizes around `size`: the
    default images the detector export is checked on (give real ones for a stronger check)."""
    rng = np.random.default_rng(seed)
    pictures = []
    for index in range(count):
        height, width = int(size * (0.75 + 0.25 * (index % 2))), int(size * (1.0 + 0.25 * (index % 3)))
        pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels)
        draw = ImageDraw.Draw(picture)
        for _ in range(3):
            x0, y0 = rng.uniform(0, 0.6) * width, rng.uniform(0, 0.6) * height
            box = (x0, y0, x0 + rng.uniform(0.15, 0.4) * width, y0 + rng.uniform(0.15, 0.4) * height)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        pictures.append(picture)
    return pictures


def with_metadata(graph: bytes, meta: dict) -> bytes:
    import onnx

    proto = onnx.load_from_string(graph)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    return proto.SerializeToString()


def read_metadata(model: str | Path | bytes) -> dict:
    """The `optik` metadata of an exported model (a path or the bytes): task, classes, preprocess."""
    import onnx

    name = "the exported model" if isinstance(model, bytes) else str(model)
    try:
        proto = (
            onnx.load_from_string(model)
            if isinstance(model, bytes)
            else onnx.load(str(model), load_external_data=False)
        )
    except Exception as exc:  # noqa: BLE001 - any parse failure means: not an ONNX file
        raise ModelError(
            f"cannot read {name} as an ONNX model ({type(exc).__name__}): the file is not ONNX, or damaged or cut "
            "short (a copy that did not finish?); copy it again or export it again with `optik export`"
        ) from None
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ModelError(
        f"{name} was not exported by optik (no class names or preprocessing in it); export with `optik export model.pt --format onnx`"
    )


def read_check_images(folder: Path, exif_orientation: bool = True, limit: int = 8) -> list[Image.Image]:
    """Up to `limit` pictures of `folder` (sorted) to check a detector's export on, decoded as the detector
    decodes (`exif_orientation`: its package's)."""
    from optik.data.decode import open_image
    from optik.data.folder import find_images
    from optik.errors import DataError

    if not folder.is_dir():
        raise DataError(f"--check-images: no folder {folder}")
    paths = sorted(find_images(folder))[:limit]
    if not paths:
        raise DataError(f"--check-images: no images in {folder}")
    return [open_image(path, exif_orientation=exif_orientation) for path in paths]
