"""Serving on Ray Serve (issue 17): the motion bundle served on 127.0.0.1 by two replicas, loaded by concurrent
clients, answers compared with ``runtime.Engine`` here; one replica killed mid-run; bad input gets a 4xx.

One Ray start for the module (about 10-20 s on 2 cores). The protocol and CLI tests at the top need no Ray.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime import Engine, InputError
from runtime.serving.protocol import HttpError, decode_body, encode_array

ROOT = Path(__file__).resolve().parents[2]


def _decode(body: bytes, headers: dict[str, str], kind: str = "frames"):
    return decode_body(body, headers, kind=kind, clip_shape=(8, 3, 64, 64), num_frames=8, crop_size=64,
                       input_dtype=np.dtype(np.float32), max_batch=4)


def test_the_wire_format_round_trips_and_names_what_is_wrong() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (15, 96, 128, 3), dtype=np.uint8)
    body, headers = encode_array(frames, top_k=3, channel_order="BGR")
    req = _decode(body, headers)
    assert req.kind == "frames" and req.bgr and req.top_k == 3 and np.array_equal(req.array, frames)
    cases = [
        ({"X-Shape": None}, "X-Shape: missing"),
        ({"X-Shape": "15,96,x,3"}, "comma-separated integers"),
        ({"X-Shape": "15,96,128"}, "(N, H, W, 3)"),
        ({"X-Shape": "15,96,128,4"}, "(N, H, W, 3)"),
        ({"X-Shape": "7,96,128,3"}, "at least 8 frames"),
        ({"X-Shape": "16,96,128,3"}, f"needs {16 * 96 * 128 * 3} bytes, got {len(body)}"),
        ({"X-Dtype": "float32"}, "takes uint8"),
        ({"X-Dtype": "int7"}, "X-Dtype: expected one of"),
        ({"X-Top-K": "0"}, "X-Top-K"),
        ({"X-Channel-Order": "RBG"}, "X-Channel-Order"),
        ({"X-Input": "clip"}, "exactly (8, 64, 64, 3)"),
        ({"X-Input": "pixels"}, "X-Input"),
    ]
    for change, needle in cases:
        h = {**headers, **change}
        h = {k: v for k, v in h.items() if v is not None}
        with pytest.raises(HttpError) as e:
            _decode(body, h)
        assert e.value.status == 400 and needle in e.value.message, (change, e.value.message)
    with pytest.raises(HttpError) as e:
        _decode(body, {**headers, "Content-Type": "application/json"})
    assert e.value.status == 415
    with pytest.raises(HttpError) as e:
        _decode(b"\0" * 4, {"X-Shape": "100000,1000,1000,3"})
    assert e.value.status == 413
    clips = np.zeros((5, 8, 3, 64, 64), np.float32)
    with pytest.raises(HttpError, match="larger than the engine's maximum 4"):
        _decode(*encode_array(clips), kind="canonical")


def test_the_serve_command_refuses_a_bad_bundle_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "runtime.serving", "--engine", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope" in r.stderr, r.stderr


def test_the_serve_command_refuses_a_busy_port_in_one_line(fp32_bundle: Path) -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install './runtime[serve]')")
    with socket.socket() as s:  # someone else listens on the port
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "runtime.serving", "--engine", str(fp32_bundle), "--port", str(port)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"127.0.0.1:{port}" in r.stderr, r.stderr


def test_the_load_test_refuses_an_unreachable_url_in_one_line() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "export.serving.load_test", "--url", f"http://127.0.0.1:{port}", "--seconds", "1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"127.0.0.1:{port}" in r.stderr, r.stderr


# ---------------------------------------------------------------------- the served application (one Ray start)
@pytest.fixture(scope="module")
def served(fp32_bundle):
    pytest.importorskip("ray", reason="ray[serve] is not installed (pip install './runtime[serve]')")
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install './runtime[serve]')")
    from runtime.serving import ServeOptions, deploy, shutdown

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = deploy(ServeOptions(bundle=str(fp32_bundle), replicas=2, port=port, batch_wait_ms=5, threads=1,
                             cpus_per_replica=0.5))  # fits any machine with one core or more
    try:
        yield url
    finally:
        shutdown()


@pytest.fixture(scope="module")
def clips_and_expected(served, fp32_bundle):
    from export.serving.load_test import expected_logits, make_clips
    from runtime.remote import RemoteEngine

    clips = make_clips(RemoteEngine(served), 16, seed=3)
    return clips, expected_logits(fp32_bundle, clips)


def _check_accounting(res) -> None:
    assert res.requests > 0 and res.lost == 0 and res.ok + res.errors == res.requests, res
    assert res.mismatches == 0, res


def test_every_request_is_answered_and_equals_the_local_engine(served, clips_and_expected) -> None:
    from export.serving.load_test import run_load

    clips, expected = clips_and_expected
    res = run_load(served, clients=6, seconds=3.0, clips=clips, expected=expected)
    _check_accounting(res)
    assert res.errors == 0 and res.ok >= len(clips), res
    assert res.replicas_seen == 2, res  # both replicas took requests
    assert res.p50_ms is not None and res.p50_ms <= res.p99_ms


def test_remote_engine_is_a_drop_in_for_engine(served, fp32_bundle, clips_and_expected) -> None:
    from runtime.remote import RemoteEngine

    clips, _ = clips_and_expected
    remote, local = RemoteEngine(served), Engine(fp32_bundle)
    assert (remote.clip_shape, remote.batch_range, remote.labels, remote.num_classes, remote.input_dtype) == \
           (local.clip_shape, local.batch_range, local.labels, local.num_classes, local.input_dtype)
    assert remote.preprocess == local.preprocess
    for frames in clips[:3]:
        r, l = remote.predict(frames, top_k=3), local.predict(frames, top_k=3)
        assert [a for a, _ in r.top_k] == [a for a, _ in l.top_k]
        np.testing.assert_allclose(r.logits, l.logits, atol=1e-5)
        rb, lb = remote.predict(frames[..., ::-1], bgr=True), local.predict(frames[..., ::-1].copy(), bgr=True)
        np.testing.assert_allclose(rb.logits, lb.logits, atol=1e-5)
        np.testing.assert_allclose(remote.clip_from_frames(frames), local.clip_from_frames(frames))
    x = np.stack([local.clip_from_frames(c) for c in clips[:3]])
    np.testing.assert_allclose(remote.infer(x), local.infer(x), atol=1e-5)
    # a window already resized and cropped on the gateway (X-Input: clip) gives the engine's answer too
    cfg = remote.preprocess
    assert cfg.short_side == cfg.crop_size == clips[0].shape[1]  # the test clips are already at the short side
    left = (clips[0].shape[2] - cfg.crop_size) // 2
    small = np.ascontiguousarray(clips[0][cfg.sampling_rate * np.arange(8)][:, :, left:left + cfg.crop_size])
    np.testing.assert_allclose(remote.predict(small, input="clip").logits, local.predict(small).logits, atol=1e-5)
    # the streaming buffer runs unchanged on the remote engine: same predictions at the same frames
    rs, ls = remote.stream(every=4), local.stream(every=4)
    got = [(rs.push(f), ls.push(f)) for f in clips[1]]
    pairs = [(a, b) for a, b in got if a is not None or b is not None]
    assert pairs and all(a is not None and b is not None and a.label == b.label for a, b in pairs)
    with pytest.raises(InputError, match="at least 8 frames"):
        remote.predict(clips[0][:5])
    with pytest.raises(InputError, match="batch 6 outside"):
        remote.infer(np.concatenate([x, x]))


def test_the_camera_hub_runs_on_the_remote_engine_unchanged(served, fp32_bundle, clips_and_expected) -> None:
    """The gateway case: the hub takes RemoteEngine(url) where it took Engine(bundle); same windows, same answers."""
    from runtime.hub import CameraHub
    from runtime.remote import RemoteEngine
    from runtime.sources import ArraySource

    clips, _ = clips_and_expected
    videos = [np.concatenate([clips[i], clips[i + 1]]) for i in (0, 2, 4)]  # 30 frames: several windows each
    local = Engine(fp32_bundle)
    cfg = local.preprocess
    results = []
    with CameraHub(RemoteEngine(served), max_wait_ms=5, on_result=results.append, results=0) as hub:
        for i, v in enumerate(videos):
            hub.add_camera(ArraySource(v, fps=None), camera_id=i, every=cfg.sampling_rate)  # not live: no drops
        assert hub.wait_sources(60) and hub.drain(60)
    per_camera = (len(videos[0]) - cfg.window()) // cfg.sampling_rate + 1
    assert len(results) == len(videos) * per_camera
    for r in results:
        ref = local.predict(videos[r.camera][r.first_frame:r.last_frame + 1])
        np.testing.assert_allclose(r.logits, ref.logits, atol=1e-5)
        assert r.label == ref.label


def _post(url: str, body: bytes, headers: dict[str, str], method: str = "POST") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_a_clear_4xx_never_a_500(served, clips_and_expected) -> None:
    clips, _ = clips_and_expected
    body, headers = encode_array(clips[0])
    status, out = _post(f"{served}/v1/predict", body, headers)
    assert status == 200 and len(out["top_k"]) == 5 and out["batch"] >= 1
    cases = [
        ("/v1/predict", body[:-1], headers, "POST", 400, "needs"),
        ("/v1/predict", body, {**headers, "X-Shape": "3,2,1"}, "POST", 400, "X-Shape"),
        ("/v1/predict", body, {k: v for k, v in headers.items() if k != "X-Shape"}, "POST", 400, "X-Shape: missing"),
        ("/v1/predict", body, {**headers, "X-Dtype": "float32"}, "POST", 400, "uint8"),
        ("/v1/predict", body, {**headers, "Content-Type": "text/plain"}, "POST", 415, "Content-Type"),
        ("/v1/predict", bytes(5 * 64 * 64 * 3), {**headers, "X-Shape": "5,64,64,3"}, "POST", 400, "at least 8 frames"),
        ("/v1/infer", bytes(5 * 8 * 3 * 64 * 64 * 4), {**headers, "X-Shape": "5,8,3,64,64", "X-Dtype": "float32"},
         "POST", 400, "larger than the engine's maximum 4"),
        ("/v1/infer", body, headers, "POST", 400, "X-Dtype: expected float32"),
        ("/v1/predict", b"", {}, "GET", 405, "POST"),
        ("/v1/nothing", b"", {}, "GET", 404, "/v1/predict"),
    ]
    for path, b, h, method, code, needle in cases:
        status, out = _post(served + path, b, h, method)
        assert status == code and needle in out["error"], (path, h, status, out)
    status, health = _post(f"{served}/v1/health", b"", {}, "GET")
    assert status == 200 and health["status"] == "ok" and health["actor"]


def test_a_replica_killed_mid_run_loses_no_request(served, clips_and_expected) -> None:
    from export.serving.load_test import run_load
    from runtime.remote import RemoteEngine

    clips, expected = clips_and_expected
    res = run_load(served, clients=6, seconds=4.0, kill_after=1.0, clips=clips, expected=expected)
    _check_accounting(res)
    assert res.killed and "replica" in res.killed and "error" not in res.killed, res.killed
    assert res.ok_after_kill > 0, res  # the surviving replica (and Serve's replacement) went on answering
    assert res.errors == 0 or res.error_messages, res  # a failure is reported with its message
    assert RemoteEngine(served).health()["status"] == "ok"  # the surviving (or replacement) replica answers
