"""The runtime never imports torch, diffusers, transformers or optimum."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"
FORBIDDEN = ("torch", "diffusers", "transformers", "optimum")

BLOCKER = """
import sys
FORBIDDEN = {forbidden!r}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"blocked import of {{name}} (torch-free test)")
        return None
sys.meta_path.insert(0, _Block())
"""

SCRIPT = """
import json, sys
from sdlite import Pipeline
from sdlite.cli import main
pipe = Pipeline.from_pretrained(sys.argv[1], provider="cpu", num_threads=1)
out = pipe("a photo of a cat", num_inference_steps=2, seed=1, sampler="euler_a")
img = pipe("a photo", image=out.images[0], strength=0.5, num_inference_steps=2, seed=2, output_type="np")
code = main(["generate", "a cat", "--model", sys.argv[1], "--steps", "2", "--out", sys.argv[2], "--quiet"])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
print(json.dumps({{"size": out.images[0].size, "np": list(img.images.shape), "cli": code, "leaked": leaked}}))
"""


def test_generation_in_a_process_where_torch_cannot_be_imported(tmp_path, tiny_sd1_onnx):
    code = BLOCKER.format(forbidden=FORBIDDEN) + SCRIPT.format()
    out_png = tmp_path / "x.png"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_sd1_onnx), str(out_png)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"size": [64, 64], "np": [1, 64, 64, 3], "cli": 0, "leaked": []}
    assert out_png.is_file()


def test_the_blocker_blocks():
    # The test above means something only if the blocker really stops these imports.
    code = BLOCKER.format(forbidden=FORBIDDEN) + "import torch"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "blocked import of torch" in proc.stderr


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def test_no_runtime_file_imports_torch_or_friends():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) >= 5
    bad = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in _imports(tree):
            if name.split(".")[0] in FORBIDDEN:
                bad.append(f"{path.relative_to(RUNTIME.parent)}:{line}: {name}")
    assert not bad, "\n".join(bad)
