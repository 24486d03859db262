"""``make demo``: the whole pipeline on the CPU in a few minutes.

1. builds ONNX Runtime engine bundles (FP32 and INT8) from the committed motion model;
2. writes a video of several motion clips (real H.264 through PyAV);
3. runs ``runtime.Engine``'s streaming buffer over the decoded video, printing the running top-3
   next to the true action;
4. prints each bundle's build-time parity summary and its latency on this machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from runtime.cli_args import ArgumentParser, user_errors

MODEL = "models/weights/motion_tiny.safetensors"


def write_demo_video(path: Path, seed: int = 7, clips_per_class: int = 1) -> list[tuple[int, int, str]]:
    """One video of consecutive motion clips; returns (first frame, last frame, true label) per segment."""
    import av

    from calibration.clips.synthetic import CLASSES, render_clip

    rng = np.random.default_rng(seed)
    order = [c for c in range(len(CLASSES)) for _ in range(clips_per_class)]
    rng.shuffle(order)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    segments, start = [], 0
    with av.open(str(tmp), "w") as out:
        stream = None
        for label in order:
            frames = render_clip(label, rng)
            if stream is None:
                stream = out.add_stream("libx264", rate=15)
                stream.height, stream.width = frames.shape[1:3]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18"}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(packet)
            segments.append((start, start + len(frames) - 1, CLASSES[label]))
            start += len(frames)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return segments


@user_errors("make demo")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--out", default="artifacts/demo")
    a = ap.parse_args(argv)
    from export.bench.harness import percentiles, time_call
    from export.bundle.build import BuildRequest, build_bundle
    from runtime import Engine
    from runtime.video_source import iter_frames

    out = Path(a.out)
    t0 = time.perf_counter()
    bundles = {}
    for precision in a.precisions.split(","):
        print(f"\n== make engine PRECISION={precision} (ONNX Runtime, CPU)", flush=True)
        req = BuildRequest(
            model=a.model,
            precision=precision,
            backend="onnxruntime",
            out=str(Path("engines") / f"motion_tiny-{precision}-onnxruntime"),
            calib_clips=32,
        )
        bundles[precision] = build_bundle(req)

    video = out / "demo.mp4"
    segments = write_demo_video(video)
    print(f"\n== {video}: {len(segments)} clips, {segments[-1][1] + 1} frames", flush=True)
    frames = list(iter_frames(video))

    for precision, bundle in bundles.items():
        engine = Engine(bundle)
        stream = engine.stream(top_k=3)
        print(f"\n== python -m runtime {bundle} {video}   (every {stream.every} frames)")
        hits = total = 0
        for i, frame in enumerate(frames):
            pred = stream.push(frame)
            if pred is None:
                continue
            first = i - engine.preprocess.window() + 1
            truth = [lbl for s, e, lbl in segments if s <= first and i <= e]
            top = ", ".join(f"{lbl} {p:.2f}" for lbl, p in pred.top_k)
            mark = ""
            if truth:  # windows inside one clip have one true label
                total += 1
                hits += pred.label == truth[0]
                mark = "ok" if pred.label == truth[0] else f"WRONG (true: {truth[0]})"
            print(f"  frame {i:4d}: {top:60s} {pred.latency_ms:6.1f} ms  {mark}")
        parity = engine.manifest["parity"]
        x = np.random.default_rng(0).standard_normal((1,) + engine.clip_shape).astype(np.float32)
        lat = percentiles(time_call(lambda e=engine, x=x: e.infer(x), 20, 3))["p50_ms"]
        print(
            f"  {precision}: {hits}/{total} windows inside a clip correct; build parity "
            f"{'passed' if parity['passed'] else 'FAILED'} (max |dlogit| {parity['max_abs_logit']:.2e}, "
            f"min cosine {parity['min_cosine']:.5f}, top-1 agreement {parity['top1_agreement']:.2f}); "
            f"inference p50 {lat:.1f} ms per clip"
        )
        engine.close()
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; bundles in engines/, video in {video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
