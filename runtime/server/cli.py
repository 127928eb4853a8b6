"""``sdlite serve``: arguments, checks, and uvicorn.

Imports only the standard library at the top, so ``sdlite --help`` works without the ``serve``
extra; FastAPI and uvicorn are imported when the server starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

DEFAULT_MAX_BODY = 20 * 2**20  # an img2img request carries base64 images: 20 MiB fits several 2K PNGs


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


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
    s.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (or HTTP Basic auth, password KEY) on all routes "
        "but / and /health",
    )
    s.add_argument(
        "--max-body-bytes",
        metavar="BYTES",
        type=_int,
        default=DEFAULT_MAX_BODY,
        help=f"larger request bodies get 413 (default {DEFAULT_MAX_BODY}, 20 MiB)",
    )
    s.add_argument("--provider", default=None, help="cpu, cuda, rocm, dml, coreml (default: best available)")
    s.add_argument(
        "--threads",
        metavar="N",
        type=_int,
        default=None,
        help="ONNX Runtime intra-op threads on CPU (default: ORT's)",
    )
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


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
    if args.api_key is not None and (
        not args.api_key or not args.api_key.isprintable() or " " in args.api_key
    ):
        raise ValueError("--api-key must be a non-empty string of printable characters without spaces")
    if args.threads is not None and args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")


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
    try:
        import uvicorn

        from .app import Settings, create_app
    except ImportError as err:
        raise UsageError(f"sdlite serve needs the serve extra: pip install 'sdlite[serve]' ({err})") from None
    from pathlib import Path

    from ..pipeline import Pipeline

    model = Path(args.model) if args.model else _default_model()
    pipe = Pipeline.from_pretrained(model, provider=args.provider, num_threads=args.threads)
    settings = Settings(
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        queue=args.queue,
        api_key=args.api_key,
        max_body_bytes=args.max_body_bytes,
    )
    if not _is_loopback(args.host) and args.api_key is None:
        print(
            f"sdlite serve: warning: listening on {args.host} without --api-key: anyone who can reach it "
            "can use this machine's compute",
            file=sys.stderr,
        )
    app = create_app(pipe, settings)
    print(f"sdlite serve: {model} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
