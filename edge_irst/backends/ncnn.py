"""ncnn: a `.param` text graph with its `.bin` weights beside it, on CPU threads or a Vulkan GPU.

ncnn answers a bad file with a nonzero return code, and may crash on garbage, so the pair is checked before ncnn
sees it: the .param's magic number, header and layer count, the .bin's presence and non-zero size (a truncated
.bin is then caught by load_model's return code, checked on 1.0.20261020). Blob names are read from the net,
never assumed. ncnn's own default turns fp16 storage/arithmetic on where the CPU has it; here
precision "auto" and "fp32" mean pure fp32 (what an exported artifact is verified against), "fp16" and "bf16"
switch the reduced-precision paths on.
"""
from __future__ import annotations

import functools

import numpy as np

from edge_irst.errors import InputError, ModelFileError

from .base import Backend, TensorSpec, capture_native_output, log

PARAM_MAGIC = "7767517"
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


def _read_param(path) -> tuple[dict, int]:
    """Check a text .param; return its Input layers' declared shapes ({blob: (c, h, w) with 0 = unset}) and how
    many of its layers hold int8 weights (int8_scale_term, param 8 of _INT8_CAPABLE, set)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not a readable ncnn text .param ({exc})") from exc
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise ModelFileError(f"{path}: not an ncnn .param (first line {lines[0][:20]!r} if any, expected the magic "
                             f"number {PARAM_MAGIC})" if lines else f"{path}: empty ncnn .param")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise ModelFileError(f"{path}: ncnn .param header line 2 must be '<layer count> <blob count>'") from None
    layers = [ln.split() for ln in lines[2:] if ln.strip()]
    if len(layers) < layer_count:
        raise ModelFileError(f"{path}: declares {layer_count} layers but holds {len(layers)}: truncated .param")
    shapes, int8_layers = {}, 0
    for fields in layers:
        int8_layers += fields[0] in _INT8_CAPABLE and any(f.startswith("8=") and f != "8=0" for f in fields[4:])
        if fields[0] == "Input" and len(fields) >= 5:
            params = dict(f.split("=", 1) for f in fields[5:] if "=" in f)
            try:
                shapes[fields[4]] = tuple(int(params.get(k, 0)) for k in ("2", "1", "0"))
            except ValueError:
                raise ModelFileError(f"{path}: Input layer {fields[1]!r} has non-integer shape parameters "
                                     f"{fields[5:]}") from None
    return shapes, int8_layers


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
        declared, self.int8_layers = _read_param(self.path)
        if not self.weights.is_file():
            raise ModelFileError(f"{self.path}: its weights {self.weights.name} are missing (an ncnn model is a "
                                 f".param + .bin pair in one folder)")
        if self.weights.stat().st_size == 0:
            raise ModelFileError(f"{self.weights}: empty ncnn .bin")
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

    def options_in_effect(self) -> dict:
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

    def close(self) -> None:
        if getattr(self, "net", None) is not None:
            self.net.clear()
            self.net = None
