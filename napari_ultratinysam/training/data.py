"""Training data: a weighted mix of datasets, cached once as letterboxed 128-px arrays, with augmentation.

Every image goes through :func:`napari_ultratinysam.core.transforms.letterbox` (the predictor's own preprocessing) and
every region/instance of every image is an object. Per sample: copy-paste of objects from another image,
horizontal flip, scale/crop jitter (zoom in = random crop, zoom out = smaller image + padding, always in the
letterbox layout: content at the top-left, zeros at the bottom/right), colour jitter; then ``objects_per_image``
objects are drawn. Test splits are refused for training.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_ultratinysam.core.transforms import letterbox, letterbox_masks
from napari_ultratinysam.training.config import AugConfig, DatasetSpec


def holdout_key(name: str) -> float:
    """Deterministic number in [0, 1) from an image name (md5), used for held-out parts."""
    return int(hashlib.md5(name.encode("utf-8")).hexdigest()[:8], 16) / 2 ** 32


def select_names(names: list[str], spec: DatasetSpec) -> list[int]:
    """Indices of ``names`` that ``spec`` uses (``take`` rest / holdout / all with ``holdout`` fraction)."""
    if spec.take not in ("rest", "holdout", "all"):
        raise ValueError(f"dataset {spec.path}: take must be rest, holdout or all, got {spec.take!r}")
    idx = []
    for i, n in enumerate(names):
        held = holdout_key(n) < spec.holdout
        if spec.take == "all" or (spec.take == "holdout") == held:
            idx.append(i)
    if spec.max_images > 0:
        idx = idx[: spec.max_images]
    return idx


class CachedSet:
    """One dataset spec as arrays at the model size: images (N,S,S,3) uint8, valid_hw (N,2), packed masks."""

    def __init__(self, images, valid_hw, mask_bits, obj_image, names, size, spec: DatasetSpec):
        self.images, self.valid_hw, self.mask_bits, self.obj_image = images, valid_hw, mask_bits, obj_image
        self.names, self.size, self.spec = list(names), int(size), spec
        order = np.argsort(obj_image, kind="stable")
        self.mask_bits, self.obj_image = mask_bits[order], obj_image[order]
        self.starts = np.searchsorted(self.obj_image, np.arange(len(self.images) + 1))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_objects(self) -> int:
        return len(self.obj_image)

    def masks(self, i: int) -> np.ndarray:
        bits = self.mask_bits[self.starts[i]:self.starts[i + 1]]
        s = self.size
        return np.unpackbits(bits, axis=1, count=s * s).reshape(-1, s, s).astype(bool)


def _cache_name(spec: DatasetSpec, size: int, min_px: int) -> str:
    key = json.dumps({"spec": asdict(spec), "size": size, "min_px": min_px, "v": 1}, sort_keys=True)
    stem = Path(spec.path.rstrip("/")).name or "data"
    return f"{stem}-{spec.split or 'all'}-{spec.take}-{hashlib.md5(key.encode()).hexdigest()[:10]}.npz"


def load_cached(spec: DatasetSpec, cache_dir: str | Path, size: int = 128, min_px: int = 20,
                for_training: bool = True, log=print) -> CachedSet:
    """Read ``spec`` through the dataset readers once, letterbox to ``size`` and cache it as one .npz."""
    from napari_ultratinysam.core.io import atomic_path
    from napari_ultratinysam.data.readers import read_dataset

    if for_training and (spec.split or "").lower() == "test":
        raise ValueError(f"dataset {spec.path}: refusing to train on a test split")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / _cache_name(spec, size, min_px)
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return CachedSet(z["images"], z["valid_hw"], z["mask_bits"], z["obj_image"], [str(n) for n in z["names"]],
                         size, spec)
    t0 = time.time()
    ds = read_dataset(spec.path, format=spec.format, split=spec.split, min_area=spec.min_area,
                      **(spec.reader_kwargs or {}))
    idx = select_names(ds.names, spec)
    images, valid, bits, owner, names = [], [], [], [], []
    for i in idx:
        item = ds[i]
        boxed, geo = letterbox(item.image, size)
        m = letterbox_masks(item.masks, size) if item.num_objects else np.zeros((0, size, size), bool)
        m = m[m.reshape(len(m), -1).sum(1) >= min_px] if len(m) else m
        if not len(m):
            continue
        k = len(images)
        images.append(boxed)
        valid.append(geo.new_hw)
        bits.append(np.packbits(m.reshape(len(m), -1), axis=1))
        owner.append(np.full(len(m), k, np.int32))
        names.append(item.name or ds.names[i])
    if not images:
        raise ValueError(f"dataset {spec.path} (split {spec.split}, take {spec.take}): no image with an object "
                         f">= {min_px} px at {size}x{size}")
    arrays = dict(images=np.stack(images), valid_hw=np.array(valid, np.int32), mask_bits=np.concatenate(bits),
                  obj_image=np.concatenate(owner), names=np.array(names))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    log(f"cached {spec.path} split={spec.split} take={spec.take}: {len(images)} images, "
        f"{len(arrays['obj_image'])} objects in {time.time() - t0:.0f}s -> {path.name}")
    return CachedSet(arrays["images"], arrays["valid_hw"], arrays["mask_bits"], arrays["obj_image"], names, size,
                     spec)


# ------------------------------------------------------------------ augmentation


def _resize(img: np.ndarray, masks: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=hw[0] < img.shape[0])
    img2 = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    if len(masks):
        mt = torch.from_numpy(masks.astype(np.uint8))[None].float()
        masks2 = F.interpolate(mt, size=hw, mode="nearest-exact")[0].numpy() > 0.5
    else:
        masks2 = np.zeros((0,) + hw, bool)
    return img2, masks2


def _colour(img: np.ndarray, h: int, w: int, a: AugConfig, rng: np.random.Generator) -> np.ndarray:
    x = img[:h, :w].astype(np.float32)
    if a.brightness > 0:
        x = x * rng.uniform(1 - a.brightness, 1 + a.brightness)
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.contrast > 0:
        x = (x - gray.mean()) * rng.uniform(1 - a.contrast, 1 + a.contrast) + gray.mean()
    if a.saturation > 0:
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = (x - gray[..., None]) * rng.uniform(1 - a.saturation, 1 + a.saturation) + gray[..., None]
    if rng.random() < a.grayscale_p:
        x = np.repeat((x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=2)
    out = img.copy()
    out[:h, :w] = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return out


def augment(img: np.ndarray, masks: np.ndarray, hw: tuple[int, int], a: AugConfig, rng: np.random.Generator,
            donor: tuple[np.ndarray, np.ndarray, tuple[int, int]] | None = None):
    """-> (image (S,S,3) uint8, masks (n,S,S) bool, valid (h, w)) in the letterbox layout."""
    s = img.shape[0]
    h, w = int(hw[0]), int(hw[1])
    img, masks = img.copy(), masks.copy()
    if donor is not None:  # copy-paste: objects of another image, flipped/shifted, pasted on top
        dimg, dmasks, _ = donor
        cand = [k for k in range(len(dmasks)) if dmasks[k].sum() >= a.min_object_px]
        rng.shuffle(cand)
        for k in cand[: int(rng.integers(1, max(1, a.copy_paste_max) + 1))]:
            m, src = dmasks[k], dimg
            if rng.random() < 0.5:
                m, src = m[:, ::-1], src[:, ::-1]
            ys, xs = np.nonzero(m)
            dy = int(rng.integers(-ys.min(), max(-ys.min() + 1, h - 1 - ys.max() + 1)))
            dx = int(rng.integers(-xs.min(), max(-xs.min() + 1, w - 1 - xs.max() + 1)))
            ys2, xs2 = ys + dy, xs + dx
            ok = (ys2 >= 0) & (ys2 < h) & (xs2 >= 0) & (xs2 < w)
            if ok.sum() < a.min_object_px:
                continue
            pm = np.zeros((s, s), bool)
            pm[ys2[ok], xs2[ok]] = True
            img[ys2[ok], xs2[ok]] = src[ys[ok], xs[ok]]
            masks = np.concatenate([masks & ~pm[None], pm[None]]) if len(masks) else pm[None]
    if rng.random() < a.hflip_p:
        img[:h, :w] = img[:h, :w][:, ::-1]
        masks[:, :h, :w] = masks[:, :h, :w][:, :, ::-1]
    if a.scale_p > 0 and rng.random() < a.scale_p:
        f = float(np.exp(rng.uniform(np.log(a.scale_min), np.log(a.scale_max))))
        nh, nw = max(8, int(round(h * f))), max(8, int(round(w * f)))
        big, bm = _resize(img[:h, :w], masks[:, :h, :w], (nh, nw))
        y0 = int(rng.integers(0, max(1, nh - s + 1)))
        x0 = int(rng.integers(0, max(1, nw - s + 1)))
        h, w = min(nh, s), min(nw, s)
        img = np.zeros_like(img)
        img[:h, :w] = big[y0:y0 + h, x0:x0 + w]
        nm = np.zeros((len(bm), s, s), bool)
        nm[:, :h, :w] = bm[:, y0:y0 + h, x0:x0 + w]
        masks = nm
    img = _colour(img, h, w, a, rng)
    return img, masks, (h, w)


class MixDataset(torch.utils.data.Dataset):
    """Index ``i`` -> one augmented training sample, fully determined by (seed, i) (so workers, DDP ranks and
    resumed runs see reproducible data). The dataset of each sample is drawn with the spec weights."""

    def __init__(self, sets: list[CachedSet], aug: AugConfig, objects_per_image: int, seed: int = 0,
                 length: int = 10 ** 9):
        self.sets = sets
        w = np.array([max(0.0, s.spec.weight) for s in sets], np.float64)
        if w.sum() <= 0:
            raise ValueError("datasets: every weight is 0")
        self.p = w / w.sum()
        self.aug, self.k, self.seed, self.length = aug, int(objects_per_image), int(seed), int(length)

    def __len__(self) -> int:
        return self.length

    def _pick(self, rng):
        d = int(rng.choice(len(self.sets), p=self.p))
        i = int(rng.integers(len(self.sets[d])))
        cs = self.sets[d]
        return cs.images[i], cs.masks(i), tuple(cs.valid_hw[i])

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        img, masks, hw = self._pick(rng)
        a = self.aug
        donor = self._pick(rng) if rng.random() < a.copy_paste_p else None
        for attempt in range(3):
            aimg, amasks, (h, w) = augment(img, masks, hw, a, rng, donor) if attempt < 2 else (img, masks, hw)
            area = amasks.reshape(len(amasks), -1).sum(1) if len(amasks) else np.zeros(0)
            keep = np.flatnonzero(area >= a.min_object_px)
            if len(keep):
                break
        if not len(keep):
            keep = np.arange(len(amasks))
        sel = rng.choice(keep, size=self.k, replace=len(keep) < self.k)
        s = aimg.shape[0]
        valid = np.zeros((s, s), bool)
        valid[:h, :w] = True
        return {"image": torch.from_numpy(np.ascontiguousarray(aimg)),
                "masks": torch.from_numpy(np.ascontiguousarray(amasks[sel])),
                "valid": torch.from_numpy(valid)}


class ValSet(torch.utils.data.Dataset):
    """Fixed validation objects: up to ``objects_per_image`` objects (>= min_px, chosen with a fixed seed) of
    each of the first ``max_images`` images (spread evenly over the specs), no augmentation."""

    def __init__(self, sets: list[CachedSet], max_images: int = 64, objects_per_image: int = 1, min_px: int = 50):
        items = []
        per = max(1, (max_images or 10 ** 9) // max(1, len(sets)))
        for si, cs in enumerate(sets):
            order = np.random.default_rng(si).permutation(len(cs))[:per]
            for i in order:
                m = cs.masks(int(i))
                area = m.reshape(len(m), -1).sum(1)
                cand = np.flatnonzero(area >= min_px)
                if not len(cand):
                    continue
                pick = np.random.default_rng([si, int(i)]).choice(cand, size=min(objects_per_image, len(cand)),
                                                                  replace=False)
                items.append((si, int(i), [int(p) for p in pick]))
        self.sets, self.items = sets, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> dict:
        si, i, pick = self.items[j]
        cs = self.sets[si]
        h, w = cs.valid_hw[i]
        s = cs.size
        valid = np.zeros((s, s), bool)
        valid[:h, :w] = True
        return {"image": torch.from_numpy(cs.images[i].copy()), "masks": torch.from_numpy(cs.masks(i)[pick[:1]]),
                "valid": torch.from_numpy(valid)}
