"""``python -m runtime BUNDLE SOURCE [SOURCE ...]``: run an engine bundle on video files, RTSP URLs or cameras.

``python -m runtime check BUNDLE``: check the bundle on this device (parity against its stored reference, latency,
the device fingerprint; see ``runtime/check.py``).

One source: prints the running top-k with latency; ``--out annotated.mp4`` also draws it onto the frames.
Several: runs them through one camera hub (windows of all cameras batched into one engine call) and
prints each camera's results, then per-camera metrics. A source that yields no prediction (an image, a
video shorter than one clip, no frames) is reported and the exit status is 1; user errors exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cli_args import ArgumentParser, UsageError, one_line
from .engine import Engine, InputError
from .files import check_output_file, temp_path_beside
from .manifest import BundleError
from .sources import VideoSource, is_live
from .video_source import iter_frames

if TYPE_CHECKING:  # annotations only (the hub is imported when several sources are given)
    from .hub import HubResult
    from .preprocess import PreprocessConfig


def _writer(path: str, width: int, height: int, fps: int) -> tuple[Any, Any]:
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


def _parser() -> ArgumentParser:
    """The command line of ``python -m runtime BUNDLE SOURCE ...``."""
    ap = ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="engine bundle directory (holds manifest.json)")
    ap.add_argument(
        "source",
        nargs="+",
        help="video file, rtsp:// URL, or camera index (0 = /dev/video0); several run through one batching camera hub",
    )
    ap.add_argument("--device", default="auto", help="cpu, cuda[:N], tensorrt (ONNX Runtime providers) or auto")
    ap.add_argument("--every", type=int, default=None, help="predict every N frames (a multiple of the sampling rate)")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the frames with the running top-k drawn on them (.mp4)")
    ap.add_argument("--fps", type=int, default=25, help="frame rate of --out")
    ap.add_argument(
        "--max-wait-ms",
        type=float,
        default=20.0,
        help="several sources: longest a due window waits for others to share its engine call",
    )
    ap.add_argument(
        "--realtime",
        action="store_true",
        help="several sources: read files at their frame rate (as cameras), dropping windows the device "
        "cannot keep up with, instead of predicting every window",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=10,
        help="a camera or URL that drops (or never connects) is re-opened with exponential backoff; after "
        "this many consecutive attempts without a frame it is marked failed (-1: retry forever)",
    )
    ap.add_argument(
        "--retry-for-s",
        type=float,
        default=None,
        help="also mark a camera failed once it has given no frame for this many seconds",
    )
    ap.add_argument("--backoff-max-s", type=float, default=30.0, help="longest wait between reconnect attempts")
    ap.add_argument(
        "--batching",
        default="auto",
        choices=("auto", "on", "off"),
        help="batch windows of several cameras into one engine call: auto (when it is measured to "
        "lower the time per window on this device), on, off",
    )
    ap.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs prometheus_client)",
    )
    ap.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics endpoint binds to")
    return ap


def _arg_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the parsed arguments, found before the engine loads (a user error: exit 2), or None."""
    if args.out and len(args.source) > 1:
        return "--out draws one source; got several"
    for src in args.source:  # a missing file is a user error, found before the engine loads
        if not src.strip():  # '' would be Path('.'), which exists
            return f"source {src!r}: empty; expected a video file, an rtsp:// URL or a camera index"
        if not is_live(src) and not Path(src).exists():
            return f"{src}: no such file"
    for name, ok, expected in (
        ("retries", args.retries >= -1, "0 or more (-1: forever)"),
        ("retry_for_s", args.retry_for_s is None or args.retry_for_s > 0, "a positive number"),
        ("backoff_max_s", 0.5 <= args.backoff_max_s < math.inf, "a finite number, at least 0.5 (the first delay)"),
        ("max_wait_ms", 0 <= args.max_wait_ms < math.inf, "a finite number >= 0"),
        ("metrics_port", args.metrics_port is None or 0 <= args.metrics_port <= 65535, "a TCP port 0..65535"),
    ):
        if not ok:
            return f"--{name.replace('_', '-')}: expected {expected}, got {getattr(args, name)}"
    for name in ("max_frames", "top_k", "every", "threads", "fps"):  # counts: 0 or less is a typo, not a request
        v = getattr(args, name)
        if v is not None and v < 1:
            return f"--{name.replace('_', '-')}: expected a positive integer, got {v}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:  # python -m runtime check BUNDLE: parity, latency, fingerprint (runtime/check.py)
        from .check import main as check_main

        return check_main(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        print(f"python -m runtime: {e}", file=sys.stderr)
        return 2
    problem = _arg_problem(args)
    if problem is not None:
        print(f"python -m runtime: {problem}", file=sys.stderr)
        return 2
    tmp = None
    try:
        if args.out:  # checked, and its temporary file made, before the engine loads
            tmp = _out_temp(args.out, [s for s in args.source if not is_live(s)] + [args.bundle])
        opts = {"threads": args.threads} if args.threads is not None else {}
        engine = Engine(args.bundle, device=args.device, **opts)
        if len(args.source) == 1 and (args.out or not is_live(args.source[0])):
            return _run(args, engine, args.source[0], tmp)  # a live source goes through the hub: retried like several
        return _run_hub(args, engine)
    except (BundleError, InputError, RuntimeError, ValueError, OSError) as e:  # av's errors are OSErrors
        print(f"python -m runtime: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while the engine loads (a run itself ends cleanly on Ctrl-C)
        print("python -m runtime: interrupted", file=sys.stderr)
        return 130
    finally:
        if tmp is not None:  # not published (an error): the user's --out file, if any, stays as it was
            tmp.unlink(missing_ok=True)


#: containers --out can write (H.264 video); another name fails in the encoder only after the engine loaded
OUT_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".avi")


def _out_temp(out: str, inputs: list[str]) -> Path:
    """Check ``--out`` and make its temporary file beside it: the video is written there and renamed onto ``out``
    when the run ends, so a failed run never leaves a half-written file (nor truncates one that was there)."""
    check_output_file(out, tuple(inputs))  # never the input (issue 28 #2), and a folder that exists (#19)
    p = Path(out)
    if p.suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f"--out {out}: expected a video file name ending in {', '.join(OUT_SUFFIXES)}")
    if p.exists() and not p.is_file():  # a FIFO or a device: the muxer needs a plain file it can seek
        raise ValueError(f"--out {out}: exists and is not a plain file; expected a video file name")
    try:
        return temp_path_beside(p, p.suffix)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {p.parent} ({one_line(e)})") from None


def _no_prediction(source: str, frames: int, cfg: PreprocessConfig) -> str:
    window = (cfg.num_frames - 1) * max(1, cfg.sampling_rate) + 1
    if frames == 0:
        return f"{source}: no frames decoded, no prediction"
    what = "an image" if frames == 1 else "a video"
    return (
        f"{source}: {frames} frame{'s' * (frames != 1)} ({what}), shorter than one clip ({window} frames: "
        f"{cfg.num_frames} sampled every {cfg.sampling_rate}); no prediction"
    )


def _run(args: argparse.Namespace, engine: Engine, source: str, tmp: Path | None = None) -> int:
    stream = engine.stream(every=args.every, top_k=args.top_k)
    print(
        f"engine: {engine.describe()['backend']} {engine.precision}, clip {engine.clip_shape}, "
        f"predicting every {stream.every} frames",
        flush=True,
    )
    writer = None
    lines: list[str] = ["(filling the window)"]
    t_start, n, predictions = time.perf_counter(), 0, 0
    try:
        for frame in iter_frames(source, args.max_frames):
            n += 1
            pred = stream.push(frame)
            if pred is not None:
                predictions += 1
                lines = [f"{label} {p:.2f}" for label, p in pred.top_k] + [f"{pred.latency_ms:.1f} ms"]
                top = ", ".join(f"{label} {p:.2f}" for label, p in pred.top_k)
                print(f"frame {n:6d}: {top}  ({pred.latency_ms:.1f} ms)", flush=True)
            if args.out:
                if writer is None:
                    writer = _writer(str(tmp), frame.shape[1], frame.shape[0], args.fps)
                import av

                out_frame = _draw(frame, lines)[: writer[1].height, : writer[1].width]
                for packet in writer[1].encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(out_frame), "rgb24")):
                    writer[0].mux(packet)
    except KeyboardInterrupt:
        pass
    finally:
        if writer is not None:
            try:
                for packet in writer[1].encode():
                    writer[0].mux(packet)
            finally:
                writer[0].close()
        engine.close()
    if writer is not None and tmp is not None:  # the whole run (or up to Ctrl-C) was written: publish it
        os.replace(tmp, args.out)
    dt = time.perf_counter() - t_start
    print(f"{n} frames, {predictions} predictions in {dt:.1f} s ({n / max(dt, 1e-9):.1f} frames/s)")
    if predictions == 0:
        print(_no_prediction(source, n, engine.preprocess), file=sys.stderr)
        return 1
    return 0


def _run_hub(args: argparse.Namespace, engine: Engine) -> int:
    from .hub import CameraHub
    from .log import setup_logging

    setup_logging()  # the hub's batching choice and the cameras' states go to stderr

    def show(r: HubResult) -> None:
        top = ", ".join(f"{label} {p:.2f}" for label, p in r.top_k)
        print(
            f"camera {r.camera} frames {r.first_frame}-{r.last_frame}: {top}  ({r.latency_ms:.1f} ms, "
            f"batch {r.batch_size})",
            flush=True,
        )

    def state(camera: Any, status: str, error: str | None) -> None:
        why = f": {error}" if error and status in ("retrying", "failed") else ""
        print(f"camera {camera} ({args.source[int(camera)]}): {status}{why}", file=sys.stderr, flush=True)

    hub = CameraHub(
        engine,
        max_wait_ms=args.max_wait_ms,
        results=0,
        on_result=show,
        on_status=state,
        retries=None if args.retries < 0 else args.retries,
        retry_for_s=args.retry_for_s,
        backoff=(0.5, args.backoff_max_s),
        batching=args.batching,
    )
    server = None
    try:
        if args.metrics_port is not None:
            from .metrics import serve_metrics

            server = serve_metrics(hub, args.metrics_port, args.metrics_host)[0]
            print(f"metrics: http://{args.metrics_host}:{server.server_port}/metrics", file=sys.stderr, flush=True)
    except (RuntimeError, OSError) as e:
        hub.close()
        raise RuntimeError(f"--metrics-port {args.metrics_port}: {e}") from e
    print(
        f"engine: {engine.describe()['backend']} {engine.precision}, clip {engine.clip_shape}, "
        f"{len(args.source)} camera(s), batches up to {hub.max_batch} (batching {args.batching})",
        flush=True,
    )
    t_start = time.perf_counter()
    try:
        for i, src in enumerate(args.source):
            hub.add_camera(
                VideoSource(src, realtime=args.realtime, max_frames=args.max_frames),
                camera_id=i,
                every=args.every,
                top_k=args.top_k,
            )
        hub.wait_sources()  # files end; live sources run until Ctrl-C or until they are marked failed
        hub.drain()
    except KeyboardInterrupt:
        pass
    finally:
        m = hub.metrics()
        hub.close()
        engine.close()
        if server is not None:
            server.shutdown()
    return _summary(args, engine, m, time.perf_counter() - t_start)


def _summary(args: argparse.Namespace, engine: Engine, m: dict[str, Any], dt: float) -> int:
    """Per camera: its state, counts, reconnects and last error; exit status 1 when a camera predicted nothing."""
    b = m["batching"]
    print(
        f"{len(args.source)} camera(s) in {dt:.1f} s; batch sizes {m['batch_sizes']}, device busy "
        f"{100 * m['device_time_share']:.0f}% of the time; batching {'on' if b['batched'] else 'off'} "
        f"({b['reason']})"
    )
    status = 0
    for cid, c in m["cameras"].items():
        src = args.source[int(cid)]
        lat = f", latency p50 {c['p50_ms']:.1f} ms p99 {c['p99_ms']:.1f} ms" if c["p50_ms"] is not None else ""
        err = f"; last error: {c['last_error']}" if c["last_error"] else ""
        print(
            f"camera {cid} ({src}): {c['status']}, {c['frames']} frames, {c['predictions']} predictions, "
            f"{c['dropped']} dropped, {c['reconnects']} reconnects of {c['reconnect_attempts']} attempts{lat}{err}"
        )
        if c["predictions"] == 0:
            status = 1
            if c["status"] in ("failed", "retrying") and c["last_error"] and c["last_error"] != "no frames":
                print(f"{src}: {c['last_error']}", file=sys.stderr)
            else:
                print(_no_prediction(src, c["frames"], engine.preprocess), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
