"""Preprocessing: the fast plane-by-plane path gives exactly the tensor of the plain recipe (channels, resize,
(pixel * scale - mean) / std), for every kind of frame and contract; and the synthetic source's fast rendering
gives exactly the frame of its plain formula."""
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest

from edge_irst.contract import ModelContract
from edge_irst.errors import InputError, ModelFileError
from edge_irst.preprocess import HOT_PIXELS, RawMapping, normalize, preprocess, read_image, to_channels
from edge_irst.synthetic import SyntheticScene, add_target, random_bytes

_CONVERSIONS = {("RGB", 2): cv2.COLOR_GRAY2RGB, ("RGB", 3): cv2.COLOR_BGR2RGB, ("BGR", 2): cv2.COLOR_GRAY2BGR,
                ("GRAY", 3): cv2.COLOR_BGR2GRAY}
_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}


def _reference(frame: np.ndarray, contract: ModelContract, size) -> np.ndarray:
    """The recipe written out plainly: 8-bit channels in the contract's order, resized, then normalised."""
    if frame.dtype == np.uint16:
        frame = RawMapping().apply(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[:, :, :3]
    code = _CONVERSIONS.get((contract.channel_order, frame.ndim))
    img = cv2.cvtColor(frame, code) if code is not None else frame
    img = img if img.ndim == 3 else img[:, :, None]
    target = size or contract.input_size
    if img.shape[:2] != tuple(target):
        img = cv2.resize(img, (target[1], target[0]), interpolation=_INTERPOLATION[contract.resize_interpolation])
        img = img if img.ndim == 3 else img[:, :, None]
    scale = np.float32(contract.scale) / np.asarray(contract.std, np.float32)
    shift = -np.asarray(contract.mean, np.float32) / np.asarray(contract.std, np.float32)
    planes = [img[:, :, c].astype(np.float32) * scale[c] + shift[c] for c in range(img.shape[2])]
    return np.stack(planes)[None]


def _frames() -> dict:
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (200, 300), dtype=np.uint8)
    return {"grey": grey, "grey HxWx1": grey[:, :, None], "BGR": rng.integers(0, 256, (180, 250, 3), np.uint8),
            "BGRA": rng.integers(0, 256, (180, 250, 4), np.uint8),
            "raw 14-bit": rng.integers(1000, 15000, (160, 200), dtype=np.uint16),
            "grey, strided view": rng.integers(0, 256, (300, 500), dtype=np.uint8)[::2, 1::2]}


@pytest.mark.parametrize("order, mean, std", [("RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                              ("BGR", (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)),
                                              ("GRAY", (0.45,), (0.226,))])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "area"])
def test_preprocess_is_bit_identical_to_the_plain_recipe(order, mean, std, interpolation):
    contract = ModelContract(channel_order=order, mean=mean, std=std, resize_interpolation=interpolation)
    for name, frame in _frames().items():
        for size in (None, (96, 128), (256, 320)):
            got, want = preprocess(frame, contract, size), _reference(frame, contract, size)
            assert got.dtype == np.float32 and got.shape == want.shape, (name, size)
            assert np.array_equal(got, want), f"{name} -> {order}, {size}, {interpolation}"


def test_bgr_contract_keeps_opencv_order_and_rgb_swaps_it():
    frame = np.zeros((256, 256, 3), np.uint8)
    frame[:, :, 0] = 255  # blue
    unit = dict(scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    bgr = preprocess(frame, ModelContract(channel_order="BGR", **unit))[0]
    rgb = preprocess(frame, ModelContract(channel_order="RGB", **unit))[0]
    assert bgr[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and rgb[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert to_channels(frame, ModelContract(channel_order="BGR", **unit))[0, 0].tolist() == [255, 0, 0]


def test_normalize_of_an_interleaved_image_matches_preprocess():
    contract = ModelContract()
    frame = _frames()["BGR"]
    image = cv2.resize(to_channels(frame, contract), (256, 256), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(normalize(image, contract)[None], preprocess(frame, contract))


def test_unknown_channel_order_is_refused_by_name():
    with pytest.raises(ModelFileError, match="'YUV'"):
        ModelContract(channel_order="YUV")


def test_bad_frames_are_named():
    contract = ModelContract()
    with pytest.raises(InputError, match="float64"):
        preprocess(np.zeros((8, 8)), contract)
    with pytest.raises(InputError, match=r"\(8, 8, 2\)"):
        preprocess(np.zeros((8, 8, 2), np.uint8), contract)


@pytest.mark.parametrize("shape", [(256, 256), (240, 320), (7, 13), (1, 1)])
def test_random_bytes_are_numpys_full_range_bytes(shape):
    # If numpy ever fills full-range uint8 differently, synthetic scenes stay the same but stop matching
    # Generator.integers: this test says so.
    ours = random_bytes(np.random.default_rng([3, 1, 4]), shape)
    numpys = np.random.default_rng([3, 1, 4]).integers(0, 256, shape, dtype=np.uint8)
    assert ours.shape == shape and ours.dtype == np.uint8 and np.array_equal(ours, numpys)


@pytest.mark.parametrize("size, targets, bits, sigma", [((256, 256), 3, 8, (0.8, 1.8)), ((120, 200), 6, 8, (0.8, 1.8)),
                                                        ((96, 96), 2, 14, (0.8, 1.8)), ((160, 200), 4, 8, (0.5, 4.0))])
def test_synthetic_frames_match_their_plain_formula(size, targets, bits, sigma):
    # Windows of very different radii (the last case: 13..22 px), several clipped at the frame's edges.
    scene = SyntheticScene(size, targets, seed=5, bits=bits, sigma=sigma)
    for index in (0, 11, 40):
        # Frame i's noise: the draws [i * n, (i + 1) * n) of the scene's PCG64 stream, n = ceil(H * W / 8).
        stream = np.random.PCG64(np.random.SeedSequence([scene.seed, 1]))
        stream.advance(index * -(-size[0] * size[1] // 8))
        noise_bytes = np.random.Generator(stream).integers(0, 256, size, dtype=np.uint8)
        image = scene._noise_levels[noise_bytes] + scene._background
        mask = np.zeros(size, bool)
        for (cx, cy), sigma, amplitude in zip(scene.centers(index), scene.sigmas, scene.amplitudes):
            add_target(image, mask, cx, cy, sigma, amplitude)
        image = np.clip(image, 0, 255)
        if bits == 8:
            want = np.rint(image).astype(np.uint8)
        else:
            want = np.rint(image * np.float32(scene.raw_gain) + np.float32(scene.raw_offset)).astype(np.uint16)
        frame = scene.frame(index)
        assert frame.image.dtype == want.dtype and np.array_equal(frame.image, want), index
        assert np.array_equal(frame.mask, mask)


def test_synthetic_frames_are_the_same_in_any_order_and_from_any_thread():
    # Frames in order continue the scene's noise stream, any other index jumps to its place in it: the order
    # of the calls, and the thread making them, must not change a frame.
    in_order = SyntheticScene((64, 80), targets=2, seed=7)
    expected = [in_order.frame(i).image for i in range(12)]
    shuffled = SyntheticScene((64, 80), targets=2, seed=7)
    for i in (5, 6, 7, 0, 11, 3, 4, 10, 1, 2, 9, 8):
        assert np.array_equal(shuffled.frame(i).image, expected[i]), i
    assert not np.array_equal(expected[3], expected[4])  # fresh noise in every frame
    shared = SyntheticScene((64, 80), targets=2, seed=7)
    rendered = {}

    def render(indices):
        for i in indices:
            rendered[i] = shared.frame(i).image

    threads = [threading.Thread(target=render, args=(range(start, 12, 3),)) for start in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(rendered[i], expected[i]) for i in range(12))
    with pytest.raises(InputError, match=r"frame\(-1\): frame indices start at 0"):
        shared.frame(-1)


@pytest.mark.parametrize("changes", [{"std": (0.229, 0.0, 0.225)}, {"scale": float("inf")},
                                     {"mean": (float("nan"),) * 3}, {"scale": 1e37}])
def test_a_contract_whose_tensors_would_not_be_finite_is_refused(changes):
    # Backend.run_preprocessed() skips the NaN/Inf scan because preprocess() tensors are finite by construction.
    frame = np.full((256, 256), 255, np.uint8)
    with pytest.raises(ModelFileError, match="finite tensor for 0..255 pixels"):
        preprocess(frame, ModelContract().replace(**changes))


@pytest.mark.parametrize("raw, message", [(("fixed", float("nan"), 100.0), "finite"),
                                          (("percentile", 0.5, float("inf")), "finite"),
                                          (("stretch", 0.0, 1.0), "'percentile' or 'fixed'"),
                                          (("fixed", 16383.0, 0.0), "expected low < high"),
                                          (("fixed", 100.0, 100.0), "expected low < high"),
                                          (("fixed", 0.0, None), "finite"),
                                          (("percentile", 0.5, 150.0), r"0 <= low < high <= 100"),
                                          (("percentile", -1.0, None), r"0 <= low < high <= 100"),
                                          (("percentile", 60.0, 40.0), r"0 <= low < high <= 100")])
def test_raw_mappings_are_checked_when_made(raw, message):
    with pytest.raises(InputError, match=message):
        RawMapping(*raw)


@pytest.mark.parametrize("shape", [(256, 256), (513, 641), (1080, 1920)])
def test_the_default_raw_stretch_clips_a_few_pixels_at_any_frame_size(shape):
    """A 99.99 % top leaves 207 pixels above it at 1920x1080, more than small targets cover: it fell into the
    background. The default top leaves at most HOT_PIXELS above it (about the 99.99 % of 256x256) at any size."""
    frame = SyntheticScene(shape, targets=6, seed=7, bits=14).frame(0)
    mapped = RawMapping().apply(frame.image)
    above_top = int((frame.image > np.sort(frame.image, axis=None)[-1 - HOT_PIXELS]).sum())
    assert int((mapped >= 255.0).sum()) <= HOT_PIXELS + 1 and above_top <= HOT_PIXELS
    exact = RawMapping("fixed", *SyntheticScene(shape, targets=6, seed=7, bits=14).raw_range).apply(frame.image)
    background = ~frame.mask
    # the background keeps about the contrast of the exact mapping instead of being stretched over 0..255
    assert np.percentile(mapped[background], 99) < 2.0 * np.percentile(exact[background], 99)


def test_preprocessed_raw_frames_are_finite_at_the_extremes():
    frames = [np.zeros((64, 64), np.uint16), np.full((64, 64), 65535, np.uint16),
              np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)]
    for frame in frames:
        for raw in (RawMapping(), RawMapping("fixed", 100.0, 101.0), RawMapping("fixed", 0.0, 65535.0)):
            assert np.isfinite(preprocess(frame, ModelContract(), raw=raw)).all()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (8-bit grey) over a few bytes of pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(bytes(10))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_image_files_opencv_asserts_on_are_input_errors(tmp_path):
    # cv2.imdecode raises cv2.error (not None) for these; a folder run skips InputErrors, it dies of cv2.error
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: the file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "huge.png").write_bytes(_png_header(100_000, 100_000))
    with pytest.raises(InputError, match=r"cannot decode image .*huge\.png \(\d+ bytes\): OpenCV refused it: .*"
                                         r"CV_IO_MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "huge.png")
