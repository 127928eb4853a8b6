"""Image sizes as the graphs see them: the latent factor, and `--static-shape` pinned into the graphs."""

from __future__ import annotations

from pathlib import Path


def latent_factor(pipe) -> int:
    """Pixels per latent cell: the VAE halves the image once per block but the last."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def static_dims(pipe, hw: tuple[int, int], images: int) -> dict[str, dict[str, int]]:
    """Per component, optimum's symbolic dim names -> the values `hw` (pixels) and `images` fix.

    The U-Net runs the unconditional and conditional halves of classifier-free guidance as one
    batch, as diffusers does, so its batch is 2 x `images`. The text encoder keeps dynamic shapes
    (the runtime may encode prompts and negative prompts separately).
    """
    f = latent_factor(pipe)
    # The U-Net halves the latent once per down block but the last.
    multiple = f * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    h, w = hw
    if h % multiple or w % multiple:
        raise ValueError(
            f"static shape {h}x{w}: height and width must be multiples of {multiple} for this model"
        )
    return {
        "unet": {"batch_size": 2 * images, "height": h // f, "width": w // f},
        "vae_encoder": {"batch_size": images, "sample_height": h, "sample_width": w},
        "vae_decoder": {"batch_size": images, "latent_height": h // f, "latent_width": w // f},
    }


def fix_static_shapes(
    folder: Path, components: tuple[str, ...], pipe, hw: tuple[int, int], images: int
) -> dict:
    """Pin the symbolic dims (ORT's make_dim_param_fixed) so ORT can plan memory statically."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    dims = static_dims(pipe, hw, images)
    for component in components:
        if component not in dims:
            continue
        path = folder / component / "model.onnx"
        model = onnx.load(str(path), load_external_data=False)
        for name, value in dims[component].items():
            make_dim_param_fixed(model.graph, name, value)
        onnx.save_model(model, str(path))  # weights untouched: external data (if any) stays valid
    return {"height": hw[0], "width": hw[1], "batch": images, "dims": dims}


def validation_latent_hw(pipe, static: dict | None) -> tuple[int, int]:
    """The latent size validation runs at: a static graph's own, else the model's (at most 32)."""
    if static is not None:
        f = latent_factor(pipe)
        return static["height"] // f, static["width"] // f
    return (min(pipe.unet.config.sample_size, 32),) * 2
