"""MNIST from IDX files: a strict parser, an optional verified download, and the train/val/test split.

IDX layout (big-endian): two zero bytes, a dtype code (0x08 = uint8), the number of dimensions,
then one uint32 per dimension, then the values. Images are idx3 (N, 28, 28), labels idx1 (N,).
Files may be gzip-compressed (`*.gz`) or raw; the parser checks every header field and the exact
payload length, so a truncated or corrupted file fails with its name instead of training on junk.

The validation split is carved from the 60,000 training images with its own fixed seed, so it is
the same set for every run seed; the 10,000 test images are used only for the final evaluation.
"""

import gzip
import hashlib
import os
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import UserError

IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# MD5 of the official gzip files, as published by torchvision's MNIST mirror list.
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
DEFAULT_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzip or raw) into an array, checking magic number, dimensions and length."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise UserError(f"IDX file {path} is a damaged gzip file ({exc}); download or copy it again") from None
    if len(raw) < 4:
        raise UserError(f"IDX file {path} is truncated: {len(raw)} bytes, too short for the magic number; copy it again")
    zero1, zero2, dtype_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or dtype_code not in IDX_DTYPES or ndim == 0:
        magic = int.from_bytes(raw[:4], "big")
        raise UserError(
            f"IDX file {path} has bad magic number 0x{magic:08x}, expected 0x000008NN (uint8, NN dimensions); "
            f"it is not an IDX file or it is corrupted"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise UserError(f"IDX file {path} is truncated inside its header ({len(raw)} of {header_len} bytes); copy it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[dtype_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(raw) - header_len
    if payload < expected:
        raise UserError(
            f"IDX file {path} is truncated: header promises shape {dims} ({expected} bytes) but {payload} bytes follow; copy it again"
        )
    if payload > expected:
        raise UserError(
            f"IDX file {path} has {payload - expected} bytes after the shape {dims} its header declares; it is corrupted"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as IDX (gzip when the name ends in .gz); the inverse of read_idx."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX code")
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[codes[native]]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        body = gzip.compress(body, mtime=0)
    path.write_bytes(body)


def find_file(data_dir: Path, stem: str) -> Path:
    """Locate `stem.gz` or `stem` in data_dir."""
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"MNIST file {stem}(.gz) not found in {data_dir}; copy the four IDX files there or pass --data.download=true"
    )


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_mnist(data_dir: Path, base_url: str = DEFAULT_URL, log=print) -> None:
    """Fetch the missing official gzip files and keep each only if its MD5 matches."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    for name, expected_md5 in OFFICIAL_MD5.items():
        target = data_dir / name
        if target.is_file():
            continue
        tmp = data_dir / f".{name}.download-{os.getpid()}"
        url = base_url + name
        log(f"downloading {url}")
        try:
            urllib.request.urlretrieve(url, tmp)
            got = file_md5(tmp)
            if got != expected_md5:
                raise UserError(
                    f"checksum failed for {url}: md5 {got}, expected {expected_md5}; "
                    f"the download is corrupted or the mirror changed, retry or set --data.url to another mirror"
                )
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(f"download of {url} failed ({exc}); check the network or set --data.url to a reachable mirror") from None
        finally:
            if tmp.exists():
                tmp.unlink()


def load_split(data_dir: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load images (N, 28, 28) uint8 and labels (N,) int64 for prefix `train` or `test`."""
    images_path = find_file(data_dir, FILES[f"{prefix}_images"])
    labels_path = find_file(data_dir, FILES[f"{prefix}_labels"])
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise UserError(f"{images_path} contains {images.dtype} images of shape {images.shape}, expected uint8 (N, 28, 28)")
    if labels.ndim != 1:
        raise UserError(f"{labels_path} contains labels of shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise UserError(
            f"image/label count mismatch: {images_path} has {len(images)} images, {labels_path} has {len(labels)} labels; "
            f"the files come from different sets"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{labels_path} has labels outside 0..9 (min {labels.min()}, max {labels.max()}); it is corrupted")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def split_train_val(num_train: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve a fixed validation set out of the training indices."""
    if not 0 < val_size < num_train:
        raise UserError(f"data.val_size is {val_size}, must be between 1 and {num_train - 1}")
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


class MNISTTensors(Dataset):
    """In-memory images and labels; `__getitems__` lets a DataLoader fetch a whole batch in one indexing op."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        self.images = images  # (N, 28, 28) uint8, normalised per batch to keep memory at 1 byte a pixel
        self.labels = labels
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[index].unsqueeze(1).float()  # (B, 28, 28) -> (B, 1, 28, 28)
        x = (x / 255.0 - self.mean) / self.std
        return x, self.labels[index]

    def __getitem__(self, i: int):
        x, y = self.batch([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]):
        return self.batch(indices)


def load_mnist(data_dir: str, val_size: int, split_seed: int, train_size: int = 0,
               download: bool = False, url: str = DEFAULT_URL, log=print) -> dict[str, MNISTTensors]:
    """Return {"train", "val", "test"} datasets normalised with the training split's mean and std."""
    root = Path(data_dir)
    if download:
        download_mnist(root, url, log=log)
    if not root.is_dir():
        raise UserError(f"data directory {data_dir} not found; pass --data.dir=<folder with the MNIST IDX files> or --data.download=true")
    train_images, train_labels = load_split(root, "train")
    test_images, test_labels = load_split(root, "test")
    train_idx, val_idx = split_train_val(len(train_labels), val_size, split_seed)
    if train_size > 0:
        if train_size > len(train_idx):
            raise UserError(f"data.train_size is {train_size}, but only {len(train_idx)} training images remain after the validation split")
        train_idx = train_idx[:train_size]
    pixels = train_images[train_idx].double() / 255.0
    mean, std = pixels.mean().item(), pixels.std().item()
    return {
        "train": MNISTTensors(train_images[train_idx], train_labels[train_idx], mean, std),
        "val": MNISTTensors(train_images[val_idx], train_labels[val_idx], mean, std),
        "test": MNISTTensors(test_images, test_labels, mean, std),
    }

