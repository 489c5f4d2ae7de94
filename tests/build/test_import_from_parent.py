"""``import diffaccel`` from a folder that also holds a folder called ``diffaccel`` (the folder
that contains the clone) imports the package, not that folder as a namespace package; and the
Triton kernels never import as a top-level module ``kernels``.

Runs the project's Python in a fresh process with this process's environment: after ``make``
that is the strict editable install (the default editable mode failed this); in a worktree run
with ``PYTHONPATH`` at the repository root, that path."""
import os
import subprocess
import sys

import diffaccel

from support import ROOT  # noqa: E402

PROBE = """
import importlib.util, os, sys
import diffaccel
assert hasattr(diffaccel, "noise"), ("namespace package imported instead", list(diffaccel.__path__))
print(os.path.realpath(diffaccel.__file__))
print(importlib.util.find_spec("kernels") is not None)
"""


def _on_pythonpath(path):
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return any(e and os.path.realpath(e) == os.path.realpath(path) for e in entries)


def test_import_from_the_folder_that_contains_the_clone(tmp_path):
    (tmp_path / "diffaccel").mkdir()  # like the clone itself: no __init__.py at its top
    (tmp_path / "diffaccel" / "README.md").write_text("a clone\n")
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, kernels_top_level = proc.stdout.split()
    # the package under test, not another copy
    assert where == os.path.realpath(diffaccel.__file__), (where, diffaccel.__file__)
    if not _on_pythonpath(ROOT):  # a worktree run puts the repository root itself on the path
        assert kernels_top_level == "False", "the Triton kernels import as a top-level `kernels`"


def test_kernels_from_a_source_checkout(tmp_path):
    """Python started in a checkout's root imports ./diffaccel, which has no kernels subfolder
    (no symlink in a clone): diffaccel.kernels still maps to ./kernels, lazily."""
    import shutil

    shutil.copytree(os.path.join(ROOT, "diffaccel"), tmp_path / "diffaccel",
                    ignore=shutil.ignore_patterns("kernels", "*.so", "__pycache__"))
    shutil.copytree(os.path.join(ROOT, "kernels"), tmp_path / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    probe = ("import importlib.util, os, sys, diffaccel\n"
             "assert 'diffaccel.kernels' not in sys.modules\n"
             "import diffaccel.kernels as k\n"
             "print(os.path.realpath(diffaccel.__file__), os.path.realpath(k.__file__),\n"
             "      os.path.realpath(importlib.util.find_spec('diffaccel.kernels.step').origin))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pkg, kern, step = proc.stdout.split()
    base = os.path.realpath(tmp_path)
    assert pkg == os.path.join(base, "diffaccel", "__init__.py")
    assert kern == os.path.join(base, "kernels", "__init__.py") and step == os.path.join(base, "kernels", "step.py")
