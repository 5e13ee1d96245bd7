"""OpenCV DNN: .onnx artifacts with nothing but opencv-python, on the CPU or a DNN backend/target it was built with.

OpenCV's thread pool is process-wide: `cv2.setNumThreads(threads)` here also changes the threads of every other
OpenCV call in the process (resizes in preprocessing included) and of every other OpenCV backend instance; the
last instance loaded wins. OpenCV DNN exposes neither an ONNX file's input shape nor its metadata, so both are read
from the file itself (with an onnxruntime session, a core dependency, else the onnx package): the embedded contract
is used where there is no sidecar, a contract that contradicts the graph input is refused, and the input size is
the graph's where it fixes one, else the contract's. The artifact is fed one frame at a time (graphs exported for
batch 1 often pin it in constants).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_irst.errors import InputError, ModelFileError

from .base import Backend, TensorSpec, log

# options.device -> (cv2.dnn backend, target) attribute names.
DEVICES = {
    "cpu": ("DNN_BACKEND_OPENCV", "DNN_TARGET_CPU"),
    "opencl": ("DNN_BACKEND_OPENCV", "DNN_TARGET_OPENCL"),
    "opencl_fp16": ("DNN_BACKEND_OPENCV", "DNN_TARGET_OPENCL_FP16"),
    "cuda": ("DNN_BACKEND_CUDA", "DNN_TARGET_CUDA"),
    "cuda_fp16": ("DNN_BACKEND_CUDA", "DNN_TARGET_CUDA_FP16"),
    "vulkan": ("DNN_BACKEND_VKCOM", "DNN_TARGET_VULKAN"),
    "openvino": ("DNN_BACKEND_INFERENCE_ENGINE", "DNN_TARGET_CPU"),
    "timvx": ("DNN_BACKEND_TIMVX", "DNN_TARGET_NPU"),
    "cann": ("DNN_BACKEND_CANN", "DNN_TARGET_NPU"),
}


def _cpu_only_engine(cv2) -> bool:
    """OpenCV >= 5.1: the classic engine, the only one that honours DNN targets, is gone (5.0 had ENGINE_CLASSIC
    beside ENGINE_AUTO; 4.x has neither), and the engine left runs on the CPU whatever target is set."""
    return hasattr(cv2.dnn, "ENGINE_AUTO") and not hasattr(cv2.dnn, "ENGINE_CLASSIC")


def _onnx_declarations(path: Path) -> tuple[tuple, dict]:
    """(the graph input's shape, None per dynamic dimension; its metadata_props) as the ONNX file declares them,
    read with an onnxruntime session (a core dependency), else the onnx package where installed: onnxruntime first
    because importing onnx takes about 0.65 s here against 0.08 s (+ 16 ms for the session of the bundled model).
    Read after OpenCV accepted the file, so a file they cannot parse only leaves both unknown: ((), {})."""
    try:
        try:
            import onnxruntime
        except ImportError:
            import onnx  # an ImportError here too: nothing reads the file, nothing is checked (handled below)

            return _read_with_onnx(onnx, path)
        return _read_with_onnxruntime(onnxruntime, path)
    except Exception as exc:  # onnx's DecodeError, onnxruntime's Fail, no graph input...: nothing to check against
        log.debug("%s: graph input and metadata unreadable (%s: %s)", path, type(exc).__name__, exc)
        return (), {}


def _read_with_onnx(onnx, path: Path) -> tuple[tuple, dict]:
    model = onnx.load(str(path), load_external_data=False)
    weights = {tensor.name for tensor in model.graph.initializer}  # old exporters list weights as inputs too
    graph_input = next(value for value in model.graph.input if value.name not in weights)
    dims = graph_input.type.tensor_type.shape.dim
    return (tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims),
            {prop.key: prop.value for prop in model.metadata_props})


def _read_with_onnxruntime(onnxruntime, path: Path) -> tuple[tuple, dict]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    return (tuple(d if isinstance(d, int) and d > 0 else None for d in dims),
            dict(session.get_modelmeta().custom_metadata_map))


def _available(cv2, device: str) -> bool:
    if device != "cpu" and _cpu_only_engine(cv2):
        return False
    backend, target = (getattr(cv2.dnn, name, None) for name in DEVICES[device])
    return backend is not None and target is not None and target in cv2.dnn.getAvailableTargets(backend)


class OpenCVBackend(Backend):
    name = "opencv"
    suffixes = (".onnx",)
    runtime = "cv2"
    extra = None  # a core dependency

    @classmethod
    def probe(cls) -> dict:
        cv2 = cls.import_runtime()
        return {"version": cv2.__version__, "accelerators": [d for d in DEVICES if d != "cpu" and _available(cv2, d)]}

    def __init__(self, path, options, contract=None):
        super().__init__(path, options, contract)
        self._cv2 = cv2 = self.import_runtime()
        self.device = options.device
        if self.device not in DEVICES:
            raise InputError(f"opencv device {self.device!r} not understood: accepted {', '.join(DEVICES)}")
        if not _available(cv2, self.device):
            if _cpu_only_engine(cv2):
                self._device_unavailable(f"OpenCV {cv2.__version__}'s DNN engine runs on the CPU only, so it has no "
                                         f"DNN target for {self.device!r}", "Use OpenCV 4.x or 5.0 for DNN targets")
            else:
                self._device_unavailable(
                    f"this OpenCV build has no DNN target for {self.device!r} (it offers: cpu"
                    f"{''.join(', ' + d for d in DEVICES if d != 'cpu' and _available(cv2, d))})",
                    "Use an OpenCV build with that DNN backend")
            self.device = "cpu"
        # OpenCV 5's new graph engine (the default) runs on the CPU only and ignores targets; an accelerator
        # needs the classic engine. OpenCV 4 has one engine and no `engine` argument.
        engine = () if self.device == "cpu" or not hasattr(cv2.dnn, "ENGINE_CLASSIC") else (cv2.dnn.ENGINE_CLASSIC,)
        try:
            self.net = cv2.dnn.readNetFromONNX(str(self.path), *engine)
        except cv2.error as exc:
            raise ModelFileError(f"{self.path}: OpenCV DNN cannot read it as ONNX "
                                 f"({str(exc).strip().splitlines()[-1]})") from exc
        if self.net.empty():  # OpenCV 5.1 logs the node it stopped at and returns an empty net instead of raising
            raise ModelFileError(
                f"{self.path}: OpenCV {cv2.__version__}'s DNN engine cannot load this model (its log above names "
                f"the node); float16 ONNX graphs are among those it refuses: run the fp32 artifact (OpenCV DNN "
                f"computes in float32 on the CPU anyway) or this file with the onnxruntime backend")
        if self.device != "cpu":
            backend, target = (getattr(cv2.dnn, name) for name in DEVICES[self.device])
            self.net.setPreferableBackend(backend)
            self.net.setPreferableTarget(target)
        self.claim_threads()
        shape, metadata = _onnx_declarations(self.path)
        self._resolve_contract(metadata)
        declared = TensorSpec("declared", shape, "float32")  # NCHW, as OpenCV DNN feeds it; (None, None) if unknown
        self._check_contract_agrees(declared.channels, declared.hw, "its graph input")
        (out_name,) = self.net.getUnconnectedOutLayersNames()[:1]
        hw = declared.hw if all(declared.hw) else tuple(self.contract.input_size or (None, None))
        self.inputs = [TensorSpec(self.contract.input_name, (1, self.contract.channels, *hw), "float32")]
        self.outputs = [TensorSpec(out_name, (1, 1, *hw), "float32")]

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        try:
            self.net.setInput(batch)
            logits = self.net.forward(self.outputs[0].name)
        except self._cv2.error as exc:
            raise InputError(f"OpenCV DNN failed on {self.path.name} for a {batch.shape[2]}x{batch.shape[3]} "
                             f"input ({str(exc).strip().splitlines()[-1]})") from exc
        return np.ascontiguousarray(logits, dtype=np.float32).reshape(batch.shape[0], 1, *logits.shape[-2:])

    def claim_threads(self) -> None:
        self._cv2.setNumThreads(self.options.resolved_threads())

    def _read_effect(self) -> dict:
        return {
            **self._base_effect(),
            "threads": self._cv2.getNumThreads(),
            "threads_source": "cv2.getNumThreads() read back (process-wide: the last setNumThreads wins)",
            "device": self.device,
            "device_source": "checked with cv2.dnn.getAvailableTargets (OpenCV does not report the target it used)",
            "precision": "fp16" if self.device.endswith("_fp16") else self.contract.precision,
            "precision_source": "the DNN target and the artifact's contract",
            "big_cores": "not offered by OpenCV" if self.options.big_cores else False,
        }

    def _release(self) -> None:
        self.net = None
