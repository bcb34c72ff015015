"""CIFAR-10 binary parsing, safe archive extraction, the verified download and the augmentation."""

import io
import tarfile

import numpy as np
import pytest
import torch

from cifar import data as cifar_data
from cifar.data import augment, load_cifar10, random_crop, random_flip, read_batch_file, safe_extract, write_batch_file
from common.errors import UserError
from tests.conftest import REPO
from tests.test_mnist_data import LoopbackServer

SAMPLE = REPO / "data" / "cifar10"


def random_records(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    return images, labels


@pytest.mark.parametrize("name", ["data_batch_1.bin", "data_batch_1.bin.gz"])
def test_round_trip(tmp_path, name):
    images, labels = random_records(7)
    write_batch_file(tmp_path / name, images, labels)
    back_images, back_labels = read_batch_file(tmp_path / name)
    assert np.array_equal(back_images, images)
    assert np.array_equal(back_labels, labels)


def test_channel_planes_are_rgb(tmp_path):
    # The first 1,024 pixel bytes are the red plane in row-major order.
    record = np.zeros(3073, dtype=np.uint8)
    record[0] = 3
    record[1 + 5] = 200  # red, row 0, column 5
    record[1 + 1024 + 32] = 100  # green, row 1, column 0
    (tmp_path / "b.bin").write_bytes(record.tobytes())
    images, labels = read_batch_file(tmp_path / "b.bin")
    assert labels.tolist() == [3]
    assert images[0, 0, 0, 5] == 200
    assert images[0, 1, 1, 0] == 100
    assert images.sum() == 300


def test_truncated_file(tmp_path):
    images, labels = random_records(3)
    write_batch_file(tmp_path / "t.bin", images, labels)
    (tmp_path / "t.bin").write_bytes((tmp_path / "t.bin").read_bytes()[:-10])
    with pytest.raises(UserError, match=r"truncated: 9209 bytes is 2 whole records"):
        read_batch_file(tmp_path / "t.bin")


def test_bad_label(tmp_path):
    images, labels = random_records(3)
    labels[1] = 11
    write_batch_file(tmp_path / "b.bin", images, labels)
    with pytest.raises(UserError, match="label 11 in record 1, outside 0..9"):
        read_batch_file(tmp_path / "b.bin")


def test_embedded_sample_is_stratified():
    data = load_cifar10(str(SAMPLE), val_size=250, split_seed=0)
    assert len(data["train"]) + len(data["val"]) == 2500
    assert len(data["test"]) == 1000
    assert data["test"].labels.bincount().tolist() == [100] * 10
    all_train = torch.cat([data["train"].labels, data["val"].labels])
    assert all_train.bincount().tolist() == [250] * 10


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_cifar10(str(tmp_path / "nowhere"), 250, 0)


def make_tar(path, members):
    """Write a tar.gz with (TarInfo, bytes or None) members."""
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)


def file_member(name: str, payload: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def test_extract_rejects_parent_member(tmp_path):
    make_tar(tmp_path / "a.tar.gz", [file_member("cifar-10-batches-bin/../../evil.txt", b"x")])
    with pytest.raises(UserError, match="outside the target folder"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_extract_rejects_absolute_member(tmp_path):
    make_tar(tmp_path / "a.tar.gz", [file_member("/tmp/evil-absolute.txt", b"x")])
    with pytest.raises(UserError, match="outside the target folder"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "out")


def test_extract_rejects_symlink(tmp_path):
    link = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    make_tar(tmp_path / "a.tar.gz", [(link, None)])
    with pytest.raises(UserError, match="link member"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out" / "cifar-10-batches-bin" / "data_batch_1.bin").exists()


def test_extract_rejects_hardlink(tmp_path):
    link = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
    link.type = tarfile.LNKTYPE
    link.linkname = "cifar-10-batches-bin/data_batch_1.bin"
    make_tar(tmp_path / "a.tar.gz", [file_member("cifar-10-batches-bin/data_batch_1.bin", b"x"), (link, None)])
    with pytest.raises(UserError, match="link member"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "out")


def official_style_archive(tmp_path):
    """A tar.gz laid out like the official one, holding the embedded sample decompressed."""
    archive = tmp_path / "mirror" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    members = []
    for name in ("data_batch_1.bin", "test_batch.bin"):
        images, labels = read_batch_file(SAMPLE / "cifar-10-batches-bin" / f"{name}.gz")
        buffer = io.BytesIO()
        write_batch_file(tmp_path / name, images, labels)
        buffer.write((tmp_path / name).read_bytes())
        members.append(file_member(f"cifar-10-batches-bin/{name}", buffer.getvalue()))
    make_tar(archive, members)
    return archive


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    archive = official_style_archive(tmp_path)
    with LoopbackServer(archive.parent) as server:
        cifar_data.download_cifar10(tmp_path / "data", server.url + archive.name,
                                    expected_md5=cifar_data.file_md5(archive),
                                    expected_size=archive.stat().st_size, log=lambda _: None)
    data = load_cifar10(str(tmp_path / "data"), 250, 0)
    assert len(data["test"]) == 1000


def test_download_rejects_bad_checksum(tmp_path):
    archive = official_style_archive(tmp_path)
    with LoopbackServer(archive.parent) as server:
        with pytest.raises(UserError, match="checksum failed"):
            cifar_data.download_cifar10(tmp_path / "data", server.url + archive.name, expected_md5="0" * 32,
                                        expected_size=None, log=lambda _: None)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_rejects_wrong_size(tmp_path):
    archive = official_style_archive(tmp_path)
    with LoopbackServer(archive.parent) as server:
        with pytest.raises(UserError, match="expected 170052171"):
            cifar_data.download_cifar10(tmp_path / "data", server.url + archive.name, log=lambda _: None)


@pytest.fixture
def batch():
    data = load_cifar10(str(SAMPLE), 250, 0, train_size=16)
    return data["train"].batch(list(range(16)))[0]


def test_augment_keeps_shape_and_dtype(batch):
    out = augment(batch)
    assert out.shape == batch.shape
    assert out.dtype == batch.dtype


def test_flip_applied_twice_is_identity(batch):
    torch.manual_seed(3)
    once = random_flip(batch)
    torch.manual_seed(3)
    twice = random_flip(once)
    assert torch.equal(twice, batch)
    assert not torch.equal(once, batch)  # with 16 images, some were flipped


def test_crop_is_a_window_of_the_padded_image(batch):
    torch.manual_seed(0)
    crops = random_crop(batch, padding=4)
    padded = torch.nn.functional.pad(batch, (4, 4, 4, 4))
    for image, crop in zip(padded, crops):
        windows = [(top, left) for top in range(9) for left in range(9)
                   if torch.equal(image[:, top:top + 32, left:left + 32], crop)]
        assert windows, "the crop is not a 32x32 window inside the 4-pixel padding"


def test_same_seed_same_augmentation(batch):
    torch.manual_seed(11)
    first = augment(batch)
    torch.manual_seed(11)
    second = augment(batch)
    torch.manual_seed(12)
    third = augment(batch)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)

