"""What an exported model folder holds: its components, files and the few config values we use.

Two layouts load: optimum's (``model.onnx`` [+ ``model.onnx_data``] and a ``config.json`` per
component) and diffusers' older ONNX export (``model.onnx`` + ``weights.pb``, no per-component
config).  Files are checked here, before any session is created, so that a missing or empty
file is named in the error instead of surfacing as an ONNX Runtime protobuf message.

SDXL folders add ``text_encoder_2/`` and ``tokenizer_2/``; an SDXL refiner has only those (no
``text_encoder/``, ``tokenizer/``).  ``model_index.json`` (optional) names the pipeline class and
carries ``force_zeros_for_empty_prompt`` and ``requires_aesthetics_score``.

An optional ``vae_decoder/model_fp32.onnx`` is the fp32 decoder used when an fp16 decode
overflows (NaN/inf); exporters that write fp16 folders may add it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = ("text_encoder", "unet", "vae_decoder")  # text_encoder: or text_encoder_2 (SDXL refiner)
OPTIONAL = ("text_encoder_2", "vae_encoder")
DEFAULT_SCALING_FACTOR = 0.18215  # SD 1.x/2.x, what diffusers' AutoencoderKL defaults to
FP32_DECODER = "model_fp32.onnx"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"model file {str(path)!r} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"model file {str(path)!r} is not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as err:  # deep nesting: RecursionError, not a traceback
        raise ValueError(f"model file {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"model file {str(path)!r} must hold a JSON object")
    return data


def _check_model_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} is missing")
    if path.stat().st_size == 0:
        raise ValueError(f"model file {str(path)!r} is empty (truncated?)")
    return path


@dataclass
class ModelFolder:
    path: Path
    onnx: dict[str, Path]  # component -> model.onnx
    configs: dict[str, dict[str, Any]]  # component -> its config.json ({} when absent)
    scheduler_config: dict[str, Any]
    tokenizer_dir: Path
    fp32_decoder: Path | None = None
    model_index: dict[str, Any] = field(default_factory=dict)
    tokenizer_2_dir: Path | None = None  # SDXL's second tokenizer

    @property
    def is_sdxl(self) -> bool:
        """Two-encoder (or refiner) SDXL layout: by its second text encoder or the pipeline class."""
        cls = str(self.model_index.get("_class_name", ""))
        return "text_encoder_2" in self.onnx or cls.startswith("StableDiffusionXL")

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        # diffusers' SDXL pipelines default to True; SD-1/2 pipelines have no such switch.
        return bool(self.model_index.get("force_zeros_for_empty_prompt", self.is_sdxl))

    @property
    def requires_aesthetics_score(self) -> bool:
        return bool(self.model_index.get("requires_aesthetics_score", False))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def scaling_factor(self) -> float:
        vae = self.configs.get("vae_decoder") or self.configs.get("vae_encoder") or {}
        return float(vae.get("scaling_factor", DEFAULT_SCALING_FACTOR))

    @property
    def vae_factor(self) -> int | None:
        """Pixels per latent cell from the VAE config (2 ** downsamplings); None if unknown."""
        vae = self.configs.get("vae_decoder") or self.configs.get("vae_encoder") or {}
        blocks = vae.get("block_out_channels")
        return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else None

    @property
    def unet_downsampling(self) -> int:
        """How many times the U-Net halves the latent (2 ** downsampling blocks).  An ONNX U-Net
        upsamples by fixed factors of 2, so latent sides must be multiples of this; without a
        config, SD 1.x/2.x's 8."""
        blocks = self.configs.get("unet", {}).get("block_out_channels")
        return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8

    @property
    def unet_sample_size(self) -> int | None:
        size = self.configs.get("unet", {}).get("sample_size")
        return size if isinstance(size, int) else None


def load_folder(path: str | Path) -> ModelFolder:
    """Check and describe a model folder; raise naming the first missing or broken file."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {str(root)!r} does not exist")
    onnx: dict[str, Path] = {}
    configs: dict[str, dict[str, Any]] = {}
    # An SDXL refiner conditions on text_encoder_2 alone.
    refiner = not (root / "text_encoder").exists() and (root / "text_encoder_2" / "model.onnx").exists()
    for comp in (*REQUIRED, *OPTIONAL):
        model = root / comp / "model.onnx"
        if (comp not in REQUIRED or (refiner and comp == "text_encoder")) and not model.exists():
            continue
        onnx[comp] = _check_model_file(model)
        for data in ("model.onnx_data", "weights.pb"):
            if (root / comp / data).exists():
                _check_model_file(root / comp / data)
        cfg = root / comp / "config.json"
        configs[comp] = _read_json(cfg) if cfg.is_file() else {}
    sched = root / "scheduler" / "scheduler_config.json"
    if not sched.is_file():
        raise FileNotFoundError(f"model file {str(sched)!r} is missing")
    tok, tok2 = root / "tokenizer", root / "tokenizer_2"
    if "text_encoder_2" in onnx and not tok2.is_dir():
        raise FileNotFoundError(f"model folder {str(tok2)!r} is missing (text_encoder_2 needs it)")
    if refiner:
        tok = tok2
    if not tok.is_dir():
        raise FileNotFoundError(f"model folder {str(tok)!r} is missing")
    fp32 = root / "vae_decoder" / FP32_DECODER
    index = root / "model_index.json"
    return ModelFolder(
        path=root,
        onnx=onnx,
        configs=configs,
        scheduler_config=_read_json(sched),
        tokenizer_dir=tok,
        fp32_decoder=_check_model_file(fp32) if fp32.exists() else None,
        model_index=_read_json(index) if index.is_file() else {},
        tokenizer_2_dir=tok2 if "text_encoder_2" in onnx else None,
    )
