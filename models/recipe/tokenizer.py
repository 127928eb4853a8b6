"""The demo model's word-level tokenizer, built with the ``tokenizers`` library.

The layout copies what SD 1.x's CLIP tokenizer produces, so that code written for real models
needs no special case: ``<|startoftext|> words... <|endoftext|>``, padded with
``<|endoftext|>`` to ``model_max_length``, end-of-text being the highest id (CLIPTextModel
pools at the first end-of-text token).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"


def build_tokenizer(words: list[str], max_length: int) -> PreTrainedTokenizerFast:
    """A fast tokenizer over ``words`` that pads and truncates to ``max_length`` ids."""
    vocab = {w: i for i, w in enumerate(words)}
    for special in (UNK, BOS, EOS):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Captions always say "a"; "an orange ..." is what people type, so it reads as "a".
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\ban\b"), "a")]
    )
    # Whitespace splits "background," into "background" and ",".
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    # Stored in tokenizer.json so that a bare ``tokenizers.Tokenizer.from_file`` already gives
    # the fixed-length ids the text encoder was trained on.
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=vocab[EOS], pad_token=EOS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))
