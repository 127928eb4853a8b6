"""Train the demo text-to-image model and save it as a diffusers StableDiffusionPipeline folder.

    nice -n 10 python models/recipe/train.py --work .cache/demo-train --out .cache/demo-diffusers

Stages (each resumes from its files in ``--work``, so a crash loses at most one checkpoint):
data -> VAE -> latents -> diffusion (U-Net + text encoder jointly, EMA) -> pipeline + loss.png.
Seeded and single-process, so a rerun with the same config reproduces the run up to the
nondeterminism of multi-threaded float reductions.  Never run in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel

# The recipe is a folder of scripts, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402
from config import Config  # noqa: E402
from tokenizer import build_tokenizer  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def warmup_lr(step: int, warmup: int, base: float) -> float:
    # Linear warmup, then constant: the schedule does not depend on the total step count, so a
    # run stopped at checkpoint k is exactly the run configured with steps=k (EMA anneals).
    return base * min(1.0, (step + 1) / warmup)


def make_vae(cfg: Config) -> AutoencoderKL:
    n = len(cfg.vae_blocks)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_blocks,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=cfg.vae_groups,
        sample_size=shapes.SIZE,
    )


def make_text_encoder(cfg: Config, tokenizer) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_width,
            intermediate_size=cfg.text_mlp,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            projection_dim=cfg.text_width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def make_unet(cfg: Config) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=shapes.SIZE // 2 ** (len(cfg.vae_blocks) - 1),
        in_channels=4,
        out_channels=4,
        # Cross-attention only at 8x8 and 4x4: half the cost of attending at 16x16, and
        # colour, shape and position are coarse properties.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=cfg.unet_blocks,
        layers_per_block=1,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads,
        norm_num_groups=cfg.unet_groups,
    )


def noise_schedule(cfg: Config) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


def stage_data(cfg: Config, work: Path) -> tuple[np.ndarray, list[str]]:
    path = work / "data.npz"
    if not path.exists():
        log(f"drawing {cfg.dataset_size} images")
        images, captions = shapes.draw_dataset(cfg.dataset_size, cfg.seed)
        tmp = work / "data.tmp.npz"
        np.savez(tmp, images=images, captions=np.array(captions))
        os.replace(tmp, path)
    data = np.load(path)
    return data["images"], [str(c) for c in data["captions"]]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def stage_vae(cfg: Config, work: Path, images: np.ndarray) -> AutoencoderKL:
    final = work / "vae"
    vae = make_vae(cfg)
    if final.exists():
        return AutoencoderKL.from_pretrained(final)
    ckpt_path = work / "vae.ckpt"
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_phases[0][3], weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start, losses = 0, []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        start, losses = ck["step"], ck["losses"]
    phases = [(n, batch, crop, lr) for n, batch, crop, lr in cfg.vae_phases]
    ends = np.cumsum([p[0] for p in phases])
    total = int(ends[-1])
    log(f"VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.3f} M params, steps {start}..{total}")
    vae.train()
    t0 = time.time()
    for step in range(start, total):
        _, batch, crop, lr = phases[int(np.searchsorted(ends, step, side="right"))]
        for g in opt.param_groups:
            g["lr"] = warmup_lr(step, 20, lr)
        idx = torch.randint(len(images), (batch,), generator=gen).numpy()
        x = to_tensor(images[idx])
        if crop < x.shape[-1]:
            oy, ox = torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=gen).tolist()
            x = x[:, :, oy : oy + crop, ox : ox + crop]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean**2 + post.var - 1.0 - post.logvar).mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0:
            rate = (time.time() - t0) / (step + 1 - start)
            log(f"vae step {step + 1} loss {np.mean(losses[-10:]):.4f} kl {float(kl):.2f} {rate:.2f}s/step")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            state = {"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
            atomic_save({**state, "step": step + 1, "losses": losses}, ckpt_path)
    vae.eval()
    json.dump(losses, open(work / "vae_losses.json", "w"))
    vae.save_pretrained(work / "vae.tmp")
    os.replace(work / "vae.tmp", final)
    return vae


def stage_decoder(cfg: Config, work: Path, images: np.ndarray, vae: AutoencoderKL) -> AutoencoderKL:
    """Fine-tune the decoder on the frozen encoder's posterior samples."""
    final = work / "vae-ft"
    if final.exists():
        return AutoencoderKL.from_pretrained(final)
    steps, batch, crop, lr = cfg.decoder_phase
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    ckpt_path = work / "decoder.ckpt"
    start, losses = 0, []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        start, losses = ck["step"], ck["losses"]
    log(f"decoder fine-tuning, steps {start}..{steps}")
    vae.eval()
    vae.decoder.train()
    t0 = time.time()
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = warmup_lr(step, 20, lr)
        idx = torch.randint(len(images), (batch,), generator=gen).numpy()
        x = to_tensor(images[idx])
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        # Crop in latent space (factor 4) and the matching pixels: the encoder saw whole images.
        f = x.shape[-1] // z.shape[-1]
        oy, ox = torch.randint(0, (x.shape[-1] - crop) // f + 1, (2,), generator=gen).tolist()
        z = z[:, :, oy : oy + crop // f, ox : ox + crop // f]
        x = x[:, :, oy * f : oy * f + crop, ox * f : ox * f + crop]
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0:
            rate = (time.time() - t0) / (step + 1 - start)
            log(f"decoder step {step + 1} loss {np.mean(losses[-10:]):.4f} {rate:.2f}s/step")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            state = {"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
            atomic_save({**state, "step": step + 1, "losses": losses}, ckpt_path)
    vae.eval()
    json.dump(losses, open(work / "decoder_losses.json", "w"))
    vae.save_pretrained(work / "vae-ft.tmp")
    os.replace(work / "vae-ft.tmp", final)
    return vae


@torch.no_grad()
def stage_latents(cfg: Config, work: Path, images: np.ndarray, vae: AutoencoderKL) -> dict:
    path = work / "latents.npz"
    images = images[: cfg.latent_images]
    if not path.exists():
        log("encoding the dataset")
        means, logvars = [], []
        for i in range(0, len(images), 256):
            post = vae.encode(to_tensor(images[i : i + 256])).latent_dist
            means.append(post.mean.half().numpy())
            logvars.append(post.logvar.half().numpy())
        mean, logvar = np.concatenate(means), np.concatenate(logvars)
        # SD's convention: latents are multiplied by scaling_factor = 1 / std so that the
        # diffusion model sees unit variance (SD 1.x's 0.18215 was found the same way).
        rng = np.random.default_rng(cfg.seed + 2)
        sample = mean.astype(np.float32) + np.exp(0.5 * logvar.astype(np.float32)) * rng.standard_normal(
            mean.shape, dtype=np.float32
        )
        scale = float(1.0 / sample.std())
        log(f"latent mean {sample.mean():.3f} std {sample.std():.3f} -> scaling_factor {scale:.4f}")
        tmp = work / "latents.tmp.npz"
        np.savez(tmp, mean=mean, logvar=logvar, scale=scale)
        os.replace(tmp, path)
    data = np.load(path)
    return {"mean": data["mean"], "logvar": data["logvar"], "scale": float(data["scale"])}


def stage_diffusion(cfg: Config, work: Path, lat: dict, captions: list[str], tokenizer):
    ckpt_path = work / "diffusion.ckpt"
    torch.manual_seed(cfg.seed + 3)  # parameter initialisation
    text_encoder = make_text_encoder(cfg, tokenizer)
    unet = make_unet(cfg)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    start, losses = 0, []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(ck["unet"])
        text_encoder.load_state_dict(ck["text_encoder"])
        opt.load_state_dict(ck["opt"])
        ema.load_state_dict(ck["ema"])
        gen.set_state(ck["gen"])
        start, losses = ck["step"], ck["losses"]
    n_unet = sum(p.numel() for p in unet.parameters()) / 1e6
    n_text = sum(p.numel() for p in text_encoder.parameters()) / 1e6
    log(f"U-Net {n_unet:.3f} M, text encoder {n_text:.3f} M params, steps {start}..{cfg.steps}")

    def ids(texts):
        return tokenizer(
            texts, padding="max_length", max_length=cfg.max_length, truncation=True, return_tensors="pt"
        ).input_ids

    all_ids = ids(captions)
    empty_ids = ids([""])[0]
    sched = noise_schedule(cfg)
    abar = sched.alphas_cumprod
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # Min-SNR-gamma for epsilon targets
    mean = torch.from_numpy(lat["mean"])
    std = torch.from_numpy(lat["logvar"]).float().mul(0.5).exp()
    unet.train()
    text_encoder.train()
    t0 = time.time()
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = warmup_lr(step, cfg.warmup, cfg.lr)
        idx = torch.randint(len(captions), (cfg.batch,), generator=gen)
        z = (mean[idx].float() + std[idx] * torch.randn(std[idx].shape, generator=gen)) * lat["scale"]
        input_ids = all_ids[idx].clone()
        drop = torch.rand(cfg.batch, generator=gen) < cfg.cfg_dropout
        input_ids[drop] = empty_ids
        noise = torch.randn(z.shape, generator=gen)
        if step >= cfg.offset_noise_from:
            noise = noise + cfg.offset_noise * torch.randn((*z.shape[:2], 1, 1), generator=gen)
        t = torch.randint(0, 1000, (cfg.batch,), generator=gen)
        noisy = sched.add_noise(z, noise, t)
        cond = text_encoder(input_ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        losses.append(loss.item())
        if (step + 1) % 25 == 0:
            rate = (time.time() - t0) / (step + 1 - start)
            eta = rate * (cfg.steps - step - 1) / 60
            log(f"step {step + 1} loss {np.mean(losses[-25:]):.4f} {rate:.2f}s/step, {eta:.1f} min left")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            state = {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict()}
            state.update(opt=opt.state_dict(), ema=ema.state_dict(), gen=gen.get_state())
            atomic_save({**state, "step": step + 1, "losses": losses}, ckpt_path)
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return unet, text_encoder, losses


def save_pipeline(cfg: Config, out: Path, vae, text_encoder, tokenizer, unet, scale: float) -> None:
    vae.register_to_config(scaling_factor=scale)
    # SD 1.5's own scheduler_config.json: PNDM over the scaled-linear schedule, epsilon, and
    # clip_sample false (a key PNDM ignores but DDIM, loaded from this config, would otherwise
    # default to true and clip x0 to [-1, 1], which latents are not).
    scheduler = PNDMScheduler.from_config(
        {
            "num_train_timesteps": 1000,
            "beta_start": cfg.beta_start,
            "beta_end": cfg.beta_end,
            "beta_schedule": "scaled_linear",
            "skip_prk_steps": True,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "prediction_type": "epsilon",
            "clip_sample": False,
        }
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    pipe.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"saved pipeline to {out}")


def plot_losses(work: Path, diffusion_losses: list[float], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The decoder fine-tuning continues the VAE curve (its loss has no KL term).
    vae_losses = json.load(open(work / "vae_losses.json")) + json.load(open(work / "decoder_losses.json"))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=72)
    for ax, values, title in (
        (axes[0], vae_losses, "VAE, then decoder alone (L1 + MSE)"),
        (axes[1], diffusion_losses, "diffusion (Min-SNR eps MSE)"),
    ):
        v = np.asarray(values)
        k = max(1, len(v) // 100)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        ax.plot(v, color="0.8", lw=0.5)
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, color="C0", lw=1.2)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".cache/demo-train"))
    parser.add_argument("--out", type=Path, default=Path(".cache/demo-diffusers"))
    parser.add_argument("--loss-png", type=Path, default=Path(__file__).resolve().parent / "loss.png")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a Config field")
    parser.add_argument("--print-config", action="store_true")
    # The decoder fine-tuning does not depend on the diffusion stage, so it may run beside it.
    parser.add_argument("--stop-after-decoder", action="store_true", help="run the stages up to the decoder")
    args = parser.parse_args(argv)
    fields = {f.name: f for f in dataclasses.fields(Config)}
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--set: unknown key {key!r}; known: {', '.join(fields)}")
        overrides[key] = type(getattr(Config(), key))(json.loads(value))
    cfg = Config(**overrides)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return
    torch.set_num_threads(cfg.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    saved = args.work / "config.json"
    if saved.exists() and json.load(open(saved)) != json.loads(json.dumps(dataclasses.asdict(cfg))):
        raise SystemExit(f"{args.work} holds a run with a different config; use another --work")
    json.dump(dataclasses.asdict(cfg), open(saved, "w"), indent=2)

    tokenizer = build_tokenizer(shapes.WORDS, cfg.max_length)
    images, captions = stage_data(cfg, args.work)
    torch.manual_seed(cfg.seed)
    vae = stage_vae(cfg, args.work, images)
    lat = stage_latents(cfg, args.work, images, vae)
    vae = stage_decoder(cfg, args.work, images, vae)
    if args.stop_after_decoder:
        return
    captions = captions[: len(lat["mean"])]
    unet, text_encoder, losses = stage_diffusion(cfg, args.work, lat, captions, tokenizer)
    plot_losses(args.work, losses, args.loss_png)
    save_pipeline(cfg, args.out, vae, text_encoder, tokenizer, unet, lat["scale"])


if __name__ == "__main__":
    main()
