"""A chat session that keeps the KV cache between turns: each turn prefills only what is new.

The session remembers the token ids the language model has seen (prompt and answer) and the
one-row `RunningBatch` that holds their cache. For the next turn the whole conversation is rendered
and tokenized again; the longest common prefix with what the cache holds is kept (the cache is
cropped to it, which also covers an answer whose text re-tokenizes differently), and only the rest
is fed. When the new part would have to start inside an image's tokens, the turn is prefilled
whole; so it is when the fuser conditions on the question (vMLLM) and the question changed, since
the cached image tokens were computed for the earlier one. Answers are decoded by fovea's decoder
(`model.decoding`): the first turn equals `model.chat` and the server for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..model.running_batch import RunningBatch, sample_all


class ChatSession:
    def __init__(self, model, images: list = (), template: str | None = "default", videos: list = ()):
        """`videos` (files, bytes or lists of frames) are decoded once, here, for every turn."""
        from ..model.visuals import video_frames

        self.model, self.images, self.template = model, list(images), template
        self.videos = [video_frames(video, model.config.video) for video in videos]
        self.messages: list[dict] = []
        self.ids: list[int] = []
        self.batch: RunningBatch | None = None
        self.question: str | None = None
        """The question the cached image tokens were computed for."""
        self.prefilled: list[int] = []
        """Tokens prefilled per turn (for tests and curiosity: the cache at work)."""

    def reset(self, images: list = (), videos: list = ()) -> None:
        self.__init__(self.model, images, self.template, videos)

    def ask(
        self,
        text: str,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        top_k: int = 0,
    ) -> Iterator[str]:
        """Stream the answer to `text`. Checks (tag counts, images) and the prefill happen now, so
        a bad turn raises before anything is printed; the turn joins the history when the stream ends."""
        model = self.model
        turn = [*self.messages, {"role": "user", "content": text}]
        sampling = model.sampling(max_new_tokens, temperature > 0, temperature, top_p, top_k, seed)
        pieces: list[str] = []
        with torch.inference_mode():
            inputs = model.prepare_chat(turn, self.images, self.template, self.videos)  # raises: history kept
            seq = model.sequence(inputs, sampling, self.template, pieces.append)
            self._prefill(inputs["input_ids"][0].tolist(), inputs, seq)
        return self._stream(turn, seq, pieces)

    def _stream(self, turn, seq, pieces: list[str]) -> Iterator[str]:
        batch, prompt = self.batch, list(self.ids)
        with torch.inference_mode():
            while seq.finish is None:
                chosen = sample_all(batch)
                if seq.error is not None:
                    raise seq.error
                token = chosen[id(seq)]
                yield from pieces
                pieces.clear()
                if seq.finish is None:
                    batch.step(self.model, [token])
        final = seq.result().text
        yield from pieces
        self.ids = (prompt + seq.tokens)[: batch.length]  # what the cache holds
        self.messages = [*turn, {"role": "assistant", "content": final.strip()}]

    def _prefill(self, ids: list[int], inputs: dict, seq) -> None:
        model = self.model
        keep = _common_prefix(self.ids, ids)
        image_id = model.config.image_token_id
        last_image = max((i for i, t in enumerate(ids) if t == image_id), default=-1)
        question = inputs["questions"][0]
        stale = model.connector.fuser.reads_question and last_image >= 0 and question != self.question
        if self.batch is None or stale or keep <= last_image or keep == len(ids):
            self.batch = RunningBatch.prefill(model, [seq], [inputs])
            self.prefilled.append(len(ids))
        else:
            self.batch.crop(keep)
            self.batch.sequences = [seq]
            self.batch.extend(model, torch.tensor([ids[keep:]], device=model.device))
            self.prefilled.append(len(ids) - keep)
        self.ids, self.question = list(ids), question


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
