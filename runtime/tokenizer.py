"""CLIP tokenizer on the ``tokenizers`` library, id-for-id equal to transformers' (slow) CLIPTokenizer.

diffusers loads the slow ``CLIPTokenizer`` from a model's ``tokenizer/`` folder; without ftfy
installed (ftfy is not a transformers dependency) that tokenizer first runs BERT's
``BasicTokenizer``: drop control characters, map whitespace to spaces, put spaces around CJK
ideographs, NFC, lower-case.  transformers' own fast conversion (``CLIPConverter``) skips the
CJK and control-character steps and so disagrees with the slow tokenizer on such prompts; here
the normaliser is ``BertNormalizer`` + NFC instead, which reproduces the slow path, followed by
CLIP's word regex, byte-level mapping and BPE with the ``</w>`` end-of-word suffix.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

# CLIP's word pattern (transformers' ``self.pat`` without the special tokens, which are added
# tokens here and are split off before the normaliser runs, as the slow tokenizer does).
_WORD = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_DEFAULTS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "model_max_length": 77,
}


def _token_str(value: object) -> str | None:
    # tokenizer_config.json / special_tokens_map.json hold either "tok" or {"content": "tok", ...}.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _broken(path: Path, what: str) -> ValueError:
    return ValueError(f"tokenizer file {str(path)!r} {what}")


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; ValueError naming the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise _broken(path, f"cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise _broken(path, "is not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise _broken(path, f"is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise _broken(path, "must hold a JSON object")
    return data


def _read_config(directory: Path) -> dict:
    cfg = dict(_DEFAULTS)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            data = _read_json(path)
            for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                tok = _token_str(data.get(key))
                if tok is not None:
                    cfg[key] = tok
            if isinstance(data.get("model_max_length"), int) and data["model_max_length"] < 10**6:
                cfg["model_max_length"] = data["model_max_length"]
    return cfg


def _slow_normalizer() -> normalizers.Normalizer:
    # BasicTokenizer's order: drop control characters and map whitespace to " ", pad CJK
    # ideographs with spaces, NFC.  Lower-casing follows in Python (see ``CLIPTokenizer.__call__``).
    return normalizers.Sequence(
        [
            normalizers.BertNormalizer(
                clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
            ),
            normalizers.NFC(),
        ]
    )


def _read_vocab(vocab_file: Path, cfg: dict) -> dict[str, int]:
    vocab = _read_json(vocab_file)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()):
        raise _broken(vocab_file, "must map each token to an integer id")
    for name in ("bos_token", "eos_token"):
        if cfg[name] not in vocab:
            raise _broken(vocab_file, f"lacks the {name} {cfg[name]!r}")
    return vocab


def _read_merges(merges_file: Path) -> list[tuple[str, str]]:
    try:
        lines = merges_file.read_text(encoding="utf-8").split("\n")
    except OSError as err:
        raise _broken(merges_file, f"cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise _broken(merges_file, "is not UTF-8 text") from None
    merges = []
    for number, line in enumerate(lines[1:], 2):  # line 1 is the "#version" header
        if line and not line.startswith("#version"):
            pair = tuple(line.split())
            if len(pair) != 2:
                raise _broken(merges_file, f"line {number}: a merge is two tokens, got {line[:60]!r}")
            merges.append(pair)
    return merges


def _clip_bpe(vocab_file: Path, merges_file: Path, cfg: dict) -> Tokenizer:
    vocab = _read_vocab(vocab_file, cfg)
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=_read_merges(merges_file),
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=cfg["unk_token"],
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_WORD), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # The pad token is an added token too: transformers splits it out of the text wherever it
    # occurs, so with SD 2.x's pad "!" a "!" in a prompt becomes id 0, never "!</w>".
    bos, eos = cfg["bos_token"], cfg["eos_token"]
    specials = dict.fromkeys((bos, eos, cfg["pad_token"]))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])],
    )
    return tok


def _from_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - the Rust library raises a bare Exception for bad data
        raise _broken(path, f"is not a valid tokenizers file: {err}") from None


class CLIPTokenizer:
    """``CLIPTokenizer.from_pretrained(dir)(prompts)`` -> int64 ids ``[B, model_max_length]``."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        pad_token: str,
        model_max_length: int = 77,
        prenormalizer: normalizers.Normalizer | None = None,
        bos_token: str = _DEFAULTS["bos_token"],
        eos_token: str = _DEFAULTS["eos_token"],
    ) -> None:
        ids = {}
        for name, token in (("pad_token", pad_token), ("bos_token", bos_token), ("eos_token", eos_token)):
            ids[name] = tokenizer.token_to_id(token)
            if ids[name] is None:
                raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
        self.model_max_length = model_max_length
        self.pad_token, self.pad_token_id = pad_token, ids["pad_token"]
        self.bos_token_id, self.eos_token_id = ids["bos_token"], ids["eos_token"]
        self.comma_token_id = tokenizer.token_to_id(",</w>")  # None for a vocabulary without it
        # Unpadded, untruncated copy: prompt chunking (sdlite.prompt_encoding) needs every token.
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.no_padding()
        self._plain.no_truncation()
        # Textual inversion: an embedding's first token id -> all its ids (sdlite.embeddings).
        self.expansions: dict[int, tuple[int, ...]] = {}
        pad_id = ids["pad_token"]
        self._tok = tokenizer
        self._pre = prenormalizer
        self._tok.enable_truncation(model_max_length)
        self._tok.enable_padding(length=model_max_length, pad_id=pad_id, pad_token=pad_token)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CLIPTokenizer:
        """Load ``vocab.json`` + ``merges.txt`` (what diffusers reads), else a ``tokenizer.json``.

        A ``tokenizer.json`` must carry its own post-processor (start/end tokens); padding and
        truncation always come from ``tokenizer_config.json``/``special_tokens_map.json``.
        """
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer folder {str(d)!r} does not exist")
        cfg = _read_config(d)
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            tok, pre = _clip_bpe(d / "vocab.json", d / "merges.txt", cfg), _slow_normalizer()
        elif (d / "tokenizer.json").is_file():
            tok, pre = _from_file(d / "tokenizer.json"), None
        else:
            raise FileNotFoundError(
                f"tokenizer folder {str(d)!r} has neither vocab.json + merges.txt nor tokenizer.json"
            )
        return cls(tok, cfg["pad_token"], cfg["model_max_length"], pre, cfg["bos_token"], cfg["eos_token"])

    def _normalize(self, prompts: Sequence[str]) -> list[str]:
        if self._pre is None:
            return list(prompts)
        # Python's lower() after the clean-up, as the slow tokenizer does: it applies Unicode's
        # final-sigma rule (Σ -> ς at a word's end), where tokenizers' Lowercase maps Σ -> σ
        # everywhere; and "<|ENDOFTEXT|>" then matches the special token, as it does there.
        return [self._pre.normalize_str(p).lower() for p in prompts]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def knows(self, word: str) -> bool:
        """Whether ``word`` is already a token (as a whole word, or an added token)."""
        word = self._normalize([word])[0]
        return any(self._tok.token_to_id(t) is not None for t in (word, f"{word}</w>"))

    def add_embedding(self, name: str, vectors: int) -> list[int]:
        """Add ``name`` (and ``name_1`` .. as diffusers does) as tokens; return their new ids."""
        names = [self._normalize([name])[0]] + [f"{name}_{i}".lower() for i in range(1, vectors)]
        first = self.vocab_size
        for tok in (self._tok, self._plain):
            tok.add_tokens([AddedToken(n, normalized=False, special=False) for n in names])
        ids = [self._tok.token_to_id(n) for n in names]
        if ids != list(range(first, first + vectors)):
            raise ValueError(f"embedding name {name!r}: its tokens could not be added ({names})")
        self.expansions[ids[0]] = tuple(ids)
        return ids

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, without start/end tokens, padding or truncation."""
        return [self._plain.encode(t, add_special_tokens=False).ids for t in self._normalize(texts)]

    def __call__(self, prompts: str | Sequence[str]) -> np.ndarray:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a string or a list of strings")
        prompts = self._normalize(prompts)
        # encode() in a loop, not encode_batch(): a handful of prompts is faster without the
        # thread pool (0.03 ms vs 0.3-0.6 ms per call, measured), and this is time outside ONNX.
        encodings = [self._tok.encode(p) for p in prompts]
        for prompt, enc in zip(prompts, encodings, strict=True):
            if enc.overflowing:
                kept = self.model_max_length - 2
                warnings.warn(
                    f"prompt is longer than {kept} tokens and was truncated: {prompt[:60]!r}...",
                    UserWarning,
                    stacklevel=2,
                )
        return np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), -1)
