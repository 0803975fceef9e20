"""Training throughput (samples/s = images/s through the full training step) on this machine, for both trunks.

One step = the real training step of napari_ultratinysam.training.loop: encode B images, K objects per image,
first prompt + correction rounds (each a decoder pass), loss, backward, AdamW. Synthetic batches (random images,
disc masks) so it runs without the datasets. Writes the `## Training throughput` section of BENCHMARKS.md.

    python benchmarks/training_throughput.py [--threads 1] [--steps 6] [--batch 8] [--objects 4] [--rounds 2,6]
        [--presets ultratinysam_effnet,ultratinysam]
    python benchmarks/training_throughput.py --from-logs runs/probe_ultratinysam_effnet runs/probe_ultratinysam
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

PRESETS = ("ultratinysam_effnet", "ultratinysam")


def synthetic_batch(b: int, k: int, size: int = 128, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((b, k, size, size), bool)
    for i in range(b):
        for j in range(k):
            cy, cx, r = rng.integers(20, size - 20, 2).tolist() + [int(rng.integers(6, 20))]
            masks[i, j] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    images = rng.integers(0, 256, (b, size, size, 3)).astype(np.uint8)
    return {"image": torch.from_numpy(images), "masks": torch.from_numpy(masks),
            "valid": torch.ones(b, size, size, dtype=torch.bool)}


def measure(preset: str, steps: int, batch: int, objects: int, rounds: int) -> dict:
    from napari_ultratinysam.model.build import build_model
    from napari_ultratinysam.training.config import LossConfig, PromptConfig
    from napari_ultratinysam.training.loop import SimulatedStep, param_groups

    model = build_model(preset).train()
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
    step = SimulatedStep(model, PromptConfig(correction_rounds=rounds, p_box=0.5), LossConfig())
    data = synthetic_batch(batch, objects)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss, _ = step(data["image"], data["masks"], data["valid"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # first step is warm-up
            times.append(time.perf_counter() - t)
    s = float(np.median(times))
    return {"preset": preset, "s_per_step": s, "samples_per_s": batch / s, "objects_per_s": batch * objects / s}


def from_logs(dirs: list[str]) -> list[dict]:
    rows = []
    for d in dirs:
        r = list(csv.DictReader(open(Path(d) / "train_log.csv")))
        sps = [float(x["samples_per_s"]) for x in r[1:]] or [float(x["samples_per_s"]) for x in r]
        rows.append({"preset": Path(d).name, "samples_per_s": float(np.median(sps)), "steps": int(r[-1]["step"])})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--rounds", default="2,6", help="correction rounds per step, comma-separated: one row each "
                    "(2: the default's recipe; 6: train_converge.yaml)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--from-logs", nargs="*", default=None, help="also report the median samples/s of run dirs")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rounds = [int(r) for r in a.rounds.split(",")]
    lines = [f"Machine: {machine_line()}; torch {torch.__version__}, {a.threads} thread(s).", "",
             f"Synthetic step: {a.batch} images x {a.objects} objects, first prompt + R correction rounds (R + 1 "
             f"decoder passes per object, each a prompt), loss, backward, AdamW. Median of {a.steps} steps.", "",
             "| trunk (preset) | rounds R | s / step | samples (images) / s | objects / s | prompts x rounds / s |",
             "|---|---|---|---|---|---|"]
    if a.steps > 0:
        for p in a.presets.split(","):
            for r_ in rounds:
                r = measure(p, a.steps, a.batch, a.objects, r_)
                lines.append(f"| {p} | {r_} | {r['s_per_step']:.2f} | {r['samples_per_s']:.2f} | "
                             f"{r['objects_per_s']:.1f} | {r['objects_per_s'] * (r_ + 1):.1f} |")
                print(lines[-1], flush=True)
    if a.from_logs:
        lines += ["", "Measured inside real training runs (train_log.csv, median over the run, the machine shared "
                  "with other jobs):", "", "| run | steps | samples (images) / s |", "|---|---|---|"]
        for r in from_logs(a.from_logs):
            lines.append(f"| {r['preset']} | {r['steps']} | {r['samples_per_s']:.2f} |")
    lines += ["", "Regenerate: `python benchmarks/training_throughput.py` (add `--from-logs RUN_DIR ...` for runs)."]
    body = "\n".join(lines)
    print(body)
    if not a.no_write:
        write_section("Training throughput", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
