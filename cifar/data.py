"""CIFAR-10 from the official binary files: a strict parser, a verified download, tensors, augmentation.

Binary layout: each record is 1 label byte (0..9) then 3,072 pixel bytes, the 1,024 red values of
the 32x32 image in row-major order, then green, then blue. A file is a run of records with no
header, so its length must be a multiple of 3,073. Files may be gzip-compressed (`*.bin.gz`).

`data.dir` contains `data_batch_*.bin[.gz]` and `test_batch.bin[.gz]`, directly or inside a
`cifar-10-batches-bin/` folder. The repository ships a stratified 2,500/1,000-image sample; a
folder with the full set uses all 50,000/10,000 images.
"""

import gzip
import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import UserError

RECORD_BYTES = 1 + 3 * 32 * 32
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
OFFICIAL_SIZE = 170_052_171
OFFICIAL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_batch_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one binary batch file into images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise UserError(f"CIFAR-10 file {path} is a damaged gzip file ({exc}); copy or download it again") from None
    if len(raw) == 0:
        raise UserError(f"CIFAR-10 file {path} is empty; copy or download it again")
    if len(raw) % RECORD_BYTES != 0:
        whole = len(raw) // RECORD_BYTES
        raise UserError(
            f"CIFAR-10 file {path} is truncated: {len(raw)} bytes is {whole} whole records of {RECORD_BYTES} "
            f"bytes plus {len(raw) - whole * RECORD_BYTES}; copy or download it again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)  # (N, 3073)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise UserError(
            f"CIFAR-10 file {path} has label {labels[bad[0]]} in record {bad[0]}, outside 0..9; the file is corrupted"
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, C, H, W), channel planes in order R, G, B
    return images.copy(), labels


def write_batch_file(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images (N, 3, 32, 32) uint8 and labels as a binary batch file; the inverse of read_batch_file."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    body = records.astype(np.uint8).tobytes()
    Path(path).write_bytes(gzip.compress(body, mtime=0) if str(path).endswith(".gz") else body)


def batch_files(data_dir: Path) -> tuple[list[Path], Path]:
    """Find the training batch files and the test file in data_dir or its cifar-10-batches-bin/."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data directory {data_dir} not found; pass --data.dir=<folder with the CIFAR-10 .bin files> or --data.download=true")
    if (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    train = sorted(p for p in root.iterdir() if p.name.startswith("data_batch_") and p.name.endswith((".bin", ".bin.gz")))
    tests = [p for p in (root / "test_batch.bin", root / "test_batch.bin.gz") if p.is_file()]
    if not train or not tests:
        raise UserError(
            f"CIFAR-10 files not found in {root}: need data_batch_*.bin[.gz] and test_batch.bin[.gz]; "
            f"point --data.dir at them or pass --data.download=true"
        )
    return train, tests[0]


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, rejecting absolute paths, `..` members, links and device files."""
    dest = Path(dest).resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            name = member.name
            target = (dest / name).resolve()
            if os.path.isabs(name) or ".." in Path(name).parts or not target.is_relative_to(dest):
                raise UserError(f"archive {archive} has member {name!r} outside the target folder; refusing to extract it")
            if member.issym() or member.islnk():
                raise UserError(f"archive {archive} has link member {name!r}; refusing to extract links")
            if not (member.isfile() or member.isdir()):
                raise UserError(f"archive {archive} has special member {name!r}; only files and folders are extracted")
        for member in members:
            if member.isdir():
                (dest / member.name).mkdir(parents=True, exist_ok=True)
                continue
            target = dest / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)


def download_cifar10(data_dir: Path, url: str = OFFICIAL_URL, expected_md5: str = OFFICIAL_MD5,
                     expected_size: int | None = OFFICIAL_SIZE, log=print) -> None:
    """Fetch the binary archive, check its size and MD5 before use, and extract it safely."""
    data_dir = Path(data_dir)
    if (data_dir / "cifar-10-batches-bin" / "test_batch.bin").is_file():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / f".cifar-10-binary.tar.gz.download-{os.getpid()}"
    log(f"downloading {url}")
    try:
        urllib.request.urlretrieve(url, archive)
        size = archive.stat().st_size
        if expected_size is not None and size != expected_size:
            raise UserError(f"download of {url} has {size} bytes, expected {expected_size}; retry or set --data.url to another mirror")
        got = file_md5(archive)
        if got != expected_md5:
            raise UserError(f"checksum failed for {url}: md5 {got}, expected {expected_md5}; retry or set --data.url to another mirror")
        safe_extract(archive, data_dir)
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"download of {url} failed ({exc}); check the network or set --data.url to a reachable mirror") from None
    finally:
        if archive.exists():
            archive.unlink()


class CIFARTensors(Dataset):
    """In-memory uint8 images, normalised per channel on the fly; `__getitems__` fetches a whole batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        self.images = images  # (N, 3, 32, 32) uint8
        self.labels = labels
        self.mean = mean.view(1, 3, 1, 1)
        self.std = std.view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        x = (self.images[index].float() / 255.0 - self.mean) / self.std  # (B, 3, 32, 32)
        return x, self.labels[index]

    def __getitem__(self, i: int):
        x, y = self.batch([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]):
        return self.batch(indices)


def load_cifar10(data_dir: str, val_size: int, split_seed: int, train_size: int = 0, download: bool = False,
                 url: str = OFFICIAL_URL, log=print) -> dict[str, CIFARTensors]:
    """Return {"train", "val", "test"} normalised with the per-channel mean and std of the train split."""
    if download:
        download_cifar10(Path(data_dir), url, log=log)
    train_files, test_file = batch_files(Path(data_dir))
    parts = [read_batch_file(p) for p in train_files]
    train_images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    train_labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    test_images, test_labels = (torch.from_numpy(a) for a in read_batch_file(test_file))
    n = len(train_labels)
    if not 0 < val_size < n:
        raise UserError(f"data.val_size is {val_size}, must be between 1 and {n - 1} for {n} training images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    if train_size > 0:
        if train_size > len(train_idx):
            raise UserError(f"data.train_size is {train_size}, but only {len(train_idx)} training images remain after the validation split")
        train_idx = train_idx[:train_size]
    pixels = train_images[train_idx].double() / 255.0  # (N, 3, 32, 32)
    mean = pixels.mean(dim=(0, 2, 3)).float()
    std = pixels.std(dim=(0, 2, 3)).float()
    return {
        "train": CIFARTensors(train_images[train_idx], train_labels[train_idx], mean, std),
        "val": CIFARTensors(train_images[val_idx], train_labels[val_idx], mean, std),
        "test": CIFARTensors(test_images, test_labels, mean, std),
    }


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Pad each image with zeros (the mean, after normalisation) and cut a random window of the original size.

    One batched gather: row and column indices per image, drawn from the global RNG on x's device.
    """
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    top = torch.randint(0, 2 * padding + 1, (B,), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (B,), device=x.device)
    rows = (top[:, None] + torch.arange(H, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (left[:, None] + torch.arange(W, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
    crops = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, H, W, C)
    return crops.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Apply the standard CIFAR training augmentation: a random crop with padding, then a random horizontal flip."""
    if padding > 0:
        x = random_crop(x, padding)
    if flip:
        x = random_flip(x)
    return x
