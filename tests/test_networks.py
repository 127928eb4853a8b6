"""sdlite.networks: LoRA and embedding folders, and `<lora:...>` tags, on the tiny SD-1 model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from sdlite import Pipeline
from sdlite.networks import EmbeddingLibrary, LoraLibrary, embedding_shape, metadata
from sdlite.rules import RuleError
from sdlite.tensor_files import read_safetensors_header as read_header

TO_Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # 32 x 32 in the tiny U-Net


def lora_file(path, seed=0, meta=None):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{TO_Q}.lora_A.weight": rng.standard_normal((2, 32)).astype(np.float32),
        f"{TO_Q}.lora_B.weight": rng.standard_normal((32, 2)).astype(np.float32),
    }
    save_file(tensors, str(path), metadata=meta)
    return path


def embedding_file(path, n=2, width=32, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.random.default_rng(seed).normal(0.0, 0.5, (n, width)).astype(np.float32)
    save_file({"emb_params": vectors}, str(path))
    return path


@pytest.fixture(scope="module")
def pipe(tiny_sd1_onnx):
    return Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)


def image(pipe, prompt, loras=None):
    return pipe(
        prompt, num_inference_steps=2, height=32, width=32, seed=1, output_type="np", loras=loras
    ).images


# --- headers ---------------------------------------------------------------------------------


def test_header_and_metadata_are_read_without_the_tensors(tmp_path):
    path = lora_file(tmp_path / "a.safetensors", meta={"ss_output_name": "alpha", "note": "x"})
    header = read_header(path)
    assert header[f"{TO_Q}.lora_A.weight"]["shape"] == [2, 32]
    assert metadata(path) == {"ss_output_name": "alpha", "note": "x"}
    assert metadata(lora_file(tmp_path / "b.safetensors")) == {}


def test_a_file_that_is_not_safetensors_is_named_in_the_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ValueError, match=r"bad\.safetensors' is not a safetensors file"):
        read_header(bad)
    bad.write_bytes((4).to_bytes(8, "little") + b"[1] ")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_header(bad)


# --- the LoRA folder -------------------------------------------------------------------------


def test_lora_folder_is_indexed_recursively_first_sorted_path_wins(tmp_path):
    lora_file(tmp_path / "b" / "style.safetensors", seed=1)
    lora_file(tmp_path / "a" / "style.safetensors", seed=2)
    lora_file(tmp_path / "a" / "deep" / "detail.safetensors", meta={"ss_output_name": "detailer"})
    (tmp_path / "notes.txt").write_text("not a LoRA")
    lib = LoraLibrary(tmp_path)
    assert lib.files == {
        "detail": tmp_path / "a" / "deep" / "detail.safetensors",
        "style": tmp_path / "a" / "style.safetensors",
    }
    assert len(lib.notes) == 1 and "b/style.safetensors" in lib.notes[0] and "'style'" in lib.notes[0]
    entries = {e["name"]: e for e in lib.entries()}
    assert entries["detail"]["alias"] == "detailer"
    assert entries["detail"]["metadata"] == {"ss_output_name": "detailer"}
    assert entries["style"] == {
        "name": "style",
        "alias": "style",
        "path": str(tmp_path / "a" / "style.safetensors"),
        "metadata": {},
    }
    json.dumps(lib.entries())  # what the server sends
    lora_file(tmp_path / "new.safetensors")
    assert "new" not in lib.files
    lib.refresh()
    assert "new" in lib.files


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LoraLibrary(tmp_path / "nowhere")


def test_tags_are_removed_and_weights_add_up(tmp_path):
    lora_file(tmp_path / "style.safetensors")
    lora_file(tmp_path / "detail.safetensors", meta={"ss_output_name": "detailer"})
    lib = LoraLibrary(tmp_path)
    text, weights, files = lib.plan(
        "a cat <lora:style:0.5>, <lyco:detailer:0.25> <lora:style> <foo:bar> in the rain",
        "prompt",
        explicit={"style": 0.125},
    )
    assert text == "a cat ,    in the rain"
    assert weights == {"style": 1.625, "detail": 0.25}
    assert files == {"style": tmp_path / "style.safetensors", "detail": tmp_path / "detail.safetensors"}
    # Names already on the pipeline need no file; a path names its file by its stem.
    other = lora_file(tmp_path / "elsewhere" / "other.safetensors")
    text, weights, files = LoraLibrary().plan("<lora:mine:2>", "prompt", {str(other): 1}, loaded=["mine"])
    assert (text, weights) == ("", {"other": 1.0, "mine": 2.0})
    assert files == {"other": other}


@pytest.mark.parametrize(
    "prompt,explicit,field,message",
    [
        ("a <lora:nothere:1>", None, "prompt", r"prompt must be .*under .*\(1: style\), got 'nothere'"),
        ("a", {"nothere": 1}, "loras['nothere']", r"got 'nothere'"),
        ("<hypernet:h:1>", None, "negative_prompt", r"hypernetworks are not supported"),
        ("<lora:style:much>", None, "prompt", r"not a finite number"),
        ("a", {"style": float("nan")}, "loras['style']", r"a finite number, got nan"),
        ("a", {"/no/such.safetensors": 1}, "loras['/no/such.safetensors']", "existing .safetensors file"),
        ("a", ["style"], "loras", "a dict of LoRA name or path -> weight"),
    ],
    ids=["unknown-tag", "unknown-explicit", "hypernet", "bad-weight", "nan", "missing-path", "not-a-dict"],
)
def test_bad_names_and_weights_name_the_field(tmp_path, prompt, explicit, field, message):
    lora_file(tmp_path / "style.safetensors")
    with pytest.raises(ValueError, match=message) as err:
        LoraLibrary(tmp_path).plan(prompt, field if explicit is None else "prompt", explicit)
    if isinstance(err.value, RuleError):
        assert err.value.field == field


def test_without_a_folder_the_error_says_so():
    with pytest.raises(RuleError, match="no LoRA folder is set"):
        LoraLibrary().plan("<lora:style>", "prompt")


def test_one_name_for_two_files_is_refused(tmp_path):
    lora_file(tmp_path / "lib" / "style.safetensors")
    other = lora_file(tmp_path / "other" / "style.safetensors", seed=3)
    with pytest.raises(RuleError, match="'style' is not already that of"):
        LoraLibrary(tmp_path / "lib").plan("<lora:style>", "prompt", {str(other): 1})


def test_resolve_loads_on_first_use_and_matches_the_api(pipe, tmp_path):
    pipe.unload_lora_weights()
    lora_file(tmp_path / "lib" / "style.safetensors", seed=4)
    lib = LoraLibrary(tmp_path / "lib")
    text, loras = lib.resolve(pipe, "a cat <lora:style:0.7>", "prompt")
    assert (text, loras, pipe.lora_names) == ("a cat ", {"style": 0.7}, ["style"])
    tagged = image(pipe, text, loras)
    assert lib.resolve(pipe, "a cat <lora:style:0.7>", "prompt") == ("a cat ", {"style": 0.7})
    assert pipe.lora_names == ["style"]  # not loaded twice

    pipe.unload_lora_weights()
    pipe.load_lora_weights(tmp_path / "lib" / "style.safetensors", adapter_name="style")
    assert np.array_equal(image(pipe, "a cat ", {"style": 0.7}), tagged)
    assert not np.array_equal(image(pipe, "a cat ", {"style": 0.2}), tagged)
    pipe.unload_lora_weights()


def test_a_file_the_model_refuses_loads_nothing(pipe, tmp_path):
    pipe.unload_lora_weights()
    path = tmp_path / "wide.safetensors"
    save_file(
        {
            f"{TO_Q}.lora_A.weight": np.ones((2, 64), np.float32),
            f"{TO_Q}.lora_B.weight": np.ones((64, 2), np.float32),
        },
        str(path),
    )
    lib = LoraLibrary(tmp_path)
    with pytest.raises(ValueError, match="wide.safetensors"):
        lib.resolve(pipe, "<lora:wide>", "prompt")
    assert pipe.lora_names == [] and lib.loaded == {}


# --- the embeddings folder -------------------------------------------------------------------


def test_embedding_shape_as_a1111_reports_it(tmp_path):
    assert embedding_shape(embedding_file(tmp_path / "a.safetensors", n=3, width=32)) == (32, 3, [32])
    xl = tmp_path / "xl.safetensors"
    save_file({"clip_l": np.zeros((2, 768), np.float32), "clip_g": np.zeros((2, 1280), np.float32)}, str(xl))
    assert embedding_shape(xl) == (2048, 2, [768, 1280])


def test_embedding_folder_loads_what_fits_and_skips_the_rest(tmp_path, tiny_sd1_onnx):
    pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)
    embedding_file(tmp_path / "zqstyle.safetensors", n=2)
    embedding_file(tmp_path / "sub" / "zqwide.safetensors", n=1, width=768)
    (tmp_path / "zqbroken.safetensors").write_bytes(b"garbage!")
    lib = EmbeddingLibrary(tmp_path)
    assert lib.load_all(pipe) == ["zqstyle"]
    entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
    assert lib.entries() == {
        "loaded": {"zqstyle": {**entry, "shape": 32, "vectors": 2}},
        "skipped": {"zqwide": {**entry, "shape": 768, "vectors": 1}},
    }
    assert list(lib.errors) == ["zqbroken"] and "not a safetensors file" in lib.errors["zqbroken"]
    assert len(pipe.tokenizer.tokens(["a zqstyle"])[0]) == 2  # "a" + the embedding's first token

    assert lib.load_all(pipe) == []  # nothing new
    embedding_file(tmp_path / "zqnew.safetensors", n=1, seed=1)
    lib.refresh()
    assert lib.load_all(pipe) == ["zqnew"]
    assert set(lib.entries()["loaded"]) == {"zqstyle", "zqnew"}


def test_written_parameters_keep_the_tags():
    from sdlite.networks import written_parameters

    sent = "a cat \nNegative prompt: ugly \nSteps: 2, Seed: 1"
    got = written_parameters(sent, ("a cat ", "ugly "), ("a cat <lora:x:1>", "ugly <lora:y>"))
    assert got == "a cat <lora:x:1>\nNegative prompt: ugly <lora:y>\nSteps: 2, Seed: 1"
    # A negative prompt that was only tags: the pipeline wrote no line for it.
    got = written_parameters("a\nSteps: 2", ("a", ""), ("a", "<lora:y>"))
    assert got == "a\nNegative prompt: <lora:y>\nSteps: 2"
    assert written_parameters("other\nSteps: 2", ("a", None), ("a <lora:x>", None)) == "other\nSteps: 2"
