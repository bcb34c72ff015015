"""A static key/value cache for lm.model.GPT: preallocated once, written in place, left padding aware.

    cache = KVCache(model.config, batch_size=2)
    cache.reset(pad=torch.tensor([4, 0]))               # row 0 is left-padded by 4 slots
    logits, _ = model(prompts, cache=cache)             # prefill: (B, T0) -> keys/values of slots 0..T0-1
    logits, _ = model(next_ids, cache=cache)            # decode: (B, 1), attends to every filled slot

Each layer owns k and v of shape (B, H, T_max, D), allocated in the constructor and never resized.
A forward pass writes its new keys and values at slots [length, length + T) and attends to slots
[0, length + T). A batch of prompts of different lengths is left-padded to a common length, so
every row's newest token sits in the same slot. `pad[b]` counts row b's padding slots, which no
query may attend to. Row b's position ids start at 0 at its first real token, so a padded row
computes what the same prompt computes alone. The cache does not crop: when it is full, the caller
starts again from a shorter context (infer/generate.py keeps the last half of the block).
"""

import torch


class KVCache:
    def __init__(self, config, batch_size: int, max_len: int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.max_len = max_len or config.block_size
        if self.max_len > config.block_size:
            raise ValueError(f"max_len {self.max_len} exceeds the model's block_size {config.block_size}: the model "
                             f"has no position embedding past it")
        head_dim = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, self.max_len, head_dim)  # (B, H, T_max, D)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.batch_size = batch_size
        self.length = 0
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.has_padding = False
        self._mask_key, self._mask = None, None

    def reset(self, pad: torch.Tensor | None = None) -> None:
        """Forget every slot; pad (B,) gives the left padding of the prompts that the next forward pass writes."""
        self.length = 0
        self.pad = torch.zeros_like(self.pad) if pad is None else pad.to(self.pad.device, torch.long)
        self.has_padding = bool(self.pad.any())
        self._mask_key, self._mask = None, None

    def positions(self, T: int) -> torch.Tensor:
        """Position ids (B, T) of the next T slots: slot index minus the row's padding, 0 for padding slots."""
        slots = torch.arange(self.length, self.length + T, device=self.pad.device)  # (T,)
        return (slots.unsqueeze(0) - self.pad.unsqueeze(1)).clamp(min=0)  # (1, T) - (B, 1) -> (B, T)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, D) at the next T slots; return every filled slot of the layer, (B, H, length + T, D)."""
        T = k.size(2)
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"the cache has {self.max_len} slots; {self.length} are filled and {T} more do not fit")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def attention_mask(self, T: int) -> torch.Tensor | None:
        """(B, 1, T, length + T), True where the query of new slot i may attend to key slot j, or None for all.

        Causal (j <= length + i) and not padding (j >= pad[b]). A query may also always attend to its own
        slot, so the query of a padding slot has one key and a finite softmax; its output is never used.
        One decoding step without padding may attend everywhere, and None lets attention skip the mask.
        Every layer of a forward pass asks for the same mask, so it is built once per (length, T).
        """
        if self._mask_key == (self.length, T):
            return self._mask
        self._mask_key, self._mask = (self.length, T), self._build_mask(T)
        return self._mask

    def _build_mask(self, T: int) -> torch.Tensor | None:
        if T == 1 and not self.has_padding:
            return None
        end = self.length + T
        query_slots = torch.arange(self.length, end, device=self.pad.device).view(1, T, 1)  # (1, T, 1)
        key_slots = torch.arange(end, device=self.pad.device).view(1, 1, end)  # (1, 1, length + T)
        allowed = (key_slots <= query_slots) & (key_slots >= self.pad.view(-1, 1, 1))  # (B, T, length + T)
        allowed |= key_slots == query_slots
        return allowed.unsqueeze(1)  # (B, 1, T, length + T): the same for every head

    def truncate(self, length: int) -> None:
        """Keep only the first `length` slots (speculative decoding drops the keys of rejected draft tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} filled slots to {length}")
        self.length = length

    def advance(self, T: int) -> None:
        """Count T more filled slots; GPT.forward calls this after every layer has written them."""
        self.length += T
