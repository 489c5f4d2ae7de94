"""``import diffaccel`` from a folder that also holds a folder called ``diffaccel`` (the folder
that contains the clone) imports the package, not that folder as a namespace package; and the
Triton kernels never import as a top-level module ``kernels``.

Runs the project's Python in a fresh process with this process's environment: after ``make``
that is the strict editable install (the default editable mode failed this); in a worktree run
with ``PYTHONPATH`` at the repository root, that path."""
import os
import shutil
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
    shutil.copytree(os.path.join(ROOT, "diffaccel"), tmp_path / "diffaccel",
                    ignore=shutil.ignore_patterns("kernels", "*.so", "__pycache__"))
    shutil.copytree(os.path.join(ROOT, "kernels"), tmp_path / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    probe = ("import importlib.util, os, sys, diffaccel\n"
             "assert 'diffaccel.kernels' not in sys.modules\n"
             "import diffaccel.kernels as k\n"
             "print(os.path.realpath(diffaccel.__file__), os.path.realpath(list(k.__path__)[0]),\n"
             "      os.path.realpath(importlib.util.find_spec('diffaccel.kernels.step').origin))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pkg, kern, step = proc.stdout.split()
    base = os.path.realpath(tmp_path)
    assert pkg == os.path.join(base, "diffaccel", "__init__.py")
    assert kern == os.path.join(base, "kernels") and step == os.path.join(base, "kernels", "step.py")


FAKE_KERNELS = '"""a stand-in for the PyPI package `kernels`"""\nclass CUDAProperties:\n    pass\n'


def test_repository_root_does_not_hide_an_installed_kernels_package(tmp_path):
    """Python started in the repository root (as `make test` and `make demo` run it), with a
    regular package `kernels` installed (Hugging Face's kernel hub, which diffusers and
    transformers import): `import kernels` gets that package, not our kernels/ folder, and
    diffaccel.kernels is still ours."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text(FAKE_KERNELS)
    probe = ("import os, sys\n"
             "from kernels import CUDAProperties\n"
             "import kernels, diffaccel, diffaccel.kernels.step as step\n"
             "print(os.path.realpath(kernels.__file__), os.path.realpath(step.__file__))\n")
    env = dict(os.environ)
    # the fake goes last on the path: the repository root ('' and PYTHONPATH) comes first
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(site)) if p)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fake, step = proc.stdout.split()
    assert fake == os.path.realpath(site / "kernels" / "__init__.py")
    assert step == os.path.realpath(os.path.join(ROOT, "kernels", "step.py"))
    assert not os.path.exists(os.path.join(ROOT, "kernels", "__init__.py"))


def test_installed_wheel_has_the_kernels(tmp_path):
    """A wheel (built here without the extension, which takes seconds) installs kernels/ as
    diffaccel.kernels, and never as a top-level `kernels`."""
    import zipfile

    env = dict(os.environ, DIFFACCEL_BUILD_EXT="0")
    code = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "*.so", ".pytest_cache",
        "diffaccel-report", ".benchmarks"))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert "diffaccel/kernels/step.py" in names and not [n for n in names if n.startswith("kernels/")]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import importlib.util, os, diffaccel.kernels.step as s\n"
             "print(os.path.realpath(s.__file__), importlib.util.find_spec('kernels') is None)\n")
    run = tmp_path / "elsewhere"
    run.mkdir()
    proc = subprocess.run([sys.executable, "-c", probe], cwd=run, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(site)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    step, no_top_level = proc.stdout.split()
    assert step == os.path.realpath(site / "diffaccel" / "kernels" / "step.py") and no_top_level == "True"
