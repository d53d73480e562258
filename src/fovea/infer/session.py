"""A chat session that keeps the KV cache between turns: each turn prefills only what is new.

The session remembers the token ids the language model has seen (prompt and generated answer)
and the cache they produced. For the next turn the whole conversation is rendered and tokenized
again; the longest common prefix with what the cache holds is kept (the cache is cropped to it,
which also covers an answer whose text re-tokenizes differently), and only the rest is prefilled.
When the new part would have to start inside an image's tokens, the turn is prefilled whole; so
it is when the fuser conditions on the question (vMLLM) and the question changed, since the cached
image tokens were computed for the earlier one. Greedy answers equal `model.chat` on the same history.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..model.kv_cache import cache_kwargs, output_cache
from .engine import choose


class ChatSession:
    def __init__(self, model, images: list = (), template: str | None = "default"):
        self.model, self.images, self.template = model, list(images), template
        self.messages: list[dict] = []
        self.ids: list[int] = []
        self.cache = None
        self.question: str | None = None
        """The question the cached image tokens were computed for."""
        self.prefilled: list[int] = []
        """Tokens prefilled per turn (for tests and curiosity: the cache at work)."""

    def reset(self, images: list = ()) -> None:
        self.__init__(self.model, images, self.template)

    def ask(
        self,
        text: str,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Stream the answer to `text`. Checks (tag counts, images) and the prefill happen now, so
        a bad turn raises before anything is printed; the turn joins the history when the stream ends."""
        model = self.model
        turn = [*self.messages, {"role": "user", "content": text}]
        with torch.inference_mode():
            inputs = model.prepare_chat(turn, self.images, self.template)  # raises: history unchanged
            out = self._prefill(inputs["input_ids"][0].tolist(), inputs)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return self._stream(
            turn, out, set(model.stop_token_ids(self.template)), max_new_tokens, temperature, top_p, generator
        )

    @torch.inference_mode()
    def _stream(self, turn, out, stops, max_new_tokens, temperature, top_p, generator) -> Iterator[str]:
        model = self.model
        answer, sent = [], ""
        for _ in range(max_new_tokens):
            token = choose(out.logits[0, -1], temperature, top_p, generator)
            if token in stops:
                break
            answer.append(token)
            self.ids.append(token)
            text_so_far = model.tokenizer.decode(answer, skip_special_tokens=True)
            if not text_so_far.endswith("\ufffd"):
                yield text_so_far[len(sent) :]
                sent = text_so_far
            out = model.lm(
                input_ids=torch.tensor([[token]], device=model.device),
                use_cache=True,
                **cache_kwargs(self.cache),
            )
            self.cache = output_cache(out)
        final = model.tokenizer.decode(answer, skip_special_tokens=True)
        if final != sent:
            yield final[len(sent) :]
        self.messages = [*turn, {"role": "assistant", "content": final.strip()}]

    def _prefill(self, ids: list[int], inputs: dict):
        model = self.model
        keep = _common_prefix(self.ids, ids)
        image_id = model.config.image_token_id
        last_image = max((i for i, t in enumerate(ids) if t == image_id), default=-1)
        device = model.device
        question = inputs["questions"][0]
        stale = model.connector.fuser.reads_question and last_image >= 0 and question != self.question
        if self.cache is None or stale or keep <= last_image or keep == len(ids):
            embeds = model.embed_inputs(inputs)
            out = model.lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
            self.prefilled.append(len(ids))
        else:
            extra = self.cache.get_seq_length() - keep
            if extra > 0:
                self.cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
            new = torch.tensor([ids[keep:]], device=device)
            out = model.lm(input_ids=new, use_cache=True, logits_to_keep=1, **cache_kwargs(self.cache))
            self.prefilled.append(len(ids) - keep)
        self.cache, self.ids, self.question = output_cache(out), list(ids), question
        return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
