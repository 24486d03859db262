"""The Makefile's options: each means one thing, a misspelled or foreign one is an error, required ones are checked.

Every test runs ``make -n`` (print the recipes, run nothing): the checks happen when make reads the Makefile.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = (ROOT / "Makefile").read_text()

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``make -n ARGS`` in the repository; the caller's make variables (``make test X=1``) are not passed down."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def targets() -> dict[str, str]:
    """Each target with a ``## `` comment -> that comment."""
    return dict(re.findall(r"^([a-z][a-z-]*):[^\n#]*## ([^\n]*)$", MAKEFILE, re.M))


def options() -> list[str]:
    return re.findall(r"^([A-Z_]+) \?=", MAKEFILE, re.M)


def taken(target: str) -> set[str]:
    return set(re.findall(r"[A-Z_]+", targets()[target])) & set(options())


def required(target: str) -> set[str]:
    return set(re.findall(r"([A-Z_]+)=<", re.sub(r"\[[^]]*\]", "", targets()[target]))) & set(options())


def recipe(target: str) -> str:
    """The recipe lines of ``target`` as written in the Makefile."""
    m = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n?)*)", MAKEFILE, re.M)
    assert m, target
    return m.group(1)


def command(target: str, *args: str) -> str:
    """What ``make -n`` prints for ``target``'s own recipe (not the venv's), on one line."""
    r = make(target, *args)
    assert r.returncode == 0, r.stderr
    text = r.stdout.replace("\\\n", " ")
    lines = [ln for ln in text.splitlines() if " -m " in ln and " -m pip " not in ln and " -m venv " not in ln]
    assert lines, r.stdout
    return shlex.join(_words(" ".join(lines)))  # the Makefile quotes every value; compare the words


def test_a_misspelled_option_is_an_error_naming_the_option_meant() -> None:
    r = make("engine", "PRECISON=int8")
    assert r.returncode == 2, r.stdout
    assert "unknown option PRECISON (did you mean PRECISION?)" in r.stderr, r.stderr
    assert "export.bundle.build" not in r.stdout  # nothing would have run
    r = make("bench", "ENGINE=engines/x", "THREDS=2")
    assert r.returncode == 2 and "unknown option THREDS (did you mean THREADS?)" in r.stderr, r.stderr


def test_an_option_the_target_does_not_take_is_an_error_not_ignored() -> None:
    r = make("bench", "ENGINE=engines/x", "BATCH=4")  # bench measures BATCHES; BATCH is make engine's range
    assert r.returncode == 2, r.stdout
    assert "BATCH is not an option of bench (did you mean BATCHES?)" in r.stderr, r.stderr
    r = make("parity", "ENGINE=engines/x", "MODEL=base")
    assert r.returncode == 2 and "did you mean MODEL_REF?" in r.stderr, r.stderr
    # several goals take the union of their options
    assert make("engine", "bench", "ENGINE=engines/x", "PRECISION=int8", "BATCHES=1,2").returncode == 0


def test_environment_variables_are_not_options() -> None:
    r = make("engine", env={"PRECISON": "int8", "BATCHES": "1,2"})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("target", sorted(t for t in targets() if required(t)))
def test_a_required_option_is_checked_before_anything_runs(target: str) -> None:
    r = make(target)
    assert r.returncode == 2, r.stdout
    for name in required(target):
        assert f"make {target}: set {name}=" in r.stderr, r.stderr
    assert "pip install" not in r.stdout  # refused before the venv would be made


def test_the_required_engine_guard_is_written_once() -> None:
    assert {"parity", "bench", "bench-cameras", "serve", "triton"} <= {t for t in targets() if "ENGINE" in required(t)}
    assert "test -n" not in MAKEFILE and MAKEFILE.count("set $(o)=") == 1  # one guard, for every required option


@pytest.mark.parametrize("target", sorted(targets()))
def test_each_recipe_uses_exactly_the_options_its_help_lists(target: str) -> None:
    used = set(re.findall(r"\$\(([A-Z_]+)\)", recipe(target))) & set(options()) - {"PYTHON"}  # every target's
    if "$(out_arg)" in recipe(target):
        used.add("OUT")
    assert used == taken(target) - {"PYTHON"}, (
        f"make {target}: recipe uses {sorted(used)}, help lists {sorted(taken(target))}"
    )


@pytest.mark.parametrize("target", sorted(t for t in targets() if "OUT" in taken(t)))
def test_out_is_always_passed_as_out(target: str, tmp_path: Path) -> None:
    args = [f"{name}=engines/x" for name in required(target)]
    line = command(target, f"OUT={tmp_path}/result", *args)
    assert f"--out {tmp_path}/result" in line and "--out-dir" not in line, line


@pytest.mark.parametrize("target", sorted(t for t in targets() if "MODEL" in taken(t)))
def test_the_model_default_reaches_every_target_that_takes_model(target: str) -> None:
    (default,) = re.findall(r"^MODEL \?= ([^#\s]+)", MAKEFILE, re.M)
    assert f"--model {default}" in command(target)


def test_bench_batches_and_engine_batch_each_mean_one_thing() -> None:
    assert "--batch 1,2,4" in command("bench", "ENGINE=engines/x", "BATCHES=1,2,4")
    assert "--batch 1:2:8" in command("engine", "BATCH=1:2:8")


def words(target: str, *args: str) -> list[str]:
    """The shell words of ``target``'s own command as ``make -n`` prints it."""
    return list(_words(command(target, *args)))


def _words(line: str) -> shlex.shlex:
    """A shell line's words; `;` and `&&` are words of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return lexer


def test_values_with_spaces_quotes_and_semicolons_stay_one_argument() -> None:
    # before: `--out a b` (two words) and `--model a;echo pwned` ran a second command
    w = words("engine", 'OUT=my bundles/it\'s "new"', "MODEL=a;echo pwned", "CALIB=x $y")
    assert w[w.index("--out") + 1] == 'my bundles/it\'s "new"', w
    assert w[w.index("--model") + 1] == "a;echo pwned" and "echo" not in w, w
    assert w[w.index("--calib") + 1] == "x ", w  # make itself expands $y (write $$ for a literal $)
    r = make("bench", "ENGINE=my engines/b'1", "OUT=re port")
    assert r.returncode == 0, r.stderr
    assert "check 'my engines/b'\\''1'" in r.stdout and "'re port/check.json'" in r.stdout, r.stdout
    w = words("triton", "ENGINE=a b")
    assert w[w.index("--engine") + 1] == "a b" and w[w.index("--out") + 1] == "artifacts/triton", w


@pytest.mark.parametrize("name", ["PRECISION", "MODEL", "PORT", "CAMERAS"])
def test_an_option_with_a_default_given_empty_is_an_error(name: str) -> None:
    # before: `PRECISION=` made `--precision --backend auto` (argparse then blamed --precision, or a value shifted)
    target = {"PRECISION": "engine", "MODEL": "engine", "PORT": "serve", "CAMERAS": "bench-cameras"}[name]
    r = make(target, f"{name}=", *(["ENGINE=engines/x"] if target != "engine" else []))
    assert r.returncode == 2 and f"{name} is empty" in r.stderr, (r.stdout, r.stderr)
