"""The camera hub: same logits as Engine.predict on the same windows, reconnects, cameras added and removed while
running, bounded queues and fairness under overload (a gated fake engine makes the overload deterministic)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime import Engine, PreprocessConfig
from runtime.hub import CameraHub
from runtime.sources import CallableSource, VideoSource
from runtime.video_source import iter_frames

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(fp32_bundle):
    with Engine(fp32_bundle) as e:
        yield e


def _until(cond, what: str, timeout: float = 60.0) -> None:
    """Poll for a state (not a timing assertion: the timeout only turns a hang into a failure)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _due(n_frames: int, span: int, every: int) -> list[int]:
    """Last-frame indices of the windows a camera with ``n_frames`` frames falls due at."""
    return list(range(span - 1, n_frames, every))


class RecordingEngine:
    """The engine's public surface, recording every batch handed to ``infer``."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.batches = engine, []
        self.preprocess, self.clip_shape, self.batch_range = engine.preprocess, engine.clip_shape, engine.batch_range
        self.labels = engine.labels

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x.copy())
        return self.engine.infer(x)


# --------------------------------------------------------------------------- same answers as one camera alone


def test_unbatched_hub_gives_engine_predict_logits_bit_for_bit(engine, heldout_videos):
    """Real files decoded on the hub's threads; each window's logits equal Engine.predict on the same frames."""
    paths = [p for p, _ in heldout_videos[:3]]
    frames = [list(iter_frames(p)) for p in paths]
    cfg = engine.preprocess
    results = []
    with CameraHub(engine, max_batch=1, max_wait_ms=0, on_result=results.append, results=0) as hub:
        for i, p in enumerate(paths):
            hub.add_camera(p, camera_id=i, every=cfg.sampling_rate)  # files: every window is predicted
        assert hub.wait_sources(60) and hub.drain(60)
        m = hub.metrics()
    for i in range(3):
        due = _due(len(frames[i]), cfg.window(), cfg.sampling_rate)
        mine = sorted((r for r in results if r.camera == i), key=lambda r: r.last_frame)
        assert [r.last_frame for r in mine] == due
        assert m["cameras"][str(i)]["windows_due"] == len(due) and m["cameras"][str(i)]["dropped"] == 0
        for r in mine:
            assert r.first_frame == r.last_frame - cfg.window() + 1
            ref = engine.predict(frames[i][r.first_frame : r.last_frame + 1], top_k=5)
            assert np.array_equal(r.logits, ref.logits), (i, r.last_frame)
            assert r.top_k == ref.top_k
    assert m["batch_sizes"] == {1: len(results)}


def test_batched_hub_feeds_the_engine_the_clips_predict_builds(engine, heldout_videos):
    """Across cameras, one call: each batch row is bit for bit the clip Engine.predict would build, each result is
    its row of that call's logits, and agrees with predict alone to float rounding (batch size changes GEMM
    blocking, so batched and single logits may differ in the last bits)."""
    paths = [p for p, _ in heldout_videos[3:7]]
    frames = [list(iter_frames(p)) for p in paths]
    rec = RecordingEngine(engine)
    cfg = engine.preprocess
    results = []
    # waits for full batches ("on": no start measurement feeding the engine clips of its own)
    hub = CameraHub(rec, max_wait_ms=10_000, on_result=results.append, results=0, batching="on")
    for i in range(4):  # pushed faster than real time: wait for room rather than drop
        hub.add_camera(camera_id=i, every=cfg.sampling_rate, drop_oldest=False)
    for t in range(max(map(len, frames))):  # frames of 4 cameras interleaved, as they would arrive
        for i in range(4):
            if t < len(frames[i]):
                hub.push(i, frames[i][t])
    hub.close(drain=True)
    assert max(len(b) for b in rec.batches) == engine.batch_range[1] > 1
    assert len(results) == sum(len(_due(len(f), cfg.window(), cfg.sampling_rate)) for f in frames)
    by_call = iter(rec.batches)
    row = 0
    batch = next(by_call)
    for r in results:  # one worker: results come in call order, rows in order
        if row == len(batch):
            batch, row = next(by_call), 0
        clip = engine.clip_from_frames(np.stack(frames[r.camera][r.first_frame : r.last_frame + 1]))
        assert np.array_equal(batch[row], clip)
        assert r.batch_size == len(batch)
        assert np.array_equal(r.logits, engine.infer(batch)[row])
        ref = engine.predict(frames[r.camera][r.first_frame : r.last_frame + 1])
        assert np.abs(r.logits - ref.logits).max() < 1e-5 and r.label == ref.label
        row += 1


# --------------------------------------------------------------------------- sources that drop and come back


def test_a_source_that_raises_then_recovers_is_reconnected(engine, heldout_videos):
    frames = list(iter_frames(heldout_videos[0][0]))
    calls = []

    def capture():
        calls.append(1)
        if len(calls) == 1:  # delivers 20 frames, then the connection drops
            yield from frames[:20]
            raise ConnectionError("camera unplugged")
        if len(calls) == 2:
            raise ConnectionError("connection refused")
        yield from frames

    cfg = engine.preprocess
    with CameraHub(engine, max_batch=1, backoff=(0.01, 0.05), results=0) as hub:  # batch 1: bit for bit
        results = []
        # live=False: the test's frames come faster than real time, so wait rather than drop; ends=True: the
        # third connection ending is the end of the test, not another drop
        hub.add_camera(
            CallableSource(capture, name="flaky", live=False, ends=True),
            camera_id="flaky",
            every=cfg.sampling_rate,
            on_result=results.append,
        )
        assert hub.wait_sources(60) and hub.drain(60)
        m = hub.metrics()["cameras"]["flaky"]
    assert m["reconnects"] == 1 and m["reconnect_attempts"] == 2 and len(calls) == 3
    assert m["frames"] == 20 + len(frames) and m["status"] == "ended"
    assert "ConnectionError" in m["last_error"]
    # No window spans the drop: after it, windows restart from frame 20 (the first frame of the new run).
    before = _due(20, cfg.window(), cfg.sampling_rate)
    after = [20 + k for k in _due(len(frames), cfg.window(), cfg.sampling_rate)]
    assert sorted(r.last_frame for r in results) == before + after
    for r in results:
        run = frames[:20] if r.last_frame < 20 else frames
        off = 0 if r.last_frame < 20 else 20
        ref = engine.predict(run[r.first_frame - off : r.last_frame - off + 1])
        assert np.array_equal(r.logits, ref.logits)


def test_a_looping_file_that_is_removed_and_recreated_is_reconnected(engine, heldout_videos, tmp_path):
    src = tmp_path / "cam.mp4"
    shutil.copy(heldout_videos[1][0], src)
    with CameraHub(engine, backoff=(0.01, 0.1), results=0, retries=None) as hub:  # retried until it is back
        cid = hub.add_camera(VideoSource(src, loop=True))
        cam = lambda: hub.metrics()["cameras"][str(cid)]  # noqa: E731
        _until(lambda: cam()["restarts"] >= 1 and cam()["predictions"] >= 2, "the file to loop")
        src.unlink()
        _until(lambda: cam()["reconnect_attempts"] >= 2, "failed reconnects while the file is gone")
        assert cam()["status"] == "retrying" and "mp4" in cam()["last_error"] and cam()["reconnects"] == 0
        n = cam()["predictions"]
        shutil.copy(heldout_videos[1][0], tmp_path / "part.mp4")
        (tmp_path / "part.mp4").replace(src)  # appears whole, as a camera coming back would
        _until(lambda: cam()["reconnects"] == 1 and cam()["predictions"] > n + 1, "predictions after the reconnect")
        assert cam()["status"] == "live"


# --------------------------------------------------------------------------- cameras come and go while running


def test_cameras_added_and_removed_while_running(engine, heldout_videos):
    frames = [list(iter_frames(p)) for p, _ in heldout_videos[:6]]
    cfg = engine.preprocess
    got: dict[int, list] = {i: [] for i in range(6)}
    hub = CameraHub(engine, max_wait_ms=5, results=0, on_result=lambda r: got[r.camera].append(r))
    removed_at: dict[int, int] = {}

    def camera(i: int) -> None:
        hub.add_camera(camera_id=i, every=cfg.sampling_rate, drop_oldest=False)
        for f in frames[i] * 3:
            if i in removed_at:
                return
            try:
                hub.push(i, f)
            except KeyError:  # removed between the check and the push
                assert i in removed_at
                return

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    _until(lambda: all(got[i] for i in range(3)), "the first cameras' results")
    threads += [threading.Thread(target=camera, args=(i,)) for i in range(3, 6)]  # added while the others run
    for t in threads[3:]:
        t.start()
    _until(lambda: all(got[i] for i in range(3, 6)), "the added cameras' results")
    for i in (0, 4):
        removed_at[i] = len(got[i])
        final = hub.remove_camera(i)
        assert final["status"] == "removed" and final["queued"] == 0
        assert final["predictions"] + final["dropped"] + final["discarded"] + final["failed"] == final["windows_due"]
        removed_at[i] = len(got[i])  # results delivered up to now; none may follow
    with pytest.raises(KeyError, match="no camera 0"):
        hub.push(0, frames[0][0])
    for t in threads:
        t.join(60)
    assert hub.drain(60)
    m = hub.metrics()
    hub.close()
    assert sorted(m["cameras"]) == ["1", "2", "3", "5"]
    for i in (0, 4):
        assert len(got[i]) == removed_at[i]
    for i in (1, 2, 3, 5):
        c = m["cameras"][str(i)]
        assert c["dropped"] == 0 and c["predictions"] == c["windows_due"] == len(got[i])
        assert c["windows_due"] == len(_due(3 * len(frames[i]), cfg.window(), cfg.sampling_rate))
    assert not [t for t in threading.enumerate() if t.name.startswith("hub-")]


# --------------------------------------------------------------------------- overload, made deterministic


class GatedEngine:
    """A deliberately slow engine: each ``infer`` waits for the test to open the gate. Logits encode the input."""

    def __init__(self, fail_first: bool = False) -> None:
        self.preprocess = PreprocessConfig(num_frames=4, sampling_rate=1, short_side=16, crop_size=16)
        self.clip_shape, self.batch_range, self.labels = (4, 3, 16, 16), (1, 4), ["a", "b", "c"]
        self.gate = threading.Semaphore(0)
        self.calls = 0
        self.in_call = threading.Event()
        self.fail_first = fail_first

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.in_call.set()
        self.gate.acquire()
        self.calls += 1
        if self.fail_first and self.calls == 1:
            raise RuntimeError("device lost")
        m = x.reshape(len(x), -1).mean(axis=1)
        return np.stack([m, -m, 0 * m], axis=1).astype(np.float32)


@pytest.mark.parametrize("fail_first", [False, True])
def test_overload_keeps_queues_bounded_counts_drops_and_starves_no_camera(fail_first):
    eng = GatedEngine(fail_first)
    n_cams, q, windows = 10, 2, 12
    calls_seen: list[tuple[int, object]] = []
    hub = CameraHub(
        eng,
        max_wait_ms=60_000,
        queue=q,
        results=0,
        on_result=lambda r: calls_seen.append((eng.calls, r.camera)),
        batching="on",  # every engine call is a counted batch (no start measurement)
    )
    for i in range(n_cams):
        hub.add_camera(camera_id=i, every=1)
    ring = hub.metrics()["ring_bytes"]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3 + windows, 24, 32, 3), dtype=np.uint8)
    for t in range(len(frames)):  # the device is stuck: every camera keeps delivering
        for i in range(n_cams):
            hub.push(i, frames[t])
        if t == 3:  # 4 cameras' first windows fill a batch; the worker takes exactly those and blocks in infer
            _until(eng.in_call.is_set, "the first engine call")
    m = hub.metrics()
    assert m["ring_bytes"] == ring  # memory is the rings allocated when the cameras were added, nothing more
    assert m["queued"] == n_cams * q
    for i in range(n_cams):
        c = m["cameras"][str(i)]
        in_flight = 1 if i < 4 else 0
        assert c["windows_due"] == windows and c["queued"] == q
        assert c["dropped"] == windows - q - in_flight  # the oldest dropped, counted per camera
    for _ in range(100):
        eng.gate.release()
    assert hub.drain(60)
    m = hub.metrics()
    hub.close()
    for i in range(n_cams):
        c = m["cameras"][str(i)]
        assert c["predictions"] + c["dropped"] + c["failed"] == c["windows_due"] == windows
        assert c["predictions"] >= q  # no camera starves
    if fail_first:
        assert m["engine_errors"] == 1 and sum(c["failed"] for c in m["cameras"].values()) == 4
    # Fair batches: 20 queued windows, batches of 4, one window per camera per round, oldest first.
    calls = {}
    for call, cam in calls_seen:
        calls.setdefault(call, []).append(cam)
    after = [calls[k] for k in sorted(calls) if k > 1]
    assert after[:4] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5]]
    assert all(len(set(c)) == len(c) for c in after)


def test_windows_older_than_max_age_are_dropped_when_a_batch_is_formed():
    eng = GatedEngine()
    got = []
    hub = CameraHub(eng, max_wait_ms=60_000, max_age_ms=1000, results=0, on_result=got.append)
    hub.add_camera(camera_id="cam", every=1)
    frames = np.random.default_rng(1).integers(0, 256, (7, 24, 32, 3), dtype=np.uint8)
    for t in range(4):  # the first window's last frame arrived 5 s ago (e.g. the device was stalled since)
        hub.push("cam", frames[t], arrived=time.perf_counter() - 5)
    for t in range(4, 7):  # three fresh windows: the queue reaches a full batch of 4 and the worker forms it
        hub.push("cam", frames[t])
    for _ in range(10):
        eng.gate.release()
    assert hub.drain(60)
    m = hub.metrics()["cameras"]["cam"]
    hub.close()
    assert [r.last_frame for r in got] == [4, 5, 6] and m["dropped"] == 1 and m["windows_due"] == 4
    assert m["predictions"] + m["dropped"] == m["windows_due"]


def test_a_lone_camera_is_not_held_for_a_full_batch(engine, heldout_videos):
    """The max-wait deadline: one camera with an engine that batches 4 still gets every window, one per call."""
    frames = list(iter_frames(heldout_videos[2][0]))
    cfg = engine.preprocess
    with CameraHub(engine, max_wait_ms=1, results=8) as hub:
        hub.add_camera(camera_id="solo", every=cfg.sampling_rate)
        for f in frames:
            hub.push("solo", f)
            assert hub.drain(60)  # returns only once the due window was predicted alone
        results = list(hub.results(timeout=0.5))
        m = hub.metrics()
    assert [r.last_frame for r in results] == _due(len(frames), cfg.window(), cfg.sampling_rate)
    assert set(m["batch_sizes"]) == {1}


# --------------------------------------------------------------------------- the command line


def test_cli_runs_several_sources_through_the_hub(fp32_bundle, heldout_videos, tmp_path):
    from calibration.clips.synthetic import render_clip, write_video

    a, b = (str(p) for p, _ in heldout_videos[:2])
    res = subprocess.run(
        [sys.executable, "-m", "runtime", str(fp32_bundle), a, b, "--every", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    cfg = Engine(fp32_bundle).preprocess
    for cam, path in ((0, a), (1, b)):
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith(f"camera {cam} frames")]
        assert len(lines) == len(_due(len(list(iter_frames(path))), cfg.window(), 2))
    short = tmp_path / "short.mp4"
    write_video(short, render_clip(0, np.random.default_rng(0), num_frames=cfg.window() - 1))
    for argv in ([str(short)], [a, str(short)]):
        res = subprocess.run(
            [sys.executable, "-m", "runtime", str(fp32_bundle), *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert res.returncode == 1 and "shorter than one clip" in res.stderr and "short.mp4" in res.stderr, res.stderr
    from PIL import Image

    Image.fromarray(list(iter_frames(a))[0]).save(tmp_path / "still.png")
    res = subprocess.run(
        [sys.executable, "-m", "runtime", str(fp32_bundle), str(tmp_path / "still.png")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 1 and "still.png: 1 frame (an image), shorter than one clip" in res.stderr, res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "runtime", str(fp32_bundle), a, str(tmp_path / "gone.mp4")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 2 and res.stderr.strip() == f"python -m runtime: {tmp_path / 'gone.mp4'}: no such file"


# --------------------------------------------------------------------------- the benchmark's own logic


def test_bench_cameras_accounts_for_every_window(fp32_bundle, tmp_path):
    import json

    from export.bench import cameras as bench_cameras

    out = tmp_path / "cams.json"
    assert (
        bench_cameras.main(
            [
                "--engine",
                str(fp32_bundle),
                "--cameras",
                "3",
                "--seconds",
                "1.2",
                "--fps",
                "25",
                "--search-seconds",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    for key in ("cameras", "fps", "seconds", "windows_due", "predictions", "dropped", "p50_ms", "p99_ms", "mean_batch"):
        assert key in r
    for run in r["batched"] + r["unbatched"]:
        assert run["predictions"] + run["dropped"] == run["windows_due"] == run["windows_expected"] > 0
    assert r["unbatched"][0]["mean_batch"] == 1.0 and r["batching_gain"]["logits_batched_vs_unbatched"]["windows"] > 0
    assert bench_cameras.main(["--engine", str(tmp_path / "nope"), "--search-seconds", "0"]) == 2


def test_capacity_search_finds_the_largest_served_count(monkeypatch):
    from export.bench import cameras as bench_cameras

    tried = []

    def fake_run(engine, frames, cameras, *a, **kw):
        tried.append(cameras)
        return {
            "served": cameras <= 37,
            "cameras": cameras,
            "max_batch": 8,
            "windows_due": 0,
            "predictions": 0,
            "dropped": 0,
            "p50_ms": None,
            "p99_ms": None,
            "mean_batch": None,
            "engine_ms_per_window": 0.0,
            "device_time_share": 0.0,
            "pace_lag_p90_ms": 0.0,
        }

    monkeypatch.setattr(bench_cameras, "run_cameras", fake_run)
    n, runs = bench_cameras.max_served(None, None, 16, 25, 1, None, {})
    assert 34 <= n <= 37 and tried[:4] == [16, 32, 64, 64] and len(runs) == len(tried) <= 14  # a failure is retried
    tried.clear()
    n, _ = bench_cameras.max_served(None, None, 100, 25, 1, None, {})
    assert 34 <= n <= 37 and tried[:3] == [100, 100, 50]


def test_an_app_that_skips_unsampled_frames_gets_the_same_windows(engine, heldout_videos):
    """``wants_frame`` / ``push(cam, None)``: the frames the hub does not sample go in without pixels, and every
    window's logits equal those of the same camera pushed every frame; ``None`` for a sampled frame is refused."""
    from runtime.errors import InputError

    frames = list(iter_frames(heldout_videos[0][0]))
    cfg = engine.preprocess
    assert cfg.sampling_rate > 1  # the motion model samples every 2nd frame: half the frames are skippable
    out: dict[str, dict[int, np.ndarray]] = {"all": {}, "skip": {}}
    for mode in out:
        results = []
        with CameraHub(engine, max_batch=1, max_wait_ms=0, on_result=results.append, results=0) as hub:
            hub.add_camera(camera_id=0, every=cfg.sampling_rate, drop_oldest=False)  # waits: no window lost
            skipped = 0
            for f in frames:
                if mode == "skip" and not hub.wants_frame(0):
                    hub.push(0, None)
                    skipped += 1
                else:
                    hub.push(0, f)
            assert hub.drain(60)
            if mode == "skip":
                assert skipped == len(frames) // cfg.sampling_rate
                while not hub.wants_frame(0):
                    hub.push(0, None)
                with pytest.raises(InputError, match="None for a frame the hub samples"):
                    hub.push(0, None)
            with pytest.raises(KeyError):
                hub.wants_frame("nope")
        out[mode] = {r.last_frame: r.logits for r in results}
    assert out["skip"].keys() == out["all"].keys() and len(out["all"]) >= 3
    assert all(np.array_equal(out["skip"][k], out["all"][k]) for k in out["all"])


def test_video_source_decodes_every_frame_and_converts_only_the_wanted(heldout_videos):
    """The hub's own decoding threads (VideoSource) skip converting unsampled frames: a declined frame comes as
    None, the others equal iter_frames' frames at the same index (so the bit-for-bit hub test above covers it)."""
    from runtime.video_source import iter_frames_or_skip

    path = heldout_videos[0][0]
    full = list(iter_frames(path))
    calls = []

    def wants() -> bool:
        calls.append(len(calls))
        return len(calls) % 3 == 1  # every third frame, from the first

    got = list(iter_frames_or_skip(path, None, wants))
    assert len(got) == len(full) == len(calls)
    for i, (g, f) in enumerate(zip(got, full)):
        assert (g is None) == (i % 3 != 0) and (g is None or np.array_equal(g, f))
    assert VideoSource(path).skips_unsampled and not CallableSource(lambda: []).skips_unsampled
