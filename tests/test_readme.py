"""Every ```python block of README.md and of the pages in docs/ runs as written, each in a fresh
Python process (from a temporary folder, so files it writes go there); its test id is the file
and the line of its fence, e.g. ``docs/vrg.md:13``. A block whose fence is preceded by a line
``<!-- no-run: reason -->`` is skipped with that reason; a block that imports a package which is
not installed is skipped naming it. Every relative markdown link ``[text](path)`` in those files
points at a file or folder that exists (anchors are not checked)."""
import ast
import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from support import ROOT  # noqa: E402

README = os.path.join(ROOT, "README.md")
DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(.*?)\s*-->\s*$")
# [text](target) and ![alt](target); the target ends at whitespace or ")", an optional "title" after it
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _rel(path):
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def python_blocks(text, name="README.md"):
    """[(line number of the fence, code, no-run reason or None)] of the ```python blocks."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise ValueError(f"{name}:{start + 1}: ```python block is never closed")
            k = start - 1
            m = NO_RUN.match(lines[k]) if k >= 0 else None
            blocks.append((start + 1, "\n".join(lines[start + 1:j]) + "\n", m.group(1) if m else None))
            i = j + 1
        else:
            i += 1
    return blocks


def relative_links(text):
    """[(line number, target without its #anchor)] of the markdown links to relative paths, outside
    code blocks and code spans (URLs with a scheme, mailto: and pure #anchors are left out)."""
    links, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            target = m.group(1)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue
            links.append((n, target.split("#", 1)[0]))
    return links


def missing_imports(code):
    """Top-level packages the code imports that are not installed."""
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return sorted({n for n in names if importlib.util.find_spec(n) is None})


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _blocks():
    """[(file relative to the root, line, code, no-run reason or None)] over README.md and docs/*.md."""
    return [(_rel(p), n, code, reason) for p in DOCS for n, code, reason in python_blocks(_read(p), _rel(p))]


def _links():
    """[(file relative to the root, line, absolute path the link points at)]."""
    return [(_rel(p), n, os.path.normpath(os.path.join(os.path.dirname(p), target)))
            for p in DOCS for n, target in relative_links(_read(p))]


BLOCKS = _blocks()
LINKS = _links()


def test_readme_has_python_blocks():
    n = sum(1 for f, _, _, _ in BLOCKS if f == "README.md")
    assert n >= 3, f"found only {n} ```python blocks in README.md"


def test_docs_pages_are_read():
    names = {f for f, _, _, _ in BLOCKS}
    assert {"README.md", "docs/likelihood.md", "docs/vrg.md"} <= names, sorted(names)
    assert len(LINKS) >= 10, f"found only {len(LINKS)} relative links in README.md and docs/*.md"


def test_block_parser_and_skips():
    text = ("intro\n```python\nx = 1\n```\n<!-- no-run: needs a GPU -->\n```python\nimport torch\n```\n"
            "```bash\nls\n```\n```python\nimport not_a_package_xyz.sub as m\nfrom torch import nn\n```\n")
    got = python_blocks(text)
    assert [(n, r) for n, _, r in got] == [(2, None), (6, "needs a GPU"), (12, None)]
    assert got[0][1] == "x = 1\n"
    assert missing_imports(got[2][1]) == ["not_a_package_xyz"] and missing_imports(got[1][1]) == []
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")
    with pytest.raises(ValueError, match="docs/x.md:1:"):
        python_blocks("```python\nx = 1\n", "docs/x.md")


def test_link_parser():
    text = ("See [math](docs/math.md#2-the-stroke-operator) and ![fig](docs/results/mse.png \"MSE\"),\n"
            "[web](https://example.com/a.md), [here](#install), [mail](mailto:a@b.c), `[no](x.md)`\n"
            "```python\n# [not a link](y.md)\n```\n[pending](../csrc/README.md)\n")
    assert relative_links(text) == [(1, "docs/math.md"), (1, "docs/results/mse.png"),
                                    (6, "../csrc/README.md")]


@pytest.mark.parametrize("name,line,code,reason", BLOCKS, ids=[f"{f}:{n}" for f, n, _, _ in BLOCKS])
def test_readme_block_runs(name, line, code, reason, tmp_path):
    if reason is not None:
        pytest.skip(f"{name}:{line}: no-run: {reason}")
    missing = missing_imports(code)
    if missing:
        pytest.skip(f"{name}:{line}: needs {', '.join(missing)} (not installed)")
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (f"{name}:{line}: the block failed (exit {proc.returncode}):\n"
                                  f"{proc.stderr[-3000:]}")


@pytest.mark.parametrize("name,line,path", LINKS, ids=[f"{f}:{n}:{_rel(p)}" for f, n, p in LINKS])
def test_relative_link_resolves(name, line, path):
    assert os.path.exists(path), f"{name}:{line}: the link points at {_rel(path)}, which does not exist"
