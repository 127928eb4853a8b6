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
    ) -> None:
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad_token {pad_token!r} is not in the tokenizer's vocabulary")
        self.model_max_length = model_max_length
        self.pad_token, self.pad_token_id = pad_token, pad_id
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
        return cls(tok, cfg["pad_token"], cfg["model_max_length"], pre)

    def __call__(self, prompts: str | Sequence[str]) -> np.ndarray:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a string or a list of strings")
        if self._pre is not None:
            # Python's lower() after the clean-up, as the slow tokenizer does: it applies Unicode's
            # final-sigma rule (Σ -> ς at a word's end), where tokenizers' Lowercase maps Σ -> σ
            # everywhere; and "<|ENDOFTEXT|>" then matches the special token, as it does there.
            prompts = [self._pre.normalize_str(p).lower() for p in prompts]
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
