"""Token positions every part of the toolkit agrees on: subject spans and answer tokens."""

from __future__ import annotations

import unicodedata

from intattn_tl.errors import IntattnError


class TokenError(IntattnError, ValueError):
    """A subject or answer cannot be located in the tokenized prompt."""


def subject_span(tokenizer, prompt: str, subject: str, start: int = 0) -> tuple[int, int]:
    """Token indices [start, end) covering the first occurrence of `subject` in `prompt[start:]`.

    Uses the tokenizer's character offsets, so it works whatever the tokenizer does with spaces.
    `start` skips a context prefix that might itself mention the subject.
    """
    char_start = prompt.find(subject, start)
    if not subject or char_start < 0:
        nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
        if subject and nfc(subject) in nfc(prompt):
            raise TokenError(f"subject {subject!r} occurs in prompt {prompt!r} only in another Unicode form "
                             "(composed vs decomposed accents): pass both in NFC (unicodedata.normalize('NFC', ...))")
        raise TokenError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    char_end = char_start + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < char_end and b > char_start]
    if not hits:
        raise TokenError(f"subject {subject!r} covers no token of prompt {prompt!r}")
    return hits[0], hits[-1] + 1


def last_subject_index(tokenizer, prompt: str, subject: str) -> int:
    return subject_span(tokenizer, prompt, subject)[1] - 1


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def answer_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    """Token ids of `answer` as the continuation of `prompt` (joined with one space, as EasyEdit does).

    Tokenizes prompt + " " + answer and keeps the tokens after the prompt's own; falls back to
    tokenizing " " + answer alone where the prompt's last token merges with the answer.
    """
    if not answer.strip():
        raise TokenError(f"empty answer for prompt {prompt!r}")
    head = prompt_ids(tokenizer, prompt)
    full = prompt_ids(tokenizer, f"{prompt} {answer.strip()}")
    if full[: len(head)] == head and len(full) > len(head):
        return full[len(head):]
    return tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
