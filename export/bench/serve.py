"""Serving throughput and p99, batching on/off x 1/2 replicas: ``python -m export.bench.serve --engine <bundle>``.

Starts a local Ray, and for each round deploys every configuration in turn (interleaved, so a change in the
machine's load hits all of them alike) and runs :func:`export.serving.load_test.run_load` against it. Prints one JSON
object per configuration (median and spread over the rounds) and writes them to ``--out`` when given.
The load generator runs on the same machine as the replicas and competes with them for the cores.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser, user_errors
from runtime.errors import BundleError
from runtime.files import write_json_atomic

from export.bench.harness import machine


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over its rounds: medians and ranges of throughput and p99, and the error counts."""
    tp = [r["throughput"] for r in runs]
    p99 = [r["p99_ms"] for r in runs]
    return {
        "throughput_median": float(np.median(tp)),
        "throughput_range": [min(tp), max(tp)],
        "p99_ms_median": float(np.median(p99)),
        "p99_ms_range": [min(p99), max(p99)],
        "p50_ms_median": float(np.median([r["p50_ms"] for r in runs])),
        "mean_batch": float(np.mean([r["mean_batch"] for r in runs])),
        "lost": sum(r["lost"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "mismatches": sum(r["mismatches"] for r in runs),
        "rounds": len(runs),
    }


@user_errors("python -m export.bench.serve")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m export.bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from export.serving.load_test import expected_logits, make_clips, run_load
    from runtime.remote import RemoteEngine
    from runtime.serving import ServeOptions, deploy, shutdown

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configs = [(int(r), b) for r in a.replicas.split(",") for b in (True, False)]
    results: dict[str, list[dict]] = {}
    try:
        clips = expected = None
        for rnd in range(a.rounds):
            for replicas, batching in configs:
                # one replica gets both cores' worth of threads; two get one each
                threads = max(1, (os.cpu_count() or 2) // replicas)
                url = deploy(
                    ServeOptions(
                        bundle=a.engine,
                        replicas=replicas,
                        batching=batching,
                        port=port,
                        threads=threads,
                        cpus_per_replica=1.0 / replicas,
                    )
                )
                if clips is None:
                    clips = make_clips(RemoteEngine(url), 16)
                    expected = expected_logits(a.engine, clips)
                run_load(url, a.clients, 1.0, clips=clips)  # warm-up: connections, first batches
                res = run_load(url, a.clients, a.seconds, clips=clips, expected=expected).to_dict()
                key = f"replicas={replicas} batching={'on' if batching else 'off'}"
                results.setdefault(key, []).append(res)
                print(
                    json.dumps(
                        {
                            "round": rnd,
                            "config": key,
                            **{
                                k: res[k]
                                for k in (
                                    "requests",
                                    "ok",
                                    "errors",
                                    "lost",
                                    "mismatches",
                                    "throughput",
                                    "p50_ms",
                                    "p99_ms",
                                    "mean_batch",
                                )
                            },
                        }
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    except (BundleError, ValueError) as e:
        print(f"bench_serve: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    summary = {key: _summary(runs) for key, runs in results.items()}
    out = {"engine": a.engine, "clients": a.clients, "seconds": a.seconds, "machine": machine(), "configs": summary}
    print(json.dumps(out, indent=1))
    if a.out:
        write_json_atomic(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
