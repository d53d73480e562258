"""Chat templates: one definition per format, used by inference prompts *and* training labels.

``render(messages)`` returns the prompt text and, for every turn, where its content and its
closing marker sit in that text. Inference feeds the text; training (a later issue) supervises
the assistant spans. One definition for both is the cure for the commonest silent failure of
LLaVA-style training: a prompt format at inference that differs from the one trained on.

Formats follow LLaVA-NeXT ``llava/conversation.py`` (behaviour, not code):

* ``plain``: stage-1 alignment; a user turn is reduced to its image tags, each answer is followed
  by ``\\n`` — LLaVA's ``<image>`` + caption + ``\\n``;
* ``qwen_1_5``: ChatML, always with a system turn (default "You are a helpful assistant.");
* ``vicuna_v1``: ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``;
* ``llama3``: Llama-3 header tokens with LLaVA's vision-assistant system prompt.

Templates own every special token of the prompt; tokenize their output with
``add_special_tokens=False`` (``Template.bos`` says whether the tokenizer's BOS goes first).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import Registry

ROLES = ("system", "user", "assistant")
IMAGE_TAG = "<image>"
CHECKPOINT_TEMPLATE = "checkpoint"
"""The name that selects a checkpoint's own Jinja chat template (see ``checkpoint_template``)."""


@dataclass(frozen=True)
class Turn:
    role: str
    start: int
    """Offset of the turn's content in the rendered text."""
    end: int
    """End of the content."""
    close: int
    """End of the turn's closing marker (e.g. ``<|im_end|>``); the answer plus its stop marker is
    ``text[start:close]``."""


@dataclass(frozen=True)
class Rendered:
    text: str
    turns: list[Turn]


@dataclass(frozen=True)
class Template:
    name: str
    system: str | None
    """Default system prompt (None: the format has none)."""
    prefix: dict
    """role -> text before the content."""
    suffix: dict
    """role -> closing marker after the content."""
    generation_prompt: str
    """Text that opens an assistant turn for the model to complete."""
    stop: tuple[str, ...]
    """Strings that end an assistant turn (stop tokens for generation)."""
    bos: bool = False
    """Prepend the tokenizer's BOS token."""
    strip: bool = False
    """Strip whitespace around each content (Llama-3's template does)."""
    always_system: bool = True
    user_images_only: bool = False
    """Reduce user turns to their image tags (LLaVA's plain pretraining format)."""

    def render(
        self, messages: list[dict], add_generation_prompt: bool = False, bos_token: str | None = None
    ) -> Rendered:
        """Messages ``[{"role": ..., "content": str}, ...]`` -> text and turn offsets."""
        messages = _check_messages(messages)
        if self.system is not None and self.always_system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}, *messages]
        text = bos_token if (self.bos and bos_token) else ""
        turns = []
        for msg in messages:
            if msg["role"] == "system" and self.system is None:
                raise ConfigError(f"template {self.name!r} has no system turn")
            content = msg["content"].strip() if self.strip else msg["content"]
            if self.user_images_only and msg["role"] == "user":
                content = IMAGE_TAG * content.count(IMAGE_TAG)
            text += self.prefix[msg["role"]]
            start = len(text)
            text += content
            end = len(text)
            text += self.suffix[msg["role"]]
            turns.append(Turn(msg["role"], start, end, len(text)))
        if add_generation_prompt:
            text += self.generation_prompt
        return Rendered(text, turns)

    def prompt(self, user_text: str, bos_token: str | None = None) -> str:
        """One user turn, ready for the assistant's answer."""
        return self.render([{"role": "user", "content": user_text}], True, bos_token).text

    def add_special_tokens(self, text: str) -> bool:
        """Whether the tokenizer adds its special tokens to the rendered text: never, the
        template writes every one itself."""
        return False


def _check_messages(messages: list[dict]) -> list[dict]:
    if not messages:
        raise ConfigError("a conversation needs at least one message")
    out = []
    for i, msg in enumerate(messages):
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise ConfigError(f"message {i}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ConfigError(f"message {i}: content must be text, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


TEMPLATES: Registry[Template] = Registry("template")

TEMPLATES.add(
    "plain",
    Template(
        name="plain",
        system=None,
        prefix={"user": "", "assistant": ""},
        suffix={"user": "", "assistant": "\n"},
        generation_prompt="",
        stop=("\n",),
        user_images_only=True,
    ),
    "stage-1 alignment: '<image>' + caption + '\\n'",
)
TEMPLATES.add(
    "qwen_1_5",
    Template(
        name="qwen_1_5",
        system="You are a helpful assistant.",
        prefix={r: f"<|im_start|>{r}\n" for r in ROLES},
        suffix={r: "<|im_end|>\n" for r in ROLES},
        generation_prompt="<|im_start|>assistant\n",
        stop=("<|im_end|>",),
    ),
    "ChatML (Qwen 1.5 / 2 / 2.5), LLaVA-NeXT qwen_1_5",
)
TEMPLATES.add(
    "vicuna_v1",
    Template(
        name="vicuna_v1",
        system=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        prefix={"system": "", "user": "USER: ", "assistant": "ASSISTANT: "},
        suffix={"system": " ", "user": " ", "assistant": "</s>"},
        generation_prompt="ASSISTANT:",
        stop=("</s>",),
        bos=True,
    ),
    "Vicuna v1 (LLaVA-1.5 / LLaVA-NeXT vicuna_v1)",
)
TEMPLATES.add(
    "llama3",
    Template(
        name="llama3",
        system=(
            "You are a helpful language and vision assistant. You are able to understand the visual content "
            "that the user provides, and assist the user with a variety of tasks using natural language."
        ),
        prefix={r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ROLES},
        suffix={r: "<|eot_id|>" for r in ROLES},
        generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
        stop=("<|eot_id|>",),
        bos=True,
        strip=True,
    ),
    "Llama 3 instruct headers (LLaVA-NeXT llava_llama_3)",
)
