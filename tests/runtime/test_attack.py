"""Hostile but realistic use of the runtime's entry points (fourth round): each test reproduces a case that broke.

``python -m runtime`` is called in-process (``main(argv)``); servers are threads on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import Engine


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from runtime.__main__ import main

    rc = main(argv)
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------------------ python -m runtime: --out


@pytest.mark.parametrize("name", ["annotated.txt", "annotated", "fifo"])
def test_out_must_be_a_video_file_name_before_the_engine_loads(
    fp32_bundle, heldout_videos, tmp_path, capsys, monkeypatch, name
):
    # before: the engine loaded and ran, then PyAV said "Could not determine output format" (no file named)
    out = tmp_path / name
    if name == "fifo":
        os.mkfifo(out)
    monkeypatch.setattr("runtime.__main__.Engine", lambda *a, **k: pytest.fail("the engine loaded"))
    rc, err = _cli([str(fp32_bundle), str(heldout_videos[0][0]), "--out", str(out)], capsys)
    assert rc == 2 and f"--out {out}: expected a video file name" in err, err
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if name == "fifo" else [])


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (a folder no file can be made in)")
def test_out_in_a_folder_that_cannot_be_written_is_one_line(fp32_bundle, heldout_videos, capsys):
    # before: a traceback from av.error.FileNotFoundError (exit 1) after the engine had loaded and run
    rc, err = _cli([str(fp32_bundle), str(heldout_videos[0][0]), "--out", "/proc/annotated.mp4"], capsys)
    assert rc == 2 and "--out /proc/annotated.mp4: cannot write in /proc" in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_failed_run_leaves_the_previous_out_file_whole(fp32_bundle, heldout_videos, tmp_path, capsys, monkeypatch):
    # before: --out was opened for writing at the first frame; a run failing later left a truncated video there
    from runtime.stream import ClipStream

    out = tmp_path / "annotated.mp4"
    out.write_bytes(b"yesterday's video")
    pushed = {"n": 0}
    real_push = ClipStream.push

    def push(self: ClipStream, frame: np.ndarray) -> Any:
        pushed["n"] += 1
        if pushed["n"] == 20:
            raise RuntimeError("camera unplugged")
        return real_push(self, frame)

    monkeypatch.setattr(ClipStream, "push", push)
    rc, err = _cli([str(fp32_bundle), str(heldout_videos[0][0]), "--out", str(out)], capsys)
    assert rc == 2 and "camera unplugged" in err, err
    assert out.read_bytes() == b"yesterday's video"
    assert [p.name for p in tmp_path.iterdir()] == ["annotated.mp4"]  # no temporary file left behind


def test_a_finished_run_replaces_the_out_file(fp32_bundle, heldout_videos, tmp_path, capsys):
    out = tmp_path / "annotated.mp4"
    out.write_bytes(b"yesterday's video")
    rc, err = _cli([str(fp32_bundle), str(heldout_videos[0][0]), "--out", str(out), "--max-frames", "20"], capsys)
    assert rc == 0, err
    import av

    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["annotated.mp4"]


# ------------------------------------------------------------------------------ python -m runtime: other options


@pytest.mark.parametrize(
    "argv, message",
    [
        ([""], "source '': empty"),  # before: Path('') is '.', which exists; the engine loaded, then ": cannot open"
        (["SRC", "SRC", "--max-wait-ms", "nan"], "--max-wait-ms: expected a finite number >= 0, got nan"),
        (["SRC", "SRC", "--max-wait-ms", "-5"], "--max-wait-ms: expected a finite number >= 0, got -5"),
        (["SRC", "--backoff-max-s", "inf"], "--backoff-max-s: expected a finite number"),
    ],
)
def test_unusable_option_values_are_refused_before_the_engine_loads(
    fp32_bundle, heldout_videos, capsys, monkeypatch, argv, message
):
    monkeypatch.setattr("runtime.__main__.Engine", lambda *a, **k: pytest.fail("the engine loaded"))
    src = str(heldout_videos[0][0])
    rc, err = _cli([str(fp32_bundle), *[src if a == "SRC" else a for a in argv]], capsys)
    assert rc == 2 and message in err, err


# ------------------------------------------------------------------------------ RemoteEngine


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"retries": -1}, "retries: expected an integer >= 0"),  # before: "no answer after 0 attempt(s); last: "
        ({"retries": "3"}, "retries: expected an integer >= 0"),  # before: TypeError inside the retry loop
        ({"backoff_s": -1.0}, "backoff_s: expected"),  # before: ValueError from time.sleep at the first retry
        ({"backoff_s": float("nan")}, "backoff_s: expected"),
        ({"url": "http://127.0.0.1:notaport"}, "url: expected http://host:port"),  # before: http.client's message
        ({"url": "http://127.0.0.1:99999"}, "url: expected http://host:port"),
        ({"url": "http://"}, "url: expected http://host:port"),  # before: a DNS error after every retry
    ],
)
def test_remote_engine_settings_are_checked_when_it_is_made(kwargs, message):
    from runtime.remote import RemoteEngine

    args = {"url": "http://127.0.0.1:1", "fetch_meta": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        RemoteEngine(**args)


class _LyingServer:
    """A served engine on 127.0.0.1 that answers ``meta`` to GET and ``answer`` (raw JSON text) to POST."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta, self.answer = meta, "{}"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(json.dumps(outer.meta).encode())

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self._send(outer.answer.encode())

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def lying(fp32_bundle):
    with Engine(fp32_bundle) as e:
        meta = {
            "bundle": "motion",
            "precision": e.precision,
            "input": e.manifest["input"],
            "labels": e.labels,
            "clip_shape": list(e.clip_shape),
            "batch_range": list(e.batch_range),
            "input_dtype": "float32",
            "num_classes": e.num_classes,
            "preprocess": e.preprocess.to_dict(),
            "bundle_id": "b1",
        }
    server = _LyingServer(meta)
    yield server
    server.close()


def test_remote_booleans_are_not_logits(lying):
    # before: JSON true/false were read as 1.0/0.0 logits and gave a label
    from runtime.remote import RemoteEngine, RemoteEngineError

    client = RemoteEngine(lying.url, retries=0)
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    lying.answer = json.dumps({"logits": [0.5] * 8, "bundle_id": "b1"})
    assert len(client.predict(frames).top_k) == 5
    lying.answer = json.dumps({"logits": [True] + [False] * 7, "bundle_id": "b1"})
    with pytest.raises(RemoteEngineError, match="logits: expected numbers"):
        client.predict(frames)
    lying.answer = json.dumps({"logits": [[True] * 8], "bundle_id": "b1"})
    with pytest.raises(RemoteEngineError, match="logits: expected numbers"):
        client.infer(np.zeros((1, *client.clip_shape), np.float32))


def test_remote_metadata_whose_clip_cannot_fit_this_machine_is_refused(lying):
    # before: num_frames 10**6 was accepted; the first stream() then asked numpy for a ~100 GB ring
    from runtime.remote import RemoteEngine, RemoteEngineError

    good = lying.meta
    try:
        lying.meta = {
            **good,
            "preprocess": {**good["preprocess"], "num_frames": 10**6},
            "clip_shape": [10**6, *good["clip_shape"][1:]],
        }
        with pytest.raises(RemoteEngineError, match=r"/v1/meta: the served bundle: .*GiB"):
            RemoteEngine(lying.url, retries=0)
    finally:
        lying.meta = good


# ------------------------------------------------------------------------------ make serve's options


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_wait_ms", float("nan"), "batch_wait_ms: expected 0..60000"),  # before: passed `< 0`, reached Serve
        ("cpus_per_replica", -1.0, "cpus_per_replica: expected a positive number"),  # before: failed inside Ray
        ("cpus_per_replica", float("nan"), "cpus_per_replica: expected a positive number"),
        ("threads", 99999, "threads: expected 0..256"),  # before: each replica failed to start, after Ray had started
        ("threads", -1, "threads: expected 0..256"),
        ("device", "banana", "device: expected one of"),  # before: "Failed to update the deployments" (exit 1)
        ("device", "cuda:x", "device: expected one of"),
    ],
)
def test_serve_options_are_checked_before_ray_starts(fp32_bundle, field, value, message):
    from runtime.serving.app import ServeOptions

    opts = ServeOptions(bundle=str(fp32_bundle), **{field: value})
    with pytest.raises(ValueError, match=message):
        opts.check()
    ServeOptions(bundle=str(fp32_bundle), threads=0, batch_wait_ms=0.0).check()  # 0 threads: one per reserved CPU


# ------------------------------------------------------------------------------ Engine: frames of no pixels


@pytest.mark.parametrize("shape", [(8, 0, 0, 3), (8, 5, 0, 3)])
def test_frames_of_no_pixels_are_the_callers_error(fp32_bundle, shape):
    # before: a plain ValueError "frame size must be positive, got 0x0" (not an InputError, no "frames:")
    from runtime import InputError

    with Engine(fp32_bundle) as e:
        with pytest.raises(InputError, match=r"frames: expected frames of at least 1x1 pixels, got \d+x0"):
            e.predict(np.zeros(shape, np.uint8))
        with pytest.raises(InputError, match="frames: expected frames of at least 1x1 pixels"):
            e.stream().push(np.zeros(shape[1:], np.uint8))
