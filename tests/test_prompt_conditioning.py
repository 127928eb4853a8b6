"""Conditioning as AUTOMATIC1111 computes it, against a reference on transformers' CLIP models.

The reference follows AUTOMATIC1111's rule step by step, on PyTorch and transformers' slow
tokenizer: each (text, weight) piece tokenized alone, chunks of 75 tokens, ``BREAK`` closing a
chunk, a full chunk going back to a comma within its last 20 tokens, [start] + chunk + [end]
padded as the tokenizer pads, each chunk encoded alone, rows times weights, rescaled to the
unweighted mean, chunks concatenated, shorter texts padded with empty chunks.  Then whole images
are compared with diffusers given those embeddings, and prompt editing is checked call by call.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from sdlite import Pipeline  # noqa: E402
from sdlite.conditioning import SDXLOptions  # noqa: E402
from sdlite.prompt_encoding import chunk_prompt  # noqa: E402
from sdlite.prompts import parse_prompt_attention  # noqa: E402

EMB_TOL = 1e-4
PIXEL_TOL = 2 / 255
WEIGHTED = "a (red:1.4) sports car, (((sunset))), [blurry] road, (glowing neon:0.7)"
LONG = " ".join(["a photo of a (small:1.2) cat on a mat"] * 20)  # 220 tokens: 3 chunks
BREAK = "a red car BREAK (a blue sky:0.8) BREAK"
BACKTRACK = " ".join(["cat"] * 70) + ", a very (long:1.1) phrase here now"
NEGATIVE = "lowres, (bad hands:1.3)"
CASES = {"weighted": WEIGHTED, "long": LONG, "break": BREAK, "backtrack": BACKTRACK}


# --- the reference ---------------------------------------------------------------------------


def reference_chunks(tok, text: str) -> list[tuple[list[int], list[float]]]:
    """AUTOMATIC1111's tokenize_line, on transformers' tokenizer: [(77 ids, 77 weights)]."""
    parsed = parse_prompt_attention(text)
    pieces = tok([t for t, _ in parsed], add_special_tokens=False, truncation=False)["input_ids"]
    comma = tok.get_vocab()[",</w>"]
    chunks, ids, weights, last_comma = [], [], [], -1

    def next_chunk():
        nonlocal ids, weights, last_comma
        n = len(ids)
        row = [tok.bos_token_id, *ids, tok.eos_token_id] + [tok.pad_token_id] * (75 - n)
        chunks.append((row, [1.0, *weights] + [1.0] * (76 - n)))
        ids, weights, last_comma = [], [], -1

    for piece, (text_, weight) in zip(pieces, parsed, strict=True):
        if text_ == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in piece:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == 75 and last_comma != -1 and 75 - last_comma <= 20:
                moved = (ids[last_comma + 1 :], weights[last_comma + 1 :])
                ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                next_chunk()
                ids, weights = list(moved[0]), list(moved[1])
            if len(ids) == 75:
                next_chunk()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        next_chunk()
    return chunks


def reference_embed(model, tok, text: str, k: int, penultimate: bool = False):
    """[k*77, D] (and the first chunk's text_embeds, for a model with projection)."""
    chunks = reference_chunks(tok, text)
    chunks += reference_chunks(tok, "")[:1] * (k - len(chunks))
    zs, pooled = [], None
    with torch.no_grad():
        for i, (ids, weights) in enumerate(chunks):
            out = model(torch.tensor([ids]), output_hidden_states=True)
            z = (out.hidden_states[-2] if penultimate else out.last_hidden_state)[0]
            if i == 0 and hasattr(out, "text_embeds"):
                pooled = out.text_embeds[0].numpy()
            mean = z.mean()
            z = z * torch.tensor(weights)[:, None]
            zs.append(z * (mean / z.mean()))
    return torch.cat(zs).numpy(), pooled


# --- fixtures --------------------------------------------------------------------------------


def with_final_bias(src: Path, dst: Path, bias: np.ndarray) -> Path:
    """A copy of an SD 1/2 export whose text encoder's final layer norm has ``bias``.

    A random-weight CLIP's final layer norm has a zero bias, so each row of its output has mean
    ~0 and AUTOMATIC1111's rescaling (a division by the chunk's mean) would divide rounding noise;
    a trained CLIP's bias is not zero.  The same bias goes into the PyTorch reference.
    """
    shutil.copytree(src, dst)
    path = dst / "text_encoder" / "model.onnx"
    model = onnx.load(str(path))
    (node,) = [n for n in model.graph.node if "last_hidden_state" in n.output]
    assert node.op_type == "LayerNormalization"
    model.graph.initializer.append(numpy_helper.from_array(bias, "test.final_layer_norm.bias"))
    node.input[2] = "test.final_layer_norm.bias"
    onnx.save(model, str(path))
    return dst


@pytest.fixture(scope="module")
def models(request, tmp_path_factory):
    torch.set_num_threads(1)
    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            src = request.getfixturevalue(f"tiny_{kind}_diffusers")
            cls = diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline
            ref = cls.from_pretrained(src, torch_dtype=torch.float32)
            ref.set_progress_bar_config(disable=True)
            folder = request.getfixturevalue(f"tiny_{kind}_onnx")
            if kind != "sdxl":  # SDXL reads the penultimate layer, before the final layer norm
                norm = ref.text_encoder.text_model.final_layer_norm
                bias = np.random.default_rng(3).normal(0.0, 0.5, norm.bias.shape).astype(np.float32)
                norm.bias.data = torch.from_numpy(bias)
                folder = with_final_bias(folder, tmp_path_factory.mktemp(kind) / "model", bias)
            cache[kind] = (Pipeline.from_pretrained(folder, provider="cpu", num_threads=1), ref)
        return cache[kind]

    return get


def ours_embed(pipe, prompt: str, negative: str, steps: int = 1) -> dict:
    enc = pipe.prompt_encoder
    plan = enc.plan([prompt], [negative], True, True, SDXLOptions(), steps)
    ((start, feeds),) = enc.encode(plan, 1, SDXLOptions(), 64, 64)
    assert start == 0
    return feeds


def reference(ref, prompt: str, negative: str, k: int) -> dict:
    if not hasattr(ref, "text_encoder_2"):
        return {
            "pos": reference_embed(ref.text_encoder, ref.tokenizer, prompt, k)[0],
            "neg": reference_embed(ref.text_encoder, ref.tokenizer, negative, k)[0],
        }
    out = {}
    for key, text in (("pos", prompt), ("neg", negative)):
        h1, _ = reference_embed(ref.text_encoder, ref.tokenizer, text, k, penultimate=True)
        h2, pooled = reference_embed(ref.text_encoder_2, ref.tokenizer_2, text, k, penultimate=True)
        out[key], out[f"{key}_pooled"] = np.concatenate([h1, h2], -1), pooled
    return out


# --- chunking --------------------------------------------------------------------------------


def test_chunk_boundaries(models):
    tok = models("sd1")[0].tokenizer
    long = chunk_prompt(tok, LONG)
    assert len(long) == 3 and all(len(c.ids) == 77 for c in long)
    assert [c.ids[:1] for c in long] == [(tok.bos_token_id,)] * 3
    # BREAK closes a chunk; a trailing BREAK leaves no empty chunk behind.
    assert len(chunk_prompt(tok, BREAK)) == 2
    # Backtrack: the first chunk ends at the comma, the phrase after it starts the next chunk.
    first, second = chunk_prompt(tok, BACKTRACK)
    assert first.ids[71] == tok.comma_token_id and first.ids[72] == tok.eos_token_id
    assert second.ids[1:3] == tuple(tok.tokens(["a very"])[0])
    assert second.weights[3] == pytest.approx(1.1)
    # Without a comma in the last 20 tokens, the chunk is cut at 75 tokens.
    plain = chunk_prompt(tok, " ".join(["cat"] * 80))
    assert len(plain) == 2 and plain[0].ids[76] == tok.eos_token_id and plain[0].ids[75] != tok.eos_token_id


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_chunks_equal_reference_tokenization(models, kind):
    ours, ref = models(kind)
    for text in [*CASES.values(), NEGATIVE, "", "plain prompt"]:
        want = reference_chunks(ref.tokenizer, text)
        got = chunk_prompt(ours.tokenizer, text)
        assert [list(c.ids) for c in got] == [w[0] for w in want], text
        np.testing.assert_allclose([c.weights for c in got], [w[1] for w in want], rtol=1e-12, err_msg=text)


# --- embeddings ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("case", list(CASES))
def test_embeddings_equal_reference(models, kind, case):
    ours, ref = models(kind)
    feeds = ours_embed(ours, CASES[case], NEGATIVE)
    emb = feeds["encoder_hidden_states"]
    k = emb.shape[1] // 77
    assert k == max(len(reference_chunks(ref.tokenizer, CASES[case])), 1)
    want = reference(ref, CASES[case], NEGATIVE, k)
    # The negative prompt (one chunk) is padded with empty chunks to the prompt's count.
    np.testing.assert_allclose(emb[0], want["neg"], atol=EMB_TOL, rtol=0)
    np.testing.assert_allclose(emb[1], want["pos"], atol=EMB_TOL, rtol=0)
    if kind == "sdxl":
        np.testing.assert_allclose(feeds["text_embeds"][0], want["neg_pooled"], atol=EMB_TOL, rtol=0)
        np.testing.assert_allclose(feeds["text_embeds"][1], want["pos_pooled"], atol=EMB_TOL, rtol=0)
    # The weights matter: the same text without them encodes differently.
    plain = ours_embed(ours, re.sub(r"[()\[\]]|:[\d.]+", "", CASES[case]), NEGATIVE)
    assert np.abs(plain["encoder_hidden_states"][1] - emb[1]).max() > 1e-3


def test_unweighted_short_prompt_is_diffusers_encoding(models):
    ours, ref = models("sd1")
    emb = ours_embed(ours, "a photo of an astronaut", "")["encoder_hidden_states"]
    with torch.no_grad():
        want, _ = ref.encode_prompt("a photo of an astronaut", "cpu", 1, True, "")
    np.testing.assert_allclose(emb[1], want[0].numpy(), atol=EMB_TOL, rtol=0)


# --- whole images ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind,case", [("sd1", "long"), ("sd2", "weighted"), ("sdxl", "break")])
def test_images_equal_diffusers_given_embeddings(models, kind, case):
    ours, ref = models(kind)
    prompt, steps, size = CASES[case], 3, 64
    latents = np.random.default_rng(5).standard_normal((1, 4, 16, 16), dtype=np.float32)
    common = dict(num_inference_steps=steps, guidance_scale=6.0, height=size, width=size, output_type="np")
    got = ours(prompt, negative_prompt=NEGATIVE, sampler="euler", latents=latents, **common)
    k = len(chunk_prompt(ours.tokenizer, prompt))
    want = reference(ref, prompt, NEGATIVE, k)
    pipe = type(ref)(
        **{**ref.components, "scheduler": diffusers.EulerDiscreteScheduler.from_config(ref.scheduler.config)}
    )
    pipe.set_progress_bar_config(disable=True)
    embeds = dict(
        prompt_embeds=torch.from_numpy(want["pos"])[None],
        negative_prompt_embeds=torch.from_numpy(want["neg"])[None],
    )
    if kind == "sdxl":
        embeds.update(
            pooled_prompt_embeds=torch.from_numpy(want["pos_pooled"])[None],
            negative_pooled_prompt_embeds=torch.from_numpy(want["neg_pooled"])[None],
        )
    with torch.no_grad():
        image = pipe(latents=torch.from_numpy(latents), **embeds, **common).images
    diff = np.abs(got.images - image).max()
    assert diff <= PIXEL_TOL, f"max |ours - diffusers| = {diff * 255:.2f}/255"
    assert image.std() > 0.01
    # The PNG parameters keep the prompt as written, syntax and all.
    assert got.parameters[0].startswith(prompt + "\nNegative prompt: " + NEGATIVE + "\n")


# --- prompt editing --------------------------------------------------------------------------


def record_unet(pipe, monkeypatch) -> list[np.ndarray]:
    """The text conditioning the U-Net holds at each of its calls."""
    bound: dict = {}
    seen: list[np.ndarray] = []
    bind, run = pipe.unet.bind_constant, pipe.unet.run

    def bind_constant(name, value):
        bound[name] = np.array(value)
        bind(name, value)

    def counted(feeds, outputs=None):
        seen.append(bound["encoder_hidden_states"])
        return run(feeds, outputs)

    monkeypatch.setattr(pipe.unet, "bind_constant", bind_constant)
    monkeypatch.setattr(pipe.unet, "run", counted)
    return seen


# (prompt, steps, the plain prompt at each U-Net call): AUTOMATIC1111 counts calls from 0 and
# a text whose end step is s holds through call s.
EDITS = [
    ("a [cat:dog:2] photo", 5, ["a cat photo"] * 3 + ["a dog photo"] * 2),
    ("a [dog:1] photo", 4, ["a photo"] * 2 + ["a dog photo"] * 2),
    ("a [cat::2] photo", 4, ["a cat photo"] * 3 + ["a photo"]),
    ("a [cat:dog:0.5] photo", 6, ["a cat photo"] * 4 + ["a dog photo"] * 2),
    ("a [cat|dog] photo", 5, ["a cat photo", "a cat photo", "a dog photo", "a cat photo", "a dog photo"]),
]


@pytest.mark.parametrize("prompt,steps,expected", EDITS, ids=[e[0] for e in EDITS])
def test_prompt_editing_switches_at_its_step(models, monkeypatch, prompt, steps, expected):
    pipe = models("sd1")[0]
    common = dict(num_inference_steps=steps, guidance_scale=5.0, height=64, width=64, seed=1)
    seen = record_unet(pipe, monkeypatch)
    plain = pipe("a cat photo", negative_prompt="ugly", sampler="euler", output_type="latent", **common)
    plain_calls = len(seen)
    seen.clear()
    out = pipe(prompt, negative_prompt="ugly", sampler="euler", output_type="latent", **common)
    assert len(seen) == plain_calls == steps  # no extra U-Net call
    for call, text in enumerate(expected):
        want = ours_embed(pipe, text, "ugly")["encoder_hidden_states"]
        np.testing.assert_allclose(seen[call], want, atol=1e-5, rtol=0, err_msg=f"call {call}: {text!r}")
    assert out.parameters[0].startswith(prompt + "\n")
    assert not np.array_equal(out.latents, plain.latents)


def test_prompt_editing_in_negative_prompt_and_batch(models, monkeypatch):
    pipe = models("sd1")[0]
    seen = record_unet(pipe, monkeypatch)
    pipe(
        ["a [cat:dog:1] photo", "a house"],
        negative_prompt=["ugly", "[blurry|noisy]"],
        num_inference_steps=3,
        guidance_scale=5.0,
        sampler="euler",
        num_images_per_prompt=2,
        height=64,
        width=64,
        output_type="latent",
    )
    assert len(seen) == 3

    def row(text):
        return ours_embed(pipe, text, "")["encoder_hidden_states"][1]

    for call, (first, second_negative) in enumerate(
        [("a cat photo", "blurry"), ("a cat photo", "blurry"), ("a dog photo", "noisy")]
    ):
        rows = [row(t) for t in ("ugly", "ugly", second_negative, second_negative)]
        rows += [row(t) for t in (first, first, "a house", "a house")]
        np.testing.assert_allclose(seen[call], np.stack(rows), atol=1e-5, rtol=0, err_msg=f"call {call}")


# --- bad input -------------------------------------------------------------------------------


def no_model_runs(pipe, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model ran before the prompt was refused")

    for session in [*pipe.prompt_encoder.sessions, pipe.unet, pipe.vae_decoder]:
        monkeypatch.setattr(session, "run", refuse)


def test_too_many_chunks_refused_before_any_model_runs(models, monkeypatch):
    pipe = models("sd1")[0]
    no_model_runs(pipe, monkeypatch)
    nine = " BREAK ".join(["a cat"] * 9)
    with pytest.raises(ValueError, match=r"^prompt must be at most 8 chunks of 75 tokens.*got '9 chunks'"):
        pipe(nine, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"^negative_prompt must be at most 8 chunks"):
        pipe("a cat", negative_prompt=" ".join(["dog"] * 601), num_inference_steps=2)
    # A text reached only by prompt editing counts too.
    with pytest.raises(ValueError, match=r"^prompt must be at most 8 chunks"):
        pipe(f"a [cat:{nine}:1]", num_inference_steps=2)
    monkeypatch.setattr(pipe.prompt_encoder, "max_chunks", 2)
    with pytest.raises(ValueError, match=r"^prompt must be at most 2 chunks of 75 tokens"):
        pipe(LONG, num_inference_steps=2)


def test_static_sequence_axis_takes_one_chunk(tiny_sd1_onnx, tmp_path):
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    folder = shutil.copytree(tiny_sd1_onnx, tmp_path / "static")
    model = onnx.load(str(folder / "unet" / "model.onnx"))
    make_dim_param_fixed(model.graph, "sequence_length", 77)
    onnx.save(model, str(folder / "unet" / "model.onnx"))
    pipe = Pipeline.from_pretrained(folder, provider="cpu", num_threads=1)
    with pytest.raises(
        ValueError, match=r"^prompt must be at most 75 tokens without BREAK.*fixed text length"
    ):
        pipe("a cat BREAK a dog", num_inference_steps=1, height=64, width=64)
    out = pipe("a (cat:1.2)", num_inference_steps=1, height=64, width=64, output_type="latent")
    assert out.latents.shape == (1, 4, 16, 16)


def test_small_text_encoder_chunks_its_own_length():
    # The demo model's text encoder has 16 positions: chunks of 14 tokens, and the 8-chunk limit
    # counts 75-token chunks (600 tokens) so a long prompt fits it too.
    from sdlite.models import demo_path

    pipe = Pipeline.from_pretrained(demo_path(), provider="cpu", num_threads=1)
    prompt = ", ".join(["(red:1.2) circle", "blue square", "[green] triangle"] * 30)  # ~300 tokens
    chunks = chunk_prompt(pipe.tokenizer, prompt)
    assert len(chunks) > 8 and all(len(c.ids) == 16 for c in chunks)
    feeds = ours_embed(pipe, prompt, "")
    assert feeds["encoder_hidden_states"].shape[1] == 16 * len(chunks)
    with pytest.raises(ValueError, match=r"^prompt must be at most 42 chunks of 14 tokens"):
        pipe(" ".join(["red circle"] * 400), num_inference_steps=1)


def test_embedding_vectors_stay_in_one_chunk(clip_tokenizer_dir):
    from sdlite import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(clip_tokenizer_dir)
    ids = tok.add_embedding("zqxthree", 3)
    assert ids == [49408, 49409, 49410] and tok.knows("zqxthree")
    first, second = chunk_prompt(tok, " ".join(["cat"] * 74) + " (zqxthree:1.5) dog")
    assert first.ids[75] == tok.eos_token_id  # 74 cats, then the embedding would not fit
    assert second.ids[1:5] == (*ids, tok.tokens(["dog"])[0][0])
    assert second.weights[1:5] == (1.5, 1.5, 1.5, 1.0)


def test_sdxl_prompt_editing_switches_pooled_output_too(models, monkeypatch):
    pipe = models("sdxl")[0]
    bound: list[dict] = []
    bind = pipe.unet.bind_constant

    def record(name, value):
        bound.append({name: np.array(value)})
        bind(name, value)

    monkeypatch.setattr(pipe.unet, "bind_constant", record)
    pipe(
        "a [cat:dog:1] photo",
        negative_prompt="ugly",
        num_inference_steps=3,
        height=64,
        width=64,
        sampler="euler",
        output_type="latent",
    )
    pooled = [b["text_embeds"] for b in bound if "text_embeds" in b]
    hidden = [b["encoder_hidden_states"] for b in bound if "encoder_hidden_states" in b]
    assert len(pooled) == len(hidden) == 2  # bound before call 0, changed before call 2
    for got_pooled, got_hidden, text in zip(pooled, hidden, ["a cat photo", "a dog photo"], strict=True):
        want = ours_embed(pipe, text, "ugly")
        np.testing.assert_allclose(got_pooled, want["text_embeds"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got_hidden, want["encoder_hidden_states"], atol=1e-5, rtol=0)
