"""The retrieval models (a module per method, RetrievalNet underneath): heads, ablations, padding, encoders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rswb.models.fisvl import FGIS, FISVLNet, SceneFineGrainedBranch
from rswb.models.kamcl import KAMCLNet
from rswb.models.retrieval import METHODS, RetrievalNet, feature_levels, level_channels, retrieval_net
from rswb.registry import create_model

CH = {"low": 6, "mid": 8, "high": 10, "pooled": 12}


def levels(b: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"low": torch.rand(b, 6, 14, 14, generator=g), "mid": torch.rand(b, 8, 7, 7, generator=g),
            "high": torch.rand(b, 10, 4, 4, generator=g), "pooled": torch.rand(b, 12, generator=g)}


def text(b: int = 5, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, length, 9, generator=g)
    mask = torch.arange(length)[None] < torch.tensor([7, 3, 5, 1, 6])[:b, None]
    return states, mask


# The options each method's builder takes beyond the shared ones (a small graph for FISVL, tags for KAMCL).
OWN = {"vsepp": lambda tags: {}, "clip": lambda tags: {}, "fisvl": lambda tags: {"graph_width": 8},
       "kamcl": lambda tags: {"num_tags": tags}}


def batch(num_tags: int = 0, b: int = 5) -> dict:
    states, mask = text(b)
    out = {"levels": levels(b), "states": states, "mask": mask}
    if num_tags:
        out["tags"] = (torch.rand(b, num_tags, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_normalised_embeddings_of_one_size(method):
    torch.manual_seed(0)
    tags = 11 if method == "kamcl" else 0
    model = retrieval_net(method, channels=CH, text_dim=9, embed_dim=16, **OWN[method](tags)).eval()
    b = batch(tags)
    out = model(b)
    assert out["image_emb"].shape == (5, 16) and out["text_emb"].shape == (5, 16)
    torch.testing.assert_close(out["image_emb"].norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out["text_emb"].norm(dim=1), torch.ones(5))
    torch.testing.assert_close(model.encode_image(b), out["image_emb"])
    torch.testing.assert_close(model.encode_text(b), out["text_emb"])
    if method == "kamcl":
        assert out["image_concepts"].shape == (5, 11) and out["text_concepts"].shape == (5, 11)
    # Gradients reach every trainable parameter through the two embeddings.
    model.train()
    o = model(b)
    (o["image_emb"] @ o["text_emb"].t()).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("method", METHODS)
def test_padding_never_changes_a_caption(method):
    torch.manual_seed(0)
    model = retrieval_net(method, channels=CH, text_dim=9, embed_dim=16, **OWN[method](0)).eval()
    states, mask = text()
    junk = states.clone()
    junk[~mask] = 1e4  # garbage in every padded position
    longer = torch.cat([junk, torch.full((5, 3, 9), -7.0)], 1)
    longer_mask = torch.cat([mask, torch.zeros(5, 3, dtype=torch.bool)], 1)
    a = model.encode_text({"states": states, "mask": mask})
    b = model.encode_text({"states": longer, "mask": longer_mask})
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ablations_remove_their_components():
    full = retrieval_net("fisvl", channels=CH, text_dim=9, embed_dim=16, graph_width=8)
    assert isinstance(full, FISVLNet) and full.method == "fisvl"
    assert full.local is not None and full.fgis is not None
    bare = retrieval_net("fisvl", channels=CH, text_dim=9, embed_dim=16, local_branch=False, fgis_steps=0,
                         graph_width=8)
    assert bare.local is None and bare.fgis is None
    assert sum(p.numel() for p in bare.parameters()) < sum(p.numel() for p in full.parameters())
    assert bare(batch())["image_emb"].shape == (5, 16)
    k = retrieval_net("kamcl", channels=CH, text_dim=9, embed_dim=16, hierarchical=False, num_tags=0)
    assert isinstance(k, KAMCLNet) and k.pooled_projection() is k.img_head
    out = k(batch())
    assert k.aggregator is None and "image_concepts" not in out
    with pytest.raises(KeyError, match="tags"):
        retrieval_net("kamcl", channels=CH, text_dim=9, embed_dim=16, num_tags=4)(batch())
    with pytest.raises(ValueError, match="unknown retrieval method"):
        retrieval_net("sift", channels=CH, text_dim=9, embed_dim=16)


def test_fisvl_image_embedding_depends_on_every_node():
    torch.manual_seed(0)
    model = retrieval_net("fisvl", channels=CH, text_dim=9, embed_dim=16, graph_width=8).eval()
    b = batch()
    base = model.encode_image(b)
    for key in ("low", "mid", "high", "pooled"):
        changed = {**b, "levels": {**b["levels"], key: b["levels"][key] + 1.0}}
        assert not torch.allclose(model.encode_image(changed), base), key


def test_local_branch_1x1_conv_commutes_with_pooling():
    # The branch runs its 1x1 convolution on the pooled grid; that is exact because both are linear.
    branch = SceneFineGrainedBranch(6, 16, width=8, grid=4)
    x = torch.rand(3, 6, 14, 14, dtype=torch.float64)
    conv = branch.convs[0].double()
    torch.testing.assert_close(conv(F.adaptive_avg_pool2d(x, 4)), F.adaptive_avg_pool2d(conv(x), 4))


def test_fgis_keeps_shape_and_mixes_nodes():
    torch.manual_seed(0)
    g = FGIS(8, steps=2)
    x = torch.randn(2, 5, 8)
    y = g(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 4] += 3.0  # change another node: the first one's refined value follows
    assert not torch.allclose(g(x2)[:, 0], y[:, 0])


def test_encoders_inside_the_model_match_cached_inputs():
    torch.manual_seed(0)
    model = retrieval_net("clip", backbone="small_cnn", pretrained=False, text_encoder="gru_text", vocab_size=20,
                          embed_dim=16).eval()
    images = torch.rand(2, 3, 64, 64)
    lv = feature_levels(model.backbone, images)
    assert set(lv) == {"low", "mid", "high", "pooled"} and lv["low"].shape[-1] == 8 and lv["high"].shape[-1] == 2
    assert level_channels(model.backbone) == {k: v.shape[1] for k, v in lv.items()}
    torch.testing.assert_close(model.encode_image({"image": images}), model.encode_image({"levels": lv}))
    ids = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0]])
    mask = ids > 0
    states = model.text_encoder.token_states(ids, mask)
    torch.testing.assert_close(model.encode_text({"tokens": {"input_ids": ids, "attention_mask": mask}}),
                               model.encode_text({"states": states, "mask": mask}))
    with pytest.raises(KeyError, match="no 'levels'"):
        retrieval_net("clip", channels=CH, text_dim=9).encode_image({"image": images})


def test_builder_needs_channels_or_a_backbone():
    with pytest.raises(ValueError, match="channels"):
        retrieval_net("clip")
    m = create_model("retrieval_net", method="vsepp", channels=CH, text_dim=9, embed_dim=8)
    assert isinstance(m, RetrievalNet) and m.embed_dim == 8


def test_an_option_a_method_does_not_take_is_an_error_not_dropped():
    with pytest.raises(ValueError, match="retrieval method clip does not take fgis_steps; it takes"):
        retrieval_net("clip", channels=CH, text_dim=9, fgis_steps=3)
    with pytest.raises(ValueError, match="retrieval method kamcl does not take graph_width"):
        retrieval_net("kamcl", channels=CH, text_dim=9, graph_width=8)
