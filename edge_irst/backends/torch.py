"""PyTorch: our checkpoints (.pt/.pth), plain state dicts, and the authors' LW_IRST.pkl, all through
`edge_irst.models.load_checkpoint` (the authors' pickle through its allow-list unpickler: nothing in the file runs).

The only runtime module that imports torch, and only when a torch backend is created. `torch.set_num_threads` is
process-wide: it also sets the threads of any other torch work in the process (training, export verification).
"""
from __future__ import annotations

import re

import numpy as np

from edge_irst.contract import sidecar_contract, sidecar_path
from edge_irst.errors import InputError

from .base import Backend, TensorSpec

_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")  # the device strings _select_device takes (N: a CUDA index >= 0)


class TorchBackend(Backend):
    name = "torch"
    suffixes = (".pt", ".pth", ".pkl")
    runtime = "torch"
    extra = "torch"

    @classmethod
    def probe(cls) -> dict:
        torch = cls.import_runtime()
        accelerators = [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            accelerators.append("mps")
        return {"version": torch.__version__, "accelerators": accelerators}

    def __init__(self, path, options, contract=None):
        super().__init__(path, options, contract)
        self._torch = torch = self.import_runtime()
        from edge_irst.models import load_checkpoint

        loaded = load_checkpoint(self.path)
        found = sidecar_contract(self.path)
        if self.contract is None:
            self.contract = found or loaded.contract
            self.contract_origin = (f"sidecar {sidecar_path(self.path)}" if found
                                    else f"the contract stored in {self.path.name}")
        first_convolution = next((m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        self._check_contract_agrees(getattr(first_convolution, "in_channels", None), (None, None),
                                    "its first convolution")
        self.device = self._select_device(torch)
        self.claim_threads()
        self.model = loaded.model.to(self.device).eval()
        self.architecture = loaded.architecture
        channels = self.contract.channels
        self.inputs = [TensorSpec(self.contract.input_name, (None, channels, None, None), "float32")]
        self.outputs = [TensorSpec(self.contract.output_name, (None, 1, None, None), "float32")]

    def _select_device(self, torch) -> str:
        device = self.options.device
        if not _DEVICE.fullmatch(device):
            raise InputError(f"torch device {device!r} not understood: accepted cpu, cuda, cuda:N (N = 0, 1, ...: "
                             f"the CUDA device index), mps")
        if device == "cpu":
            return "cpu"
        kind, _, index = device.partition(":")
        if kind == "cuda":
            count = torch.cuda.device_count()
            if int(index or 0) < count:
                return device
            self._device_unavailable(f"CUDA device {device!r} requested but torch {torch.__version__} sees "
                                     f"{count} CUDA device(s)", "Install a CUDA build of torch on a machine with "
                                                               "an NVIDIA GPU")
            return "cpu"
        if torch.backends.mps.is_available():
            return "mps"
        self._device_unavailable("MPS requested but not available", "MPS needs Apple silicon")
        return "cpu"

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(batch).to(self.device))
        return logits.float().cpu().numpy()

    def claim_threads(self) -> None:
        self._torch.set_num_threads(self.options.resolved_threads())

    def _read_effect(self) -> dict:
        parameter = next(self.model.parameters())
        return {
            **self._base_effect(),
            "threads": self._torch.get_num_threads(),
            "threads_source": "torch.get_num_threads() read back (process-wide)",
            "device": str(parameter.device),
            "device_source": "the model's parameters",
            "precision": {"torch.float32": "fp32", "torch.float16": "fp16",
                          "torch.bfloat16": "bf16"}.get(str(parameter.dtype), str(parameter.dtype)),
            "precision_source": "the model's parameter dtype",
            "architecture": self.architecture,
            "big_cores": "not offered by torch" if self.options.big_cores else False,
        }

    def _release(self) -> None:
        self.model = None
