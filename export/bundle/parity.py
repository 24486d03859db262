"""``make parity ENGINE=<bundle>``: an engine bundle against the FP32 PyTorch reference on real clips.

The engine runs through ``runtime.Engine`` (exactly what an app runs); the reference is the bundle's
source checkpoint (or ``--model``) in PyTorch. Logits are compared against the bundle's tolerance
(FP32: max abs logit error; FP16/INT8: cosine similarity, top-1 and top-5 agreement). To say where
the network goes wrong, the engine's ONNX is re-run with every block's output marked as a graph output
(:mod:`calibration.graph.blocks`, the routine the precision report uses too) and compared block by block with
``TimeSformer.forward_with_blocks``: the report names the first block past the precision's threshold and the
first block whose error jumps.

Writes ``parity.json`` and ``parity.md`` (atomically); exits non-zero when the engine fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser
from runtime.files import write_json_atomic, write_text_atomic
from runtime.manifest import Manifest

from runtime.cli_args import user_errors
from calibration.precision.metrics import TOLERANCES, check_tolerance, compare_logits

# the one block-divergence routine (shared with the precision report); BLOCK_THRESHOLD and block_errors re-exported
from calibration.graph.blocks import BLOCK_THRESHOLD, block_errors, block_output_names, run_blocks  # noqa: F401


def reference_model(manifest: dict[str, Any], override: str | None):
    """The FP32 PyTorch model the bundle was built from (or ``override``)."""
    from models import load_source

    request = manifest.get("build", {}).get("request", {})
    model = override or request.get("model")
    if not model:
        raise ValueError("the bundle's manifest does not record its source model (build.request.model): pass --model")
    if model.endswith(".onnx"):  # a bundle built from an ONNX file: ONNX Runtime on that file is its reference
        from export.bundle.onnx_source import reference_from_file

        return reference_from_file(model), model
    net, _, _, _ = load_source(model, int(request.get("seed", 0)))
    return net.eval(), model


def check_bundle(
    bundle: str | os.PathLike,
    clips: str | None = None,
    n: int = 16,
    model: str | None = None,
    seed: int = 0,
    blocks: str = "on-failure",
    batch: int | None = None,
) -> dict[str, Any]:
    """Parity of ``bundle`` against its PyTorch reference; ``blocks``: 'always', 'on-failure' or 'never'."""
    import torch

    from calibration.clips.calibset import load_calibration_set
    from runtime import Engine

    bundle = Path(bundle)
    manifest = Manifest.read(bundle)
    precision, pre = manifest.precision, manifest.preprocess
    net, model_name = reference_model(manifest.to_dict(), model)
    from calibration.clips.calibset import synthetic_spec
    from models import model_task

    clips = clips or synthetic_spec(model_task(net)) or "synthetic"  # a model's own synthetic task, if it has one
    cset = load_calibration_set(clips, pre, n, seed + 2000)
    x = cset.clips
    with torch.no_grad():
        refs = [
            net.forward_with_blocks(torch.from_numpy(x[i : i + 1]))
            if hasattr(net, "forward_with_blocks")
            else (net(torch.from_numpy(x[i : i + 1])), [])
            for i in range(len(x))
        ]  # ONNX Runtime: no blocks
    ref_logits = np.concatenate([r[0].numpy() for r in refs])
    with Engine(bundle) as engine:
        step = batch or engine.batch_range[1]
        out = np.concatenate([engine.infer(x[i : i + step]) for i in range(0, len(x), step)])
        describe = engine.describe()
        labels = cset.labels
        if cset.classes is not None:  # a synthetic task's labels mean something only to a model trained on it
            labels = labels if engine.labels == list(cset.classes) else None
    metrics = compare_logits(ref_logits, out, labels)
    tolerance = manifest.tolerance or TOLERANCES[precision]
    failures = check_tolerance(metrics, precision, tolerance)
    report: dict[str, Any] = {
        "bundle": str(bundle),
        "precision": precision,
        "backend": manifest.backend,
        "engine": describe,
        "reference": model_name,
        "clips": {"spec": clips, "count": int(len(x)), "sha256": cset.sha256, "skipped": cset.skipped},
        "metrics": metrics,
        "tolerance": tolerance,
        "passed": not failures,
        "failures": failures,
        "blocks": None,
    }
    if blocks == "always" or (blocks == "on-failure" and failures):
        report["blocks"] = _block_report(bundle, manifest, x, refs, precision)
    return report


def _block_report(bundle: Path, manifest: Manifest, x: np.ndarray, refs: list, precision: str) -> dict[str, Any]:
    engine_file = bundle / manifest.engine_file
    if engine_file.suffix != ".onnx":
        return {
            "note": f"{engine_file.name}: per-block outputs need the engine's ONNX; run parity on the ONNX "
            "Runtime bundle of the same precision to localise the error"
        }
    names = block_output_names(engine_file)
    if refs and not refs[0][1]:
        return {"note": "the reference is ONNX Runtime on the given ONNX file: no per-block reference outputs"}
    if not names:
        return {"note": f"{engine_file}: no block_{{i}}_output tensors (exported by an older export/)"}
    _logits, eng_blocks = run_blocks(engine_file, x)
    ref_blocks = [np.concatenate([r[1][i].numpy() for r in refs]) for i in range(len(names))]
    return block_errors(ref_blocks, eng_blocks, precision)


def markdown(report: dict[str, Any]) -> str:
    """The parity report as a short Markdown document."""
    m = report["metrics"]
    lines = [
        f"# Parity: {report['bundle']}",
        "",
        f"- engine: {report['backend']} {report['precision']}; reference: "
        f"{'ONNX Runtime' if str(report['reference']).endswith('.onnx') else 'PyTorch'} FP32 "
        f"`{report['reference']}`",
        f"- clips: {report['clips']['count']} from `{report['clips']['spec']}`",
        f"- result: **{'PASSED' if report['passed'] else 'FAILED'}**"
        + ("" if report["passed"] else f" ({'; '.join(report['failures'])})"),
        "",
        "| metric | value | tolerance |",
        "|---|---|---|",
    ]
    for key in (
        "max_abs_logit",
        "mean_abs_logit",
        "min_cosine",
        "mean_cosine",
        "top1_agreement",
        "top5_agreement",
        "top1_accuracy",
        "top1_accuracy_reference",
    ):
        if key in m:
            tol = report["tolerance"].get(key)
            lines.append(f"| {key} | {m[key]:.6g} | {'' if tol is None or key == 'top1_agreement' else tol} |")
            if key == "top1_agreement" and "decisive_clips" in m:
                v = m["top1_agreement_decisive"]
                lines.append(
                    f"| top1_agreement on the {m['decisive_clips']} decisive clips | "
                    f"{'-' if v is None else f'{v:.6g}'} | {'' if tol is None else tol} |"
                )
    b = report.get("blocks")
    if b and "blocks" in b:
        first = b["first_diverging_block"]
        lines += [
            "",
            f"## Per block (relative L2 error of the block's output tokens; threshold {b['threshold_rel_l2']})",
            "",
            f"First diverging block: **{first if first is not None else 'none'}**; largest jump at block "
            f"{b['largest_jump_block']}.",
            "",
            "| block | rel L2 | cosine | max abs |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r['block']} | {r['rel_l2']:.3e} | {r['cosine']:.6f} | {r['max_abs']:.3e} |" for r in b["blocks"]]
    elif b:
        lines += ["", f"Per-block analysis: {b['note']}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "parity.json", report)
    write_text_atomic(out / "parity.md", markdown(report))
    return out / "parity.json", out / "parity.md"


@user_errors("make parity")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bundle.parity", description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="engine bundle directory")
    ap.add_argument("--clips", default=None, help="folder of videos, .npy/.npz clips, or 'synthetic[:SEED]'")
    ap.add_argument("--n", type=int, default=16, help="clips to compare")
    ap.add_argument("--model", default=None, help="reference checkpoint or preset (default: the bundle's source)")
    ap.add_argument("--blocks", default="on-failure", choices=("always", "on-failure", "never"))
    ap.add_argument("--out", default=None, help="report directory (default artifacts/parity/<bundle name>)")
    a = ap.parse_args(argv)
    report = check_bundle(a.engine, a.clips, a.n, a.model, blocks=a.blocks)
    out = a.out or f"artifacts/parity/{Path(a.engine).resolve().name}"
    js, md = write_report(report, out)
    print(markdown(report))
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
