"""The runtime layer: the one place that decides how a network runs (engine x precision x device) for
every command, and checks that choice against plain PyTorch before it is used.

Engines and their forms (`--optimize`):
- torch: `eager` (plain PyTorch), `fused` (conv+batch-norm folded, channels_last; no set-up),
  `compiled` (torch.compile with frozen weights; inductor's cache under the optik cache folder);
  fp32, bf16, or fp16 on CUDA.
- onnxruntime (`onnx`): the model exported to ONNX in memory, fp32 on the CPU.
- OpenVINO (`openvino`): converted in memory, on the CPU; fp32 (exact), bf16 where the CPU has
  AMX / avx512_bf16, int8 by post-training quantization on `--calibration` images. Converted
  graphs and compiled models are cached on disk (see `optik.inference.openvino`).

`plan` turns the user's options into the forms to try; `RuntimeBackend` tries them on a slice of
the first real batch, one rule for all: a form is kept only when it agrees with eager fp32 PyTorch
(fp32: same top-1 and logits within 1e-3; bf16 / int8 within their looser bounds), else the next
one is tried, down to eager. With `--optimize auto` on a CPU the forms race: each is built only
while its estimated set-up can still pay for itself over the job, its steady rate is measured on
the probe, and the fastest agreeing form wins. fp32 forms run in every bf16 / int8 race, so a
lower precision is never slower than fp32 on the same job (when it would be, fp32 runs, exactly).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from optik.errors import ConfigError, DataError, ModelError
from optik.inference import openvino
from optik.inference.backends import (
    autocast_for,
    average_views,
    compile_frozen,
    flips_of,
    fuse_conv_bn,
    onnxruntime_available,
    pick_device,
    stack_views,
)
from optik.inference.onnx import OnnxModel, export_onnx

__all__ = ["COMPILE_MIN_IMAGES", "PRECISIONS", "Runtime", "RuntimeBackend", "pick_device", "plan"]

PRECISIONS = ("32", "bf16", "16", "int8")
MODES = ("eager", "fused", "compiled", "onnx", "openvino")
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
ENGINE_OF_MODE = {
    "eager": "torch",
    "fused": "torch",
    "compiled": "torch",
    "onnx": "onnxruntime",
    "openvino": "openvino",
}

# Images of the first batch on which a form is checked against eager (and timed, in a race).
CHECK_IMAGES = 8
# A fixed-size job of unknown length, as a service is: long enough for any set-up to pay off.
COMPILE_MIN_IMAGES = 1000
# Set-up of each form, in eager images of the same model (measured on this project's CPU with
# resnet50 and EfficientNet-Lite0: onnx export ~3 s, OpenVINO conversion ~4 s, torch.compile
# 10-25 s, an eager image ~0.08 s); a race builds a form only when the job can repay this.
SETUP_IN_EAGER_IMAGES = {"eager": 0, "fused": 2, "onnx": 40, "openvino": 50, "compiled": 250}
# Images an int8 model is quantized on: NNCF's default subset, and what the measured 95.5% top-1 agreement used.
CALIBRATION_IMAGES = 300
# int8 agreement on the check images: probabilities within this of eager fp32's, on average.
INT8_PROBABILITY_TOLERANCE = 0.2

log = logging.getLogger(__name__)
PRECISION_NAMES = {"32": "fp32", "16": "fp16", "bf16": "bf16", "int8": "int8"}


@dataclass(frozen=True)
class Runtime:
    """How a network runs: `mode` is the form (a key of ENGINE_OF_MODE), `precision` one of PRECISIONS."""

    mode: str
    precision: str
    device: torch.device

    @property
    def engine(self) -> str:
        return ENGINE_OF_MODE[self.mode]

    @property
    def form(self) -> str:
        """The engine, and for torch its form: "torch fused", "onnxruntime", "openvino"."""
        return f"torch {self.mode}" if self.engine == "torch" else self.engine

    def __str__(self) -> str:
        return f"{self.form} {self.precision} on {self.device}"


@dataclass
class Plan:
    """The forms to try in order; `race`: measure them and keep the fastest, else the first that agrees;
    `fallback`: a form that fails gives way to the next (False: the user named the engine, so it is an error)."""

    forms: list[Runtime]
    race: bool = False
    fallback: bool = True


def check_precision(precision: str, device: torch.device, calibration: bool = False) -> str:
    """A precision the device can run, or a ConfigError saying what to use instead."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "16" and device.type != "cuda":
        raise ConfigError("precision 16 needs a CUDA device; on a CPU use bf16")
    if precision == "int8":
        if device.type != "cpu":
            raise ConfigError("precision int8 runs with OpenVINO on the CPU; use --device cpu, or bf16/16 on a GPU")
        if not openvino.available():
            raise ConfigError("precision int8 needs OpenVINO and NNCF: pip install openvino nncf")
        if not calibration:
            raise ConfigError(
                "precision int8 quantizes the model on calibration images: give --calibration DIR (a few hundred images like the real ones)"
            )
    return precision


def check_engine(engine: str, device: str | torch.device, precision: str, mode: str) -> None:
    """The options an exported or user-named engine cannot honour are errors, before anything is built."""
    on_cpu = str(device) in ("auto", "cpu")
    if engine == "onnxruntime":
        if not on_cpu:
            raise ConfigError(
                f"the onnxruntime backend runs on the CPU here; drop --device {device}, or use --backend torch with the model.pt"
            )
        if precision != "32":
            raise ConfigError(
                f"the onnxruntime backend runs fp32; drop --precision {precision}, or use --backend openvino (bf16, int8) or torch with the model.pt"
            )
        if mode not in ("auto", "onnx"):
            raise ConfigError(
                f"--optimize {mode} is for the torch backend; onnxruntime runs the exported graph as it is"
            )
    if engine == "openvino":
        if not on_cpu:
            raise ConfigError(f"OpenVINO runs on the CPU here; drop --device {device}, or use --backend torch")
        if precision == "16":
            raise ConfigError("OpenVINO runs fp32, bf16 or int8 here; use --precision bf16 on a CPU")
        if mode not in ("auto", "openvino"):
            raise ConfigError(f"--optimize {mode} is for the torch backend; OpenVINO runs its graph as it is")
        if not openvino.available():
            raise ConfigError("OpenVINO is not installed: pip install openvino (and nncf for int8)")


def plan(
    mode: str, backend: str, precision: str, device: torch.device, images: int | None, calibration: bool = False
) -> Plan:
    """The forms to try for a PyTorch network, from the user's `--optimize` (`mode`), `--backend`,
    `--precision` and device, the job's size (`images`; None: unknown, one-off: no set-up wanted)
    and the machine."""
    if mode not in MODES and mode != "auto":
        raise ConfigError(f"mode must be one of auto, {', '.join(MODES)}, got {mode!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_precision(precision, device, calibration)

    def form(name: str, precision_: str = precision) -> Runtime:
        return Runtime(name, precision_, device)

    if backend in ("onnxruntime", "openvino"):
        check_engine(backend, device, precision, mode)
        return Plan([form("onnx" if backend == "onnxruntime" else "openvino")], fallback=False)
    if precision == "int8" and mode not in ("auto", "openvino"):
        raise ConfigError(f"precision int8 runs with OpenVINO; drop --optimize {mode} (or use --optimize openvino)")
    if mode in ("onnx", "openvino"):
        if backend == "torch":
            raise ConfigError(f"--optimize {mode} is not PyTorch; drop --backend torch")
        check_engine(ENGINE_OF_MODE[mode], device, precision, mode)
        return Plan([form(mode), form("fused", "32" if precision == "int8" else precision)])
    if mode in ("eager", "fused"):
        return Plan([form(mode)])
    if mode == "compiled":
        return Plan([form("compiled"), form("fused")])
    return auto_plan(backend, precision, device, images)


def auto_plan(backend: str, precision: str, device: torch.device, images: int | None) -> Plan:
    """`--optimize auto`: on a GPU, compiled for long jobs and fused otherwise; on a CPU, a race of
    every form this machine has, fp32's included (see the module docstring)."""
    if images is None:  # a one-off prediction of unknown size: nothing with a set-up cost
        return Plan([Runtime("fused", "32" if precision == "int8" else precision, device)])
    big = images >= COMPILE_MIN_IMAGES
    if device.type != "cpu":
        return Plan([Runtime("compiled" if big else "fused", precision, device), Runtime("fused", precision, device)])
    others = backend != "torch"
    forms = []
    if precision == "int8":
        forms.append(Runtime("openvino", "int8", device))
    if precision in ("bf16", "int8") and others and openvino.cpu_has_bf16():
        forms.append(Runtime("openvino", "bf16", device))
    if precision == "bf16":
        forms += [Runtime("compiled", "bf16", device)] if big else []
        forms.append(Runtime("fused", "bf16", device))
    if others and openvino.available():
        forms.append(Runtime("openvino", "32", device))
    if others and onnxruntime_available():
        forms.append(Runtime("onnx", "32", device))
    forms += [Runtime("compiled", "32", device)] if big else []
    forms.append(Runtime("fused", "32", device))
    # cheapest set-up first: the first form is always built, and each next one only if it can repay its own
    # (of equal set-up, the precision asked for first)
    order = sorted(forms, key=lambda form: (SETUP_IN_EAGER_IMAGES[form.mode], form.precision != precision))
    return Plan(order, race=True)


def exported_network(model: str | bytes, meta: dict, precision: str = "32") -> tuple[nn.Module, Runtime]:
    """The network of an `optik export`ed file (an .onnx path or its bytes, or an OpenVINO .xml) and how it runs."""
    cpu = torch.device("cpu")
    if isinstance(model, str) and model.endswith(".xml"):
        if meta.get("precision") == "int8" or precision == "int8":
            if precision not in ("32", "int8"):
                log.warning(
                    "%s is quantized to int8 and runs in int8 (--precision %s does not apply to it)", model, precision
                )
            elif precision == "32" and meta.get("precision") == "int8":
                log.warning(
                    "%s is quantized to int8: it runs in int8, not fp32 (export without --int8 for fp32)", model
                )
            return openvino.OpenVinoModel(model, "int8"), Runtime("openvino", "int8", cpu)
        return openvino.OpenVinoModel(model, precision), Runtime("openvino", precision, cpu)
    network: nn.Module = OnnxModel(model)
    if meta.get("batch"):  # exported for one batch size (`--static-batch`): every batch padded to it
        from optik.inference.backends import PaddedBatches

        network = PaddedBatches(network, int(meta["batch"]))
    return network, Runtime("onnx", "32", cpu)


def exported_detector(model: str | bytes, meta: dict) -> tuple[nn.Module, Runtime]:
    """The network of an exported detector (ONNX, run by onnxruntime one image at a time) and how it runs."""
    if isinstance(model, str) and model.endswith(".xml"):
        raise ConfigError(f"{model}: OpenVINO runs exported classifiers; export a detector with --format onnx")
    from optik.inference.onnx import OnnxDetector

    return OnnxDetector(model, resize=meta.get("resize")), Runtime("onnx", "32", torch.device("cpu"))


def calibration_files(folder) -> list:
    """The images of `--calibration DIR` (sorted, up to CALIBRATION_IMAGES), or a DataError."""
    from pathlib import Path

    from optik.data.folder import find_images

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--calibration: no folder {folder}")
    files = sorted(find_images(folder))[:CALIBRATION_IMAGES]
    if not files:
        raise DataError(f"--calibration: no images in {folder}")
    return files


def engine_of_file(path) -> str | None:
    """The engine an exported file runs on (None: a model package or checkpoint)."""
    name = str(path)
    return "onnxruntime" if name.endswith(".onnx") else "openvino" if name.endswith(".xml") else None


def layout_of(mode: str) -> torch.memory_format:
    """The memory format a form's model takes its batches in."""
    return torch.channels_last if mode in ("fused", "compiled") else torch.contiguous_format


def inductor_cache() -> None:
    """torch.compile keeps its compiled kernels under the optik cache folder (unless the user set
    inductor's own variable), so a second run reads them instead of compiling again."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(openvino.cache_dir() / "inductor"))
    # compiling imports torch's C++ extension helper, whose warning "No CUDA runtime is found" alarms on a CPU machine
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


class RuntimeBackend:
    """Runs a network as `plan` says: checked against eager fp32 on the first batch, falling back.

    Args:
        mode, backend, precision: the user's `--optimize`, `--backend` and `--precision` (see `plan`).
        expected_images: the job's size, for `auto` (None: unknown; services pass COMPILE_MIN_IMAGES).
        calibration: preprocessed batches to quantize on (precision int8).
        tta: test-time augmentation (a key of `backends.TEST_TIME_FLIPS`): each batch of N runs as one
            batch of N times the views, and the result is the log of the softmax averaged over them.
        runtime: the network already is an engine's (an exported file): it runs as it is, unchecked.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str = "auto",
        precision: str = "32",
        mode: str = "fused",
        batch_size: int = 32,
        expected_images: int | None = None,
        backend: str = "auto",
        tta: str = "none",
        calibration: list[torch.Tensor] | None = None,
        runtime: Runtime | None = None,
    ):
        self.flips = flips_of(tta)
        self.batch_size, self.calibration = batch_size, calibration
        self.asked = precision  # the precision the user asked for (the race may run a faster one)
        self.eager = model.eval()
        if runtime is not None:
            self.runtime, self.plan, self.device = runtime, Plan([runtime]), runtime.device
        else:
            self.device = pick_device(device)
            self.plan = plan(mode, backend, precision, self.device, expected_images, calibration is not None)
            self.eager = self.eager.to(self.device)
            self.runtime = Runtime("eager", "32" if precision == "int8" else precision, self.device)
        self.remaining = expected_images
        self.model: nn.Module = self.eager
        self.layout = torch.contiguous_format
        self._checked = runtime is not None or self.plan.forms[0].mode == "eager"

    @property
    def mode(self) -> str:
        """The form that runs (`eager`, `fused`, `compiled`, `onnx`, `openvino`)."""
        return self.runtime.mode

    @property
    def precision(self) -> str:
        return self.runtime.precision

    @property
    def views(self) -> int:
        """Images the network sees per input image (test-time augmentation)."""
        return 1 + len(self.flips)

    def autocast(self, runtime: Runtime | None = None):
        runtime = runtime or self.runtime
        if runtime.engine != "torch":
            return contextlib.nullcontext()
        return autocast_for(runtime.device, runtime.precision)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = stack_views(images.to(self.device, non_blocking=True), self.flips)
        if not self._checked:
            self._choose(images)
        with self.autocast():
            outputs = self.model(images.contiguous(memory_format=self.layout))
        return average_views(outputs, self.views)

    def _choose(self, images: torch.Tensor) -> None:
        """Try the plan's forms on a slice of this first batch (the one check-and-fall-back rule)."""
        self._checked = True
        probe = images[:CHECK_IMAGES]  # enough to catch a wrong form, without an eager pass over a whole batch
        reference = self.eager(probe).float()
        started = time.perf_counter()  # timed on a second call: the first one pays for PyTorch's lazy set-up
        self.eager(probe) if self.plan.race else None
        eager_per_image = (time.perf_counter() - started) / len(probe)
        best: tuple[float, Runtime, nn.Module] | None = None
        setups: dict[str, float] = {}  # seconds each form built so far took to set up, by mode
        tried: set[str] = set()  # the precisions tried
        for form in self.plan.forms:
            if self.plan.race and best is not None and not self._can_repay(form, best[0], eager_per_image, setups):
                continue
            tried.add(form.precision)
            built = self._try(form, probe, reference)
            if built is None:
                continue
            model, per_image, setups[form.mode] = built
            if not self.plan.race:
                best = (per_image, form, model)
                break
            log.info("%s: %.1f images/s on the check images", form, 1 / max(per_image, 1e-9))
            if best is None or per_image < best[0]:
                best = (per_image, form, model)
        if best is None:
            if not self.plan.fallback:
                raise ModelError(
                    f"this model cannot run as {self.plan.forms[0]} with outputs equal to PyTorch's (see the warning above); "
                    "use the torch backend"
                )
            return  # eager, as built
        _, self.runtime, self.model = best
        self.layout = layout_of(self.runtime.mode)
        asked = self.asked
        if self.runtime.precision != asked:  # a lower precision is never run slower than fp32: said, not silent
            name = PRECISION_NAMES.get(asked, asked)
            why = (
                f"{name} was slower on this job or changed the outputs (see above)"
                if asked in tried
                else f"{name} does not repay its set-up on a job this small (--optimize openvino runs it anyway)"
            )
            log.warning("inference runs %s: %s", self.runtime, why)
        else:
            log.info("inference runs %s", self.runtime)

    def _can_repay(self, form: Runtime, best_per_image: float, eager_per_image: float, setups: dict) -> bool:
        """Whether even an infinitely fast `form` would save more time over the job than its set-up costs.

        The set-up is estimated from a traced form's measured one (ONNX export and OpenVINO conversion
        both trace the model) when there is one, else from the eager rate; the same engine in another
        precision reuses the cached conversion."""
        estimate = SETUP_IN_EAGER_IMAGES[form.mode] * eager_per_image
        traced = [mode for mode in ("onnx", "openvino") if mode in setups]
        if traced and form.mode in ("onnx", "openvino"):
            estimate = setups[traced[0]] * SETUP_IN_EAGER_IMAGES[form.mode] / SETUP_IN_EAGER_IMAGES[traced[0]]
        if (
            form.mode in setups
        ):  # the same engine in another precision: its conversion is cached, only compiling is left
            estimate = setups[form.mode] / 4
        remaining = (self.remaining or COMPILE_MIN_IMAGES) * self.views
        return remaining * best_per_image > estimate

    def _try(
        self, form: Runtime, probe: torch.Tensor, reference: torch.Tensor
    ) -> tuple[nn.Module, float, float] | None:
        """The form's model, its seconds per image on the probe and its set-up seconds, or None (logged)
        when it fails or disagrees."""
        try:
            building = time.perf_counter()
            model = self._build(form, probe)
            with warnings.catch_warnings(), self.autocast(form):
                warnings.simplefilter("ignore")
                batch = probe.contiguous(memory_format=layout_of(form.mode))
                output = model(batch)  # the first call also warms the form up
                started = time.perf_counter()
                setup = started - building
                model(batch) if self.plan.race else None
                per_image = (time.perf_counter() - started) / len(probe)
        except Exception as exc:  # noqa: BLE001 - a model an engine cannot handle still runs in another form
            log.warning(
                "inference as %s unavailable for this model (%s: %s); falling back",
                form,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return None
        if not agrees(output, reference, form.precision):
            log.warning("inference as %s changes this model's outputs; falling back", form)
            return None
        return model, per_image, setup

    def _build(self, form: Runtime, probe: torch.Tensor) -> nn.Module:
        if form.mode == "eager":
            return self.eager
        if form.mode == "fused":
            return fuse_conv_bn(self.eager).to(memory_format=torch.channels_last)
        if form.mode == "onnx":
            return OnnxModel(export_onnx(self.eager, probe[:1]))
        if form.mode == "openvino":
            if form.precision == "int8":
                return openvino.OpenVinoModel(openvino.quantize(self.eager, probe, self.calibration or []), "int8")
            return openvino.OpenVinoModel(openvino.convert(self.eager, probe), form.precision)
        inductor_cache()
        source = copy.deepcopy(self.eager).to(memory_format=torch.channels_last)
        return compile_frozen(source, self.batch_size * self.views)  # the views travel in the same batch


def agrees(output: torch.Tensor, reference: torch.Tensor, precision: str) -> bool:
    """Whether a form's logits agree with eager fp32's: fp32 same top-1 and within 1e-3 (relative);
    bf16 / fp16 within 1e-1; int8 probabilities within INT8_PROBABILITY_TOLERANCE on average."""
    output, reference = output.float(), reference.float()
    if output.shape != reference.shape or not torch.isfinite(output).all():
        return False
    if precision == "int8":
        gap = (output.softmax(-1) - reference.softmax(-1)).abs().amax(-1).mean()
        return bool(gap <= INT8_PROBABILITY_TOLERANCE)
    if precision == "32" and not torch.equal(output.argmax(-1), reference.argmax(-1)):
        return False  # reduced precision flips near-ties either way; only fp32 must match exactly
    scale = reference.abs().max().clamp(min=1.0)
    tolerance = 1e-3 if precision == "32" else 1e-1
    return bool((output - reference).abs().max() <= tolerance * scale)
