import pytest
import timm
import torch

from napari_ultratinysam.model.trunks import (
    EfficientNetLite0,
    MobileViTXS,
    efficientnet_lite0_imagenet_state_dict,
    load_timm_mobilevit_state_dict,
    map_efficientnet_lite0_keys,
)


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("form", ["fast", "safe"])
def test_mobilevit_matches_timm_features(form):
    torch.manual_seed(0)
    ref = timm.create_model("mobilevit_xs", pretrained=False, features_only=True, out_indices=(1, 2, 3)).eval()
    _randomise_bn(ref)
    ours = MobileViTXS().eval()
    assert load_timm_mobilevit_state_dict(ours, ref.state_dict()) == []
    ours.set_attention_form(form)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert [t.shape[1] for t in b] == [48, 64, 80]
    for ta, tb in zip(a, b):
        assert ta.shape == tb.shape
        assert (ta - tb).abs().max().item() < 1e-4


def test_mobilevit_loads_full_timm_classifier_state_dict():
    full = timm.create_model("mobilevit_xs", pretrained=False)
    ours = MobileViTXS()
    ignored = load_timm_mobilevit_state_dict(ours, full.state_dict())
    assert all(k.startswith(("stages.4", "final_conv", "head")) for k in ignored)
    assert torch.equal(ours.stem.conv.weight, full.state_dict()["stem.conv.weight"])
    assert sum(p.numel() for p in ours.parameters()) == 1_054_784


def test_mobilevit_state_dict_mismatch_is_one_clear_error():
    sd = timm.create_model("mobilevit_xs", pretrained=False).state_dict()
    sd.pop("stages.3.1.norm.weight")
    with pytest.raises(ValueError, match="stages.3.1.norm.weight"):
        load_timm_mobilevit_state_dict(MobileViTXS(), sd)


def test_efficientnet_lite0_weights_classify_the_cat():
    from skimage.data import chelsea

    from napari_ultratinysam.core.transforms import normalize, resize_uint8

    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(efficientnet_lite0_imagenet_state_dict(), strict=True)
    x = normalize(resize_uint8(chelsea(), (224, 224)))
    with torch.no_grad():
        top5 = model(x).topk(5).indices[0].tolist()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cats & set(top5), top5


def test_efficientnet_trunk_uses_the_same_weights_truncated():
    trunk = EfficientNetLite0(pretrained=True).eval()
    sd = efficientnet_lite0_imagenet_state_dict()
    assert torch.equal(trunk.conv_stem.weight, sd["conv_stem.weight"])
    assert torch.equal(trunk.blocks[4][0].conv_pw.weight, sd["blocks.4.0.conv_pw.weight"])
    with torch.no_grad():
        outs = trunk(torch.zeros(1, 3, 128, 128))
    assert [tuple(o.shape[1:]) for o in outs] == [(24, 32, 32), (40, 16, 16), (112, 8, 8)]


def test_efficientnet_key_mapping_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite0 key"):
        map_efficientnet_lite0_keys({"_foo.weight": torch.zeros(1)})
