"""The OpenVINO engine: classifiers converted to OpenVINO's graph and run on the CPU in fp32, bf16 or int8.

- `convert`: a PyTorch classifier as an `ov.Model` with a free batch axis; the converted graph is
  kept on disk under the cache folder (keyed by the weights), so a second run reads it back instead
  of converting again.
- `quantize`: the int8 form by NNCF's post-training quantization on calibration images.
- `OpenVinoModel`: a compiled model called like the module it came from. fp32 sets OpenVINO's
  inference precision hint to f32 (exact; on AMX CPUs OpenVINO would pick bf16 by itself); bf16
  sets it to bf16. Compiled models are cached in OpenVINO's CACHE_DIR, so a second set-up reads
  the compiled blob.
- `save_ir` / `read_ir_metadata`: `optik export --format openvino` writes the graph (.xml + .bin)
  with the task, class names and preprocessing in its rt_info (`optik` key, JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from optik.errors import ModelError
from optik.inference.onnx import exporting_quietly

METADATA_KEY = "optik"
# OpenVINO's names of the precisions it runs (the int8 graph's other layers run at the CPU's best hint)
PRECISION_HINTS = {"32": "f32", "bf16": "bf16"}


def cache_dir() -> Path:
    """Where compiled models are kept between runs: $OPTIK_CACHE_DIR, else ~/.cache/optik."""
    root = os.environ.get("OPTIK_CACHE_DIR") or Path.home() / ".cache" / "optik"
    return Path(root)


@cache
def _core(folder: str):
    import openvino as ov

    core = ov.Core()
    core.set_property({"CACHE_DIR": folder})
    return core


def core():
    """One OpenVINO core per cache folder, caching compiled models there."""
    folder = cache_dir() / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    return _core(str(folder))


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or avx512_bf16), as OpenVINO reports it."""
    return available() and "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def weights_key(model: nn.Module, example: torch.Tensor) -> str:
    """A name for a network's converted graph: its class, input shape and every weight."""
    digest = hashlib.sha256(f"{type(model).__qualname__}{tuple(example.shape[1:])}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def convert(model: nn.Module, example: torch.Tensor):
    """The classifier (eval) as an `ov.Model` for batches shaped like `example`, any batch size;
    read from the cache folder when this network was converted before."""
    import openvino as ov

    def make():
        with exporting_quietly():
            return ov.convert_model(
                model.eval().cpu(), example_input=example[:1].cpu(), input=[(-1, *example.shape[1:])]
            )

    return _cached_graph(weights_key(model, example), make)


def quantize(model: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]):
    """The int8 form of the classifier by NNCF's post-training quantization over `calibration`
    batches (preprocessed images), cached like `convert` (keyed by the weights and the images)."""
    if not calibration:
        raise ModelError("int8 runs a model quantized on calibration images: give --calibration DIR")
    items = [batch[i : i + 1].float().contiguous().numpy() for batch in calibration for i in range(len(batch))]
    digest = hashlib.sha256(b"".join(item.tobytes() for item in items)).hexdigest()[:16]

    def make():
        import nncf

        graph = convert(model, example)
        with exporting_quietly():  # NNCF draws progress bars on stdout, which may carry results
            return nncf.quantize(graph, nncf.Dataset(items), subset_size=len(items))

    return _cached_graph(f"{weights_key(model, example)}-int8-{digest}", make)


def _cached_graph(key: str, make):
    """The graph saved under `key` in the cache folder, or `make()`'s, saved there for the next run."""
    import openvino as ov

    path = cache_dir() / "openvino" / "graphs" / f"{key}.xml"
    if path.is_file():
        return core().read_model(str(path))
    graph = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{key}.partial.xml")
    ov.save_model(graph, str(partial), compress_to_fp16=False)
    partial.with_suffix(".bin").replace(path.with_suffix(".bin"))  # the .bin first: an .xml is only there when whole
    partial.replace(path)
    # compiled as read back, so this run and the next compile the same graph and share one cached blob
    return core().read_model(str(path))


class OpenVinoModel(nn.Module):
    """A compiled OpenVINO classifier called like the module it came from: a float batch in, logits out.

    Args:
        graph: an `ov.Model` or the path of an .xml.
        precision: "32" (exact), "bf16", or "int8" (a quantized graph; its float layers at the CPU's best precision).
        threads: inference threads; the default, torch's count, leaves the decoding processes their own cores.
    """

    def __init__(self, graph, precision: str = "32", threads: int | None = None):
        super().__init__()
        if isinstance(graph, str | Path):
            graph = core().read_model(str(graph))
        config = {
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",  # one stream: a batch at a time, as the callers run them
            "ENABLE_CPU_PINNING": False,  # pinned threads would keep the decoders off their cores
        }
        if precision in PRECISION_HINTS:
            config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision]
        self.compiled = core().compile_model(graph, "CPU", config)
        self.loaded_from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        self.request = self.compiled.create_infer_request()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.request.infer({0: array})[0].copy())


def save_ir(graph, path: Path) -> Path:
    """Write `graph` as an IR (`path` .xml and its .bin); the .xml last, so a half-written export is
    never read as a model."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.xml")
    ov.save_model(graph, str(partial), compress_to_fp16=False)
    partial.with_suffix(".bin").replace(path.with_suffix(".bin"))
    partial.replace(path)
    return path


def read_ir_metadata(path: str | Path) -> dict:
    """The `optik` metadata of an exported IR: task, classes, preprocess."""
    weights = Path(path).with_suffix(".bin")
    if not weights.is_file():
        raise ModelError(f"{path} is an OpenVINO model without its weights: {weights} must lie beside it")
    try:
        graph = core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means: not an OpenVINO IR
        raise ModelError(
            f"cannot read {path} as an OpenVINO model ({type(exc).__name__}): the .xml or its .bin is damaged or cut "
            "short (a copy that did not finish?); copy both again or export again with `optik export --format openvino`"
        ) from None
    if not graph.has_rt_info([METADATA_KEY]):
        raise ModelError(
            f"{path} was not exported by optik (no class names or preprocessing in it); "
            "export with `optik export model.pt --format openvino`"
        )
    return json.loads(graph.get_rt_info([METADATA_KEY]).astype(str))


@dataclass
class IrExport:
    """An exported and checked IR: the graph (metadata set) and how it was checked, in one line."""

    graph: object
    summary: str
    unchecked: bool = False  # as `OnnxExport`'s: nothing was compared (never, for a classifier)


def classifier_ir(
    model: nn.Module, preprocess: dict, meta: dict, calibration: list[torch.Tensor] | None = None, count: int = 16
) -> IrExport:
    """A classifier as an OpenVINO graph with `meta`, checked: fp32 must give PyTorch's top-1 and
    probabilities within 1e-3 on `count` random inputs (else ModelError); int8 (`calibration`
    given) is quantized on those batches and its top-1 agreement with fp32 on them is stated."""
    size = int(preprocess["image_size"])
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    precision = "32" if calibration is None else "int8"
    graph = convert(model, images) if calibration is None else quantize(model, images, calibration)
    runner = OpenVinoModel(graph, precision)
    checked = images if calibration is None else torch.cat(calibration)
    with torch.no_grad():
        expected = model(checked).softmax(-1)
    got = runner(checked).softmax(-1)
    diff, same = float((got - expected).abs().max()), int((got.argmax(1) == expected.argmax(1)).sum())
    if calibration is None:
        if diff > 1e-3 or same != count:
            raise ModelError(
                f"the OpenVINO conversion does not match PyTorch (top-1 {same}/{count}, probabilities differ by {diff:.2e})"
            )
        summary = f"OpenVINO fp32 matches PyTorch on {count} inputs (same top-1, probabilities within {diff:.1e})"
    else:
        summary = (
            f"OpenVINO int8, quantized on {len(checked)} calibration images: top-1 same as PyTorch fp32 on "
            f"{same}/{len(checked)} of them ({100 * same / len(checked):.1f}%)"
        )
    graph.set_rt_info(json.dumps({**meta, "precision": precision}), [METADATA_KEY])
    return IrExport(graph, summary)
