"""The deployable IMX500 graph computes exactly what the float model computes, and keeps to the converter's rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_ultratinysam.compression.deploy_graph import INPUT_SCALE, DeployGraph, make_prompt, to_graph_input
from napari_ultratinysam.core.transforms import letterbox, normalize
from napari_ultratinysam.model.build import build_model
from napari_ultratinysam.model.ultratinysam import select_masks


def _images():
    from skimage import data

    rng = np.random.default_rng(0)
    imgs = [letterbox(data.astronaut(), 128)[0], letterbox(data.coffee(), 128)[0],
            rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)]
    return imgs


def _float_path(model, image_uint8, prompt, multimask):
    """The float model exactly as the predictor runs it: normalize -> encode -> decode -> select tokens."""
    coords = torch.tensor([prompt.points], dtype=torch.float32)
    labels = torch.tensor([prompt.labels], dtype=torch.float32)
    with torch.no_grad():
        logits, iou, obj = model.decode(model.encode(normalize(image_uint8)), coords, labels)
    logits, iou = select_masks(logits, iou, multimask)
    return logits, iou, obj


@pytest.mark.parametrize("preset", ["tiny_test", "ultratinysam"])
@pytest.mark.parametrize("mode,kw,k", [("center-point", {}, 3),
                                       ("points", {"points": [(30, 40), (90, 80, 0)]}, 1),
                                       ("points", {"points": [(100, 20)]}, 3),
                                       ("box", {"box": (20, 30, 100, 110)}, 1)])
def test_deploy_graph_equals_float_decode(preset, mode, kw, k):
    model = build_model(preset)
    prompt = make_prompt(mode, **kw)
    graph = DeployGraph(model, prompt)
    try:
        assert graph.K == k
        for img in _images():
            with torch.no_grad():
                masks, iou, obj = graph(to_graph_input(img))
            ref = _float_path(model, img, prompt, graph.multimask)
            assert masks.shape == (1, k, 32, 32) and iou.shape == (1, k) and obj.shape == (1, 1)
            for a, b in zip((masks, iou, obj), ref):
                assert float((a - b).abs().max()) < 1e-4, f"{preset} {mode}: deploy graph != float model"
    finally:
        graph.release()


def test_center_point_is_the_frame_centre_and_one_padding_token(tiny_model):
    p = make_prompt("center-point")
    assert p.points == ((64.0, 64.0),) and p.labels == (1,)
    g = DeployGraph(tiny_model, p)
    md = tiny_model.mask_decoder
    # obj + iou + 4 mask tokens + 1 click + exactly one padding token
    assert g.num_tokens == 1 + 1 + md.num_mask_tokens + 1 + 1
    # dense prompt = no_mask_embed, not zeros
    assert torch.equal(g.dense.flatten(), tiny_model.prompt_encoder.no_mask_embed.weight.flatten())
    assert g.mask_indices == (1, 2, 3)
    g.release()
    gb = DeployGraph(tiny_model, make_prompt("box", box=(10, 10, 50, 60)))
    assert gb.num_tokens == 1 + 1 + md.num_mask_tokens + 2 + 1 and gb.mask_indices == (0,)
    gb.release()


def test_prompt_errors():
    with pytest.raises(ValueError, match="outside"):
        make_prompt("points", points=[(200, 5)])
    with pytest.raises(ValueError, match="x0 < x1"):
        make_prompt("box", box=(50, 10, 20, 60))
    with pytest.raises(ValueError, match="unknown prompt mode"):
        make_prompt("mask")
    with pytest.raises(ValueError, match="positive"):
        make_prompt("points", points=[(10, 10, 0)])
    with pytest.raises(ValueError, match="at least one point"):
        make_prompt("points", points=[])


def test_same_parameters_not_a_copy(tiny_model):
    g = DeployGraph(tiny_model)
    own = {id(p) for p in tiny_model.parameters()}
    extra = [n for n, p in g.named_parameters() if id(p) not in own]
    # only the fixed structural pickers / folded query weights are the graph's own (none trainable)
    assert all(n.startswith(("sel_", "qfold")) for n in extra), extra
    assert not any(p.requires_grad for n, p in g.named_parameters() if n in extra)
    x = to_graph_input(_images()[0])
    with torch.no_grad():
        before = g(x)[0].clone()
        tiny_model.mask_decoder.output_upscaling[0].weight.mul_(1.5)  # a dynamic-path weight
        after = g(x)[0]
        tiny_model.prompt_encoder.point_embeddings[1].weight.add_(0.5)  # a prompt constant: needs refresh()
        g.refresh()
        ref = g.reference(x)[0]
        after2 = g(x)[0]
    assert not torch.allclose(before, after)
    assert float((after2 - ref).abs().max()) < 1e-4
    g.release()


def test_release_restores_the_fast_trunk(tiny_model):
    g = DeployGraph(tiny_model)
    g.release()
    with torch.no_grad():
        f = tiny_model.encode(torch.zeros(2, 3, 128, 128))  # batch 2 needs the dynamic form back
    assert f["embed"].shape[0] == 2


def test_input_scale_matches_the_sensor():
    img = np.full((128, 128, 3), 255, np.uint8)
    x = to_graph_input(img)
    assert x.shape == (1, 3, 128, 128) and float(x.max()) == pytest.approx(255 * INPUT_SCALE)
    with pytest.raises(ValueError, match="uint8"):
        to_graph_input(img.astype(np.float32))


def test_float_onnx_keeps_to_the_converter_rules(tiny_model, tmp_path):
    """Static checks of the exported float graph against imx500-ops.md: no DepthToSpace/GroupNorm, every
    MatMul with a constant weight (a Linear) sees a 4-D (or 2-D) input, no MatMul/Gemm with a constant first
    input, batch 1 as the first dim everywhere."""
    import onnx
    from onnx import shape_inference

    g = DeployGraph(tiny_model)
    path = tmp_path / "g.onnx"
    with torch.no_grad():
        torch.onnx.export(g, (torch.zeros(1, 3, 128, 128),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=g.output_names, do_constant_folding=True)
    g.release()
    m = shape_inference.infer_shapes(onnx.load(str(path)))
    consts = {i.name for i in m.graph.initializer}
    consts |= {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    ranks = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        ranks[vi.name] = [d.dim_value for d in dims]
    ops = {n.op_type for n in m.graph.node}
    assert not ops & {"DepthToSpace", "GroupNormalization", "InstanceNormalization"}, ops
    for n in m.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            assert n.input[0] not in consts, f"{n.name}: constant first input"
            if n.input[1] in consts:
                assert len(ranks.get(n.input[0], [0, 0, 0, 0])) in (2, 4), f"{n.name}: Linear on a 3-D input"
        for o in n.output:
            shape = ranks.get(o)
            if shape and len(shape) > 1:
                assert shape[0] == 1, f"{n.name}: output {o} has batch dim {shape[0]}"
