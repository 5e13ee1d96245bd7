"""IRSTD datasets on disk: where a split file is looked up, how it is read, and how masks are named."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from edge_irst.datasets import IrstdDataset
from edge_irst.errors import InputError

STEMS = ("f00", "f01", "f02", "f03")


def make_dataset(root, mask_name="{stem}.png"):
    """A 4-image SIRST-layout dataset under `root`; mask i marks pixel (i, i), its file named by `mask_name`."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(STEMS):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), np.full((8, 8), 40 + i, np.uint8))
        mask = np.zeros((8, 8), np.uint8)
        mask[i, i] = 255
        cv2.imwrite(str(root / "masks" / mask_name.format(stem=stem)), mask)
    return root


def test_a_relative_split_is_the_roots_even_where_the_working_directory_has_one(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data")
    (root / "train.txt").write_text("f00\nf01")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "train.txt").write_text("f03")
    monkeypatch.chdir(elsewhere)
    assert [s.stem for s in IrstdDataset(root, "train.txt").samples] == ["f00", "f01"]
    # An explicit ./ path, or an absolute one, is taken as given.
    assert [s.stem for s in IrstdDataset(root, "./train.txt").samples] == ["f03"]
    assert [s.stem for s in IrstdDataset(root, elsewhere / "train.txt").samples] == ["f03"]
    # A relative path only the working directory holds is still found there.
    (elsewhere / "other.txt").write_text("f02")
    assert [s.stem for s in IrstdDataset(root, "other.txt").samples] == ["f02"]
    with pytest.raises(InputError, match=f"split file not found: {root / 'missing.txt'} nor missing.txt"):
        IrstdDataset(root, "missing.txt")


def test_a_split_file_with_a_byte_order_mark_lists_the_same_stems(tmp_path):
    root = make_dataset(tmp_path)
    (root / "bom.txt").write_bytes("f00\r\nf02\r\n".encode("utf-8-sig"))
    assert [s.stem for s in IrstdDataset(root, "bom.txt").samples] == ["f00", "f02"]


def test_a_stem_listed_twice_in_a_split_is_read_once_and_reported(tmp_path, caplog):
    root = make_dataset(tmp_path)
    (root / "test.txt").write_text("f02\nf00\nf02\nf01\nf00\nf02\n")
    with caplog.at_level(logging.WARNING, logger="edge_irst.datasets"):
        dataset = IrstdDataset(root, "test.txt")
    assert [s.stem for s in dataset.samples] == ["f02", "f00", "f01"]  # each at its first place
    assert dataset.repeated_stems == ["f02", "f00"]
    assert "lists 2 stems more than once (e.g. f02, f00); each is read once" in caplog.text
    assert IrstdDataset(root).repeated_stems == []


def test_nuaa_sirst_mask_names_pair_with_their_images(tmp_path):
    root = make_dataset(tmp_path, mask_name="{stem}_pixels0.png")
    dataset = IrstdDataset(root)
    assert [s.mask_path.name for s in dataset.samples] == [f"{stem}_pixels0.png" for stem in STEMS]
    for i, (_, _, mask) in enumerate(dataset):
        assert np.argwhere(mask).tolist() == [[i, i]]


def test_masks_named_with_another_suffix_are_named_in_the_error(tmp_path):
    root = make_dataset(tmp_path, mask_name="{stem}_mask.png")
    with pytest.raises(InputError, match=r"4 images have no mask .*named like f00_mask\.png \(for f00\).*"
                                         r"<stem>\.<ext> or NUAA-SIRST's <stem>_pixels0\.<ext>"):
        IrstdDataset(root)


def test_every_non_zero_mask_pixel_is_target_at_any_bit_depth_and_in_any_channel(tmp_path):
    root = make_dataset(tmp_path)
    deep = np.zeros((8, 8), np.uint16)
    deep[1, 1] = 1  # a 0/1 mask saved as 16-bit: scaled to 8 bits, a grey reading turns it to 0
    cv2.imwrite(str(root / "masks" / "f01.png"), deep)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[2, 2] = (1, 0, 0)  # faint blue: grey 0.114
    colour[5, 6] = (0, 0, 3)  # faint red: grey 0.9
    cv2.imwrite(str(root / "masks" / "f02.png"), colour)
    masks = [mask for _, _, mask in IrstdDataset(root)]
    assert np.argwhere(masks[1]).tolist() == [[1, 1]]
    assert np.argwhere(masks[2]).tolist() == [[2, 2], [5, 6]]
    assert np.argwhere(masks[3]).tolist() == [[3, 3]]


def test_an_images_folder_without_masks_asks_for_the_mask_folder(tmp_path):
    root = make_dataset(tmp_path)
    with pytest.raises(InputError, match=r"no mask folder: .*give masks= \(CLI: --masks DIR\)"):
        IrstdDataset(images=root / "images")
    assert len(IrstdDataset(images=root / "images", masks=root / "masks")) == 4
