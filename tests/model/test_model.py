import pytest
import torch

from napari_ultratinysam.core.config import ModelConfig, load_config, resolve_model_config
from napari_ultratinysam.model.build import build_model, mac_table, param_table


def test_paper_preset_size_matches_the_paper(paper_model):
    total = dict(param_table(paper_model))["total"]
    macs = dict(mac_table(paper_model))["total"]
    assert abs(total - 5.60e6) / 5.60e6 < 0.05, total
    assert abs(macs - 0.31e9) / 0.31e9 < 0.05, macs
    assert dict(param_table(paper_model))["image_encoder.trunk"] == 1_054_784


def test_shapes_and_token_semantics(tiny_model):
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        feats = tiny_model.encode(x)
        logits, iou, obj = tiny_model.decode(feats, torch.rand(2, 3, 2) * 128, torch.tensor([[1, 0, 1]] * 2))
    assert feats["embed"].shape[-2:] == (8, 8)
    assert logits.shape == (2, 4, 32, 32) and iou.shape == (2, 4) and obj.shape == (2, 1)
    assert torch.all((iou >= 0) & (iou <= 1))


def test_dense_prompt_is_no_mask_embed_not_zeros(tiny_model):
    pe = tiny_model.prompt_encoder
    dense = pe.dense_embedding(1)
    assert torch.allclose(dense[0, :, 3, 5], pe.no_mask_embed.weight[0])
    m = torch.randn(1, 1, 32, 32)
    with_flag = pe.dense_embedding(1, m, torch.zeros(1))
    assert torch.allclose(with_flag, dense)


def test_one_padding_token_and_label_embeddings(tiny_model):
    pe = tiny_model.prompt_encoder
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    sp = pe.embed_points(coords, torch.tensor([[2, 3]]))
    assert sp.shape[1] == 3  # two box corners + exactly one padding token
    assert torch.allclose(sp[0, 2], pe.not_a_point_embed.weight[0])
    # a positive and a negative click at the same place differ exactly by the two label embeddings
    a = pe.embed_points(coords[:, :1], torch.tensor([[1]]))[0, 0]
    b = pe.embed_points(coords[:, :1], torch.tensor([[0]]))[0, 0]
    assert torch.allclose(a - b, pe.point_embeddings[1].weight[0] - pe.point_embeddings[0].weight[0], atol=1e-6)


def test_builds_are_deterministic():
    a, b = build_model("tiny_test"), build_model("tiny_test")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_config_yaml_overrides_and_errors(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("model:\n  trunk: mobilevit_xs\n  neck_dim: 32\n")
    cfg = load_config(ModelConfig, p, ["neck_dim=48", "fpn_top_down=false"], section="model")
    assert cfg.neck_dim == 48 and cfg.fpn_top_down is False
    with pytest.raises(ValueError, match="unknown config key bogus"):
        load_config(ModelConfig, p, ["bogus=1"], section="model")
    with pytest.raises(ValueError, match="neck_dim: expected int"):
        load_config(ModelConfig, p, ["neck_dim=abc"], section="model")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        resolve_model_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="unknown trunk"):
        build_model(ModelConfig(trunk="resnet"))
