"""TFLite through ai-edge-litert: float or full-integer models, NCHW or NHWC, XNNPACK on/off, external delegates.

Layout comes from the input shape (the authors' file is NCHW [1,3,256,256], our exporter writes NHWC), the
contract's `layout` breaking a tie. Integer I/O is (de)quantised with the tensor's own scale and zero point.
The contract is the sidecar's, else the one the exporter embeds in the file's metadata ("edge_irst.contract"),
else the authors' default. A dynamic-size graph (signature [1, -1, -1, 3]) is allocated at the contract's size
(256x256 when it has none) and re-planned when a frame of another size arrives.
Accelerators are external delegates (`load_delegate(library, options)`): `delegate` names a library path or one
of KNOWN_DELEGATES, and `device` may name one of those too.
"""
from __future__ import annotations

import ctypes

import cv2
import numpy as np

from edge_irst.errors import InputError, ModelFileError

from .base import Backend, TensorSpec, layout_from_shape, log

# Delegates that export TFLite's external-delegate entry point (tflite_plugin_create_delegate).
KNOWN_DELEGATES = {
    "edgetpu": "libedgetpu.so.1",  # Coral Edge TPU
    "qnn": "libQnnTFLiteDelegate.so",  # Qualcomm AI Engine Direct (HTP/DSP/GPU)
    "vx": "libvx_delegate.so",  # NXP i.MX 8M Plus / i.MX 93 NPU through TIM-VX
    "armnn": "libarmnnDelegate.so",  # Arm NN (Mali GPU / NEON), options {"backends": "GpuAcc,CpuAcc"}
}
TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier at bytes 4..8


def nhwc(batch: np.ndarray) -> np.ndarray:
    """A C-contiguous NHWC copy of the NCHW `batch` (one channel: a reshape). Why cv2.merge: it interleaves the
    planes far faster than numpy copies a transposed view, with the same values: 0.02 against 0.16 ms for a float32
    3x256x256 frame, 0.005 against 0.17 ms in int8 (AMD EPYC Zen 5, ad hoc), where the whole int8 model takes 2-4
    ms."""
    n, c, h, w = batch.shape
    if c == 1:
        return batch.reshape(n, h, w, 1)
    out = np.empty((n, h, w, c), batch.dtype)
    for planes, image in zip(batch, out):
        cv2.merge(list(planes), dst=image)
    return out


class TFLiteBackend(Backend):
    name = "tflite"
    suffixes = (".tflite",)
    runtime = "ai_edge_litert"
    extra = "tflite"
    delegates = True

    @classmethod
    def probe(cls) -> dict:
        litert = cls.import_runtime()
        found = [name for name, library in KNOWN_DELEGATES.items() if _delegate_problem(library) is None]
        return {"version": getattr(litert, "__version__", "?"), "accelerators": found}

    def __init__(self, path, options, contract=None):
        super().__init__(path, options, contract)
        runtime = self.import_runtime("ai_edge_litert.interpreter")
        self._check_magic()
        self._resolve_contract(self._embedded_metadata() if self.contract is None else None)
        self.delegate = self._load_delegate(runtime)
        resolver = (runtime.OpResolverType.AUTO if options.xnnpack
                    else runtime.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            self.interpreter = self._interpreter(runtime, resolver)
        except ModelFileError:  # a ValueError too, but raised by this module about the file: keep its words
            raise
        except ValueError as exc:
            if self.delegate is None:
                raise ModelFileError(f"{self.path}: TFLite cannot load it ({exc})") from exc
            self._device_unavailable(f"delegate {self.delegate_library} loaded but could not take the graph "
                                     f"({exc})", "Check that the accelerator is attached and its driver runs")
            self.delegate = None
            self.interpreter = self._interpreter(runtime, resolver)
        self._check_contract_agrees(self.inputs[0].channels, self.inputs[0].hw, "its input tensor")
        self.outputs = [self._spec(d, 1) for d in self.interpreter.get_output_details()]
        self._output_index = self.interpreter.get_output_details()[0]["index"]

    def _check_magic(self) -> None:
        with open(self.path, "rb") as fh:
            head = fh.read(8)
        if head[4:8] != TFLITE_MAGIC:
            raise ModelFileError(f"{self.path}: not a TFLite model (file identifier {head[4:8]!r}, expected "
                                 f"{TFLITE_MAGIC!r})")

    def _embedded_metadata(self) -> dict:
        """{name: text} of the flatbuffer's UTF-8 metadata entries (convert_tflite embeds the contract under
        "edge_irst.contract"); {} when there are none or the file cannot be parsed (the interpreter then says
        why it cannot load it)."""
        try:
            from ai_edge_litert import schema_py_generated as schema
        except ImportError:
            return {}
        data = self.path.read_bytes()
        found = {}
        try:
            model = schema.Model.GetRootAs(data, 0)
            for i in range(model.MetadataLength()):
                entry = model.Metadata(i)
                buffer = model.Buffers(entry.Buffer())
                if buffer.Offset() > 1:  # models over 2 GB keep their buffers after the flatbuffer
                    raw = data[buffer.Offset():buffer.Offset() + buffer.Size()]
                else:
                    raw = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
                try:
                    found[entry.Name().decode()] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue  # binary entries (e.g. the converter's CONVERSION_METADATA) carry no contract
        except Exception as exc:  # a truncated flatbuffer fails with struct.error / IndexError / ...
            log.debug("%s: metadata unreadable (%s: %s)", self.path, type(exc).__name__, exc)
            return {}
        return found

    def _interpreter(self, runtime, resolver):
        """A new interpreter with tensors allocated at a concrete input shape; sets `inputs` and `_shape`."""
        interpreter = runtime.Interpreter(
            model_path=str(self.path), num_threads=self.options.resolved_threads(),
            experimental_delegates=[self.delegate] if self.delegate else None,
            experimental_op_resolver_type=resolver)
        detail = interpreter.get_input_details()[0]
        self.inputs = [self._spec(detail, self.contract.channels)]
        self._input_index = detail["index"]
        # A dynamic graph's tensors are stored with every -1 of the signature as 1 (TF 2.21's converter writes
        # [1, 1, 1, 3] for [1, -1, -1, 3]); XNNPACK cannot plan LW-IRSTNet at 1x1 ("failed to reshape"), so the
        # input is resized to a real frame size before the first allocation.
        shape = self._concrete_shape(tuple(int(d) for d in detail["shape"]))
        if shape != tuple(detail["shape"]):
            interpreter.resize_tensor_input(self._input_index, shape)
        interpreter.allocate_tensors()
        self._shape = shape
        return interpreter

    def _concrete_shape(self, stored: tuple) -> tuple:
        """The input shape to allocate first: fixed dimensions as stored, batch 1, H/W from `input_size()`
        (the contract's size, else 256x256) where the signature leaves them dynamic."""
        spec = self.inputs[0]
        h, w = self.input_size()
        wanted = {spec.layout.index("N"): 1, spec.layout.index("H"): h, spec.layout.index("W"): w}
        return tuple(dim if spec.shape[axis] is not None else wanted.get(axis, dim)
                     for axis, dim in enumerate(stored))

    def _load_delegate(self, runtime):
        requested = self.options.delegate
        if requested is None and self.options.device != "cpu":
            if self.options.device not in KNOWN_DELEGATES:
                raise InputError(f"tflite device {self.options.device!r} not understood: accepted cpu, "
                                 f"{', '.join(KNOWN_DELEGATES)}, or delegate='/path/to/delegate.so'")
            requested = self.options.device
        if requested is None:
            self.delegate_library = None
            return None
        self.delegate_library = KNOWN_DELEGATES.get(requested, requested)
        # Checked with ctypes first: ai-edge-litert 2.3's load_delegate leaves a half-built Delegate whose __del__
        # prints a traceback when the library is missing or lacks the entry point.
        problem = _delegate_problem(self.delegate_library)
        if problem:
            self._device_unavailable(f"delegate library {self.delegate_library} {problem}",
                                     "Install the accelerator's TFLite external delegate")
            return None
        try:
            return runtime.load_delegate(self.delegate_library, dict(self.options.delegate_options))
        except (ValueError, OSError, AttributeError) as exc:
            self._device_unavailable(f"{self.delegate_library} is not a usable TFLite delegate ({exc})",
                                     "Pass the accelerator's external-delegate library")
            return None

    def _spec(self, detail: dict, channels: int) -> TensorSpec:
        signature = detail.get("shape_signature", detail["shape"])
        shape = tuple(int(d) if d > 0 else None for d in signature)
        layout = layout_from_shape(shape, channels, self.contract.layout, str(self.path), self.contract_origin)
        dtype = np.dtype(detail["dtype"]).name
        scale, zero_point = detail["quantization"]
        quantised = dtype in ("int8", "uint8", "int16")
        return TensorSpec(detail["name"], shape, dtype, layout, float(scale) if quantised else None,
                          int(zero_point) if quantised else None)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        spec = self.inputs[0]
        n, c, h, w = batch.shape
        shape = (n, c, h, w) if spec.layout == "NCHW" else (n, h, w, c)
        if shape != self._shape:  # a dynamic artifact: re-plan once per new frame size (or batch)
            self.interpreter.resize_tensor_input(self._input_index, shape)
            self.interpreter.allocate_tensors()
            self._shape = shape
        data = batch
        if spec.scale is not None:  # elementwise, so quantised before the layout change, on contiguous planes
            info = np.iinfo(spec.dtype)
            data = np.clip(np.round(data / spec.scale) + spec.zero_point, info.min, info.max)
        data = data.astype(spec.dtype, copy=False)
        self.interpreter.set_tensor(self._input_index, data if spec.layout == "NCHW" else nhwc(data))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._output_index)
        out_spec = self.outputs[0]
        if out_spec.scale is not None:
            out = (out.astype(np.float32) - out_spec.zero_point) * np.float32(out_spec.scale)
        if out_spec.layout == "NHWC":
            out = out.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _delegated_nodes(self):
        """Nodes of the execution plan that a delegate (XNNPACK or external) took, or None if unreadable.

        Read through the interpreter's private `_interpreter` (ai-edge-litert 2.3): the public API does not say
        which delegates applied."""
        inner = getattr(self.interpreter, "_interpreter", None)
        try:
            return sum(inner.NodeName(i) == "DELEGATE" for i in range(inner.NumNodes()))
        except AttributeError:
            return None

    def _read_effect(self) -> dict:
        delegated = self._delegated_nodes()
        external = self.delegate is not None
        return {
            **self._base_effect(),
            "threads": self.options.resolved_threads(),
            "threads_source": "requested: TFLite's Python API cannot report the thread count it applied",
            "delegate": self.delegate_library if external else None,
            "device": self.options.device if external else "cpu",
            "delegated_nodes": delegated,
            "xnnpack": (delegated > 0 and not external) if delegated is not None else self.options.xnnpack,
            "xnnpack_source": ("execution plan read back (DELEGATE nodes)" if delegated is not None
                               else "requested: the execution plan could not be read"),
            "precision": self.inputs[0].dtype if self.inputs[0].scale is not None else self.contract.precision,
            "precision_source": "the artifact (TFLite computes at the stored precision)",
            "big_cores": "not offered by TFLite's Python API" if self.options.big_cores else False,
        }

    def _release(self) -> None:
        self.interpreter = None
        self.delegate = None


def _delegate_problem(library: str):
    """Why `library` cannot be a TFLite external delegate, or None if it can be loaded and has the entry point."""
    try:
        handle = ctypes.CDLL(library)
    except OSError as exc:
        return f"cannot be loaded ({exc})"
    if not hasattr(handle, "tflite_plugin_create_delegate"):
        return "does not export tflite_plugin_create_delegate (not a TFLite external delegate)"
    return None
