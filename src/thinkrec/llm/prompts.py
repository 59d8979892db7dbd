"""Prompts built from a dataset's item text: user histories, item descriptions and their token ids.

Text builders are pure functions (unit-tested without a tokenizer). :class:`PromptBuilder` renders them
with the model's chat template: a user turn, optionally preceded by a fixed system turn, then the
generation prompt. Sequences are assembled from token ids (prompt ids + reasoning ids + marker ids) rather
than re-rendered with ``continue_final_message``; for ChatML templates both give the same text, and the
ids of sampled reasoning stay exactly the ids the policy produced.
"""

from __future__ import annotations

from typing import Any, Protocol

INSTRUCTION = (
    "Analyse my preferences in depth from the history below, then recommend the next {singular} I might "
    "watch, written inside {open} and {close}, e.g. {open}a {singular}{close}."
)
HISTORY_HEADER = "Below is my {plural} history, oldest first:"
ITEM_INSTRUCTION = "Summarise the key attributes of the following {singular} inside {open} and {close}."


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer that prompts need."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def format_time_ago(seconds: float) -> str:
    """A time delta as r2ec.md §1.7 writes it: ``12d 3.5h ago``, ``3h 12.5min ago``, ``4.0min ago``."""
    seconds = max(0.0, float(seconds))
    days = int(seconds // 86400)
    rest = seconds - days * 86400
    if days > 0:
        return f"{days}d {rest / 3600:.1f}h ago"
    hours = int(rest // 3600)
    if hours > 0:
        return f"{hours}h {(rest - hours * 3600) / 60:.1f}min ago"
    return f"{rest / 60:.1f}min ago"


def clean(text: str) -> str:
    """One line: whitespace runs collapsed, brackets that would confuse the history format kept."""
    return " ".join(str(text).split())


def cut_words(text: str, n: int) -> str:
    words = clean(text).split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def format_date(timestamp: int) -> str:
    """A unix time as ``YYYY-MM-DD`` (UTC)."""
    import datetime

    return datetime.datetime.fromtimestamp(int(timestamp), tz=datetime.UTC).strftime("%Y-%m-%d")


def format_rating(rating: float) -> str:
    """``rated 4/5`` (``rated 3.5/5`` for half stars)."""
    return f"rated {rating:g}/5"


def history_line(title: str, when: str | None, details: list[str]) -> str:
    """``<when>: [title] (detail; detail)``; ``- [title]`` without a time, no brackets without details."""
    head = f"{when}: " if when else "- "
    tail = f" ({'; '.join(d for d in details if d)})" if any(details) else ""
    return f"{head}[{clean(title)}]{tail}"


def history_text(titles: list[str], times: list[int] | None, now: int | None) -> str:
    """One line per history item, oldest first: ``<time ago>: [title]`` (``- [title]`` without times)."""
    lines = []
    for i, title in enumerate(titles):
        when = format_time_ago(now - times[i]) if times is not None and now is not None else None
        lines.append(history_line(title, when, []))
    return "\n".join(lines)


def user_prompt_text(history: str, singular: str, plural: str, marker: str) -> str:
    close = marker.replace("<", "</", 1)
    return (
        INSTRUCTION.format(singular=singular, open=marker, close=close)
        + "\n\n"
        + HISTORY_HEADER.format(plural=plural)
        + "\n"
        + history
    )


def item_text(fields: dict[str, str], field_words: int) -> str:
    """``Title: ...`` then every other non-empty field as ``Name: value`` (cut to ``field_words`` words)."""
    lines = []
    for name, value in fields.items():
        if not value or not clean(value):
            continue
        label = name.replace("_", " ").capitalize()
        lines.append(f"{label}: {clean(value) if name == 'title' else cut_words(value, field_words)}")
    return "\n".join(lines)


def item_instruction(singular: str, marker: str) -> str:
    """The item prompt's instruction line and the blank line after it."""
    close = marker.replace("<", "</", 1)
    return ITEM_INSTRUCTION.format(singular=singular, open=marker, close=close) + "\n\n"


def item_prompt_text(text: str, singular: str, marker: str) -> str:
    return item_instruction(singular, marker) + text


class PromptBuilder:
    """Token ids of user prompts (ending with the generation prompt) and of item sequences."""

    def __init__(
        self,
        tokenizer: ChatTokenizer,
        *,
        system_prompt: str | None,
        marker: str = "<answer>",
        max_prompt_tokens: int = 1024,
        max_item_tokens: int = 128,
    ) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.marker = marker
        self.marker_ids: list[int] = list(tokenizer.encode(marker, add_special_tokens=False))
        self.max_prompt_tokens = max_prompt_tokens
        self.max_item_tokens = max_item_tokens

    def chat_ids(self, user_text: str) -> list[int]:
        """The rendered conversation [system], user, then the assistant generation prompt."""
        messages = [{"role": "user", "content": user_text}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(str(rendered), add_special_tokens=False))

    def generation_prompt_ids(self) -> list[int]:
        """The ids the template adds for ``add_generation_prompt`` (e.g. ``<|im_start|>assistant\\n``)."""
        messages = [{"role": "user", "content": "x"}]
        with_prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        without = self.tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
        suffix = str(with_prompt)[len(str(without)) :]
        return list(self.tokenizer.encode(suffix, add_special_tokens=False))

    def user_ids(self, text: str) -> list[int]:
        """A user prompt; an over-long one keeps its head (instruction) and tail (most recent history)."""
        ids = self.chat_ids(text)
        if len(ids) > self.max_prompt_tokens:
            head = self.max_prompt_tokens // 4
            ids = ids[:head] + ids[len(ids) - (self.max_prompt_tokens - head) :]
        return ids

    def item_ids(self, text: str, head: str = "") -> list[int]:
        """An item sequence: the chat with ``head`` (the instruction, never cut) then the item ``text`` cut
        to ``max_item_tokens`` tokens, the assistant turn pre-filled with the marker. (Cutting the whole
        prompt instead would let a long instruction crowd out the item itself.)"""
        body = self.tokenizer.encode(text, add_special_tokens=False)
        if len(body) > self.max_item_tokens:
            text = str(getattr(self.tokenizer, "decode")(body[: self.max_item_tokens]))  # noqa: B009
        return self.chat_ids(head + text) + self.marker_ids

    def with_marker(self, prompt: list[int]) -> list[int]:
        """The no-reasoning user sequence: prompt, then the marker right away."""
        return prompt + self.marker_ids
