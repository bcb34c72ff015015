"""IDX parsing, the verified download (against a loopback server) and the train/val/test split."""

import functools
import gzip
import http.server
import shutil
import threading

import numpy as np
import pytest

from common.errors import UserError
from mnist import data as mnist_data
from mnist.data import load_mnist, load_split, read_idx, split_train_val, write_idx


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_round_trip_uint8(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8
    assert back.shape == (5, 28, 28)
    assert np.array_equal(back, array)


def test_round_trip_int32_big_endian(tmp_path):
    array = np.array([[1, -2, 70000]], dtype=np.int32)
    write_idx(tmp_path / "b.idx", array)
    assert np.array_equal(read_idx(tmp_path / "b.idx"), array)


def test_bad_magic_number(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(UserError, match="bad magic number 0x12340801"):
        read_idx(path)


def test_unknown_dtype_code(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"a")
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(path)


def test_truncated_payload(tmp_path):
    path = tmp_path / "t.idx"
    write_idx(path, np.zeros((10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"truncated: header promises shape \(10, 28, 28\)"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "t.idx"
    path.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big"))
    with pytest.raises(UserError, match="truncated inside its header"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "t.idx.gz"
    write_idx(path, np.ones((50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(UserError, match="damaged gzip"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "t.idx"
    write_idx(path, np.zeros((2, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"xx")
    with pytest.raises(UserError, match="2 bytes after the shape"):
        read_idx(path)


def test_image_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((6, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((5,), dtype=np.uint8))
    with pytest.raises(UserError, match="count mismatch: .* 6 images, .* 5 labels"):
        load_split(tmp_path, "train")


def test_label_out_of_range(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 12], dtype=np.uint8))
    with pytest.raises(UserError, match="outside 0..9"):
        load_split(tmp_path, "test")


def test_embedded_mnist_shapes_and_counts(mnist_dir):
    images, labels = load_split(mnist_dir, "train")
    assert tuple(images.shape) == (60000, 28, 28)
    assert labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test_images, test_labels = load_split(mnist_dir, "test")
    assert tuple(test_images.shape) == (10000, 28, 28)
    assert len(test_labels) == 10000


def test_split_is_disjoint_and_fixed():
    train_a, val_a = split_train_val(1000, 100, split_seed=0)
    train_b, val_b = split_train_val(1000, 100, split_seed=0)
    assert len(val_a) == 100
    assert set(train_a.tolist()).isdisjoint(val_a.tolist())
    assert len(set(train_a.tolist()) | set(val_a.tolist())) == 1000
    assert val_a.equal(val_b)
    assert train_a.equal(train_b)


def test_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match="data directory .* not found"):
        load_mnist(str(tmp_path / "absent"), 5000, 0)


class LoopbackServer:
    """A static file server on 127.0.0.1 and a free port, standing in for the MNIST mirror."""

    def __init__(self, root):
        handler = functools.partial(QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_rejects_bad_checksum(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in mnist_data.OFFICIAL_MD5:
        (mirror / name).write_bytes(gzip.compress(b"not mnist"))
    target = tmp_path / "data"
    with LoopbackServer(mirror) as server:
        with pytest.raises(UserError, match="checksum failed for .*train-images-idx3-ubyte.gz: md5"):
            mnist_data.download_mnist(target, server.url, log=lambda _: None)
    assert not any(target.iterdir()), "a file that failed its checksum must not be kept"


def test_download_keeps_verified_files(tmp_path, mnist_dir, monkeypatch):
    # The embedded files are a lossless rebuild, not the official bytes, so their own MD5s stand in.
    monkeypatch.setattr(
        mnist_data, "OFFICIAL_MD5",
        {name: mnist_data.file_md5(mnist_dir / name) for name in mnist_data.OFFICIAL_MD5},
    )
    target = tmp_path / "data"
    with LoopbackServer(mnist_dir) as server:
        datasets = load_mnist(str(target), 5000, 0, download=True, url=server.url, log=lambda _: None)
    assert len(datasets["train"]) == 55000
    assert len(datasets["test"]) == 10000
    for name in mnist_data.OFFICIAL_MD5:
        assert (target / name).read_bytes() == (mnist_dir / name).read_bytes()


def test_download_unreachable_mirror(tmp_path):
    with LoopbackServer(tmp_path) as server:
        url = server.url
    with pytest.raises(UserError, match="download of .* failed"):
        mnist_data.download_mnist(tmp_path / "data", url, log=lambda _: None)


def test_batch_is_normalised(mnist_dir, tmp_path):
    shutil.copytree(mnist_dir, tmp_path / "m")
    datasets = load_mnist(str(tmp_path / "m"), 5000, 0, train_size=2000)
    x, y = datasets["train"].batch(list(range(2000)))
    assert tuple(x.shape) == (2000, 1, 28, 28)
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std().item() - 1) < 1e-3
    assert y.dtype.is_floating_point is False


def test_embedded_files_match_published_sha256(mnist_dir):
    import hashlib
    import re

    readme = (mnist_dir.parent / "README.md").read_text()
    listed = dict(re.findall(r"^([0-9a-f]{64})  (\S+-ubyte\.gz)$", readme, flags=re.M))
    assert len(listed) == 4
    for digest, name in listed.items():
        assert hashlib.sha256((mnist_dir / name).read_bytes()).hexdigest() == digest, name
