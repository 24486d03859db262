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
    return decode_body(
        body,
        headers,
        kind=kind,
        clip_shape=(8, 3, 64, 64),
        num_frames=8,
        crop_size=64,
        input_dtype=np.dtype(np.float32),
        max_batch=4,
    )


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
    r = subprocess.run(
        [sys.executable, "-m", "runtime.serving", "--engine", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope" in r.stderr, r.stderr


def test_the_serve_command_refuses_a_busy_port_in_one_line(fp32_bundle: Path) -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install './runtime[serve]')")
    with socket.socket() as s:  # someone else listens on the port
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "runtime.serving", "--engine", str(fp32_bundle), "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"127.0.0.1:{port}" in r.stderr, r.stderr


def test_the_load_test_refuses_an_unreachable_url_in_one_line() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [sys.executable, "-m", "export.serving.load_test", "--url", f"http://127.0.0.1:{port}", "--seconds", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"127.0.0.1:{port}" in r.stderr, r.stderr


def test_the_proxy_body_guard_bounds_time_and_size_whatever_the_encoding() -> None:
    # issue 28 #8 and #9, the middleware alone (no Ray): a body is read whole before the app sees it, within one
    # deadline (a stalled or trickling client gets 408) and a byte cap counted as it arrives (413, chunked or not)
    import asyncio

    from runtime.serving.guard import BodyGuard

    def run(messages: list[dict], headers: tuple = (), delay: float = 0.0, **kw) -> tuple[list[dict], list, int]:
        sent: list[dict] = []
        seen: list[bytes] = []
        left = list(messages)

        async def app(scope, receive, send) -> None:
            seen.append((await receive())["body"])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        async def receive() -> dict:
            if not left:
                await asyncio.sleep(3600)  # a client that stalls
            await asyncio.sleep(delay)
            return left.pop(0)

        async def send(m: dict) -> None:
            sent.append(m)

        asyncio.run(BodyGuard(app, **kw)({"type": "http", "headers": list(headers)}, receive, send))
        return sent, seen, len(left)

    def part(n: int, more: bool = True) -> dict:
        return {"type": "http.request", "body": bytes(n), "more_body": more}

    sent, seen, _ = run([part(40), part(40, False)], max_body_bytes=100)
    assert sent[0]["status"] == 200 and seen == [bytes(80)]  # whole, in one piece
    sent, seen, unread = run([part(40)] * 5 + [part(0, False)], max_body_bytes=100)  # chunked: no Content-Length
    assert sent[0]["status"] == 413 and not seen and unread == 3 and b"transfer encoding" in sent[1]["body"]
    sent, seen, unread = run([part(40, False)], headers=((b"content-length", b"1000"),), max_body_bytes=100)
    assert sent[0]["status"] == 413 and not seen and unread == 1  # refused before a byte is read
    assert (b"connection", b"close") in sent[0]["headers"]
    sent, seen, _ = run([part(10)], body_timeout_s=0.2)  # headers and a little body, then nothing
    assert sent[0]["status"] == 408 and not seen
    sent, seen, _ = run([part(1)] * 50 + [part(0, False)], delay=0.02, body_timeout_s=0.2)  # every read fast
    assert sent[0]["status"] == 408 and not seen


# ---------------------------------------------------------------------- the served application (one Ray start)
@pytest.fixture(scope="module")
def served(fp32_bundle):
    pytest.importorskip("ray", reason="ray[serve] is not installed (pip install './runtime[serve]')")
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install './runtime[serve]')")
    from runtime.serving import ServeOptions, deploy, shutdown

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = deploy(
        ServeOptions(bundle=str(fp32_bundle), replicas=2, port=port, batch_wait_ms=5, threads=1, cpus_per_replica=0.5)
    )  # fits any machine with one core or more
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
    assert (remote.clip_shape, remote.batch_range, remote.labels, remote.num_classes, remote.input_dtype) == (
        local.clip_shape,
        local.batch_range,
        local.labels,
        local.num_classes,
        local.input_dtype,
    )
    assert remote.preprocess == local.preprocess
    for frames in clips[:3]:
        r, want = remote.predict(frames, top_k=3), local.predict(frames, top_k=3)
        assert [a for a, _ in r.top_k] == [a for a, _ in want.top_k]
        np.testing.assert_allclose(r.logits, want.logits, atol=1e-5)
        rb, lb = remote.predict(frames[..., ::-1], bgr=True), local.predict(frames[..., ::-1].copy(), bgr=True)
        np.testing.assert_allclose(rb.logits, lb.logits, atol=1e-5)
        np.testing.assert_allclose(remote.clip_from_frames(frames), local.clip_from_frames(frames))
    x = np.stack([local.clip_from_frames(c) for c in clips[:3]])
    np.testing.assert_allclose(remote.infer(x), local.infer(x), atol=1e-5)
    # a window already resized and cropped on the gateway (X-Input: clip) gives the engine's answer too
    cfg = remote.preprocess
    assert cfg.short_side == cfg.crop_size == clips[0].shape[1]  # the test clips are already at the short side
    left = (clips[0].shape[2] - cfg.crop_size) // 2
    small = np.ascontiguousarray(clips[0][cfg.sampling_rate * np.arange(8)][:, :, left : left + cfg.crop_size])
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
        ref = local.predict(videos[r.camera][r.first_frame : r.last_frame + 1])
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
        (
            "/v1/infer",
            bytes(5 * 8 * 3 * 64 * 64 * 4),
            {**headers, "X-Shape": "5,8,3,64,64", "X-Dtype": "float32"},
            "POST",
            400,
            "larger than the engine's maximum 4",
        ),
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


# ------------------------------------------------------------------------- issue 28: a hostile client, Ray bounds


def _stalled(url: str, n: int) -> list[socket.socket]:
    """``n`` clients that send a valid /v1/predict's headers and 1 KB of its 98,304-byte body, then stall."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"X-Shape: 8,64,64,3\r\nContent-Length: 98304\r\n\r\n" + bytes(1024)
        )
        socks.append(s)
    return socks


def test_stalled_clients_do_not_block_the_others(served, clips_and_expected) -> None:
    # issue 28 #8: 16 stalled connections (= the replicas' max_ongoing_requests) blocked every other request
    from runtime.remote import RemoteEngine

    clips, expected = clips_and_expected
    socks = _stalled(served, 24)  # more than every replica slot together (2 x 8)
    try:
        client = RemoteEngine(served, timeout_s=20, retries=0)
        for i in range(3):
            assert len(client.predict(clips[i]).top_k) == 5
    finally:
        for s in socks:
            s.close()


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(served) -> None:
    # issue 28 #9: Transfer-Encoding: chunked bypassed the 256 MB limit (a 600 MB body buffered before the 400)
    import threading

    from runtime.serving.protocol import MAX_BODY_BYTES

    host, port = served.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"X-Shape: 8,64,64,3\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % (1 << 20) + bytes(1 << 20) + b"\r\n"
    sent = [0]

    def send() -> None:
        try:
            for _ in range(MAX_BODY_BYTES // (1 << 20) + 64):  # bounded: 64 MB past the limit
                s.sendall(chunk)
                sent[0] += 1 << 20
            s.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: expected
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            answer += part
    except ConnectionResetError:
        pass
    finally:
        t.join(60)
        s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"whatever the transfer encoding" in answer
    assert sent[0] < MAX_BODY_BYTES + (64 << 20)  # reading stopped: the sender could not push all it had


def test_malformed_shapes_and_huge_values_are_4xx_and_not_retried(served, fp32_bundle) -> None:
    # issue 28 #17: an X-Shape whose product overflows int64, or finite but huge values (3e38), got HTTP 500 (and
    # RemoteEngine retried those 4 times)
    from runtime.remote import RemoteEngine

    big = "8,4294967296,4294967296,3"  # 8 * 2**64 * 3 bytes: 0 modulo 2**64
    for path, shape, dtype in (
        ("/v1/predict", big, "uint8"),
        ("/v1/infer", "1," + big, "float32"),
        ("/v1/predict", "9" * 30 + ",64,64,3", "uint8"),
        ("/v1/predict", "1,2,3,4,5,6,7,8,9,3", "uint8"),
    ):
        status, out = _post(
            served + path, b"", {"Content-Type": "application/octet-stream", "X-Shape": shape, "X-Dtype": dtype}
        )
        assert 400 <= status < 500 and "X-Shape" in out["error"], (shape, status, out)
    client = RemoteEngine(served, retries=3)
    x = np.full((1, 8, 3, 64, 64), 3e38, np.float32)
    with pytest.raises(InputError, match="400 body: values 3e.38"):
        client.infer(x)
    assert client.retried == 0


def test_a_local_ray_listens_on_loopback_only(served) -> None:
    # issue 28 #6: Prometheus endpoints on 0.0.0.0, the dashboard agent on a non-loopback address, and
    # ~/.ray/auth_token mode 0644
    psutil = pytest.importorskip("psutil")

    me = psutil.Process()
    pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
    listening = [
        (c.laddr.ip, c.laddr.port, c.pid)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert len(listening) >= 4, listening  # GCS, raylet, agents, the HTTP proxy at least
    exposed = [
        (ip, port, psutil.Process(pid).name())
        for ip, port, pid in listening
        if ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    ]
    assert not exposed, exposed
    token = Path.home() / ".ray" / "auth_token"
    if token.exists():
        assert token.stat().st_mode & 0o077 == 0, oct(token.stat().st_mode)


def test_each_replica_serves_its_prometheus_metrics(served, fp32_bundle, clips_and_expected) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from runtime.remote import RemoteEngine

    clips, _ = clips_and_expected
    client = RemoteEngine(served)
    for clip in clips[:4]:
        client.predict(clip)
    bad = urllib.request.Request(
        f"{served}/v1/infer",
        data=b"x",
        method="POST",
        headers={"Content-Type": "application/octet-stream", "X-Shape": "1,2"},
    )
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad, timeout=30)
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    per_replica: dict[str, dict[str, float]] = {}
    for _ in range(40):  # each scrape is answered by one of the two replicas
        with urllib.request.urlopen(f"{served}/v1/metrics", timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        info = fams["timesformer_bundle_info"].samples[0].labels
        assert info["sha256"] == manifest["files"][manifest["engine_file"]]["sha256"]
        assert info["name"] == fp32_bundle.name and info["verification"] in ("passed", "unavailable", "skipped")
        counts = {
            f"{s.labels['endpoint']}:{s.labels['code']}": s.value
            for s in fams["timesformer_serve_requests"].samples
            if s.name.endswith("_total")
        }
        counts["windows"] = sum(
            s.value for s in fams["timesformer_engine_windows"].samples if s.name.endswith("_total")
        )
        counts["calls"] = sum(
            s.value for s in fams["timesformer_engine_call_seconds"].samples if s.name.endswith("_count")
        )
        per_replica[info["replica"]] = counts
        if len(per_replica) == 2:
            break
    total = lambda key: sum(c.get(key, 0) for c in per_replica.values())  # noqa: E731
    assert total("predict:200") >= 4 and total("infer:400") >= 1  # every answer counted, refusals by their code
    assert total("windows") >= 4 and total("calls") >= 1
