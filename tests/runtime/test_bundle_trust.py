"""Issue 13, the runtime half, tried as an adversarial user would: bundles that escape, lie or are broken,
input that is not finite, threads, channel order, and a fuzz of every manifest field.

Every case starts from a real bundle of the committed motion model (the ``fp32_bundle`` fixture, built through
``export.bundle.build.build_bundle``) copied into a temporary folder and edited there.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import pytest

from runtime import BundleError, Engine, InputError, PreprocessConfig, preprocess_frames
from runtime.manifest import SCHEMA_VERSION, describe_files, read_manifest, validate_manifest, verify_files
from runtime.stream import StreamBusyError
from tests.support.concurrency import run_in_threads

# --------------------------------------------------------------------------------------------- helpers

_OPENED: list[Any] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open":
        _OPENED.append(args[0])


sys.addaudithook(_audit)  # cannot be removed; records only while a test sets _OPENED


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, m: dict[str, Any], rehash: bool = False) -> None:
    """Write ``m`` as the bundle's manifest; with ``rehash``, ``files`` records the files as they are now (as a
    builder would), so a test reaches the checks after the hashes."""
    if rehash:
        m["files"] = describe_files(bundle, m["files"])
    (bundle / "manifest.json").write_text(json.dumps(m))


def _edit(bundle: Path, path: tuple, value: Any) -> None:
    m = _manifest(bundle)
    node = m
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    _write_manifest(bundle, m)


def _frames(n: int = 8, seed: int = 0, size: tuple[int, int] = (72, 96)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _set_head_bias(bundle: Path, fn) -> None:
    """Edit the classifier's bias inside model.onnx in place (same size: only the hash can tell)."""
    path = bundle / "model.onnx"
    model = onnx.load(str(path))
    bias = next(i for i in model.graph.initializer if i.name.endswith("head.bias"))
    values = fn(onnx.numpy_helper.to_array(bias).copy())
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))
    before = path.stat().st_size
    path.write_bytes(model.SerializeToString())
    assert path.stat().st_size == before


def _other_model(path: Path, classes: int = 8) -> None:
    """Another model with the same interface (video -> logits): a mean over frames and pixels, then a matmul."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).standard_normal((3, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["video", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        ],
        "other",
        [helper.make_tensor_value_info("video", TensorProto.FLOAT, ["batch", 8, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(np.array([1, 3, 4], np.int64), "axes"), numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def engine(fp32_bundle):
    with Engine(fp32_bundle) as e:
        yield e


# ------------------------------------------------------------------------------------ escape: paths


@pytest.mark.parametrize("field", ["engine_file", "labels_file"])
def test_paths_outside_the_bundle_are_refused_before_anything_is_opened(fp32_bundle, tmp_path, field):
    outside = _copy(fp32_bundle, tmp_path / "outside")
    (outside / "labels.txt").write_text("".join(f"secret line {i}\n" for i in range(8)))
    name = "model.onnx" if field == "engine_file" else "labels.txt"
    for i, target in enumerate([str(outside / name), f"../outside/{name}", f"sub/../{name}", "/etc/passwd", ".", ""]):
        for listed in (False, True):
            b = _copy(fp32_bundle, tmp_path / f"b{i}{listed}")
            m = _manifest(b)
            m[field] = target
            if listed:  # listed in files with the right hash: only the name rule can refuse it
                m["files"][target] = m["files"].pop(name)
            _write_manifest(b, m)
            global _OPENED
            _OPENED = []
            try:
                with pytest.raises(
                    BundleError,
                    match=rf"manifest.json: ({field}|files key .*): expected a plain file "
                    "name inside the bundle",
                ):
                    Engine(b)
            finally:
                opened, _OPENED = _OPENED, None
            assert not any(str(outside) in str(p) or str(p).startswith("/etc") for p in opened), opened


@pytest.mark.parametrize("name", ["model.onnx", "labels.txt", "manifest.json"])
def test_symlinked_files_are_refused(fp32_bundle, tmp_path, name):
    outside = _copy(fp32_bundle, tmp_path / "outside")
    b = _copy(fp32_bundle, tmp_path / "b")
    (b / name).unlink()
    (b / name).symlink_to(outside / name)  # same bytes: the hash alone would accept it
    with pytest.raises(BundleError, match=rf"b/{name}: is a symbolic link"):
        Engine(b)
    # a link to a file inside the bundle is refused too: a bundle holds its own files
    c = _copy(fp32_bundle, tmp_path / "c")
    os.replace(c / name, c / f"real-{name}")
    (c / name).symlink_to(f"real-{name}")
    with pytest.raises(BundleError, match="symbolic link"):
        Engine(c)


def test_engine_opens_only_the_bundles_files(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path / "b")
    Engine(b).close()  # imports done: what follows opens only what loading a bundle opens
    global _OPENED
    _OPENED = []
    try:
        with Engine(b) as e:
            e.predict(_frames())
    finally:
        opened, _OPENED = _OPENED, None
    # names relative to the bundle directory's descriptor, the directory itself, and descriptors (ints) of
    # those files wrapped for reading
    allowed = {"manifest.json", "model.onnx", "labels.txt", "reference.json", "reference.npz", str(b)}
    verdicts = str(Path(os.environ["TIMESFORMER_CACHE"]) / "verified")  # the device verdict (runtime/verify.py)
    paths = [p for p in opened if not isinstance(p, int) and not str(p).startswith(verdicts)]
    assert set(paths) == allowed, opened


def test_a_fifo_in_place_of_a_file_does_not_hang_the_load(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path / "b")
    (b / "labels.txt").unlink()
    os.mkfifo(b / "labels.txt")
    with pytest.raises(BundleError, match=r"labels.txt: not a regular file"):
        Engine(b)


# ------------------------------------------------------------------------------------- integrity


def test_replaced_or_edited_engine_is_refused(fp32_bundle, tmp_path, engine):
    clip = engine.clip_from_frames(_frames())[None]
    ref = engine.infer(clip)

    b = _copy(fp32_bundle, tmp_path / "other")
    _other_model(b / "model.onnx")
    with pytest.raises(
        BundleError,
        match=r"other/model.onnx: \d+ bytes, but the manifest's files\['model.onnx'\]"
        r".size is \d+",
    ):
        Engine(b)
    with pytest.raises(BundleError, match=r"other/model.onnx: \d+ bytes"):
        Engine(b, verify=False)  # verify=False skips the hash, not the size

    b = _copy(fp32_bundle, tmp_path / "bias")
    _set_head_bias(b, lambda v: v + np.eye(len(v), dtype=np.float32)[3] * 50)  # class 3 always wins
    with pytest.raises(
        BundleError,
        match=r"bias/model.onnx: sha256 [0-9a-f]{64} differs from the manifest's "
        r"files\['model.onnx'\].sha256",
    ):
        Engine(b)
    with Engine(b, verify=False) as wrong:  # what the hash protects against: it loads and answers differently
        assert int(np.argmax(wrong.infer(clip))) == 3 and np.abs(wrong.infer(clip) - ref).max() > 40

    b = _copy(fp32_bundle, tmp_path / "labels")
    (b / "labels.txt").write_text((b / "labels.txt").read_text().replace("move_left", "move_rigt"))
    with pytest.raises(BundleError, match=r"labels/labels.txt: sha256 .* differs"):
        Engine(b)
    verify_files(fp32_bundle, read_manifest(fp32_bundle))  # the untouched bundle verifies
    with pytest.raises(BundleError, match="labels.txt: sha256"):
        verify_files(b, read_manifest(b))


def test_unlisted_engine_and_manifest_in_files_are_refused(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path / "b")
    m = _manifest(b)
    del m["files"]["model.onnx"]
    _write_manifest(b, m)
    with pytest.raises(BundleError, match=r"engine_file 'model.onnx' is not listed in files"):
        Engine(b)
    m = _manifest(fp32_bundle)
    m["files"]["manifest.json"] = {"sha256": "0" * 64, "size": 1}
    _write_manifest(b, m)
    with pytest.raises(BundleError, match=r"files key 'manifest.json'"):
        Engine(b)


# --------------------------------------------------------------------------------- parity and ranges


def test_parity_must_have_been_measured_and_passed(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path / "b")
    _edit(b, ("parity",), None)
    with pytest.raises(BundleError, match=r"parity: .*got null: the bundle was never checked"):
        Engine(b)
    m = _manifest(b)
    del m["parity"]
    _write_manifest(b, m)
    with pytest.raises(BundleError, match=r"missing keys \['parity'\]: the bundle was never checked"):
        Engine(b)
    _edit(b, ("parity",), {**_manifest(fp32_bundle)["parity"], "passed": False, "failures": ["min_cosine = 0.5"]})
    with pytest.raises(BundleError, match=r"parity.passed is false \(failures: min_cosine = 0.5\)"):
        Engine(b)
    _edit(b, ("parity", "allowed_failure"), True)  # ALLOW_PARITY_FAILURE=1 at build time
    Engine(b).close()
    # the builder's own check, before parity exists: the manifest handed over in memory
    m = _manifest(fp32_bundle)
    m["parity"] = None
    Engine(fp32_bundle, manifest=m).close()


@pytest.mark.parametrize(
    "path,value,field",
    [
        (("preprocess", "std"), [0.225, 0.0, 0.225], "preprocess.std"),
        (("preprocess", "crop_size"), 0, "preprocess.crop_size"),
        (("preprocess", "num_frames"), 0, "preprocess.num_frames"),
        (("preprocess", "sampling_rate"), 0, "preprocess.sampling_rate"),
        (("preprocess", "crop_size"), 65, "preprocess.crop_size"),  # larger than short_side
        (("preprocess", "mean"), [0.45, float("nan"), 0.45], "preprocess.mean"),
        (("preprocess", "channel_order"), "RBG", "preprocess.channel_order"),
        (("input", "batch", "min"), 3, "input.batch"),  # min > opt
        (("input", "shape"), [-1, 8, 3, 64, 32], "input.shape"),
        (("model_config", "num_classes"), 9, "model_config.num_classes"),
        (("session", "intra_op_num_threads"), -1, "session.intra_op_num_threads"),
        (("backend",), "pytorch", "backend"),
    ],
)
def test_bad_values_name_the_field(fp32_bundle, tmp_path, path, value, field):
    b = _copy(fp32_bundle, tmp_path / "b")
    _edit(b, path, value)
    with pytest.raises(BundleError, match=rf"b/manifest.json: {field.replace('.', '[.]')}"):
        Engine(b)


def test_schema_1_bundles_are_refused_with_a_hint(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path / "b")
    _edit(b, ("schema_version",), 1)
    with pytest.raises(
        BundleError,
        match=rf"schema_version: expected {SCHEMA_VERSION} \(a bundle built before file "
        r"hashes .*rebuild it",
    ):
        Engine(b)


# ------------------------------------------------------------------------------------------ fuzz

_BAD = [None, -1, 0, 1, "x", "", [], {}, [1], {"a": 1}, True, 1.5, math.inf, math.nan, 10**30, -(10**30), 2**31 - 1]
_DELETE = object()


def _walk(node: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every field of the manifest, depth first: object keys and list items."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,)
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield path + (i,)
            yield from _walk(v, path + (i,))


class _SessionCache:
    """ONNX Runtime sessions memoised by model bytes and options: the fuzz loads ~2,000 bundles whose model is the
    same, and a real session costs ~60 ms. Everything else in Engine (validation, file checks, the backend's
    own checks against the session) runs for real."""

    def __init__(self, real):
        self.real, self.cache = real, {}

    def __call__(self, model, sess_options=None, providers=None):
        key = (
            model if isinstance(model, str) else hash(model),
            sess_options.graph_optimization_level,
            sess_options.intra_op_num_threads,
            sess_options.inter_op_num_threads,
            str(providers),
        )
        if key not in self.cache:
            self.cache[key] = self.real(model, sess_options=sess_options, providers=providers)
        return self.cache[key]


def test_fuzz_every_manifest_field(fp32_bundle, tmp_path, monkeypatch):
    """Each field replaced by wrong types and values, or deleted: Engine raises BundleError or loads, nothing else."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "InferenceSession", _SessionCache(ort.InferenceSession))
    original = _manifest(fp32_bundle)
    b = _copy(fp32_bundle, tmp_path / "b")
    paths = list(_walk(original))
    assert len(paths) > 80 and ("input", "batch", "max") in paths and ("files", "model.onnx", "sha256") in paths
    outcomes = {"refused": 0, "loaded": 0}
    refused_fields = set()
    for path in paths:
        for value in _BAD + [_DELETE]:
            m = copy.deepcopy(original)
            node = m
            for k in path[:-1]:
                node = node[k]
            if value is _DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = value
            (b / "manifest.json").write_text(json.dumps(m))
            try:
                # hashes only where the fuzz touches them: they cost ~15 ms per load
                Engine(b, verify=path[0] == "files").close()
            except BundleError:
                outcomes["refused"] += 1
                refused_fields.add(path)
            except Exception as e:  # noqa: BLE001 - the point of the test
                pytest.fail(
                    f"{'.'.join(map(str, path))} = {'<deleted>' if value is _DELETE else repr(value)}: "
                    f"{type(e).__name__}: {e}"
                )
            else:
                outcomes["loaded"] += 1
    # the fuzz reached the checks: every field the runtime relies on was refused for some value
    for must in [
        ("schema_version",),
        ("engine_file",),
        ("files", "model.onnx", "size"),
        ("input", "batch", "min"),
        ("preprocess", "std", 1),
        ("preprocess", "channel_order"),
        ("parity", "passed"),
        ("session", "graph_optimization_level"),
        ("output", "shape", 1),
        ("model_config", "num_frames"),
    ]:
        assert must in refused_fields, must
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0


def test_validate_manifest_raises_only_bundle_errors_for_any_json_value():
    for value in [None, [], "x", 3, {"schema_version": 2}, {"schema_version": True}, {"schema_version": 2.0}]:
        with pytest.raises(BundleError, match="manifest.json"):
            validate_manifest(value, "manifest.json")


# -------------------------------------------------------------------------------------- input


def test_infer_refuses_non_finite_input(engine):
    x = np.zeros((2,) + engine.clip_shape, np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 3, 2, 10, 20] = bad
        with pytest.raises(
            InputError,
            match=r"video: expected finite values, got 1 NaN/Inf \(first at index "
            r"\(1, 3, 2, 10, 20\)",
        ):
            engine.infer(y)
    assert np.isfinite(engine.infer(x)).all()


def test_a_broken_engine_is_reported_not_returned(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path / "b")
    _set_head_bias(b, lambda v: v * np.nan)
    _write_manifest(b, _manifest(b), rehash=True)  # a bundle built broken: its hashes match
    with pytest.raises(BundleError, match=rf"{b}: the engine returned non-finite logits"):
        Engine(b)  # the stored parity at load (runtime/verify.py) meets it first
    with Engine(b, verify_on_device="never") as e:
        with pytest.raises(BundleError, match=rf"{b}: the engine returned non-finite logits"):
            e.predict(_frames())


# ------------------------------------------------------------------------------------ channel order


def test_channel_order_is_honoured_everywhere(fp32_bundle, tmp_path, engine):
    b = _copy(fp32_bundle, tmp_path / "bgr")
    _edit(b, ("preprocess", "channel_order"), "BGR")  # the same model, declared as trained on BGR frames
    rgb = _frames(24, seed=5)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    with Engine(b) as bgr_model:
        assert bgr_model.preprocess.channel_order == "BGR"
        # RGB frames, said to be RGB: the BGR model gets B,G,R planes, which is what the RGB model gets from
        # frames whose bytes are reversed and not flagged
        got = bgr_model.predict(rgb[:8], bgr=False).logits
        assert np.array_equal(got, engine.predict(bgr[:8], bgr=False).logits)
        assert np.array_equal(bgr_model.predict(bgr[:8], bgr=True).logits, got)  # no flip: the frames are BGR
        assert not np.array_equal(got, engine.predict(rgb[:8]).logits)
        assert np.array_equal(bgr_model.clip_from_frames(rgb), engine.clip_from_frames(bgr))
        s1, s2 = bgr_model.stream(every=2), engine.stream(every=2)
        preds = [(s1.push(f), s2.push(g)) for f, g in zip(rgb, bgr)]
        assert sum(p is not None for p, _ in preds) > 1
        for p, q in preds:
            assert (p is None) == (q is None) and (p is None or np.array_equal(p.logits, q.logits))


def test_mean_and_std_are_in_the_models_channel_order():
    frames = _frames(3, seed=2)
    kw = dict(num_frames=3, sampling_rate=1, short_side=56, crop_size=48, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    ours = preprocess_frames(frames, PreprocessConfig(**kw, channel_order="BGR"))
    ref = preprocess_frames(np.ascontiguousarray(frames[..., ::-1]), PreprocessConfig(**kw))
    assert np.array_equal(ours, ref)  # channel 0 of a BGR model: the blue plane, with mean[0] and std[0]
    assert not np.array_equal(ours, preprocess_frames(frames, PreprocessConfig(**kw)))


# -------------------------------------------------------------------------------------------- threads


def test_one_engine_hammered_from_8_threads_gives_the_sequential_results_bit_for_bit(engine):
    """predict, infer and clip_from_frames on one Engine from 8 threads at once (issue 13: predict from threads gave
    other logits on 51-92 of 160-320 clips through a shared preprocessing scratch buffer)."""
    rng = np.random.default_rng(7)
    sizes = [(72, 96), (64, 64), (120, 90), (48, 200)]  # several sizes: several cached preprocessors
    jobs = []
    for i in range(48):
        h, w = sizes[i % len(sizes)]
        frames = rng.integers(0, 256, (8 + 4 * (i % 3), h, w, 3), dtype=np.uint8)
        jobs.append((["predict", "infer", "clip"][i % 3], frames, bool(i % 2)))

    def run(kind, frames, bgr):
        if kind == "predict":
            return engine.predict(frames, bgr=bgr).logits
        clip = engine.clip_from_frames(frames, bgr=bgr)
        return engine.infer(clip[None])[0] if kind == "infer" else clip

    expected = [run(*job) for job in jobs]
    results: dict[tuple[int, int], np.ndarray] = {}

    def worker(t: int) -> None:
        for j in range(t, len(jobs) + t):  # every thread runs every job, in a different order
            results[(t, j % len(jobs))] = run(*jobs[j % len(jobs)])

    errors = run_in_threads(worker, 8)
    assert not errors, errors
    assert len(results) == 8 * len(jobs)
    bad = [k for k, v in results.items() if not np.array_equal(v, expected[k[1]])]
    assert not bad, f"{len(bad)} of {len(results)} results differ from the sequential ones, e.g. {bad[:5]}"


def test_a_clip_stream_refuses_a_second_thread(engine):
    """A ClipStream is one camera's buffer: a push from another thread while one is running is refused."""
    stream = engine.stream(every=2)
    inside, release = threading.Event(), threading.Event()
    real_infer = engine.infer

    class Blocking:
        def __getattr__(self, name):
            return getattr(engine, name)

        def infer(self, x):
            inside.set()
            release.wait(10)
            return real_infer(x)

    stream.engine = Blocking()
    frames = _frames(engine.preprocess.window(), seed=3)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.extend(stream.push(f) for f in frames))
    t.start()
    assert inside.wait(10)  # the first thread is inside push, running the engine on the ring
    with pytest.raises(StreamBusyError, match="another thread is using this stream; a ClipStream is one camera's"):
        stream.push(frames[0])
    with pytest.raises(StreamBusyError):
        stream.reset()
    release.set()
    t.join(10)
    assert out[-1] is not None and stream.frames_seen == len(frames)
    # and the stream is usable again afterwards, from any thread
    stream.reset()
    assert stream.frames_seen == 0
