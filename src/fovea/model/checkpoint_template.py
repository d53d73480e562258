"""A checkpoint's own Jinja chat template, rendered by transformers exactly as its processor would.

Hub checkpoints in transformers' layout ship their prompt format as Jinja: ``chat_template.jinja``
or ``chat_template.json`` beside the processor, ``chat_template`` in ``processor_config.json``, or
in ``tokenizer_config.json``. `read_chat_template` finds it; `JinjaTemplate` renders fovea
messages with it through the tokenizer's ``apply_chat_template`` (the same renderer and the same
special-token variables as ``processor.apply_chat_template``), so the prompt text, and then its
tokens, are the ones transformers builds for that checkpoint.

Messages become transformers' content parts: each ``<image>`` tag, with the one newline LLaVA
writes after it, is an ``{"type": "image"}`` part and the rest are text parts; the template
decides where image tokens go and what separates them from the text. A template written for
plain string content (most LM tokenizers' own) is detected once and given strings instead.

`recognise` names the fovea template that renders exactly like a Jinja template, when one does,
so such a checkpoint also gets fovea's training label masks.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .templates import IMAGE_TAG, TEMPLATES, Rendered, _check_messages

logger = logging.getLogger(__name__)

_PROBE = "fovea-probe-7f3a"
"""Text no template changes: it shows how a template handles content and what closes a turn."""


def read_chat_template(directory: Path) -> str | None:
    """The Jinja chat template a transformers checkpoint directory carries (processor's first)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise CheckpointError(f"{path}: not a valid JSON object ({err})") from None
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if isinstance(template, str) and template.strip():
            return template
    return None


class JinjaTemplate:
    """The checkpoint's template, with the interface of `Template` that prompts need."""

    name = "checkpoint"

    def __init__(self, source: str, tokenizer, image_token: str = IMAGE_TAG):
        self.source, self.tokenizer, self.image_token = source, tokenizer, image_token

    def render(
        self, messages: list[dict], add_generation_prompt: bool = False, bos_token: str | None = None
    ) -> Rendered:
        """Messages -> prompt text (turn offsets are not known for a Jinja template)."""
        messages = _check_messages(messages)
        conversation = [
            {"role": m["role"], "content": self._content(m["content"]) if self.takes_parts else m["content"]}
            for m in messages
        ]
        return Rendered(self._apply(conversation, add_generation_prompt), [])

    def prompt(self, user_text: str, bos_token: str | None = None) -> str:
        return self.render([{"role": "user", "content": user_text}], True).text

    def add_special_tokens(self, text: str) -> bool:
        """As ``processor.apply_chat_template`` tokenizes: the tokenizer's own special tokens are
        added unless the rendered text already starts with its BOS."""
        bos = self.tokenizer.bos_token
        return not (bos is not None and text.startswith(bos))

    @cached_property
    def takes_parts(self) -> bool:
        """Whether the template reads content parts (multimodal) rather than plain strings."""
        text = self._apply([{"role": "user", "content": [{"type": "text", "text": _PROBE}]}], True)
        return _PROBE in text and "'type'" not in text

    @cached_property
    def stop(self) -> tuple[str, ...]:
        """The special token that closes an assistant turn (``<|im_end|>``, ``</s>``, ...), found by
        rendering one; empty when the template closes turns with ordinary text."""
        return self._closing_marker()

    def _closing_marker(self) -> tuple[str, ...]:
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
        try:
            text = self.render(turns).text
        except Exception:  # a template may refuse a probe conversation; then EOS alone stops
            return ()
        rest = text[text.rfind(_PROBE) + len(_PROBE) :]
        ids = self.tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else []
        if ids and ids[0] in set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder):
            return (self.tokenizer.convert_ids_to_tokens(ids[0]),)
        return ()

    def _content(self, text: str) -> list[dict]:
        parts = []
        for i, piece in enumerate(text.split(self.image_token)):
            if i > 0:
                parts.append({"type": "image"})
                piece = piece.removeprefix("\n")  # LLaVA's "<image>\n" is one image part
            if piece:
                parts.append({"type": "text", "text": piece})
        return parts

    def _apply(self, conversation: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                conversation,
                chat_template=self.source,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        except Exception as err:  # jinja2 errors and the template's own raise_exception(...)
            raise ConfigError(f"the checkpoint's chat template failed: {err}") from None


def recognise(template: JinjaTemplate) -> str | None:
    """The fovea template whose prompt tokens equal `template`'s on probe conversations (one with
    a system turn, for the formats that have one)."""
    turns = [
        {"role": "user", "content": f"{_PROBE} 1"},
        {"role": "assistant", "content": f"{_PROBE} 2"},
        {"role": "user", "content": f"{IMAGE_TAG}\n{_PROBE} 3"},
    ]
    for name in TEMPLATES:
        ours = TEMPLATES.get(name)
        probes = [turns[-1:], turns]
        if ours.system is not None:
            probes.append([{"role": "system", "content": "be brief"}, *turns])
        try:
            if all(_same_tokens(ours, template, probe) for probe in probes):
                return name
        except ConfigError:  # the Jinja template refuses a probe: it is not this format
            continue
    return None


def _same_tokens(ours, template: JinjaTemplate, messages: list[dict]) -> bool:
    tokenizer = template.tokenizer
    mine = ours.render(messages, True, tokenizer.bos_token).text
    theirs = template.render(messages, True).text
    return _tokens(tokenizer, mine, False) == _tokens(tokenizer, theirs, template.add_special_tokens(theirs))


def _tokens(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
