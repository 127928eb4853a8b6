"""``sdlite serve``: arguments, checks, and uvicorn.

Imports only the standard library at the top, so ``sdlite --help`` works without the ``serve``
extra; FastAPI and uvicorn are imported when the server starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Mapping

from ..arg_types import integer as _int
from ..arg_types import number as _float
from ..arg_types import pixel_budget as _pixels
from ..arg_types import pixel_budget_help as _pixels_help

DEFAULT_MAX_BODY = 20 * 2**20  # an img2img request carries base64 images: 20 MiB fits several 2K PNGs
DEFAULT_BODY_TIMEOUT = 30.0  # 20 MiB in 30 s is ~5.6 Mbit/s; slower links raise --body-timeout
API_KEY_ENV = "SDLITE_API_KEY"
DEFAULT_PREVIEW_EVERY = 2  # a preview is a cheap linear map of the latents; every step is not needed


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="serve the model over HTTP: AUTOMATIC1111 and OpenAI APIs, a web page (needs 'sdlite[serve]')",
        description="Serve a model over HTTP with dynamic batching: AUTOMATIC1111's /sdapi/v1/txt2img "
        "and img2img, OpenAI's /v1/images/generations, a page at /, /health and /metrics.",
    )
    s.add_argument(
        "--model", metavar="DIR", default=None, help="exported model folder (default: the demo model)"
    )
    s.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)"
    )
    s.add_argument("--port", type=_int, default=7860, help="TCP port (default %(default)s, as AUTOMATIC1111)")
    s.add_argument(
        "--max-batch",
        metavar="N",
        type=_int,
        default=8,
        help="most images per model call, merged across requests (default 8)",
    )
    s.add_argument(
        "--batch-window-ms",
        metavar="MS",
        type=_float,
        default=20.0,
        help="how long a request waits for compatible ones to share its batch (default 20)",
    )
    s.add_argument(
        "--queue",
        metavar="N",
        type=_int,
        default=64,
        help="most requests waiting for the model; more get 429 (default 64)",
    )
    _add_security_options(s)
    _add_runtime_options(s)
    _add_network_options(s)


def _add_security_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (or HTTP Basic auth, password KEY) on all routes "
        f"but / and /health; visible to other users in 'ps': prefer --api-key-file or ${API_KEY_ENV}",
    )
    s.add_argument(
        "--api-key-file",
        default=None,
        metavar="PATH",
        help=f"read the API key from this file (its first line); or set ${API_KEY_ENV}",
    )
    s.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name this server answers to besides localhost and loopback addresses (the Host "
        "header; refusing others stops DNS rebinding); repeat for more",
    )
    s.add_argument(
        "--body-timeout",
        metavar="SECONDS",
        type=_float,
        default=DEFAULT_BODY_TIMEOUT,
        help=f"a request body not received within this time gets 408 (default {DEFAULT_BODY_TIMEOUT:g})",
    )


def _add_runtime_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--max-body-bytes",
        metavar="BYTES",
        type=_int,
        default=DEFAULT_MAX_BODY,
        help=f"larger request bodies get 413 (default {DEFAULT_MAX_BODY}, 20 MiB)",
    )
    s.add_argument("--provider", default=None, help="cpu, cuda, rocm, dml, coreml (default: best available)")
    s.add_argument(
        "--max-pixels",
        metavar="N",
        type=_pixels,
        default=None,
        help=_pixels_help("a request may ask for") + "; larger requests get 422",
    )
    s.add_argument(
        "--threads",
        metavar="N",
        type=_int,
        default=None,
        help="ONNX Runtime intra-op threads on CPU (default: ORT's)",
    )
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _add_network_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--lora-dir",
        metavar="DIR",
        default=None,
        help="LoRA files (.safetensors) that prompts name with <lora:NAME:WEIGHT> tags; "
        "listed at /sdapi/v1/loras (default: none, and a tag is an error)",
    )
    s.add_argument(
        "--embeddings-dir",
        metavar="DIR",
        default=None,
        help="textual inversion embeddings (.safetensors) loaded at start; listed at /sdapi/v1/embeddings",
    )
    s.add_argument(
        "--preview-every",
        metavar="N",
        type=_int,
        default=DEFAULT_PREVIEW_EVERY,
        help="a live preview (/sdapi/v1/progress's current_image) every N steps; 0: none "
        f"(default {DEFAULT_PREVIEW_EVERY})",
    )


def check_args(args: argparse.Namespace) -> None:
    """Every argument checked before the model loads (ValueError naming the option)."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if not 1 <= args.max_batch <= 256:
        raise ValueError(f"--max-batch must be in [1, 256], got {args.max_batch}")
    if not 0 <= args.batch_window_ms <= 10_000:
        raise ValueError(f"--batch-window-ms must be in [0, 10000], got {args.batch_window_ms}")
    if args.queue < 1:
        raise ValueError(f"--queue must be at least 1, got {args.queue}")
    if args.max_body_bytes < 1024:
        raise ValueError(f"--max-body-bytes must be at least 1024, got {args.max_body_bytes}")
    if args.api_key is not None:
        _check_key(args.api_key, "--api-key")
    if args.api_key is not None and args.api_key_file is not None:
        raise ValueError("--api-key and --api-key-file: give one of them, not both")
    if not 0 < args.body_timeout <= 3600:
        raise ValueError(f"--body-timeout must be in (0, 3600] seconds, got {args.body_timeout}")
    for name in args.allowed_host:
        if not name or not all(c.isalnum() or c in ".-_:[]" for c in name):
            raise ValueError(f"--allowed-host must be a host name or address, got {name!r}")
    if args.threads is not None and args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    _check_network_args(args)


def _check_network_args(args: argparse.Namespace) -> None:
    for option, folder in (("--lora-dir", args.lora_dir), ("--embeddings-dir", args.embeddings_dir)):
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"{option} must be an existing folder, got {folder!r}")
    if not 0 <= args.preview_every <= 10_000:
        raise ValueError(f"--preview-every must be in [0, 10000] (0: no previews), got {args.preview_every}")


def _check_key(key: str, source: str) -> str:
    if not key or not key.isprintable() or " " in key:
        raise ValueError(f"{source} must be a non-empty string of printable characters without spaces")
    return key


def api_key(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key from --api-key, --api-key-file (its first line) or $SDLITE_API_KEY, in that order."""
    if args.api_key is not None:
        return args.api_key
    if args.api_key_file is not None:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                first = f.readline(4096).rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise ValueError(f"--api-key-file: cannot read {args.api_key_file!r}: {reason}") from None
        return _check_key(first, f"--api-key-file (the first line of {args.api_key_file!r})")
    if API_KEY_ENV in environ:  # set but empty is a mistake, not "no key"
        return _check_key(environ[API_KEY_ENV], f"${API_KEY_ENV}")
    return None


def listen_url(host: str, port: int) -> str:
    """The URL to print for a listening address: IPv6 addresses go in brackets (RFC 3986)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (port 0: any free one), not listening yet: taken before
    the model loads, so that a port in use is reported at once, not after a minute of loading."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..models_dir import default_model as _default_model

    check_args(args)
    key = api_key(args)
    try:
        import uvicorn

        from .app import Settings, create_app
    except ImportError as err:
        raise UsageError(f"sdlite serve needs the serve extra: pip install 'sdlite[serve]' ({err})") from None
    from pathlib import Path

    from ..pipeline import Pipeline

    try:
        sock = bind(args.host, args.port)
    except OSError as err:
        raise UsageError(f"cannot listen on {args.host} port {args.port}: {err.strerror or err}") from None
    with sock:
        model = Path(args.model) if args.model else _default_model()
        pipe = Pipeline.from_pretrained(model, provider=args.provider, num_threads=args.threads)
        if args.max_pixels is not None:
            pipe.max_pixels = args.max_pixels
        loopback = _is_loopback(args.host)
        settings = Settings(
            max_batch=args.max_batch,
            batch_window_ms=args.batch_window_ms,
            queue=args.queue,
            api_key=key,
            max_body_bytes=args.max_body_bytes,
            body_timeout=args.body_timeout,
            # On loopback only local names may reach it (DNS rebinding); elsewhere the names given.
            allowed_hosts=tuple(args.allowed_host) if loopback or args.allowed_host else None,
            lora_dir=Path(args.lora_dir) if args.lora_dir else None,
            embeddings_dir=Path(args.embeddings_dir) if args.embeddings_dir else None,
            preview_every=args.preview_every,
        )
        if not loopback and key is None:
            print(
                f"sdlite serve: warning: listening on {args.host} without an API key: anyone who can "
                "reach it can use this machine's compute",
                file=sys.stderr,
            )
        app = create_app(pipe, settings)
        for note in app.server.extras.notes():  # files skipped in the folders: said once, at start
            print(f"sdlite serve: warning: {note}", file=sys.stderr)
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        sock.listen(2048)
        url = listen_url(args.host, sock.getsockname()[1])
        print(f"sdlite serve: {model} on {url}", file=sys.stderr, flush=True)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly (as uvicorn.run)
            pass
    return 0 if server.started else 1
