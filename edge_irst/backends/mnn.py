"""MNN: .mnn artifacts through MNN's Interpreter/Session API, on the CPU or a forward type the wheel has.

MNN never fails on a forward type it lacks: it prints "Can't Find type=N backend, use 0 instead" to stdout and
runs on the CPU. That line is the only signal, so session creation runs inside `capture_native_output` and the
text is read: it decides DeviceUnavailableError / fallback, and keeps MNN's chatter out of our stdout.
"""
from __future__ import annotations

import dataclasses
import re
import struct

import numpy as np

from edge_irst.errors import InputError, ModelFileError

from .base import Backend, TensorSpec, capture_native_output, layout_from_shape

# options.device -> MNN's config name; the forward types its Python config accepts besides CPU.
FORWARD_TYPES = {"opencl": "OPENCL", "vulkan": "VULKAN", "cuda": "CUDA", "nn": "NN", "metal": "METAL",
                 "opengl": "OPENGL", "trt": "TRT", "hiai": "HIAI"}
# options.precision -> MNN precision mode. "auto" keeps MNN's default (Normal: fp32 on the CPU).
_PRECISION_MODES = {"auto": "normal", "fp32": "high", "fp16": "low", "bf16": "lowBF16", "low": "low",
                    "normal": "normal", "high": "high"}
_MISSING = re.compile(r"Can't Find type=(\d+) backend")
_SAID_PRECISION = re.compile(r"MNN use (\w+) precision")
# What MNN's CPU backend computes in for each mode (MNN documents Normal as High on the CPU); Low is fp16 only on a
# CPU with fp16 arithmetic (ARMv8.2) in a wheel built with it, which MNN does not report back.
_CPU_ARITHMETIC = {"normal": "fp32", "high": "fp32", "low": "fp16 or fp32"}
_THREAD_NUMBER = 4  # MNN::Interpreter::SessionInfoCode::THREAD_NUMBER
_DIMENSION_TYPES = {0: "NHWC", 1: "NCHW", 2: "NCHW"}  # Tensorflow, Caffe, Caffe_C4 (NC4HW4 inside, NCHW outside)


def _missing_forward_type(text: str) -> bool:
    return _MISSING.search(text) is not None


class MnnBackend(Backend):
    name = "mnn"
    suffixes = (".mnn",)
    runtime = "MNN"
    extra = "mnn"
    precisions = tuple(_PRECISION_MODES)

    @classmethod
    def probe(cls) -> dict:
        mnn = cls.import_runtime()
        found = []
        for device, forward in FORWARD_TYPES.items():
            with capture_native_output() as said:
                try:
                    mnn.Interpreter.createRuntime(({"backend": forward, "numThread": 1},))
                except Exception:  # a forward type this binding cannot even name
                    continue
            if not _missing_forward_type(said.text):
                found.append(device)
        return {"version": mnn.version(), "accelerators": found}

    def __init__(self, path, options, contract=None):
        super().__init__(path, options, contract)
        self._mnn = mnn = self.import_runtime()
        self.device = options.device
        if self.device != "cpu" and self.device not in FORWARD_TYPES:
            raise InputError(f"mnn device {self.device!r} not understood: accepted cpu, {', '.join(FORWARD_TYPES)}")
        config = {"backend": FORWARD_TYPES.get(self.device, "CPU"), "numThread": options.resolved_threads(),
                  "precision": _PRECISION_MODES[options.precision]}
        with capture_native_output() as said:
            try:
                self.interpreter = mnn.Interpreter(str(self.path))
            except Exception as exc:  # MNN raises a bare Exception; its reason went to the captured console
                error = exc
            else:
                error = None
                self.session = self.interpreter.createSession(config)
        if error is not None:
            raise ModelFileError(f"{self.path}: MNN cannot load it ({said.text.strip() or error}); expected an "
                                 f".mnn model written by MNNConvert") from error
        self.said = said.text
        if self.device != "cpu" and _missing_forward_type(said.text):
            self._device_unavailable(f"this MNN wheel has no {config['backend']} forward type (MNN said "
                                     f"{_MISSING.search(said.text)[0]!r})",
                                     "Build MNN with that backend (e.g. -DMNN_OPENCL=ON)")
            self.device = "cpu"
        self._resolve_contract()
        self._input = self.interpreter.getSessionInput(self.session)
        in_name = next(iter(self.interpreter.getSessionInputAll(self.session)))
        out_name = next(iter(self.interpreter.getSessionOutputAll(self.session)))
        self.inputs = [self._spec(in_name, self._input, self.contract.channels)]
        self._check_contract_agrees(self.inputs[0].channels, self.inputs[0].hw, "its input tensor")
        self._shape = tuple(self._input.getShape())
        self._host_output = None
        # A dynamic model's output reads (0, 0, 0, 0) until the session is resized to a concrete input (MNN 3.6),
        # so the session is planned at the contract's size (else 256x256) before the output spec is read.
        concrete = self._concrete_shape()
        if concrete != self._shape:
            with capture_native_output():
                self._resize(concrete)
        self._output = self.interpreter.getSessionOutput(self.session)
        self.outputs = [self._dynamic_like_input(self._spec(out_name, self._output, 1))]

    def _spec(self, name: str, tensor, channels: int) -> TensorSpec:
        shape = tuple(d if d > 0 else None for d in tensor.getShape())
        declared = _DIMENSION_TYPES.get(tensor.getDimensionType(), "NCHW")
        layout = layout_from_shape(shape, channels, declared, str(self.path), self.contract_origin)
        return TensorSpec(name, shape, "float32", layout)

    def _concrete_shape(self) -> tuple:
        """The input shape to plan the session at first: batch 1 and H/W from `input_size()` where dynamic."""
        spec = self.inputs[0]
        h, w = self.input_size()
        wanted = {"N": 1, "H": h, "W": w}
        return tuple(dim if dim is not None else wanted[axis] for axis, dim in zip(spec.layout, spec.shape))

    def _dynamic_like_input(self, planned: TensorSpec) -> TensorSpec:
        """The output spec read at the planned size, with None on each of N/H/W that the input leaves dynamic."""
        spec = self.inputs[0]
        dynamic = {axis for axis in "NHW" if spec.shape[spec.layout.index(axis)] is None}
        shape = tuple(None if axis in dynamic else dim for axis, dim in zip(planned.layout, planned.shape))
        return dataclasses.replace(planned, shape=shape)

    def _resize(self, shape: tuple) -> None:
        """Re-plan the session for an input of `shape` (the artifact's layout)."""
        self.interpreter.resizeTensor(self._input, shape)
        self.interpreter.resizeSession(self.session)
        self._output = self.interpreter.getSessionOutput(self.session)
        self._shape = tuple(shape)
        self._host_output = None

    def _host_dimension_type(self, layout: str):
        mnn = self._mnn
        return mnn.Tensor_DimensionType_Caffe if layout == "NCHW" else mnn.Tensor_DimensionType_Tensorflow

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        mnn, spec = self._mnn, self.inputs[0]
        data = batch if spec.layout == "NCHW" else np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
        dim_type = self._host_dimension_type(spec.layout)
        if data.shape != self._shape:  # a dynamic artifact: re-plan once per new frame size (or batch)
            self._resize(data.shape)
        self._input.copyFrom(mnn.Tensor(data.shape, mnn.Halide_Type_Float, data, dim_type))
        self.interpreter.runSession(self.session)
        if self._host_output is None:
            self._host_output = mnn.Tensor(self._output.getShape(), mnn.Halide_Type_Float,
                                           np.zeros(self._output.getShape(), np.float32),
                                           self._host_dimension_type(self.outputs[0].layout))
        self._output.copyToHostTensor(self._host_output)
        logits = np.array(self._host_output.getNumpyData(), dtype=np.float32)
        return logits if self.outputs[0].layout == "NCHW" else logits.transpose(0, 3, 1, 2)

    def _threads_applied(self) -> int:
        value = self.interpreter.getSessionInfo(self.session, _THREAD_NUMBER)
        if value >= 1:
            return int(value)
        # MNN 3.6's binding returns the int it got as a float of the same bits (2 -> 2.8e-45): reinterpret them.
        return struct.unpack("<i", struct.pack("<f", value))[0]

    def _read_effect(self) -> dict:
        said = _SAID_PRECISION.search(self.said)
        mode = said[1] if said else "normal"
        arithmetic = _CPU_ARITHMETIC.get(mode) if self.device == "cpu" else None
        return {
            **self._base_effect(),
            "threads": self._threads_applied(),
            "threads_source": "Interpreter.getSessionInfo(THREAD_NUMBER) read back",
            "precision": f"{arithmetic} ({mode})" if arithmetic else mode,
            "precision_mode": mode,
            "precision_source": "the mode from MNN's own line at session creation ('MNN use ... precision'; none = "
                                "normal), with the arithmetic MNN's CPU backend runs in that mode",
            "device": self.device,
            "device_source": "MNN's console at session creation (it names a missing forward type)",
            "big_cores": "not offered by MNN's Python API" if self.options.big_cores else False,
        }

    def _release(self) -> None:
        self.interpreter = self.session = self._input = self._output = self._host_output = None
