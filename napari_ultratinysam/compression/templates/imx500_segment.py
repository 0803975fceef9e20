#!/usr/bin/env python3
"""UltraTinySAM on the Raspberry Pi AI Camera (Sony IMX500): live mask over the camera preview.

The network runs on the sensor. Its prompt is baked in (see metadata.json, e.g. one click at the centre of the
inference frame), so you choose WHAT is segmented by pointing the camera, or by moving the inference region of
interest (--roi): the network sees the ROI scaled to its input size (128x128).

Run on the Pi (after `imx500-package -i packerOut.zip -o out/`, see README.md):

    python3 imx500_segment.py --model out/network.rpk --metadata metadata.json

Needs: Raspberry Pi OS with `sudo apt install imx500-all python3-picamera2 python3-opencv`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SENSOR_W, SENSOR_H = 4056, 3040  # IMX500 full-resolution sensor size


def parse_args(argv=None):
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description="UltraTinySAM on the IMX500: live mask over the preview")
    p.add_argument("--model", default=str(here / "network.rpk"), help="packaged network (network.rpk)")
    p.add_argument("--metadata", default=str(here / "metadata.json"), help="metadata.json written by utsam")
    p.add_argument("--roi", default="square",
                   help="inference ROI in sensor pixels 'x,y,w,h', or 'square' (centred square, default), "
                        "or 'full' (whole sensor, squashed to the square input)")
    p.add_argument("--threshold", type=float, default=0.0, help="mask logit threshold (0 = probability 0.5)")
    p.add_argument("--alpha", type=float, default=0.45, help="mask overlay opacity")
    p.add_argument("--gate", action="store_true", help="hide the mask when the object score says 'no object'")
    p.add_argument("--fps", type=float, default=None, help="inference frame rate (default: the network's)")
    p.add_argument("--save-frames", type=int, default=0, help="also write the first N masks as .npy (debugging)")
    return p.parse_args(argv)


def roi_rect(spec: str) -> tuple[int, int, int, int]:
    if spec == "full":
        return 0, 0, SENSOR_W, SENSOR_H
    if spec == "square":
        side = min(SENSOR_W, SENSOR_H)
        return (SENSOR_W - side) // 2, (SENSOR_H - side) // 2, side, side
    try:
        x, y, w, h = (int(v) for v in spec.split(","))
    except ValueError:
        sys.exit(f"--roi {spec!r}: expected x,y,w,h in sensor pixels, 'square' or 'full'")
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > SENSOR_W or y + h > SENSOR_H:
        sys.exit(f"--roi {spec!r}: must lie inside the {SENSOR_W}x{SENSOR_H} sensor")
    return x, y, w, h


def as_masks(arr: np.ndarray, k: int, lo: int) -> np.ndarray:
    """One output tensor -> (K, lo, lo), whatever axis order get_outputs() produced.

    picamera2 reshapes each output with order='F' from the shapes the firmware reports; compare one frame with
    the ONNX output on the desktop (`utsam` QuantizedOnnxRunner) before trusting the orientation.
    """
    a = np.asarray(arr, dtype=np.float32).squeeze()
    if a.ndim == 2:
        a = a[None]
    if a.shape == (k, lo, lo):
        return a
    if a.shape == (lo, lo, k):
        return np.transpose(a, (2, 0, 1))
    if a.size == k * lo * lo:
        return a.reshape(k, lo, lo)
    raise ValueError(f"mask output of shape {arr.shape}: expected {k}x{lo}x{lo} values")


def find_outputs(outputs, meta):
    """Match the network outputs to (masks, iou, object_score) by size, following metadata.json."""
    lay = meta["outputs"]
    k = lay["masks"]["shape"][1]
    lo = lay["masks"]["shape"][2]
    masks = iou = obj = None
    for o in outputs:
        n = int(np.asarray(o).size)
        if n == k * lo * lo and masks is None:
            masks = as_masks(o, k, lo)
        elif n == k and iou is None:
            iou = np.asarray(o, dtype=np.float32).reshape(k)
        elif n == 1 and "object_score" in lay and obj is None:
            obj = float(np.asarray(o).reshape(-1)[0])
    if k == 1 and iou is None and obj is not None:  # K = 1: iou and object score both have one value
        iou = np.ones(1, np.float32)
    if masks is None:
        raise ValueError(f"no output with {k}x{lo}x{lo} values among {[np.asarray(o).shape for o in outputs]}")
    return masks, (iou if iou is not None else np.ones(k, np.float32)), obj


def main(argv=None) -> int:
    args = parse_args(argv)
    import cv2
    from picamera2 import MappedArray, Picamera2
    from picamera2.devices import IMX500
    from picamera2.devices.imx500 import NetworkIntrinsics

    meta = json.loads(Path(args.metadata).read_text())
    if not Path(args.model).is_file():
        sys.exit(f"{args.model}: not found; package packerOut.zip first: imx500-package -i packerOut.zip -o out/")
    print(f"UltraTinySAM IMX500: prompt {meta['prompt']['mode']} {meta['prompt']['points']}, "
          f"memory {meta.get('memory', {}).get('summary', '?')}")

    imx500 = IMX500(args.model)  # before Picamera2(): uploads the network firmware (can take a minute)
    intrinsics = imx500.network_intrinsics or NetworkIntrinsics()
    intrinsics.task = "segmentation"
    intrinsics.update_with_defaults()
    if args.fps:
        intrinsics.inference_rate = args.fps

    picam2 = Picamera2(imx500.camera_num)
    config = picam2.create_preview_configuration(controls={"FrameRate": intrinsics.inference_rate}, buffer_count=12)
    imx500.show_network_fw_progress_bar()
    roi = roi_rect(args.roi)
    imx500.set_inference_roi_abs(roi)

    state = {"mask": None, "score": None, "saved": 0}
    colour = np.array([0, 255, 64], np.float32)

    def on_request(request):
        md = request.get_metadata()
        outputs = imx500.get_outputs(md, add_batch=True)
        if outputs is None:
            return
        masks, iou, obj = find_outputs(outputs, meta)
        k = int(np.argmax(iou))
        logits = masks[k]
        show = not (args.gate and obj is not None and obj <= 0)
        with MappedArray(request, "main") as m:
            frame = m.array
            # where the inference ROI lies in this preview image (normalised (y0, x0, y1, x1) -> pixels)
            x, y, w, h = imx500.convert_inference_coords((0.0, 0.0, 1.0, 1.0), md, picam2)
            x, y = max(0, int(x)), max(0, int(y))
            w, h = min(int(w), frame.shape[1] - x), min(int(h), frame.shape[0] - y)
            if show and w > 0 and h > 0:
                up = cv2.resize(logits, (w, h), interpolation=cv2.INTER_LINEAR)
                sel = up > args.threshold
                region = frame[y:y + h, x:x + w, :3].astype(np.float32)
                region[sel] = (1 - args.alpha) * region[sel] + args.alpha * colour
                frame[y:y + h, x:x + w, :3] = region.astype(np.uint8)
            cv2.rectangle(frame, (x, y), (x + w - 1, y + h - 1), (255, 255, 255, 255), 1)
            cx, cy = meta["prompt"]["points"][0]
            s = meta["input"]["shape"][-1]
            cv2.drawMarker(frame, (x + int(cx / s * w), y + int(cy / s * h)), (255, 0, 0, 255), cv2.MARKER_CROSS, 14, 2)
            cv2.putText(frame, f"iou {float(iou[k]):.2f}" + (f" obj {obj:+.1f}" if obj is not None else ""),
                        (x + 4, y + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255, 255), 1)
        if state["saved"] < args.save_frames:
            np.save(f"mask_{state['saved']:03d}.npy", masks)
            state["saved"] += 1

    picam2.pre_callback = on_request
    picam2.start(config, show_preview=True)
    print("running; Ctrl+C to stop")
    try:
        while True:
            time.sleep(1.0)
            kpi = imx500.get_kpi_info(picam2.capture_metadata())
            if kpi:
                print(f"DNN {kpi[0]:.1f} ms, DSP {kpi[1]:.1f} ms", end="\r")
    except KeyboardInterrupt:
        pass
    finally:
        picam2.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
