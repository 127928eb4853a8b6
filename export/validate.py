"""Each exported component run in ONNX Runtime against its PyTorch module on random inputs.

Error measure: relative error = max |onnx - torch| / max |torch| over each output (scale-free,
and unlike an elementwise ratio it does not blow up where the reference is near zero).

Tolerances (relative error, per component; measured on the tiny SD-1 test model, CPU EP):
- fp32: 1e-3, the issue's bound. Measured ~1e-6 (fused kernels only reorder sums).
- fp16: 2e-2. Measured: text encoder 1.3e-3, U-Net 2.7e-3, VAE encoder 8.7e-4, decoder 6.2e-4.
  fp16 keeps 11 mantissa bits (~5e-4 per rounding) and real models are deeper, so the bound
  leaves ~10x headroom while still catching a broken conversion or an overflow (errors of
  order 1, or inf).
- int8 (dynamic weight quantization, on top of fp32): 0.25. Measured: text encoder 3.3e-2,
  U-Net 7.3e-2; random weights are int8's worst case (no dominant scale per tensor). This only
  catches a broken quantization; its cost in pixels is measured in tests/export (and reported).
NaN or inf anywhere fails regardless of tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ExportError
from .targets import PROVIDERS

TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.25}


@dataclass
class Check:
    component: str
    max_abs: float
    rel: float
    finite: bool
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.finite and self.rel <= self.tolerance

    def as_dict(self) -> dict:
        return {
            "max_abs_error": self.max_abs,
            "rel_error": self.rel,
            "finite": self.finite,
            "tolerance": self.tolerance,
            "ok": self.ok,
        }


def compare(
    component: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray], tolerance: float
) -> Check:
    max_abs, rel, finite = 0.0, 0.0, True
    for name, ref in want.items():
        out = np.asarray(got[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if out.shape != ref.shape:
            raise ValueError(f"{component}: output {name} has shape {out.shape}, PyTorch gives {ref.shape}")
        finite = finite and bool(np.isfinite(out).all())
        if not finite:
            return Check(component, float("inf"), float("inf"), False, tolerance)
        err = float(np.abs(out - ref).max())
        max_abs = max(max_abs, err)
        rel = max(rel, err / max(float(np.abs(ref).max()), 1e-12))
    return Check(component, max_abs, rel, finite, tolerance)


def _inputs(component: str, pipe, latent_hw: tuple[int, int], batch: int, rng: np.random.Generator) -> dict:
    """Random inputs, float32/int64, named as optimum's exported graphs name them."""
    h, w = latent_hw
    if component.startswith("text_encoder"):
        encoder = getattr(pipe, component)
        seq = getattr(_tokenizer(pipe), "model_max_length", None)
        seq = seq if seq and seq <= 4096 else encoder.config.max_position_embeddings
        ids = rng.integers(0, encoder.config.vocab_size, size=(batch, seq), dtype=np.int64)
        return {"input_ids": ids}
    if component == "unet":
        cfg = pipe.unet.config
        text_dim = cfg.cross_attention_dim
        seq = getattr(_tokenizer(pipe), "model_max_length", 77)
        inputs = {
            "sample": rng.standard_normal((batch, cfg.in_channels, h, w), dtype=np.float32),
            "timestep": np.array(500.0, dtype=np.float32),  # optimum exports a scalar timestep
            "encoder_hidden_states": rng.standard_normal((batch, seq, text_dim), dtype=np.float32),
        }
        if cfg.addition_embed_type == "text_time":
            # SDXL: pooled text embeddings of encoder 2 + time ids (6, or 5 for a refiner), in the
            # ranges a pipeline feeds (sizes in pixels, crops, aesthetic scores).
            pooled = pipe.text_encoder_2.config.projection_dim
            n_ids = (cfg.projection_class_embeddings_input_dim - pooled) // cfg.addition_time_embed_dim
            inputs["text_embeds"] = rng.standard_normal((batch, pooled), dtype=np.float32)
            inputs["time_ids"] = rng.integers(0, 1024, size=(batch, n_ids)).astype(np.float32)
        return inputs
    if component == "vae_encoder":
        f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return {"sample": rng.uniform(-1, 1, (batch, 3, h * f, w * f)).astype(np.float32)}
    if component == "vae_decoder":
        # What the decoder sees in a pipeline: N(0, 1) latents divided by the scaling factor.
        scale = pipe.vae.config.scaling_factor
        latents = rng.standard_normal((batch, pipe.vae.config.latent_channels, h, w), dtype=np.float32)
        return {"latent_sample": latents / scale}
    raise ValueError(f"no validation inputs defined for component {component!r}")


def _tokenizer(pipe):
    # An SDXL refiner has only tokenizer_2.
    return getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)


def _reference(component: str, pipe, inputs: dict) -> dict[str, np.ndarray]:
    import torch

    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        if component.startswith("text_encoder"):
            encoder = getattr(pipe, component)
            # optimum exports every layer's hidden states for SDXL (output_hidden_states in the
            # config): SDXL conditions on the penultimate one, so each is checked.
            out = encoder(t["input_ids"], output_hidden_states=bool(encoder.config.output_hidden_states))
            result = {"last_hidden_state": out.last_hidden_state}
            for i, hidden in enumerate(out.hidden_states or ()):
                result[f"hidden_states.{i}"] = hidden
            if getattr(out, "pooler_output", None) is not None:
                result["pooler_output"] = out.pooler_output
            if getattr(out, "text_embeds", None) is not None:
                result["text_embeds"] = out.text_embeds
        elif component == "unet":
            unet = pipe.unet(
                t["sample"],
                t["timestep"],
                t["encoder_hidden_states"],
                timestep_cond=t.get("timestep_cond"),
                # SDXL's extra conditioning (pooled text embeddings, time ids).
                added_cond_kwargs={k: t[k] for k in ("text_embeds", "time_ids") if k in t} or None,
            )
            result = {"out_sample": unet.sample}
        elif component == "vae_encoder":
            result = {"latent_parameters": pipe.vae.encode(t["sample"]).latent_dist.parameters}
        elif component == "vae_decoder":
            result = {"sample": pipe.vae.decode(t["latent_sample"]).sample}
        else:
            raise ValueError(f"no PyTorch reference for component {component!r}")
    return {k: v.float().numpy() for k, v in result.items()}


def _ort_type(type_str: str):
    return np.float16 if type_str == "tensor(float16)" else None


def run_onnx(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session, casting float inputs to the dtype it declares (fp16 graphs take fp16)."""
    feed = {}
    for arg in session.get_inputs():
        if arg.name not in inputs:
            raise ValueError(
                f"the exported graph wants input {arg.name!r}, which validation does not provide"
            )
        value = inputs[arg.name]
        dtype = _ort_type(arg.type)
        feed[arg.name] = value.astype(dtype) if dtype is not None and value.dtype.kind == "f" else value
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def validate_component(
    component: str,
    model_path,
    pipe,
    dtype: str,
    latent_hw: tuple[int, int],
    batch: int = 1,
    seed: int = 0,
    providers: list[str] | None = None,
) -> Check:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The session first: a graph this machine cannot run fails here, before PyTorch does any work.
    session = ort.InferenceSession(str(model_path), options, providers=providers or ["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    inputs = _inputs(component, pipe, latent_hw, batch, rng)
    cond_dim = getattr(pipe.unet.config, "time_cond_proj_dim", None) if component == "unet" else None
    if cond_dim:  # an LCM-distilled U-Net's guidance embedding (LatentConsistencyModelPipeline)
        inputs["timestep_cond"] = rng.standard_normal((batch, cond_dim), dtype=np.float32)
    want = _reference(component, pipe, inputs)
    got = run_onnx(session, inputs)
    return compare(component, got, want, TOLERANCE[dtype])


def validation_providers(target: str) -> list[str]:
    """The target's provider when this machine has it (then the CPU for what it lacks), else the CPU."""
    import onnxruntime as ort

    provider = PROVIDERS[target]
    if provider in ort.get_available_providers() and provider != "CPUExecutionProvider":
        return [provider, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def validation_record(component, path, pipe, dtype, latent_hw, providers, batch=1) -> dict:
    """`validate_component` as sdlite.json records it; a graph this machine has no kernels for is skipped."""
    try:
        check = validate_component(component, path, pipe, dtype, latent_hw, batch=batch, providers=providers)
    except Exception as exc:  # noqa: BLE001 - recorded, then judged below
        text = str(exc)
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
            # e.g. a --target cuda graph (NhwcConv, GroupNorm) on a machine without that provider.
            return {"skipped": f"no kernels for this graph on {providers[0]}: {text.splitlines()[0][:200]}"}
        raise ExportError(f"{component}: validation could not run the exported graph: {exc}") from exc
    return check.as_dict()
