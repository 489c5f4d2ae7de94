"""``diffaccel.kernels`` when diffaccel is imported from a source checkout.

The Triton kernels live in the top-level ``kernels/`` folder and are installed as
``diffaccel.kernels`` (setup.py's ``package_dir``). Python started in the repository root
imports ``diffaccel`` from ``./diffaccel`` (the current folder comes first on ``sys.path``),
where there is no ``kernels`` subfolder; this finder then maps that one name to ``../kernels``,
as an installed copy would. It comes first on ``sys.meta_path``, so another install's mapping
of the name cannot win over the kernels beside the diffaccel actually imported, and it is lazy
(nothing is imported until ``diffaccel.kernels`` is). It is installed only in a source checkout
(``setup.py`` and ``kernels/step.py`` beside the package, no ``diffaccel/kernels``) and
never makes ``kernels`` importable as a top-level module.

``kernels/`` has no ``__init__.py`` (so that, from the repository root, it is at most a namespace
portion and never hides an installed package ``kernels``, such as Hugging Face's kernel hub):
``diffaccel.kernels`` is a namespace-style package, here and when installed.
"""
import importlib.abc
import importlib.machinery
import os
import sys

NAME = "diffaccel.kernels"


class KernelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``diffaccel.kernels`` (only that name) in ``path``; its submodules are found there
    through the package's ``__path__``."""

    def __init__(self, path):
        self.path = path

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        # no loader and a search location: Python makes it a namespace package over self.path
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [self.path]
        return spec


def install(package_dir):
    """Put the finder first on ``sys.meta_path`` when ``package_dir`` is a source checkout's (so
    the kernels beside the diffaccel actually imported win over any other install's mapping)."""
    root = os.path.dirname(os.path.abspath(package_dir))
    kernels = os.path.join(root, "kernels")
    if (os.path.exists(os.path.join(package_dir, "kernels"))
            or not os.path.isfile(os.path.join(kernels, "step.py"))
            or not os.path.isfile(os.path.join(root, "setup.py"))):
        return
    if not any(isinstance(f, KernelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, KernelsFinder(kernels))
