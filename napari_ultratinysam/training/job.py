"""A fine-tuning run in a background process (the Fine-tune panel's work, Qt-free): the ``finetune`` preset pointed at
one exported dataset, the run in a spawned process (neither napari's GUI thread nor its interpreter is busy), and
its progress messages, polled by the caller.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
from dataclasses import replace
from pathlib import Path

from napari_ultratinysam.training.config import DatasetSpec, TrainConfig, load_train_config


def finetune_config(dataset: str | Path, checkpoint: str | Path | None, steps: int = 300, device: str = "cpu",
                    out_dir: str | Path | None = None, batch_size: int = 4, threads: int = 1) -> TrainConfig:
    """The model/configs/finetune.yaml preset pointed at one CamVid-style export (train split; val split for
    validation when the export has one)."""
    dataset = Path(dataset)
    if not (dataset / "dataset.json").is_file() and not (dataset / "train.txt").is_file():
        raise ValueError(f"dataset {dataset}: not a CamVid-style export (no dataset.json or train.txt); "
                         "export one with Annotator > Project > Export dataset or utsam export-dataset")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    cfg = load_train_config("finetune")
    has_val = (dataset / "val.txt").is_file() and (dataset / "val.txt").read_text().strip() != ""
    out = Path(out_dir) if out_dir else dataset.parent / f"{dataset.name}_finetune"
    return replace(
        cfg,
        init_checkpoint=str(checkpoint) if checkpoint else None,
        datasets=[DatasetSpec(path=str(dataset), split="train")],
        val_datasets=[DatasetSpec(path=str(dataset), split="val")] if has_val else [],
        steps=int(steps), device=device, out_dir=str(out), cache_dir=str(out / "cache"),
        batch_size=int(batch_size), threads=int(threads), val_every=max(10, int(steps) // 5),
        ckpt_every=max(10, int(steps) // 5), log_every=1, resume=False,
    )


def progress_step(msg: dict, total: int) -> int | None:
    """Where the progress bar stands after a training message: its step (messages without one leave the bar);
    the final "done" fills it, unless the run was cancelled, which leaves it at the steps reached."""
    if msg.get("event") == "done":
        steps = msg.get("steps")
        if msg.get("stopped_by") == "stopped" and isinstance(steps, int):
            return max(0, min(steps, total))
        return total
    step = msg.get("step")
    return max(0, min(int(step), total)) if isinstance(step, (int, float)) else None


def _worker(cfg: TrainConfig, q, stop_event) -> None:  # runs in the child process
    import traceback

    from napari_ultratinysam.training.loop import train

    try:
        summary = train(cfg, progress_callback=lambda d: q.put(("progress", dict(d))),
                        should_stop=stop_event.is_set, log=lambda s: q.put(("log", str(s))))
        q.put(("done", summary))
    except BaseException as e:  # report everything; the parent shows it
        from napari_ultratinysam.core.extras import as_missing_extra

        missing = as_missing_extra(e)  # e.g. torch not installed: name the extra that brings it
        q.put(("error", str(missing) if missing else f"{type(e).__name__}: {e}", traceback.format_exc()))


class FinetuneJob:
    """A training run in a spawned process; ``poll()`` returns the messages that arrived since the last call."""

    def __init__(self, cfg: TrainConfig):
        ctx = mp.get_context("spawn")
        self.cfg = cfg
        self.queue = ctx.Queue()
        self.stop_event = ctx.Event()
        self.process = ctx.Process(target=_worker, args=(cfg, self.queue, self.stop_event), daemon=True)
        self.history: list[dict] = []
        self.summary: dict | None = None
        self.error: str | None = None

    def start(self) -> "FinetuneJob":
        self.process.start()
        return self

    def cancel(self) -> None:
        """Ask the run to stop after its current step (it writes a checkpoint first)."""
        self.stop_event.set()

    def poll(self) -> list[tuple]:
        msgs = []
        while True:
            try:
                msg = self.queue.get_nowait()
            except queue.Empty:
                break
            msgs.append(msg)
            if msg[0] == "progress":
                self.history.append(msg[1])
            elif msg[0] == "done":
                self.summary = msg[1]
            elif msg[0] == "error":
                self.error = msg[1]
        if not msgs and not self.process.is_alive() and self.summary is None and self.error is None:
            code = self.process.exitcode
            if code not in (None, 0):
                self.error = f"training process exited with code {code}"
        return msgs

    @property
    def finished(self) -> bool:
        return self.summary is not None or self.error is not None

    def best_checkpoint(self) -> Path | None:
        out = Path(self.cfg.out_dir)
        for name in ("best.safetensors", "last.safetensors"):
            if (out / name).is_file():
                return out / name
        return None
