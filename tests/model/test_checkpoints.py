import pytest
import torch

from napari_ultratinysam.model.build import build_model
from napari_ultratinysam.model.checkpoints import CheckpointError, load_model, read_checkpoint, save_checkpoint


def test_round_trip_keeps_weights_and_config(tmp_path, tiny_model):
    p = save_checkpoint(tiny_model, tmp_path / "m.safetensors", extra={"step": 3})
    m2 = load_model(p)
    assert m2.cfg == tiny_model.cfg
    for (k, a), b in zip(tiny_model.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert read_checkpoint(p)[2] == {"step": 3}
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_fp16_checkpoint_loads_as_float32(tmp_path, tiny_model):
    p = save_checkpoint(tiny_model, tmp_path / "h.safetensors", half=True)
    m2 = load_model(p)
    w = m2.mask_decoder.iou_token.weight
    assert w.dtype == torch.float32
    assert torch.allclose(w, tiny_model.mask_decoder.iou_token.weight, atol=1e-2)


def test_missing_truncated_foreign_and_mismatched(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match=r"nope.safetensors: file not found"):
        load_model(tmp_path / "nope.safetensors")
    p = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    data = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc.safetensors: not a readable safetensors file"):
        load_model(tmp_path / "trunc.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match=r"foreign.safetensors: no UltraTinySAM config"):
        load_model(tmp_path / "foreign.safetensors")
    other = build_model("ultratinysam")
    with pytest.raises(CheckpointError,
                       match=r"m.safetensors: does not match the ultratinysam architecture: \d+ missing"):
        load_model(p, config=other.cfg)
    from napari_ultratinysam.core.config import ModelConfig

    wider = ModelConfig(**{**tiny_model.cfg.__dict__, "neck_dim": 48})
    with pytest.raises(CheckpointError, match=r"m.safetensors: .* has shape .* expects"):
        load_model(p, config=wider)


def test_failed_save_leaves_previous_file_intact(tmp_path, tiny_model, monkeypatch):
    p = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    before = p.read_bytes()
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tiny_model, p)
    assert p.read_bytes() == before


def test_average_checkpoints(tmp_path, tiny_model):
    import copy

    from napari_ultratinysam.model.checkpoints import average_checkpoints

    a = tiny_model
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    pa, pb = save_checkpoint(a, tmp_path / "a.safetensors"), save_checkpoint(b, tmp_path / "b.safetensors")
    m = average_checkpoints([pa, pb], out=tmp_path / "soup.safetensors", extra={"why": "test"})
    for (k, va), vb, vm in zip(a.state_dict().items(), b.state_dict().values(), m.state_dict().values()):
        if va.is_floating_point():
            assert torch.allclose(vm, (va + vb) / 2, atol=1e-6), k
    cfg, sd, extra = read_checkpoint(tmp_path / "soup.safetensors")
    assert extra["why"] == "test" and extra["averaged"] == [str(pa), str(pb)]
    assert torch.equal(load_model(tmp_path / "soup.safetensors").state_dict()[k], m.state_dict()[k])
    with pytest.raises(ValueError, match="no checkpoints"):
        average_checkpoints([])
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(pb), framework="pt") as f:
        meta = f.metadata()
    other = tmp_path / "other.safetensors"  # b's metadata, one weight missing
    save_file({k: v.contiguous() for k, v in list(b.state_dict().items())[1:]}, str(other), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        average_checkpoints([pa, other])
