"""Load a Hugging Face GPT-2 checkpoint from a local folder into lm.model.GPT, without network access.

The folder contains `config.json` and either `model.safetensors` or `pytorch_model.bin`. safetensors
is parsed by hand: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor
name to its dtype, shape and [start, end) byte offsets, then the raw little-endian tensor bytes.
`pytorch_model.bin` is read with torch.load(weights_only=True).

Hugging Face's GPT-2 stores its projections as Conv1D modules, whose weight is (in, out); an
nn.Linear weight is (out, in), so those four matrices per block are transposed on load.
"""

import json
import struct
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Parse a .safetensors file into a name -> tensor dict, checking the header against the file size."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path} is too short to be a safetensors file ({len(raw)} bytes)")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if 8 + header_len > len(raw):
        raise ValueError(f"{path}: header length {header_len} runs past the end of the file ({len(raw)} bytes)")
    header = json.loads(raw[8 : 8 + header_len])
    data = memoryview(raw)[8 + header_len :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        shape = entry["shape"]
        expected = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if end - start != expected or end > len(data):
            raise ValueError(f"{path}: tensor {name} spans bytes {start}..{end}, expected {expected} bytes inside the data")
        # bytearray gives torch.frombuffer a writable buffer; the copy also detaches it from `raw`.
        tensor = torch.frombuffer(bytearray(data[start:end]), dtype=dtype) if expected else torch.empty(0, dtype=dtype)
        tensors[name] = tensor.reshape(shape)
    return tensors


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    directory = Path(directory)
    if (directory / "model.safetensors").is_file():
        return read_safetensors(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {directory}")


def load_gpt2(gpt_cls, directory, attention: str = "manual"):
    """Build a GPT with the folder's config.json and copy every weight, transposing the Conv1D ones."""
    from lm.model import GPTConfig

    directory = Path(directory)
    hf = json.loads((directory / "config.json").read_text())
    if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise ValueError(f"layer_norm_epsilon {hf['layer_norm_epsilon']} differs from the 1e-5 that lm.model uses")
    cfg = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                    n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True, attention=attention)
    model = gpt_cls(cfg)
    source = {name.removeprefix("transformer."): tensor for name, tensor in read_state_dict(directory).items()}
    target = model.state_dict()
    missing = [name for name in target if name not in source and name != "lm_head.weight"]
    if missing:
        raise ValueError(f"checkpoint in {directory} lacks {len(missing)} GPT-2 tensors, first {missing[:3]}")
    with torch.no_grad():
        for name, tensor in target.items():
            if name == "lm_head.weight":
                continue  # tied to wte.weight, copied through it
            value = source[name]
            if name.endswith(CONV1D_SUFFIXES):
                value = value.t()  # Conv1D (in, out) -> Linear (out, in)
            if value.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)}, model shape {tuple(tensor.shape)}")
            tensor.copy_(value)
    return model
