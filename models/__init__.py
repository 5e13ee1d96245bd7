"""edge_irst.models: the PyTorch side (networks, checkpoints, FLOP counting, training). Needs torch."""
from .registry import create_model, list_models, model_entry, register_model
from . import lw_irstnet  # noqa: F401  (registers the builders)
from .checkpoint import load_checkpoint, save_checkpoint
from .grey_input import fold_grey_input

__all__ = ["create_model", "list_models", "model_entry", "register_model", "load_checkpoint", "save_checkpoint",
           "fold_grey_input"]
