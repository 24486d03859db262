"""Issue 28, the runtime half: hostile input against the runtime's entry points, one test (or more) per finding.

The finding each test reproduces is named in a comment (``# issue 28 #N``). Bundles are copies of the real motion
bundle (the ``fp32_bundle`` fixture) edited in a temporary folder; servers are threads on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import inspect
import json
import os
import shutil
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import BundleError, Engine, InputError
from runtime.manifest import describe_files, read_manifest


#: the stored-parity check on load (another layer) off where a test is about the cache alone
_NO_DEVICE_CHECK = {"verify_on_device": "never"} if "verify_on_device" in inspect.signature(Engine).parameters else {}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, m: dict[str, Any], rehash: bool = False) -> None:
    if rehash:
        m["files"] = describe_files(bundle, m["files"])
    (bundle / "manifest.json").write_text(json.dumps(m))


def _frames(n: int = 8, seed: int = 0, size: tuple[int, int] = (72, 96)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def engine(fp32_bundle):
    with Engine(fp32_bundle) as e:
        yield e


# ------------------------------------------------------------------------------------ the CLI's --out (#2, #19)


def test_out_never_overwrites_the_input_video(fp32_bundle, heldout_videos, tmp_path, capsys):
    # issue 28 #2: `python -m runtime B v.mp4 --out v.mp4` overwrote the input video
    from runtime.__main__ import main

    video = tmp_path / "v.mp4"
    shutil.copy(heldout_videos[0][0], video)
    before = video.read_bytes()
    (tmp_path / "hard.mp4").hardlink_to(video)
    (tmp_path / "link.mp4").symlink_to(video)
    for out in (video, tmp_path / "hard.mp4", tmp_path / "link.mp4", tmp_path / "." / "v.mp4"):
        assert main([str(fp32_bundle), str(video), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "--out" in err and "input" in err and "\n" not in err, err
        assert video.read_bytes() == before
    assert main([str(fp32_bundle), str(video), "--out", str(fp32_bundle / "x.mp4")]) == 2  # nor into the bundle
    assert "inside the input folder" in capsys.readouterr().err
    assert not (fp32_bundle / "x.mp4").exists()


def test_out_in_a_missing_folder_is_one_line(fp32_bundle, heldout_videos, tmp_path, capsys):
    # issue 28 #19: `--out /missing/dir/o.mp4` printed a traceback
    from runtime.__main__ import main

    out = tmp_path / "missing" / "dir" / "o.mp4"
    assert main([str(fp32_bundle), str(heldout_videos[0][0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m runtime: --out") and "does not exist" in err and "\n" not in err, err
    assert not out.parent.exists()


# ------------------------------------------------------------------------------------------ counts (#22)


def test_top_k_and_max_frames_must_be_positive(engine, fp32_bundle, heldout_videos, capsys):
    # issue 28 #22: predict(top_k=0).label raised IndexError, top_k=-1 returned 7 of 8 labels, --max-frames 0 or -1
    # read one frame and called it an image
    frames = _frames()
    for k in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="top_k: expected a positive integer"):
            engine.predict(frames, top_k=k)
        with pytest.raises(InputError, match="top_k"):
            engine.stream(top_k=k)
    assert len(engine.predict(frames, top_k=100).top_k) == engine.num_classes  # more than the classes: all of them
    from runtime.__main__ import main

    for flag in ("--max-frames", "--top-k"):
        for v in ("0", "-1"):
            assert main([str(fp32_bundle), str(heldout_videos[0][0]), flag, v]) == 2
            err = capsys.readouterr().err.strip()
            assert f"{flag}: expected a positive integer" in err and "image" not in err, err


# ------------------------------------------------------------------------------------ close under use (#20)


def test_close_while_predicting_and_predict_after_close(fp32_bundle):
    # issue 28 #20: Engine.close() while another thread predicts, or predict after close: AttributeError on None
    import runtime.engine

    EngineClosedError = getattr(runtime.engine, "EngineClosedError", RuntimeError)

    e = Engine(fp32_bundle)
    frames = _frames()
    errors: list[BaseException] = []
    done = []
    started = threading.Event()

    def worker() -> None:
        for _ in range(200):  # bounded
            try:
                e.predict(frames)
                done.append(1)
                started.set()
            except EngineClosedError:
                return
            except BaseException as ex:  # noqa: BLE001 - recorded for the assertion
                errors.append(ex)
                return

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    assert started.wait(120)
    e.close()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with pytest.raises(EngineClosedError, match="closed"):
        e.predict(frames)
    with pytest.raises(EngineClosedError):
        e.infer(np.zeros((1, *e.clip_shape), np.float32))
    e.close()  # twice is harmless


# ------------------------------------------------------------------------ resource limits at load (#10, #12, #14)


def test_a_huge_max_batch_is_refused_at_load(fp32_bundle, tmp_path, monkeypatch):
    # issue 28 #10: BATCH=1:1:100000 was accepted; the hub's inference thread died allocating 36.6 GiB
    b = _copy(fp32_bundle, tmp_path / "b")
    m = _manifest(b)
    m["input"]["batch"] = {"min": 1, "opt": 1, "max": 100000}
    _write_manifest(b, m)
    with pytest.raises(BundleError, match=r"input\.batch\.max: expected an integer in 1\.\.4096"):
        Engine(b)
    # within the static bound, but more than this machine's memory can hold: refused, naming the field and sizes
    m["input"]["batch"] = {"min": 1, "opt": 1, "max": 4096}
    _write_manifest(b, m)
    import runtime.engine as engine_mod

    monkeypatch.setattr(engine_mod, "machine_memory_bytes", lambda: 1 << 30)
    with pytest.raises(
        BundleError,
        match=r"input\.batch\.max 4096: a batch of 4096 clips .* GiB .* rebuild with "
        r"BATCH=min:opt:max at most \d+",
    ):
        Engine(b)


def test_thread_counts_are_bounded_by_the_manifest_and_the_machine(fp32_bundle, tmp_path):
    # issue 28 #12: session.intra_op_num_threads=4096 was accepted (Engine() still loading after 90 s)
    b = _copy(fp32_bundle, tmp_path / "b")
    m = _manifest(b)
    m["session"]["intra_op_num_threads"] = 4096
    _write_manifest(b, m)
    with pytest.raises(BundleError, match=r"session\.intra_op_num_threads: expected an integer in 0\.\.256"):
        read_manifest(b)
    m["session"]["intra_op_num_threads"] = 64  # plausible where it was built: capped to this machine's CPUs here
    _write_manifest(b, m)
    with Engine(b) as e:
        assert 1 <= e.describe()["intra_op_num_threads"] <= len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="threads: expected 1"):
        Engine(fp32_bundle, threads=4096)


def test_a_huge_labels_file_is_refused_before_it_is_read(fp32_bundle, tmp_path):
    # issue 28 #14: a 64 MB labels file cost 749 MB of memory before being refused
    b = _copy(fp32_bundle, tmp_path / "b")
    (b / "labels.txt").write_bytes(b"x" * (32 << 20) + b"\n")
    _write_manifest(b, _manifest(b), rehash=True)
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match=r"files\['labels\.txt'\]\.size: expected at most \d+ bytes"):
            Engine(b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # nothing of the 32 MB was read


def test_labels_are_one_printable_line_each(fp32_bundle, tmp_path):
    # issue 28 #23: a label containing U+2028 was accepted and failed only at parity, naming a temporary folder
    from runtime.manifest import check_labels

    for bad in ("walk\u2028run", "a\u2029b", "a\x85b", "a\rb", "a\x00b", "evil\u202eexe"):
        with pytest.raises(BundleError, match=r"label 1 .*U\+"):
            check_labels(["ok", bad], "labels")
    b = _copy(fp32_bundle, tmp_path / "b")
    labels = (b / "labels.txt").read_text().split("\n")[:-1]
    labels[3] = "jump\u2028left"
    (b / "labels.txt").write_text("\n".join(labels) + "\n")
    _write_manifest(b, _manifest(b), rehash=True)
    with pytest.raises(BundleError, match=r"labels\.txt: label 3 .*U\+2028 \(LINE SEPARATOR\)"):
        Engine(b)


# --------------------------------------------------------------------- manifest vs the engine's own shape (#16)


def test_num_frames_and_crop_must_match_the_engines_input(fp32_bundle, tmp_path, capsys, heldout_videos):
    # issue 28 #16: crop 2048 in the manifest built an 889 MB input and failed with a raw ONNX Runtime error
    b = _copy(fp32_bundle, tmp_path / "b")
    m = _manifest(b)
    for key in ("short_side", "crop_size"):
        m["preprocess"][key] = 512
    m["input"]["shape"] = [-1, 8, 3, 512, 512]
    m["model_config"]["image_size"] = 512
    _write_manifest(b, m)
    with pytest.raises(
        BundleError,
        match=r"model\.onnx: the model's input 'video' has shape .*64, 64.*\[-1, 8, 3, "
        r"512, 512\].*crop_size",
    ):
        Engine(b)
    from runtime.__main__ import main

    assert main([str(b), str(heldout_videos[0][0])]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err and "512" in err


def test_huge_finite_input_is_the_callers_error(engine):
    # issue 28 #17 (engine half): finite but huge values (3e38) were reported as a broken engine (a 500 when served)
    x = np.full((1, *engine.clip_shape), 3e38, np.float32)
    with pytest.raises(InputError, match="outside the canonical range"):
        engine.infer(x)


# ------------------------------------------------------------------------- the hub's preprocessor cache (#11)


class _FakeEngine:
    """The hub's engine surface over the real bundle's preprocessing; constant logits."""

    def __init__(self, e: Engine) -> None:
        self.preprocess, self.clip_shape, self.batch_range, self.labels = (
            e.preprocess,
            e.clip_shape,
            e.batch_range,
            e.labels,
        )

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), len(self.labels)), np.float32)


def test_the_hubs_preprocessors_do_not_grow_with_frame_sizes(engine):
    # issue 28 #11: 1,500 frame sizes grew the hub by 578 MB, still held after remove_camera
    from runtime.hub import CameraHub

    with CameraHub(_FakeEngine(engine), results=0) as hub:
        a = hub.add_camera(None)
        b = hub.add_camera(None)
        for i in range(40):
            hub.push(a, np.zeros((64 + i, 80 + i, 3), np.uint8))
            hub.push(b, np.zeros((64, 80, 3), np.uint8))
        assert len(hub._pres) <= 2, len(hub._pres)  # the sizes in use now, not every size ever seen
        hub.remove_camera(a)
        hub.remove_camera(b)
        assert len(hub._pres) == 0


# -------------------------------------------------------------------------- the OpenVINO compiled-model cache (#5)


def _openvino_bundle(src: Path, dst: Path) -> Path:
    """The fp32 bundle's ONNX served by OpenVINO (it reads the file unchanged)."""
    from runtime.backends.openvino_session import OpenVINOSession

    b = _copy(src, dst)
    m = _manifest(b)
    m["backend"], m["session"], m["backend_version"] = "openvino", OpenVINOSession().to_dict(), None
    _write_manifest(b, m)
    return b


def test_a_planted_compiled_model_is_never_used(fp32_bundle, tmp_path, monkeypatch):
    # issue 28 #5: a blob planted under the cache folder for a bundle's hash answered another label, with
    # loaded_from_cache True and the default verification on
    pytest.importorskip("openvino")
    import onnx

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # this test's key, not the user's
    monkeypatch.delenv("TIMESFORMER_CACHE_KEY", raising=False)
    cache = tmp_path / "cache"
    good = _openvino_bundle(fp32_bundle, tmp_path / "good")
    evil = _openvino_bundle(fp32_bundle, tmp_path / "evil")
    model = onnx.load(str(evil / "model.onnx"))  # another model: the head's bias favours class 5
    bias = next(i for i in model.graph.initializer if i.name.endswith("head.bias"))
    bias.CopyFrom(
        onnx.numpy_helper.from_array(np.where(np.arange(8) == 5, 100.0, -100.0).astype(np.float32), bias.name)
    )
    onnx.save(model, str(evil / "model.onnx"))
    _write_manifest(evil, _manifest(evil), rehash=True)
    x = np.zeros((1, 8, 3, 64, 64), np.float32)
    # no stored-parity check on load: the cache alone must be trusted or not (the parity check is another layer)
    with Engine(good, cache_dir=False, **_NO_DEVICE_CHECK) as e:
        truth = e.infer(x)
    # the attacker's blob, written (and signed, under this key) by loading the other model
    with Engine(evil, cache_dir=cache, **_NO_DEVICE_CHECK) as e:
        assert int(np.argmax(e.infer(x))) == 5
        evil_blob = Path(e.describe()["model_cache"])
    good_sha = _manifest(good)["files"]["model.onnx"]["sha256"]
    planted = cache / good_sha / evil_blob.name
    planted.parent.mkdir(parents=True)
    shutil.copy(evil_blob, planted)  # the blob alone, then with the other engine's signature as well
    for with_sig in (False, True):
        if with_sig:
            shutil.copy(str(evil_blob) + ".sig", str(planted) + ".sig")
        with Engine(good, cache_dir=cache, **_NO_DEVICE_CHECK) as e:
            d = e.describe()
            assert d["loaded_from_cache"] is False and Path(d["model_cache"]) == planted
            np.testing.assert_array_equal(e.infer(x), truth)
    # the entry it wrote back is its own: used, same answers
    with Engine(good, cache_dir=cache, **_NO_DEVICE_CHECK) as e:
        assert e.describe()["loaded_from_cache"] is True
        np.testing.assert_array_equal(e.infer(x), truth)
    key = Path(os.environ["XDG_CONFIG_HOME"]) / "timesformer" / "cache.key"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)  # a key others can read signs nothing: the cache is not used
    with Engine(good, cache_dir=cache, **_NO_DEVICE_CHECK) as e:
        assert e.describe()["loaded_from_cache"] is False and e.describe()["model_cache"] is None


# -------------------------------------------------------------------- RemoteEngine against a hostile server


class _Server:
    """A loopback HTTP server whose /v1/meta and POST answers the test sets."""

    def __init__(self, meta: Any) -> None:
        self.meta, self.answer, self.trickle_s = meta, None, 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if outer.trickle_s:  # every read returns quickly; the whole answer takes long
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(outer.trickle_s)
                else:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(outer.meta)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self._send(outer.answer)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile(engine):
    from runtime.files import sha256_json

    bundle_id = sha256_json({name: entry["sha256"] for name, entry in engine.manifest["files"].items()})
    meta = {
        "bundle": "motion",
        "precision": "fp32",
        "input": engine.manifest["input"],
        "output": engine.manifest["output"],
        "clip_shape": list(engine.clip_shape),
        "batch_range": list(engine.batch_range),
        "input_dtype": "float32",
        "num_classes": 8,
        "labels": engine.labels,
        "preprocess": engine.preprocess.to_dict(),
        "bundle_id": bundle_id,
    }
    server = _Server(meta)
    yield server
    server.close()


def _answer(logits: Any, bundle: str) -> dict[str, Any]:
    return {"logits": logits, "top_k": [["x", 1.0]], "server_ms": 1.0, "batch": 1, "replica": "r", "bundle_id": bundle}


def test_remote_answers_are_checked_against_the_bundle(hostile, engine):
    # issue 28 #7: 3 logits for an 8-label model gave a confident label; two rows for one clip were accepted; NaN
    # logits became NaN probabilities; 16 logits raised a bare IndexError; a redeployed server was believed
    from runtime.remote import RemoteEngine, RemoteEngineError

    client = RemoteEngine(hostile.url, retries=0)
    bid = hostile.meta["bundle_id"]
    frames, clip = _frames(), np.zeros((1, *engine.clip_shape), np.float32)
    hostile.answer = _answer([0.5] * 8, bid)
    assert len(client.predict(frames).top_k) == 5  # a well-formed answer passes
    cases = [
        ([1.0, 2.0, 3.0], "shape"),
        ([0.0] * 16, "shape"),
        ([[0.0] * 8] * 2, "shape"),
        ([float("nan")] + [0.0] * 7, "finite"),
        ("abc", "logits"),
    ]
    for logits, what in cases:
        hostile.answer = _answer(logits, bid)
        with pytest.raises(RemoteEngineError, match=what):
            client.predict(frames)
    for logits in ([[0.0] * 8] * 2, [[0.0] * 3], [[float("inf")] * 8]):  # infer: one row per clip sent
        hostile.answer = _answer(logits, bid)
        with pytest.raises(RemoteEngineError, match="logits"):
            client.infer(clip)
    hostile.answer = _answer([0.5] * 8, "another-bundle")
    with pytest.raises(RemoteEngineError, match="redeployed with another bundle"):
        client.predict(frames)


def test_remote_malformed_answers_and_metadata_are_one_error(hostile):
    # issue 28 #21: a 200 answer of {} or a list raised a bare KeyError/TypeError; metadata {} a KeyError
    from runtime.remote import RemoteEngine, RemoteEngineError

    client = RemoteEngine(hostile.url, retries=0)
    for answer in ({}, [], [1, 2], "text", None, {"logits": None}):
        hostile.answer = answer
        with pytest.raises(RemoteEngineError):
            client.predict(_frames())
        with pytest.raises(RemoteEngineError):
            client.infer(np.zeros((1, *client.clip_shape), np.float32))
    good = dict(hostile.meta)
    for meta in (
        {},
        [],
        {**good, "batch_range": [1, 10**9]},
        {**good, "num_classes": 3},
        {**good, "labels": ["a\u2028b"] * 8},
        {**good, "clip_shape": [8, 3, 2048, 2048]},
        {**good, "preprocess": {"crop_size": -1}},
        {**good, "bundle_id": None},
    ):
        hostile.meta = meta
        with pytest.raises(RemoteEngineError, match="/v1/meta"):
            RemoteEngine(hostile.url, retries=0)


def test_remote_timeout_bounds_the_whole_call(hostile):
    # issue 28 #15: a server trickling its answer held a timeout_s=1, retries=0 call for 21 s (per-read timeout)
    from runtime.remote import RemoteEngine, RemoteEngineError

    client = RemoteEngine(hostile.url, retries=0, timeout_s=1.0)
    hostile.answer = _answer([0.5] * 8, hostile.meta["bundle_id"])
    hostile.trickle_s = 0.02  # every byte within 0.02 s; the whole answer (~200 bytes) takes about 4 s
    with pytest.raises(RemoteEngineError, match="timeout_s=1"):
        client.predict(_frames())


@pytest.mark.parametrize("name", ['labels".txt', "model\n.onnx", "a b.txt", ".hidden", "x\u2028y", "e\u0301.onnx"])
def test_bundle_file_names_cannot_carry_config_syntax(name: str) -> None:
    """#4 (runtime side): a file name the manifest lists goes into generated configs (Triton, DeepStream) as is, so
    only a strict pattern is accepted; the old check let quotes, newlines and spaces through."""
    from runtime.manifest import check_file_name

    with pytest.raises(ValueError, match="plain file name"):
        check_file_name(name)
    assert check_file_name("model-int8_v2.onnx") == "model-int8_v2.onnx"


def test_the_compiled_model_cache_is_keyed_by_the_cpus_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    """#5 (content keys): OpenVINO compiles kernels for the CPU it runs on, so a cache shared between machines, or a
    process with oneDNN capped below VNNI, must not reuse another ISA's blob."""
    import runtime.backends.openvino_backend as ovb
    import runtime.device as device

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    here = ovb._cpu_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = ovb._cpu_key()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(device, "cpu_info", lambda: {"isa": ["avx2", "fma"]})
    other_cpu = ovb._cpu_key()
    assert len({here, capped, other_cpu}) == 3
