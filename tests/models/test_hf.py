"""Local Hugging Face checkpoints as backbone and text encoder (tiny random checkpoints written by the test)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from rswb.data.errors import DatasetNotFoundError  # noqa: E402
from rswb.models.retrieval import feature_levels, level_channels  # noqa: E402
from rswb.registry import create_model  # noqa: E402

WORDS = "a the of on in and red green blue white square circle triangle grass road beach lake sand field two three"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast, ResNetConfig, ResNetModel, SwinConfig, SwinModel

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])).save_pretrained(
        root / "resnet")
    SwinModel(SwinConfig(image_size=224, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                         window_size=7)).save_pretrained(root / "swin")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split(), "."]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    tok.save_pretrained(root / "bert")
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(root / "bert")
    return root


@pytest.mark.parametrize("name,strides", [("resnet", [4, 8, 16, 32]), ("swin", [4, 8, 16, 32])])
def test_vision_checkpoint_becomes_a_backbone(checkpoints, name, strides):
    bb = create_model("hf_backbone", path=str(checkpoints / name))
    assert sorted(f.stride for f in bb.feature_info) == strides
    x = torch.rand(2, 3, 224, 224)
    out = bb.forward_features(x)
    for f in bb.feature_info:
        assert out[f.name].shape == (2, f.channels, 224 // f.stride, 224 // f.stride)
    assert out["pooled"].shape == (2, bb.num_features)
    # The maps are the checkpoint's own hidden states of the ImageNet-normalised input.
    ref = bb.model(pixel_values=bb.normalize(x), output_hidden_states=True)
    states = getattr(ref, "reshaped_hidden_states", None) or ref.hidden_states
    torch.testing.assert_close(out["s32"], states[-1])
    lv = feature_levels(bb, x)
    assert level_channels(bb) == {k: v.shape[1] for k, v in lv.items()}


def test_text_checkpoint_becomes_a_text_encoder(checkpoints):
    enc = create_model("hf_text", path=str(checkpoints / "bert"))
    tok = enc.tokenize(["two red squares on the grass .", "a lake"])
    states = enc.token_states(tok["input_ids"], tok["attention_mask"])
    assert states.shape[:2] == tok["input_ids"].shape and states.shape[2] == enc.state_dim == 16
    assert not any(p.requires_grad for p in enc.transformer.parameters())  # frozen by default


def test_missing_checkpoint_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="checkpoint folder"):
        create_model("hf_backbone", path=str(tmp_path / "nowhere"))


def test_retrieval_trains_with_hugging_face_encoders(checkpoints, tmp_path, monkeypatch):
    import rswb.tasks  # noqa: F401  (registers "retrieval")
    from rswb.engine.launch import train_task

    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))
    opts = {"method": "clip", "backbone": "hf_backbone", "backbone_path": str(checkpoints / "resnet"),
            "text_encoder": "hf_text", "text_path": str(checkpoints / "bert"), "image_size": 64, "epochs": 1,
            "batch_size": 64, "progress": False}
    train_task("retrieval", opts, run_name="hf", runs_root=tmp_path)
    final = json.loads((tmp_path / "hf" / "metrics.json").read_text())
    assert 0 <= final["test"]["mR"] <= 100


def test_a_transformer_text_encoder_fine_tunes_inside_the_model(checkpoints, tmp_path, monkeypatch):
    # freeze_text=False: batches carry tokens and the (tiny) BERT trains with the heads, as MiniLM would on a GPU.
    import rswb.tasks  # noqa: F401  (registers "retrieval")
    from rswb.engine.launch import train_task

    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))
    opts = {"method": "clip", "backbone": "small_cnn", "pretrained": False, "image_size": 64, "text_encoder": "hf_text",
            "text_path": str(checkpoints / "bert"), "freeze_text": False, "epochs": 1, "batch_size": 64,
            "progress": False, "max_images": 60}
    res = train_task("retrieval", opts, run_name="ft", runs_root=tmp_path)
    enc = res.task.model.text_encoder
    assert enc is not None and all(p.requires_grad for p in enc.transformer.parameters())
    before = create_model("hf_text", path=str(checkpoints / "bert")).transformer.state_dict()
    after = enc.transformer.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)  # it moved
