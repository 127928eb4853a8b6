"""The VAE: encode and decode, whole or in tiles (diffusers' ``AutoencoderKL`` tiling, step for step).

Whole decodes run one image at a time (lower peak memory) and are redone in fp32 when an fp16
decoder overflows (NaN/inf) and the folder has an fp32 decoder.

Large images are cut into overlapping square tiles that go through the VAE one at a time, so
memory is bounded by one tile whatever the image size.  As in diffusers' ``tiled_decode`` /
``_tiled_encode``, tiles start every 75% of a tile; each tile is blended into the tile above
(``blend_v``) and the one to its left (``blend_h``) over 25% of a tile, in place and in raster
order (so a later tile blends with its neighbours' already-blended values), then cropped to its
top-left 75% and the crops are joined.  The result equals diffusers' within float rounding; it
differs from a whole decode because each tile sees only its own context (seams are blended).

Sizes are in pixels (``tile``) and the VAE's factor; ``sdlite.rules.check_vae_tile_size``
makes the overlap fall on whole latent cells.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .graph import LATENT_PARAMETERS, Graph
from .latents import posterior_sample
from .rules import VAE_TILE_OVERLAP
from .sessions import Session

Run = Callable[[np.ndarray], np.ndarray]  # one [B, C, h, w] tile through the VAE half


def _blend_v(a: np.ndarray, b: np.ndarray, extent: int) -> None:
    extent = min(a.shape[2], b.shape[2], extent)
    for y in range(extent):
        b[:, :, y, :] = a[:, :, -extent + y, :] * (1 - y / extent) + b[:, :, y, :] * (y / extent)


def _blend_h(a: np.ndarray, b: np.ndarray, extent: int) -> None:
    extent = min(a.shape[3], b.shape[3], extent)
    for x in range(extent):
        b[:, :, :, x] = a[:, :, :, -extent + x] * (1 - x / extent) + b[:, :, :, x] * (x / extent)


def _run_tiles(x: np.ndarray, size: int, stride: int, run: Run) -> list[list[np.ndarray]]:
    return [
        [
            np.array(run(x[:, :, i : i + size, j : j + size]), dtype=np.float32)  # a writable copy
            for j in range(0, x.shape[3], stride)
        ]
        for i in range(0, x.shape[2], stride)
    ]


def _stitch(rows: list[list[np.ndarray]], extent: int, limit: int) -> np.ndarray:
    out = []
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if i > 0:
                _blend_v(rows[i - 1][j], tile, extent)
            if j > 0:
                _blend_h(row[j - 1], tile, extent)
        out.append(np.concatenate([tile[:, :, :limit, :limit] for tile in row], axis=3))
    return np.concatenate(out, axis=2)


def needs_tiles(x: np.ndarray, size: int) -> bool:
    """diffusers tiles only an input larger than one tile (``size`` in the input's own units)."""
    return x.shape[-1] > size or x.shape[-2] > size


def tiled_decode(run: Run, z: np.ndarray, tile: int, factor: int) -> np.ndarray:
    """Latents [B, C, h, w] -> pixels [B, 3, h*factor, w*factor], decoded ``tile`` pixels at a time."""
    latent_tile = tile // factor
    if not needs_tiles(z, latent_tile):
        return run(z)
    rows = _run_tiles(z, latent_tile, int(latent_tile * (1 - VAE_TILE_OVERLAP)), run)
    extent = int(tile * VAE_TILE_OVERLAP)
    return _stitch(rows, extent, tile - extent)


def tiled_encode(run: Run, pixels: np.ndarray, tile: int, factor: int) -> np.ndarray:
    """Pixels [B, 3, H, W] -> the encoder's output [B, C', H/factor, W/factor], ``tile`` pixels at a time.

    For a posterior (mean and log-variance) the parameters are blended, as in diffusers; the
    sample is drawn from the blended ones.
    """
    if not needs_tiles(pixels, tile):
        return run(pixels)
    latent_tile = tile // factor
    rows = _run_tiles(pixels, tile, int(tile * (1 - VAE_TILE_OVERLAP)), run)
    extent = int(latent_tile * VAE_TILE_OVERLAP)
    return _stitch(rows, extent, latent_tile - extent)


class VAE:
    """The folder's VAE sessions; ``tile`` arguments are tile sides in pixels (None: whole)."""

    def __init__(
        self,
        decoder: Session,
        encoder: Session | None,
        graph: Graph,
        scaling_factor: float,
        fp32_decoder: Path | None,
        open_session: Callable[[Path], Session],
    ) -> None:
        self.decoder, self.encoder, self.graph = decoder, encoder, graph
        self.scaling_factor = np.float32(scaling_factor)
        self._fp32_path, self._open = fp32_decoder, open_session
        self.fp32_decoder: Session | None = None  # opened on the first overflow

    @property
    def sessions(self) -> list[Session]:
        return [s for s in (self.decoder, self.encoder, self.fp32_decoder) if s is not None]

    def encode(
        self, pixels: np.ndarray, rngs: list[np.random.Generator], tile: int | None = None
    ) -> np.ndarray:
        """[B,3,H,W] in [-1,1] -> scaled latents; a posterior sample draws one normal per image."""
        encoder = self.encoder
        assert encoder is not None
        name, output = next(iter(encoder.inputs)), self.graph.encoder_output

        def run(part: np.ndarray) -> np.ndarray:
            return encoder.run({name: part}, [output])[0]

        step = self.graph.encoder_batch or len(pixels)
        outs = [
            run(chunk) if tile is None else tiled_encode(run, chunk, tile, self.graph.vae_factor)
            for chunk in (pixels[i : i + step] for i in range(0, len(pixels), step))
        ]
        out = np.concatenate(outs).astype(np.float32, copy=False)
        if output == LATENT_PARAMETERS:
            out = posterior_sample(out, rngs)
        return out * self.scaling_factor

    def decode(self, x: np.ndarray, tile: int | None = None) -> np.ndarray:
        """Scaled latents -> pixels [B,3,H,W] in [-1,1], one image (or fixed batch) at a time."""
        scaled = x / self.scaling_factor
        step = self.graph.decoder_batch or 1
        out = []
        for i in range(0, len(scaled), step):

            def run(z: np.ndarray, i: int = i) -> np.ndarray:
                return self._decode_checked(z, i)

            chunk = scaled[i : i + step]
            out.append(run(chunk) if tile is None else tiled_decode(run, chunk, tile, self.graph.vae_factor))
        return np.concatenate(out)

    def _decode_checked(self, z: np.ndarray, i: int) -> np.ndarray:
        (dec,) = self.decoder.run({next(iter(self.decoder.inputs)): z})
        if not np.isfinite(dec).all():
            dec = self._decode_fp32(z, i)
        return dec.astype(np.float32, copy=False)

    def _decode_fp32(self, scaled: np.ndarray, i: int) -> np.ndarray:
        if self._fp32_path is None:
            raise FloatingPointError(
                f"the VAE decoder produced NaN/inf for image {i} (fp16 overflow?) and the model "
                f"folder has no fp32 decoder (vae_decoder/model_fp32.onnx) to retry with"
            )
        if self.fp32_decoder is None:
            self.fp32_decoder = self._open(self._fp32_path)
        (dec,) = self.fp32_decoder.run({next(iter(self.fp32_decoder.inputs)): scaled})
        if not np.isfinite(dec).all():
            raise FloatingPointError(f"the VAE decoder produced NaN/inf for image {i}, even in fp32")
        return dec
