"""Our tokenizers-based CLIP tokenizer against transformers' slow CLIPTokenizer, id for id."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
from sdlite import CLIPTokenizer

EDGE_CASES = [
    "",
    " ",
    "\t\n\r  ",
    "a photo of",
    "A PHOTO OF an Astronaut riding a HORSE on Mars",
    "  leading and trailing   whitespace  ",
    "tabs\tnew\nlines\r\ncarriage\u00a0nbsp\u2003em-space\u3000ideographic-space",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "control\x00\x01\x07\x1b chars \ufffd replacement",
    "line\u2028separator\u2029paragraph\x85nel\x0bvt\x0cff",
    "it's a dog's life, they're here; we've 'quoted' I'm you'll he'd",
    "IT'S LOUD, THEY'RE",
    "café naïve résumé Ærøskøbing straße",
    "cafe\u0301 decomposed e\u0301 and composed é",
    "Ωμέγα ΣΊΣΥΦΟΣ σίσυφος",
    "Привет, мир! Москва",
    "日本語のテキスト 東京タワー",
    "中文提示词：一只猫坐在桌子上",
    "한국어 프롬프트 고양이",
    "mixed中文and English字符",
    "emoji 🐱🐶 🚀✨ 👩‍👩‍👧‍👦 🏳️‍🌈 flag 🇯🇵",
    "👍🏽 skin tone and ❤️ variation selector",
    "numbers 1234567890 3.14159 1e10 ½ ² ٣ ४",
    "punctuation!!! ??? ... --- ___ *** ### @@@ $$$ %%% ^^^ &&& (((parens))) [[[brackets]]] {{{b}}}",
    "(masterpiece:1.2), best quality, [lowres], {detailed}",
    "<|startoftext|> literal special tokens <|endoftext|> inside",
    "<|ENDOFTEXT|> upper-case special",
    "url https://example.com/a_b-c?d=e&f=g#h and mail a.b@c.de",
    "a" * 300,
    "word " * 100,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "math ∑∫∂√∞≈≠≤≥ arrows ←→↑↓ symbols ©®™ § ¶ † ‡",
    "fullwidth ＡＢＣ ａｂｃ １２３ ！？",
    "ligatures ﬁ ﬂ ﬀ and İstanbul ǅ ǈ",
    "hebrew עברית arabic العربية thai ภาษาไทย hindi हिन्दी",
    "\U0001f600" * 40,
    "x\u0300\u0301\u0302\u0303 stacked combining marks",
    "tokenizer's edge-case: 'ends with quote'",
    "🙂🙃 " * 60,
    "日" * 100,
    "ΟΔΟΣ, ΟΔΟΣ. Σ ΣΑ ΑΣ\u200bΒ ΑΣ\x07Β ΑΣ'Β ΑΣ日",
]

WORDS = (
    "a photo of an astronaut riding horse on mars cat dog portrait painting by greg rutkowski "
    "trending artstation 4k 8k hdr ultra detailed cinematic lighting octane render unreal engine "
    "sunset forest castle dragon cyberpunk city neon rain watercolor sketch oil canvas highly "
    "intricate sharp focus masterpiece best quality lowres blurry ugly deformed"
).split()
ODD = [
    "é",
    "ß",
    "ñ",
    "ø",
    "日本",
    "猫",
    "の",
    "한",
    "🐱",
    "🚀",
    "✨",
    "👩‍💻",
    "—",
    "…",
    "«»",
    "’",
    "“”",
    "\u00a0",
    "\t",
    "\n",
    "  ",
    "(",
    ")",
    ":1.3",
    "[",
    "]",
    ",",
    ".",
    "!",
    "'s",
    "'ll",
    "123",
    "٣",
    "Ⅻ",
    "\u200b",
    "\x07",
    "İ",
    "Σ",
    "ǅ",
]


def random_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40 if rng.random() < 0.8 else 120)):
            r = rng.random()
            piece = rng.choice(WORDS) if r < 0.6 else rng.choice(ODD)
            if rng.random() < 0.15:
                piece = piece.upper()
            parts.append(piece)
            parts.append(rng.choice([" ", " ", " ", "", ", ", "  ", "\t"]))
        out.append("".join(parts))
    return out


PROMPTS = EDGE_CASES + random_prompts(220)


def _reference(clip_tokenizer_dir, pad):
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    return HFCLIPTokenizer(
        str(clip_tokenizer_dir / "vocab.json"),
        str(clip_tokenizer_dir / "merges.txt"),
        pad_token=pad,
        model_max_length=77,
    )


@pytest.mark.parametrize("kind,pad", [("sd1", "<|endoftext|>"), ("sd2", "!")])
def test_ids_equal_transformers_slow_tokenizer(tmp_path, clip_tokenizer_dir, kind, pad):
    ref = _reference(clip_tokenizer_dir, pad)
    ref.save_pretrained(tmp_path)  # the folder diffusers writes: vocab, merges, configs
    ours = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(PROMPTS) >= 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours(PROMPTS)
    want = ref(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    assert got.dtype == np.int64 and got.shape == (len(PROMPTS), 77)
    mismatches = [p for p, g, w in zip(PROMPTS, got, want, strict=True) if not np.array_equal(g, w)]
    assert not mismatches, f"{len(mismatches)} prompts differ, e.g. {mismatches[:3]!r}"
    assert ours.pad_token_id == ref.pad_token_id


def test_known_ids_and_padding(tmp_path, clip_tokenizer_dir):
    _reference(clip_tokenizer_dir, "!").save_pretrained(tmp_path)
    ids = CLIPTokenizer.from_pretrained(tmp_path)("a photo of")
    assert ids[0, :5].tolist() == [49406, 320, 1125, 539, 49407]
    assert (ids[0, 5:] == 0).all()  # "!" is id 0


def test_long_prompt_warns_and_truncates(tmp_path, clip_tokenizer_dir):
    _reference(clip_tokenizer_dir, "<|endoftext|>").save_pretrained(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="truncated"):
        ids = tok("cat " * 76)
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and ids[0, -1] == 49407
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok("cat " * 75)  # exactly 75 tokens fit: no warning


def test_tokenizer_json_folder(tmp_path):
    # A word-level tokenizer.json with its own post-processor, as the demo model ships one.
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "[UNK]": 2, "a": 3, "red": 4, "circle": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 8, "pad_token": "<|endoftext|>"})
    )
    ids = CLIPTokenizer.from_pretrained(tmp_path)(["a red circle", "a blue circle"])
    assert ids.tolist() == [[0, 3, 4, 5, 1, 1, 1, 1], [0, 3, 2, 5, 1, 1, 1, 1]]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPTokenizer.from_pretrained(tmp_path / "nope")


def test_tokens_without_specials_padding_or_truncation(tmp_path, clip_tokenizer_dir):
    from transformers import CLIPTokenizer as Slow

    ours = CLIPTokenizer.from_pretrained(clip_tokenizer_dir)
    slow = Slow(str(clip_tokenizer_dir / "vocab.json"), str(clip_tokenizer_dir / "merges.txt"))
    texts = ["a photo of a cat", "", "Σίσυφος, 日本 (red:1.2)", " ".join(["word"] * 200)]
    want = slow(texts, add_special_tokens=False, truncation=False)["input_ids"]
    assert ours.tokens(texts) == want
    assert len(ours.tokens(texts)[3]) == 200
    assert (ours.bos_token_id, ours.eos_token_id) == (slow.bos_token_id, slow.eos_token_id)
    assert ours.comma_token_id == slow.get_vocab()[",</w>"]
