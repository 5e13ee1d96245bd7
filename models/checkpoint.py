"""Checkpoints: our own format (plain state dict + JSON-able config) and a safe loader for the authors' pickle.

Our format is a dict that `torch.load(path, weights_only=True)` reads without executing anything:
    {"format": "edge-irst/checkpoint", "format_version": 1, "architecture": "lw_irstnet",
     "model_config": {...constructor kwargs...}, "contract": {...ModelContract...}, "state_dict": {...},
     "meta": {...free-form, JSON-able...}}

The authors published `LW_IRST.pkl`, a whole pickled `nn.Module` whose classes live at
`models.LW_IRST_Net.LW_IRST_ablation`. Unpickling it normally would import and run whatever the pickle names.
`load_authors_pickle` instead uses an allow-list unpickler: the authors' five classes and the torch.nn layer
classes they contain become inert records (no __init__, no __setstate__ of a real module runs), tensors are rebuilt
by torch's own storage rebuilders, and any other global (os.system, builtins.eval, ...) aborts the load before it
is called.
"""
from __future__ import annotations

import collections
import hashlib
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from edge_irst.contract import AUTHORS_CONTRACT, ModelContract
from edge_irst.errors import ModelFileError, UnknownNameError, UnsafePickleError

from .registry import create_model

FORMAT = "edge-irst/checkpoint"
FORMAT_VERSION = 1
TRAIN_STATE_FORMAT = "edge-irst/train-state"  # last.pt: the state models/train.py resumes from

AUTHORS_MODULE = "models.LW_IRST_Net.LW_IRST_ablation"
AUTHORS_CLASSES = ("LW_IRST_ablation", "InitialBlock", "DownsamplingBottleneck", "RegularBottleneck", "dw_conv")
# torch.nn layer classes that the authors' model tree contains; they too become records, never real modules.
_NN_LAYERS = {
    "torch.nn.modules.conv": ("Conv2d", "ConvTranspose2d"),
    "torch.nn.modules.batchnorm": ("BatchNorm2d",),
    "torch.nn.modules.activation": ("PReLU", "ReLU"),
    "torch.nn.modules.dropout": ("Dropout2d",),
    "torch.nn.modules.pooling": ("MaxPool2d",),
    "torch.nn.modules.container": ("Sequential",),
}
# Callables a state dict genuinely needs. Storage classes (torch.FloatStorage...) are resolved by torch.load itself.
_ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
}


class ModuleRecord:
    """Inert stand-in for a pickled nn.Module: keeps the pickled state dict, runs no code of the module."""

    pickled_class = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self.pickled_class}: unexpected pickled state of type {type(state).__name__}")
        self.state = state


_RECORD_CLASSES: dict[str, type] = {}


def _record_class(qualname: str) -> type:
    if qualname not in _RECORD_CLASSES:
        _RECORD_CLASSES[qualname] = type(qualname.rsplit(".", 1)[-1], (ModuleRecord,), {"pickled_class": qualname})
    return _RECORD_CLASSES[qualname]


def _allowed_records() -> set[str]:
    names = {f"{AUTHORS_MODULE}.{c}" for c in AUTHORS_CLASSES}
    names |= {f"{mod}.{c}" for mod, classes in _NN_LAYERS.items() for c in classes}
    return names


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname in _allowed_records():
            return _record_class(qualname)
        if (module, name) in _ALLOWED_CALLABLES:
            return _ALLOWED_CALLABLES[(module, name)]
        raise UnsafePickleError(
            f"refusing to load: the pickle references {qualname!r}, which is not on the allow-list of the "
            f"authors' LW-IRSTNet classes and torch tensor internals (nothing from the file was executed)"
        )


class _AllowListPickleModule:
    """Passed to torch.load as `pickle_module`, so torch's zip/storage handling wraps our restricted Unpickler."""

    Unpickler = _AllowListUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "edge_irst_allow_list_pickle"

    @staticmethod
    def load(f, **kw):
        return _AllowListUnpickler(f, **kw).load()


# The authors' module tree is 5 levels deep; a pickle nested far deeper is not theirs (and would exhaust the stack).
_MAX_MODULE_DEPTH = 32


def _flatten_record(record: ModuleRecord, path: Path, prefix: str = "",
                    ancestors: tuple = ()) -> dict[str, torch.Tensor]:
    """State-dict-style {dotted name: tensor} from a record tree (parameters, then persistent buffers). Every
    level of the pickled state is checked for its type, and the tree for cycles and depth: the pickle is data from
    a file, and a crafted one may hold a module that contains itself."""
    if any(record is ancestor for ancestor in ancestors):
        raise UnsafePickleError(f"{path}: module {prefix.rstrip('.') or '(root)'} is one of its own ancestors (a "
                                f"cyclic _modules tree): not a model the authors' code could have saved")
    if len(ancestors) >= _MAX_MODULE_DEPTH:
        raise UnsafePickleError(f"{path}: modules nested deeper than {_MAX_MODULE_DEPTH} levels at "
                                f"{prefix.rstrip('.')}: not the authors' LW-IRSTNet")
    state = record.state
    out: dict[str, torch.Tensor] = {}
    non_persistent = _pickled_entry(state, "_non_persistent_buffers_set", set, path, prefix)
    for key in ("_parameters", "_buffers"):
        for name, tensor in _pickled_entry(state, key, dict, path, prefix).items():
            if tensor is None or name in non_persistent:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise UnsafePickleError(f"{path}: {prefix}{name}: expected a tensor, found {type(tensor).__name__}")
            out[prefix + name] = tensor.detach().clone()
    for name, child in _pickled_entry(state, "_modules", dict, path, prefix).items():
        if child is None:
            continue
        if not isinstance(child, ModuleRecord):
            raise UnsafePickleError(f"{path}: {prefix}{name}: expected a module, found {type(child).__name__}")
        out.update(_flatten_record(child, path, f"{prefix}{name}.", (*ancestors, record)))
    return out


def _pickled_entry(state: dict, key: str, kind: type, path: Path, prefix: str):
    """state[key] of a pickled module, an empty `kind` when absent or None; refused when of another type."""
    value = state.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise UnsafePickleError(f"{path}: {prefix or '(root) '}{key}: expected a {kind.__name__}, found "
                                f"{type(value).__name__}")
    return value


# Authors' state-dict names -> ours. The layers their class defines but never calls are listed apart and dropped.
_AUTHORS_UNUSED = re.compile(r"^(ext_conv1|ext_conv2|conv1|conv2|conv3)\.")
_DAAA_PARTS = {1: "depthwise", 2: "atrous1", 3: "asymmetric", 0: "atrous2"}


def _authors_key_to_ours(key: str) -> str:
    rules = [
        (r"^initial_block\.main_branch\.", "stem.conv."),
        (r"^initial_block\.batch_norm\.", "stem.bn."),
        (r"^initial_block\.out_activation\.", "stem.act."),
        (r"^downsample1_0\.", "down1."),
        (r"^downsample2_0\.", "down2."),
        (r"^regular1_(\d)\.", lambda m: f"stage2.{int(m[1]) - 1}."),
        (r"^transposed4_conv\.", "up1."),
        (r"^regular4_(\d)\.", lambda m: f"decoder1.{int(m[1]) - 1}."),
        (r"^transposed5_conv\.", "up2."),
        (r"^regular5_1\.", "decoder2.0."),
        (r"^transposed6_conv\.", "head."),
        (
            r"^(?:Depthwise|Atrous|Asymmetric)([23])_(\d)\.",
            lambda m: f"stage3.{(int(m[1]) - 2) * 2 + (int(m[2]) - 1) // 4}.{_DAAA_PARTS[int(m[2]) % 4]}.",
        ),
    ]
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            key = new
            break
    key = key.replace("ext_conv2.dw_conv_k3.", "body.")
    for old, new in (("ext_conv1.", "reduce."), ("ext_conv2.", "body."), ("ext_conv3.", "expand."),
                     ("out_activation.", "out_act.")):
        key = key.replace(old, new)
    return key


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_authors_pickle(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the authors' whole-model pickle safely; return a state dict in OUR naming (unused layers dropped)."""
    path = Path(path)
    try:
        root = torch.load(path, map_location="cpu", pickle_module=_AllowListPickleModule, weights_only=False)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from exc
    except Exception as exc:  # truncated zip, wrong file type...
        raise ModelFileError(f"{path}: not a readable PyTorch pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(root, ModuleRecord) or root.pickled_class != f"{AUTHORS_MODULE}.LW_IRST_ablation":
        found = getattr(root, "pickled_class", type(root).__name__)
        raise ModelFileError(f"{path}: expected the authors' LW_IRST_ablation model, found {found}")
    theirs = _flatten_record(root, path)
    return {_authors_key_to_ours(k): v for k, v in theirs.items() if not _AUTHORS_UNUSED.match(k)}


def save_checkpoint(path: str | Path, model: torch.nn.Module, architecture: str, model_config: dict | None = None,
                    contract: ModelContract | None = None, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contract = (contract or AUTHORS_CONTRACT).replace(architecture=architecture, provenance="edge-irst")
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "model_config": dict(model_config or {}),
        "contract": contract.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(doc, tmp)
    tmp.replace(path)  # atomic: a session killed mid-save never leaves a truncated checkpoint
    return path


class LoadedCheckpoint:
    """A model built from a checkpoint, with what is known about it."""

    def __init__(self, model, architecture: str, model_config: dict, contract: ModelContract, source: Path,
                 meta: dict):
        self.model, self.architecture, self.model_config = model, architecture, model_config
        self.contract, self.source, self.meta = contract, source, meta
        self.sha256 = sha256_file(source)


def _is_whole_model_pickle(path: Path) -> bool:
    """True when the file is a zip-format torch pickle that names the authors' module path.

    Every entry's CRC is checked on the way (torch.load checks none: a flipped byte in a tensor would load as a
    wrong weight), so a corrupt archive is a ModelFileError naming the file, whichever entry the damage is in."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            damaged = zf.testzip()
            if damaged is not None:
                raise zipfile.BadZipFile(f"bad CRC-32 for {damaged}")
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
            return pkl is not None and AUTHORS_MODULE.encode() in zf.read(pkl)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:  # bad CRC, cut or odd entry
        raise ModelFileError(f"{path}: a corrupt PyTorch (zip) archive ({type(exc).__name__}: {exc}); re-download "
                             f"or re-save it") from exc


def load_checkpoint(path: str | Path, architecture: str | None = None, eval_mode: bool = True) -> LoadedCheckpoint:
    """Load any supported weights file into a registry model.

    Accepts: our checkpoint format; a bare state dict (then `architecture`, default lw_irstnet, decides the net);
    the authors' whole-model pickle (through the allow-list unpickler). Raises ModelFileError naming the file and
    the mismatch (missing/unexpected keys, shapes) otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file not found: {path}")
    model_config: dict = {}
    meta: dict = {}
    if _is_whole_model_pickle(path):
        state_dict = load_authors_pickle(path)
        arch, contract = "lw_irstnet", AUTHORS_CONTRACT.replace(source=path.name)
        meta = {"converted_from": "authors' whole-model pickle"}
    else:
        try:
            doc = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch words every failure the same way; the detail line tells a forbidden global from garbage.
            detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln or "GLOBAL" in ln),
                          str(exc).splitlines()[0])
            if "global" not in detail.lower():
                raise ModelFileError(f"{path}: not a PyTorch checkpoint ({detail})") from exc
            raise UnsafePickleError(
                f"{path}: refused by torch's weights-only loader ({detail}); only edge-irst "
                f"checkpoints, plain state dicts and the authors' LW-IRSTNet pickle are accepted"
            ) from exc
        except Exception as exc:
            raise ModelFileError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
        if isinstance(doc, dict) and doc.get("format") == FORMAT:
            version = doc.get("format_version", 0)
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ModelFileError(f"{path}: checkpoint format_version {version!r} is not a version this "
                                     f"edge-irst writes (an integer from 1 to {FORMAT_VERSION})")
            if version > FORMAT_VERSION:
                raise ModelFileError(f"{path}: checkpoint format version {version} is newer than "
                                     f"this edge-irst understands ({FORMAT_VERSION}); upgrade edge-irst")
            return _from_document(doc, path, architecture, eval_mode)
        elif isinstance(doc, dict) and doc and all(isinstance(v, torch.Tensor) for v in doc.values()):
            state_dict, arch, contract = doc, architecture or "lw_irstnet", AUTHORS_CONTRACT
        elif isinstance(doc, dict) and doc.get("format") == TRAIN_STATE_FORMAT:
            # last.pt holds the optimiser and RNG states for --resume, but no contract (input size, mean/std)
            raise ModelFileError(f"{path}: a training state (for edge-irst train --resume), not a model "
                                 f"checkpoint: use the run's best.pt ({path.parent / 'best.pt'}), which holds the "
                                 f"weights with their contract")
        else:
            keys = list(doc)[:5] if isinstance(doc, dict) else "-"
            raise ModelFileError(f"{path}: not an edge-irst checkpoint nor a state dict "
                                 f"(top-level {type(doc).__name__} with keys {keys})")
    return _built(arch, architecture, model_config, state_dict, contract, path, meta, eval_mode)


def _from_document(doc: dict, path: Path, architecture: str | None, eval_mode: bool) -> LoadedCheckpoint:
    """Check each entry of our checkpoint document for its type (a ModelFileError naming the file and the entry,
    never a KeyError / TypeError), then build the model."""
    arch = _entry(doc, "architecture", str, path)
    state_dict = _entry(doc, "state_dict", dict, path)
    model_config, meta = _entry(doc, "model_config", dict, path, {}), _entry(doc, "meta", dict, path, {})
    contract = ModelContract.from_dict(_entry(doc, "contract", dict, path), f"{path}: checkpoint contract")
    return _built(arch, architecture, model_config, state_dict, contract, path, meta, eval_mode)


def _entry(doc: dict, key: str, kind: type, path: Path, default=None):
    """doc[key], which must be a `kind`; `default` when absent, where one is given."""
    if key not in doc and default is not None:
        return default
    if key not in doc:
        raise ModelFileError(f"{path}: the checkpoint has no {key!r} entry (keys: {', '.join(map(str, doc))})")
    if not isinstance(doc[key], kind):
        raise ModelFileError(f"{path}: checkpoint entry {key!r} must be a {kind.__name__}, found "
                             f"{type(doc[key]).__name__}")
    return doc[key]


def _built(arch: str, requested: str | None, model_config: dict, state_dict: dict, contract: ModelContract,
           path: Path, meta: dict, eval_mode: bool) -> LoadedCheckpoint:
    """The registry model `arch` (which must be `requested`, where one is) built with `model_config`, holding
    `state_dict`."""
    if requested and requested != arch:
        raise ModelFileError(f"{path}: holds a {arch!r} model, but {requested!r} was asked for")
    try:
        model = create_model(arch, **model_config)
    except UnknownNameError as exc:
        raise ModelFileError(f"{path}: holds an architecture this edge-irst does not have: {exc}") from exc
    except (TypeError, ValueError, RuntimeError) as exc:  # an option the builder lacks, or a value it cannot take
        raise ModelFileError(f"{path}: model_config {model_config} does not fit architecture {arch!r} "
                             f"({exc})") from exc
    _load_state(model, state_dict, path, arch)
    if eval_mode:
        model.eval()
    return LoadedCheckpoint(model, arch, model_config, contract, path, meta)


def _load_state(model: torch.nn.Module, state_dict: dict, path: Path, arch: str) -> None:
    not_tensors = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelFileError(f"{path}: state_dict entries that are not tensors: {', '.join(not_tensors[:3])}")
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(ours))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in sorted(set(ours) & set(state_dict)) if tuple(ours[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise ModelFileError(f"{path}: weights do not fit architecture {arch!r}: " + ", ".join(parts))
    model.load_state_dict(state_dict, strict=True)
