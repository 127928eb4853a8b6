"""`ExportOptions`: every choice `export_model` takes besides SOURCE and OUT, checked when made.

The checks run before anything is loaded or written, so bad arguments cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .preview_decoder import check_preview_decoder
from .quantize import check_quantize
from .targets import check_target

DTYPES = ("fp16", "fp32")
MIN_OPSET = 14  # the U-Net attention fusions need opset >= 14 graphs (Trilu/LayerNorm patterns)


def max_opset() -> int:
    try:
        from torch.onnx import _constants  # private module: where torch keeps its highest opset

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # moved: let the exporter itself reject what it cannot do
        return 99


def parse_static_shape(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768) (height, width in pixels)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"static shape must be HEIGHTxWIDTH in pixels, like 512x512; got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"static shape must be positive; got {text!r}")
    return h, w


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how; the defaults are `export_model`'s (and the CLI's)."""

    dtype: str = "fp16"
    target: str = "cuda"
    optimize: bool = True  # the target's graph fusions (False: optimum's graphs as they are)
    opset: int | None = None  # None: optimum's default
    fp32_vae: bool = False  # keep the VAE decoder fp32 in an fp16 export
    static_shape: tuple[int, int] | None = None  # (height, width) in pixels, pinned into the graphs
    batch: int | None = None  # images per prompt of a static shape (None: 1)
    quantize: str | None = None  # "int8": dynamic weight quantization (CPU, fp32)
    allow_pickle: bool = False  # accept pickled weights (.ckpt/.pt/.bin), which can run code
    validate: bool = True  # compare every graph against its PyTorch module
    preview_decoder: str | None = None  # an AutoencoderTiny folder exported as preview_decoder/
    separate_qkv: bool = False  # GPU targets: keep attention's Q, K, V weights apart (for LoRAs)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        check_target(self.target)
        top = max_opset()
        if self.opset is not None and not (MIN_OPSET <= self.opset <= top):
            raise ValueError(f"opset must be between {MIN_OPSET} and {top}; got {self.opset}")
        if self.batch is not None and self.static_shape is None:
            raise ValueError("--batch only applies with --static-shape HxW")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch must be >= 1; got {self.batch}")
        check_quantize(self.quantize, self.target, self.dtype)
        check_preview_decoder(self.preview_decoder)

    @property
    def images(self) -> int:
        """Images per prompt a static graph is pinned to."""
        return self.batch or 1

    def component_dtype(self, component: str, upcast_vae: bool) -> str:
        """The dtype `component`'s graph is written in ("fp16" or "fp32")."""
        if self.dtype == "fp32" or (upcast_vae and component.startswith("vae_")):
            return "fp32"
        return "fp32" if component == "vae_decoder" and self.fp32_vae else "fp16"
