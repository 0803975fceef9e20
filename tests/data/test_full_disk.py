"""A full disk (a small tmpfs mounted for the test; skipped where the test cannot mount one): a commit, an export or
a checkpoint that does not fit fails with one clear error, and nothing saved before is lost or left half-written."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_ultratinysam.data.export import export_dataset
from napari_ultratinysam.data.project import Project
from napari_ultratinysam.data.project_meta import PROJECT_JSON

H, W = 160, 200


def _noisy_mask(rng, k: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    y, x = rng.integers(0, H - 40), rng.integers(0, W - 40)
    m[y:y + 40, x:x + 40] = rng.random((40, 40)) < 0.6  # noise: the annotation PNGs do not compress away
    return m


def _images(folder: Path, write_rgb, n: int = 3) -> Path:
    for k in range(n):
        write_rgb(folder / f"img{k}.png", H, W, seed=k)
    return folder


def _annotated_project(tmp_path: Path, write_rgb, n: int, seed: int) -> Path:
    """A closed project (on the big disk) with one noisy object on each of its n images."""
    proj = tmp_path / "proj"
    rng = np.random.default_rng(seed)
    with Project.create(proj, _images(tmp_path / "imgs", write_rgb, n=n)) as p:
        for k in range(n):
            p.commit_object(k, _noisy_mask(rng, k), 1)
    return proj


def test_commits_on_a_full_disk_fail_cleanly_and_keep_every_returned_commit(tmp_path, small_disk, fill_disk,
                                                                            write_rgb):
    disk = small_disk(1024)
    images = _images(tmp_path / "imgs", write_rgb)  # the images stay on the big disk; the project goes on tmpfs
    folder = disk / "proj"
    rng = np.random.default_rng(0)
    returned: dict[int, list[int]] = {0: [], 1: [], 2: []}
    with Project.create(folder, images) as p:
        for k in range(3):
            returned[k].append(p.commit_object(k, _noisy_mask(rng, k), 1))
        fill_disk(disk)
        failures = 0
        for k in range(6):
            try:
                returned[k % 3].append(p.commit_object(k % 3, _noisy_mask(rng, k), 1))
            except OSError as e:
                failures += 1
                assert e.errno == errno.ENOSPC and e.filename, e
        assert failures >= 1, "the disk was full and no commit failed"
    state = json.loads((folder / PROJECT_JSON).read_text())  # still parses
    assert isinstance(state, dict)
    with Project.open(folder) as p:
        assert not p.quarantined and not p.problems
        for i, ids in returned.items():
            assert set(ids) <= set(p.get_annotation(i)[1]), f"image {i}: a returned commit is gone"
    leftovers = [f.name for f in folder.rglob("*") if f.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_an_export_that_does_not_fit_leaves_the_previous_export_and_no_stage(tmp_path, small_disk, fill_disk,
                                                                            write_rgb):
    disk = small_disk(2048)
    proj = _annotated_project(tmp_path, write_rgb, n=4, seed=1)
    out = disk / "dataset"
    source = Project.open(proj, read_only=True)
    export_dataset(source, out, ratios=(1, 0, 0))
    before = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
    assert "dataset.json" in before
    filler = fill_disk(disk)
    with pytest.raises(OSError) as e:
        export_dataset(source, out, ratios=(1, 0, 0), overwrite=True)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    after = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
    assert after == before, "the previous export changed"
    filler.unlink()
    assert sorted(f.name for f in disk.iterdir()) == ["dataset"], "a stage folder of the failed export is left"


def test_cli_export_to_a_full_disk_is_one_line(tmp_path, small_disk, fill_disk, write_rgb):
    disk = small_disk(512)
    proj = _annotated_project(tmp_path, write_rgb, n=3, seed=2)
    fill_disk(disk)
    r = subprocess.run([sys.executable, "-m", "napari_ultratinysam.cli", "export-dataset", str(proj), "-o",
                        str(disk / "out"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "No space left" in lines[0] and str(disk / "out") in lines[0]
