"""Real streams in the hub: every camera's state (connecting, live, retrying, failed) with its last error, one retry
rule with a clear end for one source or many (the command line too, Ctrl-C summary included), the batching choice
from measured times, and the Prometheus endpoint."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime import Engine
from runtime.batching import BatchPolicy
from runtime.hub import CameraHub
from runtime.sources import CallableSource
from runtime.video_source import iter_frames

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(fp32_bundle):
    with Engine(fp32_bundle) as e:
        yield e


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused():
    raise ConnectionRefusedError("camera at 10.0.0.9 refused the connection")
    yield  # a generator, as a frame factory is


# --------------------------------------------------------------------------- states and the retry bound


def test_a_never_connecting_source_is_retrying_with_its_error_then_failed(engine):
    seen: list[tuple[str, str | None]] = []
    with CameraHub(
        engine,
        results=0,
        backoff=(0.01, 0.02),
        retries=3,
        on_status=lambda cam, status, err: seen.append((status, err)),
    ) as hub:
        hub.add_camera(CallableSource(_refused, name="cam9"), camera_id="cam9")
        assert hub.wait_sources(60)
        m = hub.metrics()["cameras"]["cam9"]
    assert [s for s, _ in seen] == ["retrying", "failed"]  # from connecting; one report per change
    assert "ConnectionRefusedError" in seen[0][1] and "refused the connection" in seen[0][1]
    assert m["status"] == "failed" and m["reconnect_attempts"] == 3 and m["failed_attempts"] == 4
    assert "gave up after 3 retries" in m["last_error"] and "refused the connection" in m["last_error"]
    assert m["reconnects"] == 0 and m["last_error_at"] is not None


def test_the_outage_time_bound_ends_retrying_too(engine):
    with CameraHub(engine, results=0, backoff=(0.01, 0.01), retries=None, retry_for_s=0.2) as hub:
        hub.add_camera(CallableSource(_refused, name="cam"), camera_id=0)
        assert hub.wait_sources(60)  # retries=None alone would retry forever; the outage bound ends it
        m = hub.metrics()["cameras"]["0"]
    assert m["status"] == "failed" and "without frames" in m["last_error"] and m["reconnect_attempts"] >= 1


def test_a_camera_that_comes_back_is_live_and_counts_the_reconnect(engine, heldout_videos):
    frames = list(iter_frames(heldout_videos[0][0]))
    calls: list[int] = []

    def capture():
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionResetError("stream reset")
        yield from frames

    states = []
    with CameraHub(
        engine, results=0, backoff=(0.01, 0.02), retries=3, on_status=lambda cam, status, err: states.append(status)
    ) as hub:
        hub.add_camera(CallableSource(capture, name="flaky", live=False, ends=True), camera_id=0)
        assert hub.wait_sources(60) and hub.drain(60)
        m = hub.metrics()["cameras"]["0"]
    assert states == ["retrying", "live", "ended"]
    assert m["reconnects"] == 1 and m["reconnect_attempts"] == 2 and m["failed_attempts"] == 0
    assert m["predictions"] > 0 and "ConnectionResetError" in m["last_error"]


def test_one_rtsp_source_on_the_command_line_retries_then_fails(fp32_bundle):
    url = f"rtsp://127.0.0.1:{_closed_port()}/stream"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            str(fp32_bundle),
            url,
            "--retries",
            "2",
            "--backoff-max-s",
            "0.5",
            "--batching",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 1, r.stderr  # not 2 at once: retried, then failed
    assert f"camera 0 ({url}): retrying:" in r.stderr and f"camera 0 ({url}): failed: gave up after 2" in r.stderr
    assert "Connection refused" in r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("camera 0")][-1]
    assert "failed" in line and "0 reconnects of 2 attempts" in line and "last error: gave up" in line


def test_ctrl_c_summary_shows_state_attempts_and_last_error(fp32_bundle):
    url = f"rtsp://127.0.0.1:{_closed_port()}/stream"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime",
            str(fp32_bundle),
            url,
            "--retries",
            "-1",
            "--backoff-max-s",
            "0.5",
            "--batching",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert p.stderr is not None
        for line in p.stderr:  # wait for the first retry (not a timed assertion: the test's timeout bounds it)
            if ": retrying:" in line:
                break
        time.sleep(1.5)  # a few more attempts
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    line = [x for x in out.splitlines() if x.startswith("camera 0")][-1]
    assert "retrying" in line and "0 reconnects of" in line and "Connection refused" in line
    attempts = int(line.split("0 reconnects of ")[1].split()[0])
    assert attempts >= 2


# --------------------------------------------------------------------------- batching only when it pays


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("per_call, per_window, batched", [(0.0, 0.01, False), (0.02, 0.002, True)])
def test_batching_is_chosen_from_the_measured_time_per_window(per_call, per_window, batched):
    clock = _Clock()

    def infer(x):  # a device whose call costs per_call + per_window x batch, on a fake clock
        clock.t += per_call + per_window * len(x)

    policy = BatchPolicy("auto", max_batch=8, clock=clock)
    assert policy.needs_measuring and policy.limit(5) == 8
    policy.measure(infer, np.zeros((8, 1), np.float32))
    d = policy.describe()
    assert d["batched"] is batched and d["measured_at_start"]["batch"] == 8
    assert d["per_window_ms"]["single"] == pytest.approx((per_call + per_window) * 1e3)
    assert policy.limit(5) == (8 if batched else 1)
    assert ("does not save" in d["reason"]) is not batched


def test_the_batching_choice_follows_observed_times():
    policy = BatchPolicy("auto", max_batch=4, alpha=0.5, clock=_Clock())
    policy.measure(lambda x: None, np.zeros((4, 1)))  # a fake clock that never moves: no measured difference
    policy.per_window_s = {"single": 0.010, "batched": 0.004}
    policy.observe(4, 0.016)
    assert policy.batched
    for _ in range(10):  # the device got loaded: batches now cost more per window than single windows
        policy.observe(4, 0.080)
        policy.observe(1, 0.010)
    assert not policy.batched and policy.limit(3) == 1
    probes = [policy.limit(3) for _ in range(policy.probe_every)]
    assert probes.count(4) == 1  # now and then one batched call keeps the batched estimate current
    assert BatchPolicy("on", max_batch=4).limit(1) == 4 and BatchPolicy("off", max_batch=4).limit(9) == 1
    assert BatchPolicy("off", max_batch=4, min_batch=2).limit(9) == 2  # an engine's smallest batch still rules


def test_the_hub_reports_its_batching_choice(engine):
    with CameraHub(engine, results=0, batching="auto") as hub:
        hub.drain(1)
        for _ in range(600):  # the first inference thread measures at start
            if not hub.batching.needs_measuring:
                break
            time.sleep(0.05)
        b = hub.metrics()["batching"]
    assert b["mode"] == "auto" and b["measured_at_start"] is not None and isinstance(b["batched"], bool)
    assert b["per_window_ms"]["single"] > 0 and b["per_window_ms"]["batched"] > 0 and "per window" in b["reason"]


# --------------------------------------------------------------------------- Prometheus


def test_the_prometheus_endpoint_serves_the_documented_metrics(engine, fp32_bundle, heldout_videos):
    from prometheus_client.parser import text_string_to_metric_families

    from runtime.metrics import serve_metrics

    frames = list(iter_frames(heldout_videos[0][0]))
    with CameraHub(engine, results=0, backoff=(0.01, 0.02), retries=1) as hub:
        server, _, _ = serve_metrics(hub, 0)
        try:
            assert server.server_address[0] == "127.0.0.1"  # loopback unless told otherwise
            hub.add_camera(CallableSource(lambda: iter(frames), name="good", live=False, ends=True), camera_id="good")
            hub.add_camera(CallableSource(_refused, name="bad"), camera_id="bad")
            assert hub.wait_sources(60) and hub.drain(60)
            m = hub.metrics()
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            text = urllib.request.urlopen(url, timeout=30).read().decode()
        finally:
            server.shutdown()
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    def value(metric: str, **labels: str) -> float:
        for fam in fams.values():
            for s in fam.samples:
                if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise AssertionError(f"{metric} {labels} not served (families: {sorted(fams)})")

    p = "timesformer_"
    assert value(p + "camera_state", camera="bad", state="failed") == 1
    assert value(p + "camera_state", camera="bad", state="retrying") == 0
    assert value(p + "camera_state", camera="good", state="ended") == 1
    err = [s for s in fams[p + "camera_last_error_info"].samples if s.labels["camera"] == "bad"]
    assert len(err) == 1 and "refused the connection" in err[0].labels["error"]
    good = m["cameras"]["good"]
    assert value(p + "camera_predictions_total", camera="good") == good["predictions"] > 0
    assert value(p + "camera_windows_total", camera="good") == good["windows_due"]
    assert value(p + "camera_frames_total", camera="good") == len(frames)
    assert value(p + "camera_dropped_total", camera="good") == good["dropped"]
    assert value(p + "camera_reconnect_attempts_total", camera="bad") == 1
    assert value(p + "camera_latency_seconds_count", camera="good") == good["predictions"]
    assert value(p + "engine_call_seconds_count") == m["calls"]
    assert value(p + "engine_windows_total") == good["predictions"]
    assert value(p + "engine_busy_seconds_total") > 0
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    info = fams[p + "bundle_info"].samples[0].labels
    assert info["sha256"] == manifest["files"][manifest["engine_file"]]["sha256"]
    assert info["name"] == fp32_bundle.name and info["backend"] == "onnxruntime" and info["precision"] == "fp32"
    assert info["verification"] == engine.verification["status"]
    assert value(p + "hub_batching", mode="auto") in (0, 1)  # the library default: measured, 1 while batching
