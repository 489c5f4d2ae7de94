"""Every ```python block of README.md runs as written, each in a fresh Python process (from a
temporary folder, so files it writes go there). A block whose fence is preceded by a line
``<!-- no-run: reason -->`` is skipped with that reason; a block that imports a package which is
not installed is skipped naming it."""
import ast
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from support import ROOT  # noqa: E402

README = os.path.join(ROOT, "README.md")
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(.*?)\s*-->\s*$")


def python_blocks(text):
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
                raise ValueError(f"README.md:{start + 1}: ```python block is never closed")
            k = start - 1
            m = NO_RUN.match(lines[k]) if k >= 0 else None
            blocks.append((start + 1, "\n".join(lines[start + 1:j]) + "\n", m.group(1) if m else None))
            i = j + 1
        else:
            i += 1
    return blocks


def missing_imports(code):
    """Top-level packages the code imports that are not installed."""
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return sorted({n for n in names if importlib.util.find_spec(n) is None})


def _blocks():
    with open(README, encoding="utf-8") as f:
        return python_blocks(f.read())


BLOCKS = _blocks()


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3, f"found only {len(BLOCKS)} ```python blocks in README.md"


def test_block_parser_and_skips():
    text = ("intro\n```python\nx = 1\n```\n<!-- no-run: needs a GPU -->\n```python\nimport torch\n```\n"
            "```bash\nls\n```\n```python\nimport not_a_package_xyz.sub as m\nfrom torch import nn\n```\n")
    got = python_blocks(text)
    assert [(n, r) for n, _, r in got] == [(2, None), (6, "needs a GPU"), (12, None)]
    assert got[0][1] == "x = 1\n"
    assert missing_imports(got[2][1]) == ["not_a_package_xyz"] and missing_imports(got[1][1]) == []
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")


@pytest.mark.parametrize("line,code,reason", BLOCKS, ids=[f"README.md:{n}" for n, _, _ in BLOCKS])
def test_readme_block_runs(line, code, reason, tmp_path):
    if reason is not None:
        pytest.skip(f"README.md:{line}: no-run: {reason}")
    missing = missing_imports(code)
    if missing:
        pytest.skip(f"README.md:{line}: needs {', '.join(missing)} (not installed)")
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (f"README.md:{line}: the block failed (exit {proc.returncode}):\n"
                                  f"{proc.stderr[-3000:]}")
