"""`sdlite batch`: per-item LoRA sets (loras, <lora:...> tags), embeddings and VAE tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file
from sdlite import batch_items, cli
from sdlite.batch_items import Defaults, group, parse_job

TO_Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # 32 x 32 in the tiny U-Net
THREADS = "1"  # exact pixel comparisons: ORT's multithreaded kernels promise no bit-identical sums


def lora_file(path, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    a, b = rng.standard_normal((2, 32)), rng.standard_normal((32, 2))
    tensors = {f"{TO_Q}.lora_A.weight": a.astype(np.float32), f"{TO_Q}.lora_B.weight": b.astype(np.float32)}
    save_file(tensors, str(path))
    return path


def run_job(model, folder, lines, *flags):
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.jsonl"
    job.write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = ["batch", str(job), "--model", str(model), "--out", str(folder / "out")]
    argv += ["--steps", "2", "--width", "32", "--height", "32", "--threads", THREADS, "--quiet", *flags]
    return cli.main(argv)


def manifest(folder):
    return {r["id"]: r for r in map(json.loads, (folder / "out" / "manifest.jsonl").read_text().splitlines())}


def test_a_job_mixing_lora_sets_gives_each_item_its_image_alone(tmp_path, tiny_sd1_onnx):
    lib = tmp_path / "loras"
    lora_file(lib / "style.safetensors", seed=1)
    other = lora_file(tmp_path / "elsewhere" / "detail.safetensors", seed=2)
    job = [
        {"id": "a", "prompt": "a cat", "seed": 1, "loras": {"style": 0.8}},
        {"id": "b", "prompt": "a cat", "seed": 1},
        {"id": "c", "prompt": "a cat <lora:style:0.5>", "seed": 1, "loras": {str(other): 1}},
        {"id": "d", "prompt": "a dog", "seed": 2, "loras": {"style": 0.8}},
        {"id": "e", "prompt": "a dog", "seed": 2, "negative_prompt": "ugly <lora:style:0.8>"},
    ]
    assert run_job(tiny_sd1_onnx, tmp_path / "all", job, "--lora-dir", str(lib), "--batch-size", "4") == 0
    records = manifest(tmp_path / "all")
    assert records["a"]["parameters"]["loras"] == {"style": 0.8}
    assert records["c"]["parameters"]["loras"] == {"detail": 1.0, "style": 0.5}
    assert "loras" not in records["b"]["parameters"]
    # a, d and e share a set (e's from its negative prompt's tag); b and c run alone.
    assert {k: r["timings"]["batch_images"] for k, r in records.items()} == {
        "a": 3,
        "b": 1,
        "c": 1,
        "d": 3,
        "e": 3,
    }
    with Image.open(tmp_path / "all" / "out" / "c.png") as im:
        assert im.text["parameters"].startswith("a cat <lora:style:0.5>\nSteps: 2")
    pngs = {}
    for line in job:
        alone = tmp_path / f"alone-{line['id']}"
        assert run_job(tiny_sd1_onnx, alone, [line], "--lora-dir", str(lib)) == 0
        together = (tmp_path / "all" / "out" / f"{line['id']}.png").read_bytes()
        assert (alone / "out" / f"{line['id']}.png").read_bytes() == together
        with Image.open(alone / "out" / f"{line['id']}.png") as im:
            pngs[line["id"]] = np.asarray(im)
    assert not np.array_equal(pngs["a"], pngs["b"]) and not np.array_equal(pngs["b"], pngs["c"])


def test_lora_lines_are_checked_each_alone(tmp_path):
    lib = tmp_path / "loras"
    lora_file(lib / "style.safetensors")
    clash = lora_file(tmp_path / "x" / "style.safetensors", seed=3)
    lines = [
        {"id": "ok", "prompt": "a <lora:style:0.5>", "loras": {"style": 0.5}},
        {"id": "zero", "prompt": "a <lora:style:0.5>", "loras": {"style": -0.5}},
        {"id": "unknown", "prompt": "a <lora:nothere>"},
        {"id": "hyper", "prompt": "a", "negative_prompt": "<hypernet:h>"},
        {"id": "list", "prompt": "a", "loras": ["style"]},
        {"id": "nan-weight", "prompt": "a", "loras": {"style": "much"}},
        {"id": "clash", "prompt": "a", "loras": {str(clash): 1}},
        {"id": "tiles", "prompt": "a", "vae_tiling": "yes"},
        {"id": "tile-size", "prompt": "a", "vae_tile_size": 20},
        {"id": "tiled", "prompt": "a", "vae_tiling": True, "vae_tile_size": 32},
    ]
    job = tmp_path / "job.jsonl"
    job.write_text("".join(json.dumps(line) + "\n" for line in lines))
    d = Defaults(width=32, height=32, vae_factor=4, loras=batch_items.LoraLibrary(lib))
    items, errors = parse_job(job, d)
    assert [it.id for it in items] == ["ok", "zero", "tiled"]
    assert items[0].params["loras"] == {"style": 1.0} and items[0].files == {
        "style": str(lib / "style.safetensors")
    }
    assert "loras" not in items[1].params  # weights adding up to 0: the model's own weights
    assert items[2].params["vae_tiling"] is True and items[2].params["vae_tile_size"] == 32
    got = {e.id: e.error for e in errors}
    assert "prompt must be" in got["unknown"] and "'nothere'" in got["unknown"] and str(lib) in got["unknown"]
    assert "negative_prompt must be free of <hypernet" in got["hyper"]
    assert "loras must be an object" in got["list"]
    assert "loras['style'] must be a finite number" in got["nan-weight"]
    assert "one file per LoRA name in a job" in got["clash"]
    assert "vae_tiling must be True, False or None" in got["tiles"]
    assert "vae_tile_size must be a multiple of 16" in got["tile-size"]
    assert len(group(items, 8)) == 3  # three LoRA / tile settings


def test_items_round_trip_with_their_files():
    it = batch_items.Item("a", 1, {"prompt": "x", "loras": {"s": 1.0}}, {"s": "/l/s.safetensors"})
    assert batch_items.Item.from_json(json.loads(json.dumps(it.to_json()))) == it
    assert batch_items.Item.from_json({"id": "a", "line": 1, "params": {}}).files == {}


@pytest.mark.parametrize(
    "flags,message",
    [
        (("--lora-dir", "{tmp}/nowhere"), "--lora-dir: folder"),
        (("--embeddings-dir", "{tmp}/no"), "--embeddings-dir"),
    ],
)
def test_bad_folders_fail_before_the_model_loads(tmp_path, tiny_sd1_onnx, capsys, flags, message):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert run_job(tiny_sd1_onnx, tmp_path, [{"prompt": "a"}], *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_embeddings_dir_is_loaded_for_the_job(tmp_path, tiny_sd1_onnx):
    emb = tmp_path / "emb"
    emb.mkdir()
    vectors = np.random.default_rng(0).normal(0.0, 0.5, (2, 32)).astype(np.float32)
    save_file({"emb_params": vectors}, str(emb / "zqstyle.safetensors"))
    line = {"id": "x", "prompt": "a zqstyle", "seed": 1}
    assert run_job(tiny_sd1_onnx, tmp_path / "with", [line], "--embeddings-dir", str(emb)) == 0
    assert run_job(tiny_sd1_onnx, tmp_path / "without", [line]) == 0
    with (
        Image.open(tmp_path / "with" / "out" / "x.png") as a,
        Image.open(tmp_path / "without" / "out" / "x.png") as b,
    ):
        assert not np.array_equal(np.asarray(a), np.asarray(b))
