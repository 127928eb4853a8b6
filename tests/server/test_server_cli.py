"""``sdlite serve`` arguments: checked before the model loads; a clear message without the extra."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sdlite import cli

BLOCK_FASTAPI = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "uvicorn"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, _Block())
from sdlite.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--max-batch", "0"], "--max-batch"),
        (["--queue", "0"], "--queue"),
        (["--batch-window-ms", "-1"], "--batch-window-ms"),
        (["--port", "70000"], "--port"),
        (["--max-body-bytes", "10"], "--max-body-bytes"),
        (["--api-key", "two words"], "--api-key"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(args, named, capsys):
    assert cli.main(["serve", *args]) == 2
    assert named in capsys.readouterr().err


def test_without_the_serve_extra_the_message_says_what_to_install():
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_FASTAPI, "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "pip install 'sdlite[serve]'" in proc.stderr
    # The rest of the command line works without it.
    helped = subprocess.run(
        [sys.executable, "-c", BLOCK_FASTAPI, "serve", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "--max-batch" in helped.stdout and "--api-key" in helped.stdout
