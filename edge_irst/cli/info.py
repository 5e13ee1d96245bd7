"""`edge-irst info`: the environment and backends, a registry model's size and FLOPs, or an artifact's I/O.

    edge-irst info                   version, Python, platform, cores, postprocess, backend summary
    edge-irst info --backends        every registered backend: installed?, version, accelerators it sees
    edge-irst info lw_irstnet        parameters and FLOPs of a registry model (needs torch: the [export] extra)
    edge-irst info model.onnx        an artifact's (or a model folder's) I/O spec, contract and options in effect
    edge-irst info best.pt           the same for a PyTorch checkpoint, with the trained model's parameters and
                                     FLOPs at its contract's input size (or --imgsz; a size that is not a
                                     multiple of the model's stride is counted padded up to one, as the
                                     Detector and `edge-irst bench` run it)

Results go to stdout (a table, or JSON with --json); nothing imports torch unless a registry model or a PyTorch
checkpoint is asked for.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from edge_irst import __version__
from edge_irst.errors import InputError, MissingDependencyError, ModelFileError

DEFAULT_SIZE = (256, 256)  # (H, W) for FLOPs where nothing else gives a size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="a registry model name (e.g. lw_irstnet), an artifact file, or an exported model folder")
    p.add_argument("--backends", action="store_true", help="list every registered backend and what it can see")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--backend", default=None, help="backend to open an artifact with (default: from the file)")
    p.add_argument("--artifact-precision", default=None, choices=("fp32", "fp16", "int8"),
                   help="which artifact of a model folder (default: fp32)")
    p.add_argument("--imgsz", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size for the FLOPs of a registry model or a PyTorch checkpoint, padded up to "
                        "multiples of the model's stride (default: the checkpoint's contract input size, else "
                        f"{DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]})")


def run(args) -> int:
    if args.imgsz is not None and min(args.imgsz) <= 0:
        raise InputError(f"--imgsz {args.imgsz[0]} {args.imgsz[1]}: H and W must be positive, e.g. --imgsz 256 256")
    if args.model is None:
        report = _environment(with_backends=True)
        text = _environment_text(report) if not args.backends else _backends_text(report["backends"], report)
    elif _is_artifact(args.model):
        report = _artifact(args)
        text = _artifact_text(report)
    else:
        report = _registry_model(args.model, tuple(args.imgsz or DEFAULT_SIZE))
        text = _model_text(report)
    if args.backends and args.model is not None:
        env = _environment(with_backends=True)
        report = {**report, "backends": env["backends"], "physical_cores": env["physical_cores"]}
        text += "\n\n" + _backends_text(env["backends"], env)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        print(text)
    return 0


# ---- gathering ---------------------------------------------------------------------------------------------------
def _is_artifact(model: str) -> bool:
    """A path (existing, or shaped like one) rather than a registry name."""
    path = Path(model)
    return path.exists() or bool(path.suffix) or "/" in model or "\\" in model


def _postprocess() -> dict:
    try:
        import edge_irst.postprocess as post
    except Exception as exc:  # another module's failure must not take `info` down with it
        return {"implementation": f"unavailable ({type(exc).__name__}: {exc})"}
    info = {"implementation": getattr(post, "IMPLEMENTATION", "not reported by edge_irst.postprocess")}
    describe = getattr(post, "implementation_info", None)
    if callable(describe):
        detail = describe()
        info["detail"] = ("; ".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}"
                                    for k, v in detail.items() if k != "implementation" and v is not None)
                          if isinstance(detail, dict) else str(detail))
    return info


def _environment(with_backends: bool) -> dict:
    from edge_irst.backends import backend_status, physical_cores

    report = {
        "edge_irst": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "physical_cores": physical_cores(),
        "postprocess": _postprocess(),
    }
    if with_backends:
        report["backends"] = backend_status()
    return report


def _complexity(model, channels: int, size: tuple[int, int], stride: int) -> dict:
    """Parameters and FLOPs of `model` at `size` (H, W), padded up to multiples of `stride` first: the network
    cannot take other sizes (its skip connections would not line up), and the Detector's native policy, so
    `edge-irst bench` too, edge-pads a frame to them."""
    from edge_irst.models.flops import count_complexity

    padded = tuple(-(-side // stride) * stride for side in size)
    complexity = count_complexity(model, (1, channels, *padded))
    report = {"parameters": complexity.parameters, "thop_flops": complexity.thop_flops,
              "conv_macs": complexity.conv_macs, "input_shape": list(complexity.input_shape),
              "summary": dict(complexity.rows())}
    if padded != tuple(size):
        report["padded_from"] = list(size)
        report["padding"] = (f"--imgsz {size[0]} {size[1]} is not a multiple of the model's stride {stride}: "
                             f"counted at {padded[0]} {padded[1]}, the size the Detector (and edge-irst bench) "
                             f"edge-pads such a frame to")
    return report


def _registry_model(name: str, size: tuple[int, int]) -> dict:
    try:
        from edge_irst.models import create_model, model_entry
    except ImportError as exc:
        raise MissingDependencyError("torch (needed to count a registry model's parameters and FLOPs)", "export",
                                     str(exc)) from exc
    stride = model_entry(name).meta.get("stride", 1)  # a model registered without one takes any size
    return {"model": name, **_complexity(create_model(name), 3, size, stride)}


def _artifact(args) -> dict:
    from edge_irst.backends import MANIFEST, load_backend

    path = Path(args.model)
    with load_backend(path, backend=args.backend, artifact_precision=args.artifact_precision, threads=1) as backend:
        report = {
            "artifact": str(backend.path), "backend": backend.name,
            "inputs": [spec.to_dict() for spec in backend.inputs],
            "outputs": [spec.to_dict() for spec in backend.outputs],
            "contract": backend.contract.to_dict(),
            "options_in_effect": backend.options_in_effect(),
        }
        model = getattr(backend, "model", None)
        if backend.name == "torch" and model is not None:  # a checkpoint: the trained net itself, counted
            contract = backend.contract
            size = tuple(args.imgsz or contract.input_size or DEFAULT_SIZE)
            report["complexity"] = _complexity(model, contract.channels, size, contract.stride)
        elif args.imgsz:  # nothing to count in an exported graph: say so rather than drop the flag unseen
            report["note"] = (f"--imgsz {args.imgsz[0]} {args.imgsz[1]} is not used: FLOPs are counted for registry "
                              f"models and PyTorch checkpoints; a {backend.name} artifact's input is its spec above")
    if path.is_dir():
        try:
            report["manifest"] = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:  # load_backend read it a moment ago: only a race gets here
            raise ModelFileError(f"{path / MANIFEST}: unreadable ({exc})") from exc
    return report


# ---- text rendering ----------------------------------------------------------------------------------------------
def _table(rows: list[tuple], header: tuple | None = None) -> str:
    rows = [tuple(str(c) for c in row) for row in ([header] if header else []) + list(rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _backends_text(backends: list[dict], env: dict) -> str:
    rows = []
    for b in backends:
        note = b["reason"] or ("core dependency" if not b["extra"] else f"extra [{b['extra']}]")
        rows.append((b["name"], "yes" if b["installed"] else "no", b["version"] or "-",
                     ", ".join(b["accelerators"]) or "-", " ".join(b["formats"]), note))
    return (_table(rows, ("backend", "installed", "version", "accelerators", "formats", "note"))
            + f"\n\nphysical cores: {env['physical_cores']}")


def _environment_text(env: dict) -> str:
    post = env["postprocess"]
    lines = [
        f"edge-irst {env['edge_irst']}",
        f"python    {env['python']}",
        f"platform  {env['platform']}",
        f"postprocess: {post['implementation']}" + (f" ({post['detail']})" if post.get("detail") else ""),
        "",
        _backends_text(env["backends"], env),
    ]
    return "\n".join(lines)


def _padding_lines(complexity: dict) -> list[str]:
    return [f"note: {complexity['padding']}"] if "padding" in complexity else []


def _model_text(report: dict) -> str:
    return "\n".join([f"model {report['model']}", _table(list(report["summary"].items())),
                      *_padding_lines(report)])


def _artifact_text(report: dict) -> str:
    specs = [(kind, s["name"], "x".join("?" if d is None else str(d) for d in s["shape"]), s["dtype"], s["layout"],
              "" if s.get("scale") is None else f"scale {s['scale']:.6g} zero point {s['zero_point']}")
             for kind, key in (("input", "inputs"), ("output", "outputs")) for s in report[key]]
    contract = report["contract"]
    lines = [
        f"artifact  {report['artifact']}",
        f"backend   {report['backend']}",
        "",
        _table(specs, ("", "name", "shape", "dtype", "layout", "quantisation")),
        "",
        "contract",
        _table([(k, json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in sorted(contract.items())]),
        "",
        "options in effect (threads=1 for this look)",
        _table(list(report["options_in_effect"].items())),
    ]
    if "complexity" in report:
        lines += ["", "complexity (the checkpoint's network)", _table(list(report["complexity"]["summary"].items())),
                  *_padding_lines(report["complexity"])]
    if "note" in report:
        lines += ["", f"note: {report['note']}"]
    if "manifest" in report:
        artifacts = report["manifest"].get("artifacts", [])
        lines += ["", "model folder artifacts",
                  _table([(a.get("format"), a.get("precision"), " ".join(a.get("files", [])),
                           "verified" if a.get("verified") else "unverified") for a in artifacts],
                         ("format", "precision", "files", ""))]
    return "\n".join(lines)
