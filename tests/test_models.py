"""The PyTorch side: registry, exact LW-IRSTNet, FLOP conventions, safe loading of the authors' pickle."""
from __future__ import annotations

import os
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch side needs the [export] extra (torch==2.13.0)")

from edge_irst.contract import AUTHORS_CONTRACT  # noqa: E402
from edge_irst.errors import ModelFileError, UnknownNameError, UnsafePickleError  # noqa: E402
from edge_irst.models import create_model, list_models, load_checkpoint, register_model, save_checkpoint  # noqa
from edge_irst.models.checkpoint import TRAIN_STATE_FORMAT, load_authors_pickle  # noqa: E402
from edge_irst.models.flops import count_complexity  # noqa: E402
from edge_irst.preprocess import preprocess, read_image  # noqa: E402


def test_registry_lists_and_rejects_unknown_names_with_a_suggestion():
    assert "lw_irstnet" in list_models()
    with pytest.raises(UnknownNameError, match="lw_irstnet"):
        create_model("lw_irstnett")


def test_registry_ignores_none_overrides_and_refuses_double_registration():
    model = create_model("lw_irstnet", asymmetric_kernel=None, channels=None)
    assert model.stage3[0].asymmetric.body[0].kernel_size == (7, 1)
    assert create_model("lw_irstnet", asymmetric_kernel=5).stage3[0].asymmetric.body[0].kernel_size == (5, 1)
    with pytest.raises(ValueError, match="already registered"):
        register_model("lw_irstnet")(lambda **kw: None)


def test_parameter_count_and_flops_match_the_paper():
    report = count_complexity(create_model("lw_irstnet"), (1, 3, 256, 256))
    assert report.parameters == 163_232
    assert round(report.thop_flops / 1e6, 2) == 303.53
    # True MACs are lower: BN is folded and a stride-2 transposed conv costs input (not output) pixels x kernel.
    assert report.conv_macs < report.thop_flops
    assert round(report.conv_macs / 1e6, 2) == 192.94


def test_true_macs_formula_on_a_two_layer_net():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False),
                              torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, bias=False))
    report = count_complexity(net, (1, 3, 8, 8))
    conv = 8 * 8 * 4 * 3 * 9          # output pixels x out ch x in ch x kernel
    tconv = 8 * 8 * 4 * 2 * 9         # input pixels x in ch x out ch x kernel
    assert report.conv_macs == conv + tconv
    assert report.thop_flops == conv + 16 * 16 * 2 * 4 * 9  # thop charges output pixels for the transposed conv


def test_output_shape_and_dynamic_sizes():
    model = create_model("lw_irstnet").eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 256, 256)).shape == (2, 1, 256, 256)
        assert model(torch.zeros(1, 3, 120, 200)).shape == (1, 1, 120, 200)


def test_authors_checkpoint_matches_their_onnx(authors_dir, sample_paths):
    ort = pytest.importorskip("onnxruntime")
    model = load_checkpoint(authors_dir / "LW_IRST.pkl").model
    session = ort.InferenceSession(str(authors_dir / "LW_IRST.onnx"), providers=["CPUExecutionProvider"])
    assert len(sample_paths) == 5
    for path in sample_paths:
        x = preprocess(read_image(path), AUTHORS_CONTRACT)
        with torch.no_grad():
            ours = model(torch.from_numpy(x)).numpy()
        theirs = session.run(None, {"input": x})[0]
        assert np.abs(ours - theirs).max() < 1e-3, path.name
        assert np.array_equal(ours > 0, theirs > 0), path.name
        assert (theirs > 0).any(), f"{path.name}: the sample should contain a target"


def _malicious(marker):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    return Payload()


def test_pickle_that_runs_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    # 1) a torch zip pickle naming the authors' module path (goes through the allow-list unpickler)
    bad = tmp_path / "LW_IRST.pkl"
    torch.save({"models.LW_IRST_Net.LW_IRST_ablation": _malicious(marker)}, bad)
    with pytest.raises(UnsafePickleError, match="system"):
        load_checkpoint(bad)
    with pytest.raises(UnsafePickleError, match="system"):
        load_authors_pickle(bad)
    # 2) any other torch file (goes through torch's weights-only loader)
    other = tmp_path / "model.pt"
    torch.save({"state_dict": _malicious(marker)}, other)
    with pytest.raises(UnsafePickleError, match="weights-only"):
        load_checkpoint(other)
    assert not marker.exists()


def test_authors_pickle_names_only_allowed_globals(authors_dir):
    """The allow-list is exactly what the published file needs: every global it references resolves."""
    with zipfile.ZipFile(authors_dir / "LW_IRST.pkl") as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"LW_IRST_ablation" in data
    state = load_authors_pickle(authors_dir / "LW_IRST.pkl")
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 163_232


def test_our_checkpoint_round_trip_is_weights_only_loadable(tmp_path, authors_dir):
    loaded = load_checkpoint(authors_dir / "LW_IRST.pkl")
    path = save_checkpoint(tmp_path / "lw.pt", loaded.model, "lw_irstnet", contract=loaded.contract,
                           meta={"note": "converted"})
    doc = torch.load(path, weights_only=True)
    assert doc["format"] == "edge-irst/checkpoint" and doc["architecture"] == "lw_irstnet"
    assert doc["contract"]["mean"] == [0.485, 0.456, 0.406] and doc["contract"]["threshold"] == 0.0
    again = load_checkpoint(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.model(x), loaded.model(x))


def test_state_dict_of_another_architecture_is_named(tmp_path):
    wrong = create_model("lw_irstnet", channels=(8, 32, 48)).state_dict()
    path = tmp_path / "wrong.pt"
    torch.save(wrong, path)
    with pytest.raises(ModelFileError, match="shape mismatches"):
        load_checkpoint(path)
    with pytest.raises(ModelFileError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="junk.pt: not a PyTorch checkpoint") as err:
        load_checkpoint(junk)
    assert not isinstance(err.value, UnsafePickleError)


def _flip_a_byte_of(source, entry_suffix: str, target):
    """A copy of the zip `source` with one byte flipped in the middle of its first entry named *entry_suffix."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(entry_suffix) and i.file_size > 1)
    assert info.compress_type == zipfile.ZIP_STORED  # torch stores entries uncompressed: the payload is in place
    # The payload follows the local header: 30 bytes, then the name and the extra field whose lengths it holds at
    # offsets 26 and 28 (torch pads that extra field to align tensors, unlike the central directory's copy).
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_length + extra_length + info.file_size // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("entry", ["/data.pkl", "a tensor"])
def test_corrupt_authors_pickle_is_named(authors_dir, tmp_path, entry):
    """One flipped byte: in the pickle, or in a tensor (which torch.load would read as a wrong weight)."""
    if entry == "a tensor":
        with zipfile.ZipFile(authors_dir / "LW_IRST.pkl") as zf:
            entry = next(n for n in zf.namelist() if "/data/" in n and zf.getinfo(n).file_size > 1)
    bad = _flip_a_byte_of(authors_dir / "LW_IRST.pkl", entry, tmp_path / "c.pkl")
    with pytest.raises(ModelFileError, match=r"c\.pkl: a corrupt PyTorch \(zip\) archive.*CRC"):
        load_checkpoint(bad)


@pytest.mark.parametrize("shape, message", [("cyclic", r"module block is one of its own ancestors"),
                                            ("deep", r"modules nested deeper than 32 levels at block(\.block)+")])
def test_authors_style_pickle_with_a_cyclic_or_too_deep_module_tree_is_refused(tmp_path, monkeypatch, shape, message):
    """A module that lists itself among its _modules, or a chain of 40, pickled under the authors' class path
    (stand-in modules make pickle write that path; nothing of them is imported when loading)."""
    module_path, class_name = "models.LW_IRST_Net.LW_IRST_ablation", "LW_IRST_ablation"
    for name in ("models", "models.LW_IRST_Net", module_path):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    stand_in = type(class_name, (), {"__module__": module_path})
    setattr(sys.modules[module_path], class_name, stand_in)

    def module(children: dict):
        record = stand_in()
        record.__dict__.update(_parameters={}, _buffers={}, _modules=children)
        return record

    root = module({})
    if shape == "cyclic":
        root.__dict__["_modules"]["block"] = root
    else:
        for _ in range(40):
            root = module({"block": root})
    path = tmp_path / f"{shape}.pkl"
    torch.save(root, path)
    with pytest.raises(UnsafePickleError, match=rf"{shape}\.pkl: {message}"):
        load_checkpoint(path)


def _our_document(**changes) -> dict:
    doc = {"format": "edge-irst/checkpoint", "format_version": 1, "architecture": "lw_irstnet", "model_config": {},
           "contract": AUTHORS_CONTRACT.to_dict(), "state_dict": create_model("lw_irstnet").state_dict(), "meta": {}}
    return {**doc, **changes}


@pytest.mark.parametrize("doc, message", [
    (_our_document(format_version="2"), r"format_version '2' is not a version"),
    (_our_document(format_version=0), r"format_version 0 is not a version"),
    (_our_document(model_config={"bogus": 1}), r"model_config \{'bogus': 1\} does not fit architecture"),
    (_our_document(architecture="lw_irstnett"), r"an architecture this edge-irst does not have.*lw_irstnet"),
    (_our_document(state_dict=[1, 2]), r"entry 'state_dict' must be a dict, found list"),
    (_our_document(contract={**AUTHORS_CONTRACT.to_dict(), "stride": 0}), r"contract: field 'stride' must be"),
    ({k: v for k, v in _our_document().items() if k != "architecture"}, r"the checkpoint has no 'architecture' entry"),
    (_our_document(state_dict={"stem.conv.weight": 1.0}), r"not tensors: stem\.conv\.weight"),
    # a run's last.pt (the state --resume reads) has no contract: pointed at the run's best.pt
    ({"format": TRAIN_STATE_FORMAT, "model_state": create_model("lw_irstnet").state_dict()},
     r"a training state \(for edge-irst train --resume\).*best\.pt"),
])
def test_malformed_checkpoint_documents_are_named(tmp_path, doc, message):
    path = tmp_path / "malformed.pt"
    torch.save(doc, path)
    with pytest.raises(ModelFileError, match=rf"malformed\.pt: .*{message}"):
        load_checkpoint(path)


def _with_trained_statistics(model):
    """Non-trivial BatchNorm statistics and PReLU slopes, so that folding them in is tested (a fresh model's are
    0, 1 and 0.25)."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.normal_(1, 0.5, generator=generator)  # some gains negative
            module.bias.data.normal_(0, 0.5, generator=generator)
    return model.eval()


@pytest.mark.parametrize("size", [(64, 96), (72, 56)])
def test_the_grey_input_model_computes_the_rgb_model_on_the_grey_frame_replicated(size):
    """models/grey_input.py: one channel g in, the RGB model's logits on (g - mean_c) / std_c out, to float
    rounding. The bright border rows and columns make the stem's zero padding count: a fold that ignored it (one
    plane, the means in the bias) is off there by far more than the bound."""
    from edge_irst.models import fold_grey_input

    model = _with_trained_statistics(create_model("lw_irstnet"))
    mean, std = AUTHORS_CONTRACT.mean, AUTHORS_CONTRACT.std
    grey = fold_grey_input(model, mean, std)
    g = torch.rand((2, 1, *size), generator=torch.Generator().manual_seed(4))
    g[:, :, :2], g[:, :, :, :2], g[1] = 1.0, 1.0, 0.0  # a frame all black: only the padding sets it apart
    rgb = (g - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected, got = model(rgb), grey(g)
    assert got.shape == expected.shape == (2, 1, *size)
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max()) + 1e-5
    assert type(model.stem).__name__ == "InitialBlock" and model.stem.conv.in_channels == 3  # the original kept
    assert grey.stem.conv.in_channels == 2 and not any(p.requires_grad for p in grey.stem.parameters())


def test_grey_input_refuses_a_model_without_an_lw_irstnet_stem_and_mismatched_statistics():
    from edge_irst.models import fold_grey_input

    with pytest.raises(ValueError, match="no LW-IRSTNet InitialBlock stem"):
        fold_grey_input(torch.nn.Conv2d(3, 1, 3), (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match="reads 3 channels, but 1 means"):
        fold_grey_input(create_model("lw_irstnet"), (0.5,), (0.25,))
