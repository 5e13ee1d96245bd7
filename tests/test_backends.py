"""The backend layer against the real runtimes: the authors' published artifacts of every format agree on the
sample frames; threads, devices/delegates and fallback are plumbed for real up to the hardware boundary; bad
artifacts and bad batches fail with errors that name the file and the problem."""
from __future__ import annotations

import itertools
import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from edge_irst.assets import default_model
from edge_irst.backends import (BackendClosedError, BackendOptions, backend_class, backend_status, list_backends,
                                load_backend, physical_cores, resolve_artifact)
from edge_irst.contract import AUTHORS_CONTRACT, CONTRACT_KEY, write_sidecar
from edge_irst.errors import (DeviceUnavailableError, InputError, MissingDependencyError, ModelFileError,
                              UnknownNameError)
from edge_irst.preprocess import preprocess, read_image

ATOL = 1e-2  # across runtimes (the authors measured <= 2e-4 on these logits of magnitude ~100)
SAME_RUNTIME = {"atol": 1e-3, "rtol": 1e-5}  # one runtime, other threads / kernels: float reassociation only


@pytest.fixture(scope="module")
def batch(sample_paths) -> np.ndarray:
    """The five sample frames, preprocessed with the authors' contract: float32 [5, 3, 256, 256]."""
    assert len(sample_paths) == 5
    return np.concatenate([preprocess(read_image(p), AUTHORS_CONTRACT) for p in sample_paths])


# The authors' published artifacts: label -> (backend, file in ../shared/reference/lw_irstnet_authors).
PUBLISHED = {
    "onnxruntime": ("onnxruntime", "LW_IRST.onnx"),
    "onnxruntime-sim": ("onnxruntime", "LW_IRST-sim.onnx"),
    "opencv": ("opencv", "LW_IRST.onnx"),
    "opencv-sim": ("opencv", "LW_IRST-sim.onnx"),
    "ncnn": ("ncnn", "ncnn/LW_IRST-sim-opt.param"),
    "mnn": ("mnn", "LW_IRST.mnn"),
    "tflite": ("tflite", "LW_IRST_fp32.tflite"),
    "torch": ("torch", "LW_IRST.pkl"),
}


@pytest.fixture(scope="module")
def published_logits(authors_dir, batch) -> dict:
    """Every published artifact whose runtime is installed, run once on the samples: label -> logits."""
    logits = {}
    for label, (name, file) in PUBLISHED.items():
        if backend_class(name).installed():
            with load_backend(authors_dir / file, backend=name, threads=1) as backend:
                logits[label] = backend.run(batch)
    return logits


@pytest.fixture(scope="module")
def reference(published_logits) -> np.ndarray:
    """onnxruntime's logits on the samples (a core dependency: always there)."""
    return published_logits["onnxruntime"]


@pytest.fixture(scope="module")
def ort_backend(authors_dir):
    with load_backend(authors_dir / "LW_IRST.onnx", threads=1) as backend:
        yield backend


def assert_agrees(logits: np.ndarray, reference: np.ndarray, what: str = "") -> None:
    assert logits.dtype == np.float32 and logits.shape == reference.shape, what
    np.testing.assert_allclose(logits, reference, atol=ATOL, rtol=0, err_msg=what)
    assert np.array_equal(logits > 0, reference > 0), f"{what}: masks differ"


def test_every_published_artifact_agrees_with_every_other(published_logits):
    assert (published_logits["onnxruntime"] > 0).any(), "the samples must hold targets for masks to mean much"
    for (a, x), (b, y) in itertools.combinations(published_logits.items(), 2):
        assert_agrees(x, y, f"{a} vs {b}")


# ---- registry and resolution -----------------------------------------------------------------------------------
def test_registry_lists_names_and_answers_unknown_ones_with_close_matches():
    assert list_backends() == ["onnxruntime", "opencv", "ncnn", "mnn", "tflite", "torch"]
    with pytest.raises(UnknownNameError, match="onnxruntime"):
        load_backend("x.onnx", backend="onnxrt")


def test_unknown_option_and_invalid_option_values_are_refused(authors_dir):
    with pytest.raises(UnknownNameError, match="threads"):
        load_backend(authors_dir / "LW_IRST.onnx", thread=2)
    with pytest.raises(InputError, match="fallback"):
        BackendOptions(fallback="gpu")


def test_file_resolution_by_suffix_and_mismatch(authors_dir, tmp_path):
    assert resolve_artifact(authors_dir / "LW_IRST.onnx") == (authors_dir / "LW_IRST.onnx", "onnxruntime")
    with pytest.raises(ModelFileError, match="not found"):
        resolve_artifact(tmp_path / "absent.onnx")
    odd = tmp_path / "model.xyz"
    odd.write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"model\.xyz.*\.onnx"):
        resolve_artifact(odd)


def _model_folder(tmp_path, authors_dir, entries):
    """A model folder like the exporter writes, holding symlinks to the authors' files (nothing is copied)."""
    for entry in entries:
        for name in entry["files"]:
            (tmp_path / name).symlink_to(authors_dir / name)
    (tmp_path / "manifest.json").write_text(json.dumps({"model": "lw_irstnet", "artifacts": entries}))
    return tmp_path


def test_model_folder_picks_the_verified_artifact_at_the_asked_precision(authors_dir, tmp_path):
    folder = _model_folder(tmp_path, authors_dir, [
        {"format": "onnx", "precision": "fp16", "files": ["LW_IRST.onnx"], "verified": True},
        {"format": "onnx", "precision": "fp32", "files": ["LW_IRST-sim.onnx"], "verified": False},
    ])
    with pytest.raises(ModelFileError, match="no verified fp32 artifact.*allow_unverified"):
        resolve_artifact(folder)
    assert resolve_artifact(folder, allow_unverified=True) == (folder / "LW_IRST-sim.onnx", "onnxruntime")
    assert resolve_artifact(folder, "onnxruntime", "fp16") == (folder / "LW_IRST.onnx", "onnxruntime")
    with load_backend(folder, artifact_precision="fp16", warmup=2) as backend:
        assert backend.path == folder / "LW_IRST.onnx" and backend.options_in_effect()["warmup_runs"] == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="without manifest.json"):
        resolve_artifact(tmp_path / "empty")


def test_model_folder_ncnn_pair_and_missing_files(authors_dir, tmp_path):
    entry = {"format": "ncnn", "precision": "fp32", "files": ["ncnn/LW_IRST-sim-opt.param",
                                                               "ncnn/LW_IRST-sim-opt.bin"], "verified": True}
    (tmp_path / "ncnn").mkdir()
    folder = _model_folder(tmp_path, authors_dir, [entry])
    assert resolve_artifact(folder) == (folder / "ncnn" / "LW_IRST-sim-opt.param", "ncnn")
    with pytest.raises(ModelFileError, match="no verified fp32 artifact for backend 'mnn'.*ncnn/fp32"):
        resolve_artifact(folder, "mnn")
    (folder / "ncnn" / "LW_IRST-sim-opt.param").unlink()
    with pytest.raises(ModelFileError, match=r"lists ncnn/LW_IRST-sim-opt\.param, which is missing"):
        resolve_artifact(folder)


def test_model_folder_offers_its_source_checkpoint_to_torch_by_hash(tmp_path):
    """The exporter lists only what it wrote; `make bundle` then copies the checkpoint in. That file, recognised by
    the manifest's source_sha256 (not by its name), is the folder's fp32 artifact for the torch backend."""
    import hashlib
    import shutil
    from pathlib import Path

    from edge_irst.assets import default_model

    folder = tmp_path / "model"
    shutil.copytree(default_model(), folder)
    checkpoint = next(folder.glob("*.pt"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == manifest["source_sha256"]
    assert not any(Path(f).suffix == ".pt" for e in manifest["artifacts"] for f in e["files"])  # not listed
    assert resolve_artifact(folder, "torch") == (checkpoint, "torch")
    assert resolve_artifact(folder)[1] == "onnxruntime"  # torch comes last where nothing is asked for
    with pytest.raises(ModelFileError, match=rf"no verified int8 artifact for backend 'torch'.*source checkpoint "
                                             rf"{checkpoint.name} \(fp32\)"):
        resolve_artifact(folder, "torch", "int8")  # the checkpoint is the fp32 reference only
    renamed = checkpoint.with_name("weights.pth")
    checkpoint.rename(renamed)
    assert resolve_artifact(folder, "torch") == (renamed, "torch")  # the hash decides, not the name
    renamed.write_bytes(renamed.read_bytes() + b"\0")  # another checkpoint: not what the artifacts came from
    with pytest.raises(ModelFileError, match="no verified fp32 artifact for backend 'torch'") as refused:
        resolve_artifact(folder, "torch")
    assert "source checkpoint" not in str(refused.value)


# ---- onnxruntime -----------------------------------------------------------------------------------------------
def test_bundled_int8_onnx_runs_its_max_pools_in_float(check_float_max_pools):
    from edge_irst.assets import default_model

    check_float_max_pools(default_model() / "lw_irstnet_int8.onnx")


def test_onnxruntime_reads_spec_and_contract(ort_backend):
    assert ort_backend.inputs[0].name == "input" and ort_backend.inputs[0].shape == (1, 3, 256, 256)
    assert ort_backend.outputs[0].shape == (1, 1, 256, 256)
    assert ort_backend.contract == AUTHORS_CONTRACT


def test_onnxruntime_threads_are_read_back(authors_dir, batch, reference, ort_backend):
    effect = ort_backend.options_in_effect()
    assert effect["threads"] == 1 and effect["providers"] == ["CPUExecutionProvider"]
    with load_backend(authors_dir / "LW_IRST.onnx", threads=2, spin=False) as backend:
        effect = backend.options_in_effect()
        assert (effect["threads"], effect["spin"]) == (2, False)
        np.testing.assert_allclose(backend.run(batch), reference, **SAME_RUNTIME)
    with load_backend(authors_dir / "LW_IRST.onnx") as backend:
        assert backend.options_in_effect()["threads"] == physical_cores()


def test_onnxruntime_unavailable_provider_errors_or_falls_back(authors_dir, batch, reference):
    with pytest.raises(DeviceUnavailableError, match="'cuda'.*CPUExecutionProvider.*fallback='cpu'"):
        load_backend(authors_dir / "LW_IRST.onnx", device="cuda")
    with pytest.warns(RuntimeWarning, match="cuda"):
        backend = load_backend(authors_dir / "LW_IRST.onnx", device="cuda", fallback="cpu")
    effect = backend.options_in_effect()
    assert effect["device"] == "cpu" and "cuda" in effect["fallback"]
    assert_agrees(backend.run(batch[:1]), reference[:1])


def test_onnxruntime_sidecar_contract_wins(authors_dir, tmp_path):
    artifact = tmp_path / "m.onnx"
    artifact.symlink_to(authors_dir / "LW_IRST.onnx")
    write_sidecar(artifact, AUTHORS_CONTRACT.replace(provenance="test", threshold=0.5))
    with load_backend(artifact) as backend:
        assert backend.contract.provenance == "test" and backend.contract.threshold == 0.5


def test_corrupt_onnx_is_a_model_file_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelFileError, match="bad.onnx"):
        load_backend(bad)


# ---- bad batches (checked once, in the shared run()) ---------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 3, 128, 128), np.float32), "takes 256x256"),
    (np.zeros((1, 1, 256, 256), np.float32), "1 channels"),
    (np.zeros((3, 256, 256), np.float32), "not NCHW"),
    (np.zeros((1, 3, 256, 256), np.uint8), "not floating point"),
    ([[0.0]], "numpy array"),
])
def test_bad_batches_are_refused(ort_backend, bad, message):
    with pytest.raises(InputError, match=message):
        ort_backend.run(bad)
    with pytest.raises(InputError, match=message):  # the pipeline's call keeps every check but the value scan
        ort_backend.run_preprocessed(bad)


def test_nan_in_the_batch_is_refused(ort_backend):
    batch = np.zeros((1, 3, 256, 256), np.float32)
    batch[0, 1, 7, 9] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ort_backend.run(batch)


def test_run_preprocessed_gives_the_logits_of_run(ort_backend, batch):
    np.testing.assert_array_equal(ort_backend.run_preprocessed(batch[:1]), ort_backend.run(batch[:1]))


def test_batch_larger_than_a_fixed_batch_one_artifact_is_looped(ort_backend, batch, reference):
    assert ort_backend.inputs[0].batch == 1
    np.testing.assert_allclose(ort_backend.run(batch[:2]), reference[:2], **SAME_RUNTIME)


# ---- ncnn ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ncnn_param(authors_dir):
    pytest.importorskip("ncnn", reason="the ncnn backend needs the [ncnn] extra")
    return authors_dir / "ncnn" / "LW_IRST-sim-opt.param"


@pytest.fixture(scope="module")
def ncnn_backend(ncnn_param):
    with load_backend(ncnn_param, threads=1) as backend:
        yield backend


def test_ncnn_blob_names_from_the_net_and_pure_fp32_by_default(ncnn_backend):
    assert (ncnn_backend.inputs[0].name, ncnn_backend.outputs[0].name) == ("input", "output")
    effect = ncnn_backend.options_in_effect()
    assert effect["precision"] == "fp32"
    assert not any(effect[f] for f in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic"))


def test_ncnn_threads_and_precision_flags_are_read_back(ncnn_param, ncnn_backend, batch, published_logits):
    assert ncnn_backend.options_in_effect()["threads"] == 1
    with load_backend(ncnn_param, threads=2, precision="fp16") as backend:
        effect = backend.options_in_effect()
        assert effect["threads"] == 2 and effect["precision"] == "fp16" and effect["use_fp16_storage"]
    with load_backend(ncnn_param, threads=2) as backend:
        np.testing.assert_allclose(backend.run(batch[:1]), published_logits["ncnn"][:1], **SAME_RUNTIME)


def test_ncnn_big_core_pinning_is_read_back(ncnn_param):
    import ncnn

    try:
        with load_backend(ncnn_param, threads=1, big_cores=True) as backend:
            assert backend.options_in_effect()["big_cores"] is True
    finally:
        ncnn.set_cpu_powersave(0)  # process-wide: give the other tests ncnn's default back


def test_ncnn_vulkan_without_gpu_errors_or_falls_back(ncnn_param, batch, reference):
    with pytest.raises(DeviceUnavailableError, match="Vulkan GPU 0 requested but ncnn sees 0"):
        load_backend(ncnn_param, device="vulkan")
    with pytest.warns(RuntimeWarning, match="Vulkan"):
        backend = load_backend(ncnn_param, device="vulkan", fallback="cpu")
    assert backend.options_in_effect()["device"] == "cpu" and "Vulkan" in backend.options_in_effect()["fallback"]
    assert_agrees(backend.run(batch[:1]), reference[:1])


def _ncnn_pair(tmp_path, ncnn_param, param: bytes | None = None, weights: bytes | None = None):
    folder = tmp_path / "pair"
    folder.mkdir()
    target = folder / "m.param"
    if param is None:
        target.symlink_to(ncnn_param)
    else:
        target.write_bytes(param)
    if weights is not None:
        (folder / "m.bin").write_bytes(weights)
    return target


def test_ncnn_param_without_its_bin(tmp_path, ncnn_param):
    with pytest.raises(ModelFileError, match=r"m\.bin are missing"):
        load_backend(_ncnn_pair(tmp_path, ncnn_param))


def test_ncnn_truncated_and_empty_bin(tmp_path, ncnn_param):
    data = ncnn_param.with_suffix(".bin").read_bytes()
    with pytest.raises(ModelFileError, match=r"m\.bin.*truncated"):
        load_backend(_ncnn_pair(tmp_path, ncnn_param, weights=data[: len(data) // 3]))
    (tmp_path / "pair" / "m.bin").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"m\.bin: empty"):
        load_backend(tmp_path / "pair" / "m.param")


@pytest.mark.parametrize("param, message", [
    (b"\x00\xffgarbage", "not a readable ncnn text .param"),
    (b"123\n1 1\nInput input 0 1 input\n", "magic number 7767517"),
    (b"7767517\n5 5\nInput input 0 1 input\n", "declares 5 layers but holds 1"),
])
def test_ncnn_corrupt_param_is_refused_before_ncnn_sees_it(tmp_path, ncnn_param, param, message):
    with pytest.raises(ModelFileError, match=message):
        load_backend(_ncnn_pair(tmp_path, ncnn_param, param=param, weights=b"\0" * 64))


def _bundled_copy(tmp_path, artifact: str, weights: str | None = None):
    """A copy of a bundled artifact, without its sidecar, in tmp_path (the bundle is never written to); for an ncnn
    .param, `weights` names the bundled .bin copied beside it as its own .bin."""
    target = tmp_path / artifact
    shutil.copy(default_model() / artifact, target)
    if weights is not None:
        shutil.copy(default_model() / weights, target.with_suffix(".bin"))
    return target


def _assert_names_the_pair(error, param, expected: str) -> None:
    """The ncnn size check's message: both files, the .bin's real size and what the .param needs."""
    message = str(error.value)
    assert str(param) in message and str(param.with_suffix(".bin")) in message, message
    assert f"{param.with_suffix('.bin').stat().st_size} bytes" in message and f"needs {expected}" in message, message


@pytest.mark.parametrize("param, weights", [("lw_irstnet_fp32.param", "lw_irstnet_fp32.bin"),
                                            ("lw_irstnet_int8.param", "lw_irstnet_int8.bin")])
def test_ncnn_bin_must_be_exactly_what_the_param_reads(tmp_path, ncnn_param, batch, param, weights):
    """The bundled pairs (fp32 and int8 weight blocks) size exactly; a byte more or less is refused."""
    target = _bundled_copy(tmp_path, param, weights)
    data = target.with_suffix(".bin").read_bytes()
    with load_backend(target, threads=1) as backend:
        assert backend.run(batch[:1]).shape == (1, 1, 256, 256)
    for changed in (data + b"\0" * 4, data[:-1]):
        target.with_suffix(".bin").write_bytes(changed)
        with pytest.raises(ModelFileError, match="another model or precision") as error:
            load_backend(target)
        _assert_names_the_pair(error, target, f"exactly {len(data)}")


def test_ncnn_published_pair_sizes_exactly(ncnn_param, tmp_path):
    """The authors' pair: raw fp32 blocks, MemoryData, Deconvolution; refused with one byte appended."""
    target = _ncnn_pair(tmp_path, ncnn_param, weights=ncnn_param.with_suffix(".bin").read_bytes() + b"\0")
    with pytest.raises(ModelFileError) as error:
        load_backend(target)
    _assert_names_the_pair(error, target, f"exactly {ncnn_param.with_suffix('.bin').stat().st_size}")


def test_ncnn_int8_param_with_the_fp32_bin_is_refused(tmp_path, ncnn_param):
    """ncnn loads this pair and computes zeros."""
    target = _bundled_copy(tmp_path, "lw_irstnet_int8.param", "lw_irstnet_fp32.bin")
    with pytest.raises(ModelFileError, match="another model or precision") as error:
        load_backend(target)
    _assert_names_the_pair(error, target, "exactly")


def test_ncnn_fp32_param_with_the_int8_bin_is_refused_not_crashed(tmp_path, ncnn_param):
    """ncnn 1.0.20261020 segfaults in load_model on this pair, so it is loaded in a child process: a crash then
    fails this test instead of ending the test run."""
    target = _bundled_copy(tmp_path, "lw_irstnet_fp32.param", "lw_irstnet_int8.bin")
    child = ("import sys\nfrom edge_irst.backends import load_backend\nfrom edge_irst.errors import ModelFileError\n"
             "try:\n    load_backend(sys.argv[1])\nexcept ModelFileError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", child, str(target)], capture_output=True, text=True)
    assert done.returncode == 0, f"the child process died ({done.returncode}): {done.stderr[-500:]}"
    assert "another model or precision" in done.stdout and str(target.with_suffix(".bin")) in done.stdout


# The ModelBin tags of export/ncnn_int8.py, and how many bytes each stores per weight (before padding to 4).
_STORAGE = {"fp32": (0, 4), "fp16": (0x01306B47, 2), "int8": (0x000D4B38, 1)}


def _one_convolution_pair(folder, storage: str, extra_layer: str = ""):
    """Input -> a 3x3 Convolution (3 channels -> 1, bias: 27 weights, an odd count that fp16 and int8 pad) ->
    `extra_layer` -> out, its weights written as ncnn's ModelBin stores them in `storage` (int8: with the
    per-output weight scale and the input scale behind the bias, int8_scale_term 2)."""
    tag, width = _STORAGE[storage]
    weights = np.random.default_rng(0).normal(0, 0.3, (1, 3, 3, 3)).astype(np.float32)
    blocks = {"fp32": weights.tobytes(), "fp16": weights.astype(np.float16).tobytes(),
              "int8": np.clip(np.round(weights * 300), -127, 127).astype(np.int8).tobytes()}[storage]
    blob = struct.pack("<I", tag) + blocks + b"\0" * (-len(blocks) % 4) + np.float32(0.1).tobytes()
    int8 = " 8=2" if storage == "int8" else ""
    if int8:
        blob += np.float32(300).tobytes() + np.float32(50).tobytes()
    conv_top = "conv" if extra_layer else "out"
    layers = ["Input in0 0 1 in0", f"Convolution conv0 1 1 in0 {conv_top} 0=1 1=3 4=1 5=1 6=27{int8}"]
    layers += [extra_layer] if extra_layer else []
    param = folder / f"one_{storage}.param"
    param.write_text(f"7767517\n{len(layers)} {len(layers) + 1}\n" + "\n".join(layers) + "\n")
    param.with_suffix(".bin").write_bytes(blob)
    assert len(blob) == 4 + -(-27 * width // 4) * 4 + 4 + (8 if int8 else 0)
    return param


@pytest.mark.parametrize("storage", list(_STORAGE))
def test_ncnn_bin_size_follows_each_blocks_storage_tag(tmp_path, ncnn_param, batch, storage):
    param = _one_convolution_pair(tmp_path, storage)
    data = param.with_suffix(".bin").read_bytes()
    with load_backend(param, threads=1) as backend:
        assert np.isfinite(backend.run(batch[:1])).all()
    param.with_suffix(".bin").write_bytes(data + b"\0" * 4)
    with pytest.raises(ModelFileError) as error:
        load_backend(param)
    _assert_names_the_pair(error, param, f"exactly {len(data)}")


def test_ncnn_layer_the_size_table_lacks_is_loaded_and_only_bounds_the_size(tmp_path, ncnn_param, batch):
    """Exp (a real ncnn layer with no weights) is not in the table: the model still loads, and a .bin too small for
    the layers the table knows is still refused."""
    param = _one_convolution_pair(tmp_path, "fp32", extra_layer="Exp exp0 1 1 conv out")
    data = param.with_suffix(".bin").read_bytes()
    with load_backend(param, threads=1) as backend:
        assert np.isfinite(backend.run(batch[:1])).all()
    param.with_suffix(".bin").write_bytes(data[:-4])
    with pytest.raises(ModelFileError, match=r"needs at least .* \(layers of type Exp not counted\)") as error:
        load_backend(param)
    _assert_names_the_pair(error, param, f"at least {len(data)}")


def test_format_mismatch_names_file_and_backend(authors_dir):
    with pytest.raises(ModelFileError, match=r"LW_IRST\.onnx.*ncnn backend cannot read \.onnx"):
        load_backend(authors_dir / "LW_IRST.onnx", backend="ncnn")
    with pytest.raises(ModelFileError, match=r"\.bin.*opened by its \.param"):
        resolve_artifact(authors_dir / "ncnn" / "LW_IRST-sim-opt.bin")


# ---- MNN -------------------------------------------------------------------------------------------------------
def authors_artifact_fixtures(name: str, module: str, relative: str):
    """(NAME_path, NAME_backend) module fixtures: an authors' artifact (skipping without its runtime) and it loaded
    on 1 thread."""
    @pytest.fixture(scope="module", name=f"{name}_path")
    def path(authors_dir):
        pytest.importorskip(module, reason=f"the {name} backend needs the [{name}] extra")
        return authors_dir / relative

    @pytest.fixture(scope="module", name=f"{name}_backend")
    def backend(request):
        with load_backend(request.getfixturevalue(f"{name}_path"), threads=1) as loaded:
            yield loaded

    return path, backend


mnn_path, mnn_backend = authors_artifact_fixtures("mnn", "MNN", "LW_IRST.mnn")


def test_mnn_reads_the_spec(mnn_backend):
    assert mnn_backend.inputs[0].shape == (1, 3, 256, 256) and mnn_backend.inputs[0].layout == "NCHW"
    assert (mnn_backend.inputs[0].name, mnn_backend.outputs[0].name) == ("input", "output")


def test_mnn_threads_and_precision_mode_are_read_back(mnn_path, mnn_backend, batch, published_logits):
    assert mnn_backend.options_in_effect()["threads"] == 1
    with load_backend(mnn_path, threads=2, precision="fp32") as backend:
        effect = backend.options_in_effect()
        assert (effect["threads"], effect["precision"], effect["precision_mode"]) == (2, "fp32 (high)", "high")
        np.testing.assert_allclose(backend.run(batch[:1]), published_logits["mnn"][:1], **SAME_RUNTIME)
    # The default: MNN says nothing, which is its Normal mode, fp32 on the CPU.
    assert mnn_backend.options_in_effect()["precision"] == "fp32 (normal)"
    with load_backend(mnn_path, precision="fp16") as backend:
        assert backend.options_in_effect()["precision"] == "fp16 or fp32 (low)"


def test_mnn_forward_type_missing_from_the_wheel_errors_or_falls_back(mnn_path, batch, reference, capfd):
    with pytest.raises(DeviceUnavailableError, match="no OPENCL forward type"):
        load_backend(mnn_path, device="opencl")
    with pytest.warns(RuntimeWarning, match="OPENCL"):
        backend = load_backend(mnn_path, device="opencl", fallback="cpu")
    assert backend.options_in_effect()["device"] == "cpu"
    assert_agrees(backend.run(batch[:1]), reference[:1])
    assert "Can't Find" not in capfd.readouterr().out, "MNN's console must not reach our stdout"


@pytest.mark.parametrize("content", [b"", b"\x1c\x00\x00\x00garbage" * 8])
def test_mnn_corrupt_file_is_a_model_file_error(mnn_path, tmp_path, content):
    bad = tmp_path / "bad.mnn"
    bad.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"bad\.mnn: MNN cannot load it"):
        load_backend(bad)


def test_mnn_truncated_file_is_a_model_file_error(mnn_path, tmp_path):
    bad = tmp_path / "trunc.mnn"
    bad.write_bytes(mnn_path.read_bytes()[:50_000])
    with pytest.raises(ModelFileError, match=r"trunc\.mnn"):
        load_backend(bad)


# ---- TFLite ----------------------------------------------------------------------------------------------------
TINY_WEIGHTS = np.array([0.5, -1.0, 0.25], np.float32)
TINY_BIAS = np.float32(0.1)


def tiny_tflite(path, quantised=False, dynamic=False, size=(16, 16), metadata=None):
    """Write a one-convolution NHWC TFLite model (logit = TINY_WEIGHTS . rgb + TINY_BIAS) with the flatbuffer
    schema that ai-edge-litert ships. quantised: int8 input (scale 0.02, zero point 5) and int8 output (0.01, -4)
    around float compute, like a full-integer export's I/O. dynamic: H and W are -1 in the shape signature.
    metadata: {name: bytes} entries of the model's metadata table (where the exporter embeds the contract)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    buffers, tensors, codes, ops = [fb.BufferT()], [], [], []

    def add_buffer(payload: bytes) -> int:
        buffer = fb.BufferT()
        buffer.data = np.frombuffer(payload, np.uint8).tolist()
        buffers.append(buffer)
        return len(buffers) - 1

    def add_tensor(name, shape, ttype, data=None, quant=None):
        tensor = fb.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name, list(shape), ttype, 0
        if data is not None:
            tensor.buffer = add_buffer(np.ascontiguousarray(data).tobytes())
        if dynamic and len(shape) == 4:
            tensor.shapeSignature = [1, -1, -1, shape[3]]
        if quant:
            tensor.quantization = fb.QuantizationParametersT()
            tensor.quantization.scale, tensor.quantization.zeroPoint = [quant[0]], [quant[1]]
        tensors.append(tensor)
        return len(tensors) - 1

    def add_op(code, inputs, outputs, options=None):
        if code not in [c.builtinCode for c in codes]:
            entry = fb.OperatorCodeT()
            entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 1
            codes.append(entry)
        op = fb.OperatorT()
        op.opcodeIndex = [c.builtinCode for c in codes].index(code)
        op.inputs, op.outputs = inputs, outputs
        if options is not None:
            op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.Conv2DOptions, options
        ops.append(op)

    h, w = size
    f32, i8 = fb.TensorType.FLOAT32, fb.TensorType.INT8
    weights = add_tensor("w", (1, 1, 1, 3), f32, TINY_WEIGHTS)
    bias = add_tensor("b", (1,), f32, np.array([TINY_BIAS]))
    conv = fb.Conv2DOptionsT()
    conv.padding, conv.strideH, conv.strideW, conv.dilationHFactor, conv.dilationWFactor = fb.Padding.SAME, 1, 1, 1, 1
    if quantised:
        inp = add_tensor("input", (1, h, w, 3), i8, quant=(0.02, 5))
        x, y = add_tensor("x", (1, h, w, 3), f32), add_tensor("y", (1, h, w, 1), f32)
        out = add_tensor("logits", (1, h, w, 1), i8, quant=(0.01, -4))
        add_op(fb.BuiltinOperator.DEQUANTIZE, [inp], [x])
        add_op(fb.BuiltinOperator.CONV_2D, [x, weights, bias], [y], conv)
        add_op(fb.BuiltinOperator.QUANTIZE, [y], [out])
    else:
        inp, out = add_tensor("input", (1, h, w, 3), f32), add_tensor("logits", (1, h, w, 1), f32)
        add_op(fb.BuiltinOperator.CONV_2D, [inp, weights, bias], [out], conv)
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [inp], [out], ops
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], buffers
    model.metadata = []
    for name, payload in (metadata or {}).items():
        entry = fb.MetadataT()
        entry.name, entry.buffer = name, add_buffer(payload)
        model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path


def tiny_reference(batch: np.ndarray) -> np.ndarray:
    return np.einsum("nchw,c->nhw", batch, TINY_WEIGHTS)[:, None] + TINY_BIAS


tflite_path, tflite_backend = authors_artifact_fixtures("tflite", "ai_edge_litert", "LW_IRST_fp32.tflite")


def test_tflite_authors_file_is_detected_as_nchw(tflite_backend):
    assert tflite_backend.inputs[0].layout == "NCHW" and tflite_backend.inputs[0].shape == (1, 3, 256, 256)


def test_tflite_threads_and_xnnpack_switch(tflite_path, tflite_backend, batch, published_logits):
    effect = tflite_backend.options_in_effect()
    assert effect["threads"] == 1 and effect["xnnpack"] is True and effect["delegated_nodes"] > 0
    with load_backend(tflite_path, threads=2, xnnpack=False) as backend:
        effect = backend.options_in_effect()
        assert effect["xnnpack"] is False and effect["delegated_nodes"] == 0
        np.testing.assert_allclose(backend.run(batch[:1]), published_logits["tflite"][:1], **SAME_RUNTIME)


def test_tflite_nhwc_and_dynamic_size(tflite_path, tmp_path):
    with load_backend(tiny_tflite(tmp_path / "nhwc.tflite", dynamic=True)) as backend:
        assert backend.inputs[0].layout == "NHWC" and backend.inputs[0].hw == (None, None)
        for size in ((16, 16), (24, 32)):
            x = np.random.RandomState(1).uniform(-1, 1, (2, 3, *size)).astype(np.float32)
            np.testing.assert_allclose(backend.run(x), tiny_reference(x), **SAME_RUNTIME)


def test_tflite_contract_embedded_in_the_file_is_used_without_a_sidecar(tflite_path, tmp_path):
    """Stored at 1x1 with a [1, -1, -1, 3] signature, as TF's converter writes a dynamic graph: the backend
    allocates at the embedded contract's size, re-plans per frame size, and the sidecar still wins."""
    embedded = AUTHORS_CONTRACT.replace(input_size=(24, 32), layout="NHWC", threshold=-1.5,
                                        provenance="embedded in the file")
    path = tiny_tflite(tmp_path / "embedded.tflite", dynamic=True, size=(1, 1),
                       metadata={"min_runtime_version": b"1.14.0\0", CONTRACT_KEY: embedded.to_json().encode()})
    with load_backend(path) as backend:
        assert backend.contract == embedded and backend.contract != AUTHORS_CONTRACT
        assert list(backend.interpreter.get_input_details()[0]["shape"]) == [1, 24, 32, 3]
        for size in ((24, 32), (40, 16), (24, 32)):
            x = np.random.RandomState(3).uniform(-1, 1, (1, 3, *size)).astype(np.float32)
            np.testing.assert_allclose(backend.run(x), tiny_reference(x), **SAME_RUNTIME)
    sidecar = AUTHORS_CONTRACT.replace(input_size=None, layout="NHWC", provenance="sidecar")
    write_sidecar(path, sidecar)
    with load_backend(path) as backend:
        assert backend.contract == sidecar
        assert list(backend.interpreter.get_input_details()[0]["shape"]) == [1, 256, 256, 3]
    with load_backend(tiny_tflite(tmp_path / "bare.tflite", dynamic=True)) as backend:
        assert backend.contract == AUTHORS_CONTRACT


def test_tflite_full_integer_io_is_quantised_and_dequantised(tflite_path, tmp_path):
    with load_backend(tiny_tflite(tmp_path / "int8.tflite", quantised=True)) as backend:
        spec = backend.inputs[0]
        assert (spec.dtype, spec.zero_point) == ("int8", 5) and spec.scale == pytest.approx(0.02)
        x = np.random.RandomState(2).uniform(-0.5, 0.5, (1, 3, 16, 16)).astype(np.float32)
        # input step 0.02 over |weights| 1.75 plus the output step 0.01: at most ~0.023 off
        np.testing.assert_allclose(backend.run(x), tiny_reference(x), atol=0.025, rtol=0)


@pytest.mark.parametrize("request_kw, message", [
    ({"delegate": "/nonexistent/libedgetpu.so.1"}, "cannot be loaded"),
    ({"device": "edgetpu"}, "libedgetpu.so.1 cannot be loaded"),
    ({"delegate": "libc.so.6"}, "does not export tflite_plugin_create_delegate"),
])
def test_tflite_missing_delegate_errors_or_falls_back(tflite_path, batch, reference, request_kw, message):
    with pytest.raises(DeviceUnavailableError, match=message):
        load_backend(tflite_path, **request_kw)
    with pytest.warns(RuntimeWarning, match=message):
        backend = load_backend(tflite_path, fallback="cpu", **request_kw)
    effect = backend.options_in_effect()
    assert effect["device"] == "cpu" and effect["delegate"] is None and message in effect["fallback"]
    assert_agrees(backend.run(batch[:1]), reference[:1])


def test_tflite_unknown_device_and_delegate_on_other_backends(tflite_path, authors_dir):
    with pytest.raises(InputError, match="edgetpu"):
        load_backend(tflite_path, device="tpu")
    with pytest.raises(InputError, match="tflite backend only"):
        load_backend(authors_dir / "LW_IRST.onnx", delegate="libedgetpu.so.1")


def test_tflite_corrupt_and_truncated_files(tflite_path, tmp_path):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match=r"garbage\.tflite: not a TFLite model"):
        load_backend(garbage)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(tflite_path.read_bytes()[:300_000])
    with pytest.raises(ModelFileError, match=r"truncated\.tflite: TFLite cannot load it"):
        load_backend(truncated)
    with pytest.raises(ModelFileError, match=r"LW_IRST_fp32\.tflite.*ncnn backend cannot read"):
        load_backend(tflite_path, backend="ncnn")


# ---- OpenCV DNN ------------------------------------------------------------------------------------------------
def test_opencv_reads_threads_back(authors_dir, batch, published_logits):
    with load_backend(authors_dir / "LW_IRST.onnx", backend="opencv", threads=1) as one:
        assert one.options_in_effect()["threads"] == 1
    with load_backend(authors_dir / "LW_IRST.onnx", backend="opencv", threads=2) as two:
        assert two.options_in_effect()["threads"] == 2
        np.testing.assert_allclose(two.run(batch[:1]), published_logits["opencv"][:1], **SAME_RUNTIME)


def test_opencv_missing_dnn_target_errors_or_falls_back(authors_dir, batch, reference):
    with pytest.raises(DeviceUnavailableError, match="no DNN target for 'cuda'"):
        load_backend(authors_dir / "LW_IRST.onnx", backend="opencv", device="cuda")
    with pytest.warns(RuntimeWarning, match="cuda"):
        backend = load_backend(authors_dir / "LW_IRST.onnx", backend="opencv", device="cuda", fallback="cpu")
    assert backend.options_in_effect()["device"] == "cpu"
    assert_agrees(backend.run(batch[:1]), reference[:1])


def test_opencv_float16_onnx_runs_or_is_refused_by_name(tmp_path, batch, reference):
    """OpenCV 5.1's engine cannot load a float16 ONNX (4.x and 5.0 could): the error must name the file and the
    way out at load time, not surface as a raw cv2.error at the first frame."""
    onnx = pytest.importorskip("onnx", reason="making a float16 ONNX needs the onnx package ([export] extra)")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edge_irst.assets import default_model

    fp16 = tmp_path / "lw_irstnet_fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(default_model() / "lw_irstnet_fp32.onnx")),
                                       keep_io_types=True), str(fp16))
    with load_backend(default_model() / "lw_irstnet_fp32.onnx", backend="opencv", threads=1) as fp32:
        expected = fp32.run(batch[:1])
    try:
        backend = load_backend(fp16, backend="opencv", threads=1)
    except ModelFileError as exc:
        assert str(fp16) in str(exc) and "fp32 artifact" in str(exc) and "onnxruntime" in str(exc)
        return
    with backend:
        logits = backend.run(batch[:1])
    assert ((logits > 0) == (expected > 0)).mean() > 0.999


def test_opencv_corrupt_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelFileError, match=r"bad\.onnx: OpenCV DNN cannot read it"):
        load_backend(bad, backend="opencv")


# ---- PyTorch ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_backend(authors_dir):
    pytest.importorskip("torch", reason="the torch backend needs the [torch] extra")
    with load_backend(authors_dir / "LW_IRST.pkl", threads=1) as backend:
        yield backend


def test_torch_authors_pickle_loads_as_a_dynamic_lw_irstnet(torch_backend):
    assert torch_backend.options_in_effect()["architecture"] == "lw_irstnet"
    assert torch_backend.inputs[0].shape == (None, 3, None, None)


def test_torch_checkpoint_and_state_dict_files(torch_backend, tmp_path, batch, reference):
    import torch

    from edge_irst.models import save_checkpoint

    ours = save_checkpoint(tmp_path / "ours.pt", torch_backend.model, "lw_irstnet")
    plain = tmp_path / "plain.pth"
    torch.save(torch_backend.model.state_dict(), plain)
    for path in (ours, plain):
        with load_backend(path, threads=1) as backend:
            np.testing.assert_allclose(backend.run(batch[:1]), reference[:1], atol=ATOL, rtol=0)


def test_torch_threads_are_read_back_and_dynamic_sizes_run(authors_dir, torch_backend, batch, published_logits):
    with load_backend(authors_dir / "LW_IRST.pkl", threads=2) as backend:
        assert backend.options_in_effect()["threads"] == 2
        np.testing.assert_allclose(backend.run(batch[:1]), published_logits["torch"][:1], **SAME_RUNTIME)
    assert torch_backend.run(np.zeros((2, 3, 64, 96), np.float32)).shape == (2, 1, 64, 96)
    assert torch_backend.options_in_effect()["threads"] == 2, "torch threads are process-wide: the last wins"


def test_torch_cuda_without_gpu_errors_or_falls_back(authors_dir, torch_backend):
    with pytest.raises(DeviceUnavailableError, match="sees 0 CUDA device"):
        load_backend(authors_dir / "LW_IRST.pkl", device="cuda")
    with pytest.warns(RuntimeWarning, match="CUDA"):
        backend = load_backend(authors_dir / "LW_IRST.pkl", device="cuda", fallback="cpu")
    assert backend.options_in_effect()["device"] == "cpu"


def test_torch_garbage_file(torch_backend, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint" * 4)
    with pytest.raises(ModelFileError, match=r"bad\.pt"):
        load_backend(bad)


def test_torch_device_strings_are_checked():
    pytest.importorskip("torch", reason="the torch backend needs the [torch] extra")
    for device in ("cuda:x", "cuda:-1", "cuda:", "gpu"):
        with pytest.raises(InputError, match=r"torch device .* accepted cpu, cuda, cuda:N \(N = 0, 1"):
            load_backend(default_model() / "lw_irstnet.pt", device=device)


# ---- the contract: checked field by field, and against what the artifact declares ------------------------------
# The bundled fp32 artifact of each backend (all 256x256, 3 channels, NCHW or NHWC).
BUNDLED = {"onnxruntime": "lw_irstnet_fp32.onnx", "opencv": "lw_irstnet_fp32.onnx", "ncnn": "lw_irstnet_fp32.param",
           "mnn": "lw_irstnet_fp32.mnn", "tflite": "lw_irstnet_fp32.tflite", "torch": "lw_irstnet.pt"}


def _bundled_backend_copy(tmp_path, name: str):
    """The bundled fp32 artifact for backend `name` copied to tmp_path without its sidecar (skips without the
    runtime)."""
    pytest.importorskip(backend_class(name).runtime, reason=f"the {name} backend's runtime is not installed")
    artifact = BUNDLED[name]
    return _bundled_copy(tmp_path, artifact, "lw_irstnet_fp32.bin" if name == "ncnn" else None)


def _sidecar_with(artifact, **changes) -> None:
    """A sidecar beside `artifact` holding the bundled fp32 contract with `changes` (raw JSON values)."""
    contract = json.loads((default_model() / "lw_irstnet_fp32.onnx.json").read_text())["contract"]
    (artifact.parent / f"{artifact.name}.json").write_text(json.dumps({"contract": {**contract, **changes}}))


@pytest.mark.parametrize("document, message", [
    ({"contract": None}, "the contract must be a JSON object, got null"),
    ({"contract": [1, 2]}, "the contract must be a JSON object, got an array"),
    ([1, 2], "expected a JSON object with a 'contract' object"),
])
def test_sidecar_that_is_not_an_object_is_named(tmp_path, document, message):
    artifact = _bundled_backend_copy(tmp_path, "onnxruntime")
    (tmp_path / f"{artifact.name}.json").write_text(json.dumps(document))
    with pytest.raises(ModelFileError, match=rf"sidecar {tmp_path / artifact.name}\.json: {message}"):
        load_backend(artifact)


@pytest.mark.parametrize("changes, message", [
    ({"input_size": "256"}, r"field 'input_size' must be null \(dynamic\) or \[height, width\]"),
    ({"input_size": [256]}, r"field 'input_size' must be null"),
    ({"input_size": [256, 0]}, r"field 'input_size'\[1\] must be a positive integer, got a number \(0\)"),
    ({"mean": 0.5}, r"field 'mean' must be an array of numbers"),
    ({"mean": [0.5, 0.5]}, r"field 'mean' has 2 value\(s\), but channel_order 'RGB' has 3 channel\(s\)"),
    ({"std": [0.2, 0.0, 0.2]}, r"field 'std'\[1\] must be > 0"),
    ({"mean": [0.5, "x", 0.5]}, r"field 'mean'\[1\] must be a finite number, got a string"),
    ({"stride": 0}, r"field 'stride' must be a positive integer"),
    ({"stride": True}, r"field 'stride' must be a positive integer, got a boolean"),
    ({"scale": -1}, r"field 'scale' must be > 0"),
    ({"threshold": "0"}, r"field 'threshold' must be a finite number"),
    ({"layout": "CHW"}, r"field 'layout' must be one of NCHW, NHWC"),
    ({"channel_order": "GRAY"}, r"field 'mean' has 3 value\(s\), but channel_order 'GRAY' has 1 channel"),
    ({"extra": []}, r"field 'extra' must be an object"),
])
def test_sidecar_contract_fields_are_checked_by_name(tmp_path, changes, message):
    artifact = _bundled_backend_copy(tmp_path, "onnxruntime")
    _sidecar_with(artifact, **changes)
    with pytest.raises(ModelFileError, match=rf"sidecar {tmp_path / artifact.name}\.json: {message}"):
        load_backend(artifact)


def test_contract_embedded_in_an_onnx_is_checked_by_name(tmp_path):
    onnx = pytest.importorskip("onnx", reason="writing ONNX metadata needs the onnx package ([export] extra)")
    model = onnx.load(str(default_model() / "lw_irstnet_fp32.onnx"))
    entry = next(prop for prop in model.metadata_props if prop.key == CONTRACT_KEY)
    entry.value = json.dumps({**json.loads(entry.value), "stride": 0})
    onnx.save(model, str(tmp_path / "embedded.onnx"))
    for name in ("onnxruntime", "opencv"):
        with pytest.raises(ModelFileError, match=r"embedded metadata 'edge_irst.contract': field 'stride' must be"):
            load_backend(tmp_path / "embedded.onnx", backend=name)


def test_opencv_reads_the_contract_embedded_in_the_onnx(tmp_path):
    """OpenCV DNN cannot read ONNX metadata itself: without a sidecar it must still get the file's contract, not
    the authors' default."""
    artifact = _bundled_backend_copy(tmp_path, "opencv")
    with load_backend(artifact, backend="opencv") as opencv, load_backend(artifact) as onnxruntime:
        assert opencv.contract == onnxruntime.contract != AUTHORS_CONTRACT
        assert opencv.contract.provenance == "edge-irst export"


@pytest.mark.parametrize("name", ["onnxruntime", "opencv", "mnn", "tflite"])
def test_sidecar_size_that_contradicts_the_artifact_is_refused(tmp_path, name):
    artifact = _bundled_backend_copy(tmp_path, name)
    _sidecar_with(artifact, input_size=[320, 320])
    with pytest.raises(ModelFileError, match=r"declares a 256x256 \(HxW\) input where the contract says 320x320") \
            as error:
        load_backend(artifact, backend=name)
    assert str(artifact) in str(error.value) and f"sidecar {artifact}.json contradicts" in str(error.value)


@pytest.mark.parametrize("blocked", ["onnx", "onnxruntime"])
def test_opencv_reads_the_graph_input_with_either_onnx_library(tmp_path, monkeypatch, blocked):
    """onnxruntime (a core dependency; about 0.08 s to import against onnx's 0.65 s) reads the graph input, and the
    onnx package ([export]) where onnxruntime is missing (32-bit ARM boards have no onnxruntime wheel)."""
    pytest.importorskip("onnx" if blocked == "onnxruntime" else "onnxruntime")
    artifact = _bundled_backend_copy(tmp_path, "opencv")
    _sidecar_with(artifact, input_size=[320, 320])
    monkeypatch.setitem(sys.modules, blocked, None)  # blocks the import the way Python documents
    with pytest.raises(ModelFileError, match=r"declares a 256x256 \(HxW\) input where the contract says 320x320"):
        load_backend(artifact, backend="opencv")


@pytest.mark.parametrize("name", list(BUNDLED))
def test_grey_sidecar_beside_a_three_channel_artifact_is_refused(tmp_path, name):
    """A contract that is well formed on its own (one mean, one std) but says GRAY for a 3-channel model."""
    artifact = _bundled_backend_copy(tmp_path, name)
    _sidecar_with(artifact, channel_order="GRAY", mean=[0.45], std=[0.226])
    with pytest.raises(ModelFileError, match=r"(3 input channel\(s\) where the contract says 1|no axis of 1 "
                                             r"channels)") as error:
        load_backend(artifact, backend=name)
    assert str(artifact) in str(error.value) and f"sidecar {artifact}.json" in str(error.value)


# ---- close -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUNDLED))
def test_close_is_idempotent_and_a_closed_backend_refuses_to_run(tmp_path, batch, name):
    """options_in_effect() keeps answering with what was in effect (a run's summary may be written after it)."""
    backend = load_backend(_bundled_backend_copy(tmp_path, name), backend=name, threads=1)
    backend.run(batch[:1])
    in_effect = backend.options_in_effect()
    backend.close()
    backend.close()
    with pytest.raises(BackendClosedError, match=rf"{name}: {BUNDLED[name]} was closed"):
        backend.run(batch[:1])
    with pytest.raises(BackendClosedError):
        backend.run_preprocessed(batch[:1])
    assert backend.options_in_effect() == {**in_effect, "closed": True}


# ---- a runtime that is not installed ---------------------------------------------------------------------------
def test_missing_runtime_names_the_pip_extra(authors_dir, monkeypatch):
    """Blocks the import the way Python documents (sys.modules[name] = None); the backend's real code path runs."""
    monkeypatch.setitem(sys.modules, "MNN", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edge-irst\[mnn\]'"):
        load_backend(authors_dir / "LW_IRST.mnn")
    status = {row["name"]: row for row in backend_status()}
    assert status["mnn"]["installed"] is False and "edge-irst[mnn]" in status["mnn"]["reason"]
    for name in ("onnxruntime", "opencv", "ncnn", "tflite", "torch"):
        assert status[name]["installed"] and status[name]["version"] and status[name]["reason"] is None


def _installed(backend: str) -> bool:
    from edge_irst.benchmarking import installed_reason

    return not installed_reason(backend)


@pytest.mark.parametrize("backend", ["onnxruntime", "ncnn", "mnn", "tflite"])
def test_the_bundled_grey_model_gives_the_bundled_models_logits_on_grey_frames(backend):
    """edge_irst/assets/lw_irstnet_grey (export --grey-input): one grey channel in, and on a grey frame the logits of
    the bundled RGB model within the exporter's fp32 bound; its int8 twin finds the same targets."""
    if not _installed(backend):
        pytest.skip(f"{backend} is not installed")
    from edge_irst.assets import BUNDLED_GREY_MODEL, default_model
    from edge_irst.export.verify import _tolerance_used
    from edge_irst.preprocess import preprocess
    from edge_irst.synthetic import SyntheticScene

    frames = [SyntheticScene(targets=4, seed=seed).frame(3).image for seed in (1, 2)]
    out = {}
    for name, folder in (("rgb", default_model()), ("grey", BUNDLED_GREY_MODEL)):
        for precision in ("fp32", "int8"):
            with load_backend(folder, backend=backend, threads=1, artifact_precision=precision) as runtime:
                batch = np.concatenate([preprocess(f, runtime.contract) for f in frames])
                out[name, precision] = runtime.run(batch)
                assert batch.shape[1] == (1 if name == "grey" else 3)
    assert _tolerance_used("fp32", out["grey", "fp32"], out["rgb", "fp32"]) <= 1.0
    grey_int8, rgb_fp32 = out["grey", "int8"] > 0, out["rgb", "fp32"] > 0
    assert np.count_nonzero(grey_int8 & rgb_fp32) / np.count_nonzero(grey_int8 | rgb_fp32) > 0.8


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.uint8, np.int16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tflite_nhwc_copy_is_the_transposed_batch(dtype, channels):
    """The TFLite backend's NCHW -> NHWC copy (cv2.merge per image) holds numpy's transpose, value for value, for
    every input dtype TFLite takes and a batch of two."""
    from edge_irst.backends.tflite import nhwc

    batch = (np.random.default_rng(channels).standard_normal((2, channels, 5, 7)) * 60).astype(dtype)
    out = nhwc(batch)
    assert out.dtype == batch.dtype and out.flags.c_contiguous
    np.testing.assert_array_equal(out, batch.transpose(0, 2, 3, 1))
