"""Proposal validation: what a reflection model wrote becomes a candidate template only if it passes.

GEPA 0.1.4 adopts whatever its extractor returns — a reply cut off mid-thought or with its `<think>`
block left in becomes a "template". p2o checks every proposal first, and counts each rejection by
reason (`phase.json` → `rejected`):

- `truncated` — the reply hit the reflection model's token limit, a ``` fence was left open, or a
  `<think>` block was never closed;
- `no_fences` — no ``` block: the meta-prompts ask for the template inside one, and without it the
  template cannot be told apart from commentary;
- `empty` — nothing inside the block;
- `too_long` — longer than `proposal_max_chars`;
- `answer_leak` — it contains the gold answer of a hard sample shown to the reflection model in that
  call (a template that carries an answer teaches nothing and would leak it into training);
- `unchanged` — identical to the template it was meant to improve;
- `reflection_error` — the reflection model call itself failed (counted by the caller).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

REJECTION_REASONS = (
    "truncated",
    "no_fences",
    "empty",
    "too_long",
    "answer_leak",
    "unchanged",
    "reflection_error",
)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = "```"


@dataclass(frozen=True)
class ProposalCheck:
    """The outcome of validating one reflection reply: `text` when accepted, else `reason`."""

    text: str | None
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def strip_think(text: str) -> tuple[str, bool]:
    """Remove `<think>...</think>` blocks. Returns (text, unclosed): `unclosed` when a `<think>` never
    ends. A lone `</think>` (the chat template opened the block) drops everything before it."""
    out = _THINK_BLOCK.sub("", text)
    lower = out.lower()
    if "</think>" in lower:
        out = out[lower.rindex("</think>") + len("</think>") :]
        lower = out.lower()
    if "<think>" in lower:
        return out[: lower.index("<think>")], True
    return out, False


def extract_fenced(text: str) -> tuple[str | None, str | None]:
    """The text between the first and the last ``` fence (GEPA's rule), minus a language tag.

    Returns (text, None) or (None, reason) with reason `no_fences` or `truncated` (an odd number of
    fences: one was opened and never closed).
    """
    count = text.count(_FENCE)
    if count == 0:
        return None, "no_fences"
    if count % 2 == 1:
        return None, "truncated"
    start = text.index(_FENCE) + len(_FENCE)
    end = text.rindex(_FENCE)
    content = text[start:end]
    tag = re.match(r"^[^\s`]*\n", content)  # ```text / ```markdown / bare ``` + newline
    if tag:
        content = content[tag.end() :]
    return content.strip(), None


def normalize_answer(answer: str) -> str:
    a = answer.strip()
    m = re.fullmatch(r"\\boxed\{(.*)\}", a, re.DOTALL)
    if m:
        a = m.group(1).strip()
    a = a.strip("$").strip()
    return a.rstrip(".").strip()


def contains_answer(text: str, answer: str) -> bool:
    """Whether `text` states `answer`.

    Answers of two or more characters (or with symbols) match as a standalone token: `582` is found
    in "the result is 582." but not in "15823". A single-letter/digit answer is everywhere in
    ordinary prose ("step 2"), so it counts only where it is stated as a result: `\\boxed{2}`,
    "answer is 2", "answer: 2", "= 2".
    """
    a = normalize_answer(answer)
    if not a:
        return False
    squeezed_text = re.sub(r"\s+", "", text)
    if len(a) >= 2 or not a.isalnum():
        token = re.compile(r"(?<![A-Za-z0-9])" + re.escape(a) + r"(?![A-Za-z0-9])")
        if token.search(text):
            return True
        squeezed = re.sub(r"\s+", "", a)
        # Whitespace-insensitive for structured answers (\frac{1}{2} vs \frac{1} {2}).
        return len(squeezed) >= 3 and not squeezed.isalnum() and squeezed in squeezed_text
    esc = re.escape(a)
    stated = re.compile(
        r"(\\boxed\{\s*" + esc + r"\s*\})"
        r"|((answer|result|output)\s*(is|:|=|should be)?\s*[:=]?\s*\$?" + esc + r"(?![A-Za-z0-9]))"
        r"|(=\s*\$?" + esc + r"(?![A-Za-z0-9.]))",
        re.IGNORECASE,
    )
    return bool(stated.search(text))


def validate_proposal(
    raw: str,
    *,
    current: str,
    max_chars: int,
    answers: Iterable[str] = (),
    finish_reason: str | None = None,
) -> ProposalCheck:
    """Validate one reflection reply; see the module docstring for the reasons."""
    if finish_reason == "length":
        return ProposalCheck(None, "truncated", "the reflection model hit its max_tokens")
    text, unclosed = strip_think(raw)
    if unclosed:
        return ProposalCheck(None, "truncated", "a <think> block was never closed")
    proposal, reason = extract_fenced(text)
    if proposal is None:
        return ProposalCheck(None, reason, "no complete ``` block in the reply")
    if not proposal.strip():
        return ProposalCheck(None, "empty")
    if len(proposal) > max_chars:
        return ProposalCheck(None, "too_long", f"{len(proposal)} > proposal_max_chars={max_chars}")
    for ans in answers:
        if contains_answer(proposal, ans):
            return ProposalCheck(None, "answer_leak", f"contains the gold answer {ans!r}")
    if proposal.strip() == current.strip():
        return ProposalCheck(None, "unchanged")
    return ProposalCheck(proposal)
