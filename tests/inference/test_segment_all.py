"""segment_all: the coins sample, the filters and views, the batched decoder, and `utsam segment-all`."""
import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.cli.main import main
from napari_ultratinysam.core.paths import sample_path
from napari_ultratinysam.core.transforms import geometry_for
from napari_ultratinysam.inference import segment_all as sa
from napari_ultratinysam.inference.batched_decoder import batched_decoder
from napari_ultratinysam.inference.predictor import Predictor
from napari_ultratinysam.model.checkpoints import save_checkpoint


@pytest.fixture(scope="module")
def default_predictor():
    return Predictor.from_default(backend="torch")


def _coins():
    img = np.asarray(Image.open(sample_path("coins.png")))
    gt = np.asarray(Image.open(sample_path("coins_instances.png")))
    return img, [gt == i for i in range(1, int(gt.max()) + 1)]


def test_coins_at_least_20_of_24_found(default_predictor):
    img, gts = _coins()
    assert len(gts) == 24
    res = sa.segment_all(default_predictor, img, batched=batched_decoder(default_predictor))
    assert res.labels.dtype == np.uint16 and res.labels.shape == img.shape[:2]
    found, total = sa.recall_at(res.labels, gts, 0.5)
    assert total == 24 and found >= 20, f"{found} of 24 coins found at IoU >= 0.5"
    ids = np.unique(res.labels)
    assert list(ids[1:]) == list(range(1, len(res) + 1))  # consecutive ids, one score each
    assert len(res.scores) == len(res.stability) == len(res.boxes) == len(res) >= 20
    assert res.num_views > 1  # the zoom-in tiles ran


def test_batched_and_per_click_decoding_agree(default_predictor):
    """The batched decoder gives the same proposals as one backend.decode call per click."""
    img, _ = _coins()
    p = sa.SegmentAllParams(zoom_levels=0, points_per_side=6)
    a = sa.segment_all(default_predictor, img, p)
    b = sa.segment_all(default_predictor, img, p, batched=batched_decoder(default_predictor))
    assert a.prompts == b.prompts == 36
    assert len(a) == len(b) and len(a) > 0
    assert np.mean(a.labels == b.labels) > 0.99


def test_predictor_state_is_left_alone(default_predictor):
    img, _ = _coins()
    other = np.zeros((40, 50, 3), np.uint8)
    default_predictor.set_image(other)
    key = default_predictor._key
    sa.segment_all(default_predictor, img, sa.SegmentAllParams(zoom_levels=0, points_per_side=2))
    assert default_predictor._key == key  # the annotator's current image stays current
    default_predictor.predict(points=[[10, 10]])


def test_cancel_and_progress(default_predictor):
    img, _ = _coins()
    seen = []
    res = sa.segment_all(default_predictor, img, sa.SegmentAllParams(points_per_side=2, tile_points_per_side=1),
                         progress=lambda d, t: seen.append((d, t)), cancelled=lambda: len(seen) >= 2)
    assert len(seen) == 2 and seen[0][1] > 2 and res.num_views == 2


def test_tiles_cover_the_image_and_overlap():
    boxes = sa.tile_boxes(300, 400, 2, 512 / 1500)
    assert len(boxes) == 16
    cover = np.zeros((300, 400), int)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 300
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1 and cover.max() >= 2
    assert sa.auto_zoom_levels(100, 100, 128, 4) == 0
    assert sa.auto_zoom_levels(303, 384, 128, 4) == 2
    assert sa.auto_zoom_levels(1024, 1024, 128, 2) == 2


def test_stability_score_is_sams():
    lg = np.full((2, 4, 4), -5.0, np.float32)
    lg[0, :2, :2] = 5.0  # crisp: 4 cells above +1, 4 above -1
    lg[1, :2, :2] = 0.5  # soft: none above +1 (offset 1), 4 above -1
    s = sa.stability_scores(lg, 1.0)
    assert s[0] == pytest.approx(1.0) and s[1] == pytest.approx(0.0)
    assert sa.stability_scores(np.full((1, 3, 3), -9.0, np.float32), 1.0)[0] == 1.0


def test_box_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = sa.box_nms(boxes, np.array([0.5, 0.9, 0.1]), 0.7)
    assert list(keep) == [1, 2]


def _square_candidates(squares, ranks):
    """One 64 x 64 view at the model's 128 px (a low-res cell = 2 image px): candidates that are squares of cells
    (r0, c0, r1, c1), with the given ranks."""
    geo = geometry_for((64, 64), 128)
    lowres = np.full((len(squares), 32, 32), -10.0, np.float32)
    boxes = np.zeros((len(squares), 4), np.float32)
    for i, (r0, c0, r1, c1) in enumerate(squares):
        lowres[i, r0:r1, c0:c1] = 10.0
        boxes[i] = (2 * c0, 2 * r0, 2 * c1, 2 * r1)
    n = len(squares)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cand = sa._Candidates(lowres, np.full(n, 0.9, np.float32), np.full(n, 0.9, np.float32), boxes, areas,
                          np.zeros(n, np.int64), np.zeros(n, np.int64), np.asarray(ranks, np.float32))
    return cand, [(0, (0, 0, 64, 64))], [geo]


def test_paint_is_best_first_and_drops_variants():
    """The best proposal keeps all its pixels (a worse small mask inside it is not painted over it); a worse mask
    that mostly overlaps a better one is dropped; one that overlaps it a little keeps its free part."""
    cand, views, geos = _square_candidates([(0, 0, 20, 20), (2, 2, 6, 6), (16, 16, 28, 28), (1, 1, 19, 21)],
                                           [1.0, 0.5, 0.8, 0.9])
    empty = sa.SegmentAllResult(np.zeros((64, 64), np.uint16), *(np.zeros(0),) * 4)
    res = sa._paint(cand, views, geos, (64, 64), sa.SegmentAllParams(min_area=4), empty, {})
    assert len(res) == 2
    assert (res.labels[:40, :40] == 1).all()  # the best square, whole, first
    assert (res.labels[40:56, 40:56] == 2).all() and (res.labels[32:40, 32:40] == 1).all()
    assert (res.labels[56:, :] == 0).all()


def test_rank_prefers_the_smaller_mask_and_penalises_token_2_and_cuts():
    p = sa.SegmentAllParams()
    stab = np.full(4, 0.8, np.float32)
    r = sa.candidate_rank(stab, np.array([0.01, 0.5, 0.01, 0.01]), np.array([1, 1, 2, 1]),
                          np.array([False, False, False, True]), p)
    assert r[0] > r[1] and r[0] > r[2] and r[0] > r[3]
    assert r[0] - r[1] == pytest.approx(p.area_weight * np.log(50), rel=1e-5)
    with pytest.raises(ValueError, match="token_bias"):
        sa.SegmentAllParams(token_bias=(0.0, 1.0)).check()


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        sa.SegmentAllParams(pred_iou_thresh=1.5).check()
    with pytest.raises(ValueError, match="points_per_side"):
        sa.SegmentAllParams(points_per_side=0).check()
    with pytest.raises(ValueError, match="bogus: unknown"):
        sa.SegmentAllParams.from_overrides({"bogus": 1})


def test_recall_at_counts_matches():
    labels = np.zeros((10, 10), np.uint16)
    labels[:5, :5] = 1
    a = np.zeros((10, 10), bool)
    a[:5, :4] = True  # IoU 0.8 with proposal 1
    b = np.zeros((10, 10), bool)
    b[6:, 6:] = True  # nothing there
    assert sa.recall_at(labels, [a, b]) == (1, 2)


# ------------------------------------------------------------------ CLI


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    return save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")


def _disc_image(path, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (80, 100, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:80, :100]
    img[(yy - 40) ** 2 + (xx - 50) ** 2 < 20 ** 2] = 220
    Image.fromarray(img).save(path)


def test_cli_writes_uint16_pngs_for_a_folder(tmp_path, ckpt, capsys):
    src = tmp_path / "images"
    src.mkdir()
    _disc_image(src / "a.png", 0)
    _disc_image(src / "b.jpg", 1)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = main(["segment-all", str(src), "-o", str(out), "--checkpoint", str(ckpt), "--backend", "torch",
               "--pred-iou-thresh", "0", "--stability-thresh", "0", "--min-area", "0"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    for name in ("a.png", "b.png"):
        with Image.open(out / name) as im:
            lab = np.asarray(im)
        assert lab.dtype == np.uint16 and lab.shape == (80, 100)
    assert capsys.readouterr().out.count("objects") == 2


def test_cli_single_image_with_onnx_backend(tmp_path, ckpt):
    """onnxruntime float: the batched decoder graph is exported from the checkpoint and run by onnxruntime."""
    img = tmp_path / "one.png"
    _disc_image(img, 2)
    out = tmp_path / "out"
    assert main(["segment-all", str(img), "-o", str(out), "--checkpoint", str(ckpt), "--backend", "onnx",
                 "--precision", "float", "--zoom-levels", "0", "--points-per-side", "4"]) == 0
    with Image.open(out / "one.png") as im:
        assert np.asarray(im).dtype == np.uint16


def test_cli_bad_inputs_are_one_line(tmp_path, ckpt, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment-all", str(empty), "-o", str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    dup = tmp_path / "dup"
    dup.mkdir()
    _disc_image(dup / "x.png", 0)
    _disc_image(dup / "x.jpg", 0)
    assert main(["segment-all", str(dup), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "x.jpg" in err and "x.png" in err and len(err.strip().splitlines()) == 1
    assert main(["segment-all", str(dup / "x.png"), "-o", str(tmp_path / "o"), "--checkpoint", str(ckpt),
                 "--backend", "torch", "--pred-iou-thresh", "2"]) == 2
    assert "pred_iou_thresh" in capsys.readouterr().err
