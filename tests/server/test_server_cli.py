"""``sdlite serve`` arguments: checked before the model loads; a clear message without the extra."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

import pytest
from sdlite import cli
from sdlite.server import cli as serve

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
        (["--api-key", "k", "--api-key-file", "f"], "--api-key-file"),
        (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
        (["--body-timeout", "0"], "--body-timeout"),
        (["--allowed-host", "two words"], "--allowed-host"),
        (["--lora-dir", "/nonexistent/loras"], "--lora-dir"),
        (["--embeddings-dir", "/nonexistent/embeddings"], "--embeddings-dir"),
        (["--preview-every", "-1"], "--preview-every"),
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


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"api_key": None, "api_key_file": None, **kw})


def test_the_api_key_can_come_from_a_file_or_the_environment_not_only_the_command_line(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-from-file\nignored second line\n")
    assert serve.api_key(_args(api_key_file=str(key_file)), {}) == "s3cret-from-file"
    assert serve.api_key(_args(), {"SDLITE_API_KEY": "s3cret-env"}) == "s3cret-env"
    assert serve.api_key(_args(api_key="cli"), {"SDLITE_API_KEY": "env"}) == "cli"  # the explicit one wins
    assert serve.api_key(_args(api_key_file=str(key_file)), {"SDLITE_API_KEY": "env"}) == "s3cret-from-file"
    assert serve.api_key(_args(), {}) is None
    with pytest.raises(ValueError, match="SDLITE_API_KEY"):  # set but empty: a mistake, not "no key"
        serve.api_key(_args(), {"SDLITE_API_KEY": ""})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="--api-key-file"):
        serve.api_key(_args(api_key_file=str(tmp_path / "empty")), {})


def test_the_printed_url_puts_ipv6_addresses_in_brackets():
    assert serve.listen_url("::", 7899) == "http://[::]:7899/"
    assert serve.listen_url("::1", 80) == "http://[::1]:80/"
    assert serve.listen_url("127.0.0.1", 7860) == "http://127.0.0.1:7860/"


def test_a_port_in_use_is_an_error_and_no_url_is_printed_before_the_port_is_bound():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "sdlite", "serve", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1 port {port}" in proc.stderr
    assert "http://" not in proc.stderr and "Traceback" not in proc.stderr
