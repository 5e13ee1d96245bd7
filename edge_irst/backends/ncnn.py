"""ncnn: a `.param` text graph with its `.bin` weights beside it, on CPU threads or a Vulkan GPU.

ncnn answers some bad files with a nonzero return code, but crashes on others (an fp32 .param with the int8 .bin
of the same model segfaults in load_model; the int8 .param with the fp32 .bin loads and computes zeros), so the
pair is checked before ncnn sees it:
- the .param: magic number, header, layer count, well-formed layer lines and integer parameters where sizes come
  from them;
- the .bin: its size must be exactly what the .param's layers read, computed per layer as ncnn's load_model reads
  (Convolution / ConvolutionDepthWise / Deconvolution / DeconvolutionDepthWise, InnerProduct, BatchNorm, PReLU,
  Scale, Bias, Padding, MemoryData; the layers in ncnn_format.WEIGHTLESS read nothing). A weight block is preceded by a
  4-byte storage tag (ModelBin: raw float32, float16 or int8, each padded to 4 bytes, or a quantisation table)
  that decides its size, so the walk reads each tag from the .bin; biases and int8 scales are raw float32. A
  .bin of another model or precision, truncated, or with bytes appended is refused naming both files and the
  sizes. Past a layer type this table does not know, the rest can only be bounded from below: a .bin too small
  for the layers the table knows is still refused, a larger one goes to ncnn unchecked (the model is not refused
  merely because the table is incomplete);
- the input: the channels the graph takes (its Input layer's, else its first convolution's, weight_data_size /
  (num_output / group * kernel_w * kernel_h)) and a size its Input layer fixes must agree with the contract.
Blob names are read from the net, never assumed. ncnn's own default turns fp16 storage/arithmetic on where the CPU
has it; here precision "auto" and "fp32" mean pure fp32 (what an exported artifact is verified against), "fp16"
and "bf16" switch the reduced-precision paths on.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import numpy as np

from edge_irst.errors import InputError, ModelFileError

from .base import Backend, TensorSpec, capture_native_output, log
from .ncnn_format import CONVOLUTIONS, ParamLayer, check_weights_size, read_param

_PRECISION_FLAGS = {  # option -> (fp16 storage, fp16 packed, fp16 arithmetic, bf16 storage, bf16 packed)
    "auto": (False, False, False, False, False),
    "fp32": (False, False, False, False, False),
    "fp16": (True, True, True, False, False),
    "bf16": (False, False, False, True, True),
}
# Layers whose param 8 is int8_scale_term (in others, e.g. Padding, param 8 means something else).
_INT8_CAPABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct", "Convolution1D", "Gemm")
_FLAG_NAMES = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed")

@functools.lru_cache(maxsize=None)
def _gpu_count(ncnn) -> int:
    """Vulkan GPUs ncnn sees. Cached: without a driver ncnn 1.0.2026x retries dlopen (about a second) and prints
    one 'dlopen failed libvulkan.so.1' line per attempt on stderr, on every call."""
    with capture_native_output((2,)):
        return ncnn.get_gpu_count()


def _input_shapes(layers: list[ParamLayer], path: Path) -> dict:
    """{blob: (c, h, w)} the Input layers declare, 0 where unset."""
    return {layer.tops[0]: tuple(layer.int_param(key, 0, path) for key in (2, 1, 0))
            for layer in layers if layer.type == "Input" and layer.tops}


def _int8_layer_count(layers: list[ParamLayer], path: Path) -> int:
    """Layers holding int8 weights: int8_scale_term (param 8 of _INT8_CAPABLE) set."""
    return sum(layer.type in _INT8_CAPABLE and layer.int_param(8, 0, path) != 0 for layer in layers)


def _input_channels(layers: list[ParamLayer], blob: str, path: Path) -> Optional[int]:
    """Channels the first convolution reading `blob` (directly or through Split) takes, as its weight count says;
    None when no convolution reads it first or the count does not divide."""
    reaching = {blob}
    for layer in layers:
        if not reaching.intersection(layer.bottoms):
            continue
        if layer.type == "Split":
            reaching.update(layer.tops)
        elif layer.type in ("Convolution", "ConvolutionDepthWise") \
                and not layer.int_param(CONVOLUTIONS[layer.type], 0, path):  # weights stored, not a second input
            num_output, kernel_w = layer.int_param(0, 0, path), layer.int_param(1, 0, path)
            per_input = num_output * kernel_w * layer.int_param(11, kernel_w, path)
            group = layer.int_param(7, 1, path) if layer.type == "ConvolutionDepthWise" else 1
            weights = layer.int_param(6, 0, path) * group
            return weights // per_input if per_input > 0 and weights % per_input == 0 else None
    return None


class NcnnBackend(Backend):
    name = "ncnn"
    suffixes = (".param",)
    runtime = "ncnn"
    extra = "ncnn"
    precisions = tuple(_PRECISION_FLAGS)

    @classmethod
    def probe(cls) -> dict:
        ncnn = cls.import_runtime()
        gpus = _gpu_count(ncnn)
        accelerators = [f"vulkan:{i} {ncnn.get_gpu_info(i).device_name()}" for i in range(gpus)]
        return {"version": ncnn.__version__, "accelerators": accelerators}

    def __init__(self, path, options, contract=None):
        super().__init__(path, options, contract)
        self._ncnn = ncnn = self.import_runtime()
        self.weights = self.path.with_suffix(".bin")
        _, layers = read_param(self.path)
        declared, self.int8_layers = _input_shapes(layers, self.path), _int8_layer_count(layers, self.path)
        if not self.weights.is_file():
            raise ModelFileError(f"{self.path}: its weights {self.weights.name} are missing (an ncnn model is a "
                                 f".param + .bin pair in one folder)")
        if self.weights.stat().st_size == 0:
            raise ModelFileError(f"{self.weights}: empty ncnn .bin")
        check_weights_size(self.path, self.weights, layers)
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.num_threads = options.resolved_threads()  # must be set before load_param to size the layers' pools
        for flag, value in zip(_FLAG_NAMES, _PRECISION_FLAGS[options.precision]):
            setattr(opt, flag, value)
        if options.big_cores:
            ncnn.set_cpu_powersave(2)  # process-wide: every ncnn net in this process then runs on big cores
        self.gpu = self._select_gpu(ncnn)
        if self.gpu is not None:
            opt.use_vulkan_compute = True
            self.net.set_vulkan_device(self.gpu)
        with capture_native_output((2,)) as said:
            param_ret = self.net.load_param(str(self.path))
            model_ret = self.net.load_model(str(self.weights)) if param_ret == 0 else None
        if param_ret != 0:
            raise ModelFileError(f"{self.path}: ncnn rejected the .param (load_param returned {param_ret}; ncnn "
                                 f"says: {said.text.strip() or 'nothing'}); re-export the model")
        if model_ret != 0:
            raise ModelFileError(f"{self.weights}: ncnn could not read the weights the .param declares from its "
                                 f"{self.weights.stat().st_size} bytes (ncnn says: {said.text.strip()!r}): "
                                 f"truncated, or not this model's .bin")
        self._resolve_contract()
        in_names, out_names = list(self.net.input_names()), list(self.net.output_names())
        if not in_names or not out_names:
            raise ModelFileError(f"{self.path}: the graph declares no input or no output blob")
        c, h, w = declared.get(in_names[0], (0, 0, 0))
        channels = c or _input_channels(layers, in_names[0], self.path)
        self._check_contract_agrees(channels, (h, w), "its .param")
        self.inputs = [self._spec(n, declared.get(n, (0, 0, 0))) for n in in_names]
        self.outputs = [TensorSpec(n, (1, 1, *self.inputs[0].hw), "float32") for n in out_names]
        log.info("ncnn %s: inputs %s outputs %s", self.path.name, in_names, out_names)

    def _select_gpu(self, ncnn):
        """Vulkan device index for device 'vulkan', 'vulkan:N' or 'gpu'; None for the CPU."""
        device = self.options.device
        if device == "cpu":
            return None
        kind, _, index = device.partition(":")
        if kind not in ("vulkan", "gpu") or (index and not index.isdigit()):
            raise InputError(f"ncnn device {device!r} not understood: accepted 'cpu', 'vulkan', 'vulkan:N'")
        count = _gpu_count(ncnn)
        if index:
            wanted = int(index)
        else:
            wanted = ncnn.get_default_gpu_index() if count else 0
        if wanted >= count:
            self._device_unavailable(f"Vulkan GPU {wanted} requested but ncnn sees {count} GPU(s)",
                                     "Install the GPU's Vulkan driver (libvulkan.so.1 and an ICD)")
            return None
        return wanted

    def _spec(self, blob: str, chw: tuple) -> TensorSpec:
        c, h, w = chw
        size = self.contract.input_size  # a shapeless Input layer: the contract says what it was exported for
        hw = (h, w) if h and w else (size if size else (None, None))
        return TensorSpec(blob, (1, c or self.contract.channels, *hw), "float32")

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        extractor = self.net.create_extractor()
        extractor.input(self.inputs[0].name, self._ncnn.Mat(batch[0]))
        ret, out = extractor.extract(self.outputs[0].name)
        if ret != 0:
            raise InputError(f"ncnn failed to compute {self.outputs[0].name!r} of {self.path.name} for a "
                             f"{batch.shape[2]}x{batch.shape[3]} input (extract returned {ret})")
        logits = np.array(out, dtype=np.float32)
        return logits.reshape(1, 1, *logits.shape[-2:])

    def _read_effect(self) -> dict:
        opt = self.net.opt
        flags = {flag: bool(getattr(opt, flag)) for flag in _FLAG_NAMES}
        precision = "bf16" if flags["use_bf16_storage"] else "fp16" if flags["use_fp16_arithmetic"] else "fp32"
        if self.int8_layers and opt.use_int8_inference:
            precision = f"int8+{precision}"  # the int8 layers; the others at the float precision the flags say
        return {
            **self._base_effect(),
            "threads": opt.num_threads,
            "threads_source": "net.opt.num_threads read back",
            "precision": precision,
            "precision_source": "net.opt flags read back, int8 layers counted in the .param",
            "int8_layers": self.int8_layers,
            **flags,
            "device": f"vulkan:{self.gpu}" if opt.use_vulkan_compute else "cpu",
            "big_cores": self._ncnn.get_cpu_powersave() == 2,
            "big_cores_source": "ncnn.get_cpu_powersave() read back (process-wide)",
        }

    def _release(self) -> None:
        self.net.clear()
        self.net = None
