"""onnxruntime: .onnx artifacts on the CPU or any execution provider the installed build offers.

Providers are always passed explicitly ([the accelerator, CPU] or [CPU]); what the session really registered is
read back with `get_providers()`, because onnxruntime drops a provider it cannot initialise with only a log line.
"""
from __future__ import annotations

import numpy as np

from edge_irst.errors import ModelFileError

from .base import Backend, TensorSpec, log

CPU = "CPUExecutionProvider"
_NOT_ACCELERATORS = (CPU, "AzureExecutionProvider")  # Azure is a remote-call provider, not a device
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
           "tensor(uint8)": "uint8"}
_SPIN_KEY = "session.intra_op.allow_spinning"


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    suffixes = (".onnx",)
    runtime = "onnxruntime"
    extra = None  # a core dependency

    @classmethod
    def probe(cls) -> dict:
        ort = cls.import_runtime()
        accelerators = [p for p in ort.get_available_providers() if p not in _NOT_ACCELERATORS]
        return {"version": ort.__version__, "accelerators": accelerators}

    def __init__(self, path, options, contract=None):
        super().__init__(path, options, contract)
        ort = self.import_runtime()
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.resolved_threads()
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.log_severity_level = 3  # errors only: provider fallbacks are reported by this module
        if options.spin is not None:
            session_options.add_session_config_entry(_SPIN_KEY, "1" if options.spin else "0")
        self.accelerator = self._accelerator(ort)
        providers = [(self.accelerator, dict(options.delegate_options)), CPU] if self.accelerator else [CPU]
        try:
            self.session = ort.InferenceSession(str(self.path), session_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own InvalidProtobuf / Fail / ... types
            raise ModelFileError(f"onnxruntime cannot load {self.path}: {exc}") from exc
        registered = self.session.get_providers()
        log.info("onnxruntime session for %s registered providers %s", self.path.name, registered)
        if self.accelerator and self.accelerator not in registered:
            self._device_unavailable(f"execution provider {self.accelerator} failed to initialise (the session "
                                     f"registered only {registered})", "Check the provider's drivers/libraries")
            self.accelerator = None
        self._resolve_contract(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = [self._spec(i) for i in self.session.get_inputs()]
        self.outputs = [self._spec(o) for o in self.session.get_outputs()]
        self._check_contract_agrees(self.inputs[0].channels, self.inputs[0].hw, "its graph input")
        self._input_dtype = np.dtype(self.inputs[0].dtype)

    def _accelerator(self, ort):
        """The provider `options.device` names (short "cuda" or full "CUDAExecutionProvider"), None for CPU."""
        device = self.options.device
        if device == "cpu":
            return None
        available = ort.get_available_providers()
        match = next((p for p in available if p not in _NOT_ACCELERATORS
                      and p.lower() in (device, device + "executionprovider")), None)
        if match is None:
            self._device_unavailable(
                f"execution provider {device!r} is not in this onnxruntime build (it offers "
                f"{', '.join(available)})", "Install the onnxruntime build that has it (e.g. onnxruntime-gpu "
                                            "for cuda, onnxruntime-openvino for openvino)")
        return match

    def _spec(self, node) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in node.shape)
        if node.type not in _DTYPES:
            raise ModelFileError(f"{self.path}: tensor {node.name!r} has type {node.type}; edge-irst feeds "
                                 f"{', '.join(_DTYPES)} tensors")
        return TensorSpec(node.name, shape, _DTYPES[node.type], "NCHW")

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.inputs[0].name: batch.astype(self._input_dtype, copy=False)}
        (logits,) = self.session.run([self.outputs[0].name], feed)
        return logits.astype(np.float32, copy=False)

    def _read_effect(self) -> dict:
        applied = self.session.get_session_options()
        try:
            spin = applied.get_session_config_entry(_SPIN_KEY) == "1"
            spin_source = "session config read back"
        except RuntimeError:  # onnxruntime raises when the key was never set
            spin, spin_source = None, "runtime default (not set; onnxruntime spins by default)"
        return {
            **self._base_effect(),
            "threads": applied.intra_op_num_threads,
            "threads_source": "intra_op_num_threads read back from the session",
            "spin": spin,
            "spin_source": spin_source,
            "providers": self.session.get_providers(),
            "device": self.accelerator or "cpu",
            "precision": self.contract.precision,
            "precision_source": "the artifact's contract (onnxruntime computes at the stored precision)",
            "big_cores": "not offered by onnxruntime's Python API" if self.options.big_cores else False,
        }

    def _release(self) -> None:
        self.session = None
