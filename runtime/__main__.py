"""``python -m runtime BUNDLE SOURCE``: run an engine bundle on a video file, an RTSP URL or a camera.

Prints the running top-k with latency; ``--out annotated.mp4`` also draws it onto the frames.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .engine import Engine, InputError
from .manifest import BundleError
from .video_source import iter_frames


def _writer(path: str, width: int, height: int, fps: int):
    import av
    out = av.open(path, "w")
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
    return out, stream


def _draw(frame: np.ndarray, lines: list[str]) -> np.ndarray:
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:
        raise RuntimeError("--out draws with Pillow: pip install pillow") from e
    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 14 * len(lines) + 6], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((4, 3 + 14 * i), line, fill=(255, 255, 255))
    return np.asarray(img)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="engine bundle directory (holds manifest.json)")
    ap.add_argument("source", help="video file, rtsp:// URL, or camera index (0 = /dev/video0)")
    ap.add_argument("--device", default="auto", help="cpu, cuda[:N], tensorrt (ONNX Runtime providers) or auto")
    ap.add_argument("--every", type=int, default=None, help="predict every N frames (a multiple of the sampling rate)")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the frames with the running top-k drawn on them (.mp4)")
    ap.add_argument("--fps", type=int, default=25, help="frame rate of --out")
    args = ap.parse_args(argv)

    opts = {"threads": args.threads} if args.threads is not None else {}
    try:
        return _run(args, Engine(args.bundle, device=args.device, **opts))
    except (BundleError, InputError, RuntimeError, ValueError) as e:
        print(f"python -m runtime: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, engine: Engine) -> int:
    stream = engine.stream(every=args.every, top_k=args.top_k)
    print(f"engine: {engine.describe()['backend']} {engine.precision}, clip {engine.clip_shape}, "
          f"predicting every {stream.every} frames", flush=True)
    writer = None
    lines: list[str] = ["(filling the window)"]
    t_start, n, predictions = time.perf_counter(), 0, 0
    try:
        for frame in iter_frames(args.source, args.max_frames):
            n += 1
            pred = stream.push(frame)
            if pred is not None:
                predictions += 1
                lines = [f"{label} {p:.2f}" for label, p in pred.top_k] + [f"{pred.latency_ms:.1f} ms"]
                top = ", ".join(f"{label} {p:.2f}" for label, p in pred.top_k)
                print(f"frame {n:6d}: {top}  ({pred.latency_ms:.1f} ms)", flush=True)
            if args.out:
                if writer is None:
                    writer = _writer(args.out, frame.shape[1], frame.shape[0], args.fps)
                import av
                out_frame = _draw(frame, lines)[: writer[1].height, : writer[1].width]
                for packet in writer[1].encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(out_frame), "rgb24")):
                    writer[0].mux(packet)
    except KeyboardInterrupt:
        pass
    finally:
        if writer is not None:
            for packet in writer[1].encode():
                writer[0].mux(packet)
            writer[0].close()
        engine.close()
    dt = time.perf_counter() - t_start
    print(f"{n} frames, {predictions} predictions in {dt:.1f} s ({n / max(dt, 1e-9):.1f} frames/s)")
    if n == 0:
        print(f"{args.source}: no frames decoded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
