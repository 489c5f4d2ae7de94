"""Install lines users are shown work today (issue 18, item 6): diffaccel is not on PyPI, so no
README, doc, hint or error message tells anyone to ``pip install "diffaccel[<extra>]"``; they
name the packages themselves or ``".[<extra>]"`` from a clone."""
import glob
import os
import re
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

import pytest

from support import ROOT


def _extras():
    if tomllib is None:
        pytest.skip("tomllib (Python >= 3.11) is needed to read pyproject.toml")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return sorted(tomllib.load(f)["project"]["optional-dependencies"])


def _texts():
    files = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "Makefile")]
    for pattern in ("docs/*.md", "diffaccel/**/*.py", "tests/**/*.py", "benchmarks/*.py", "kernels/*"):
        files += glob.glob(os.path.join(ROOT, pattern), recursive=True)
    for path in files:
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield os.path.relpath(path, ROOT), f.read()


def test_no_install_line_names_diffaccel_on_pypi():
    extras = _extras()
    assert "diffusers" in extras and "demo" in extras
    bad = re.compile(r"diffaccel\[(?:%s)\]" % "|".join(map(re.escape, extras)))
    found = [f"{path}: {m.group(0)}" for path, text in _texts() for m in bad.finditer(text)
             if path != os.path.join("tests", "build", "test_install_lines.py")]
    assert not found, found


def test_missing_diffusers_hint_is_an_install_line_that_works():
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "try:\n    import diffaccel.integrations.diffusers\n"
            "except ImportError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    msg = proc.stdout
    assert "needs diffusers" in msg and "pip install 'diffusers>=0.42,<0.43'" in msg, msg
    assert "diffaccel[" not in msg, msg
