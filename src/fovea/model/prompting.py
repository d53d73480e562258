"""Text side of the model: prompts -> token ids with image placeholders; `generate` and `chat`.

``prepare`` is the one place text and images meet: it renders the template, checks that the
``<image>`` tags match the images, and repeats each image's placeholder id exactly as many times
as that image will yield visual tokens (computed from geometry, before any model runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError
from ..imaging.io import ImageSource
from ..imaging.processor import ProcessedImages
from .checkpoint_template import JinjaTemplate
from .decoding import Sampling, Sequence
from .inputs import ModelInputs
from .running_batch import RunningBatch, decode, run_to_end
from .templates import CHECKPOINT_TEMPLATE, TEMPLATES, Template
from .tokenize import expand_images, tokenize
from .visuals import arrange, arrange_messages

if TYPE_CHECKING:
    from .vlm import VisionLanguageModel


def question_text(messages: list[dict]) -> str:
    """The question a question-aware fuser conditions on: every user turn's text, image tags
    included, joined with no separator (vMLLM's rule). For one prompt, that prompt itself."""
    return "".join(m["content"] for m in messages if m["role"] == "user")


class PromptMixin:
    """`prepare` and `generate` for VisionLanguageModel (kept apart to keep each file readable)."""

    def chat_format(
        self: VisionLanguageModel, template: str | None = "default"
    ) -> Template | JinjaTemplate | None:
        """What `template` names: a fovea template, ``"checkpoint"`` (the checkpoint's own Jinja
        template), None (text as given), or ``"default"``: the configured fovea template
        (``config.template``), else the checkpoint's Jinja template, else None."""
        if template == "default":
            template = self.config.template or (CHECKPOINT_TEMPLATE if self.config.chat_template else None)
        if template is None:
            return None
        if template == CHECKPOINT_TEMPLATE:
            if not self.config.chat_template:
                raise ConfigError(
                    f"this checkpoint carries no chat template of its own; choose one of {', '.join(TEMPLATES)}"
                )
            return self._checkpoint_template
        return TEMPLATES.get(template)

    def template_note(self: VisionLanguageModel, template: str | None = "default") -> str | None:
        """A line saying which template `template` resolves to when it was inferred, not named
        (``config.template_origin``); None when the checkpoint, the recipe or the caller named it."""
        if template != "default" or not self.config.template_origin:
            return None
        return f"template: {self.config.template}, {self.config.template_origin} (--template overrides)"

    def template_choices(self: VisionLanguageModel) -> list[str]:
        """Every template name this model accepts."""
        return [*TEMPLATES.names(), *([CHECKPOINT_TEMPLATE] if self.config.chat_template else [])]

    @cached_property
    def _checkpoint_template(self: VisionLanguageModel) -> JinjaTemplate:
        return JinjaTemplate(self.config.chat_template, self.tokenizer, self.config.image_token)

    def tagged(self: VisionLanguageModel, text: str, num_images: int) -> str:
        """`text` with one image tag per image; untagged images go first (LLaVA style)."""
        tag = self.config.image_token
        found = text.count(tag)
        if found == 0 and num_images:
            return f"{tag}\n" * num_images + text
        if found != num_images:
            raise ConfigError(f"the prompt has {found} {tag} tags but {num_images} images were given")
        return text

    def render_prompt(self: VisionLanguageModel, text: str, num_images: int, template: str | None) -> str:
        """Apply `template` to a user `text` (tagged, see `tagged`)."""
        text = self.tagged(text, num_images)
        fmt = self.chat_format(template)
        return text if fmt is None else fmt.prompt(text, bos_token=self.tokenizer.bos_token)

    def prepare(
        self: VisionLanguageModel,
        text: str | list[str],
        images: list[ImageSource] | list[list[ImageSource]] | None = None,
        template: str | None = None,
        videos: list | None = None,
    ) -> ModelInputs:
        """Model inputs for one prompt (images: a list) or a batch (images: a list per prompt).
        `videos` likewise: each a list of frames, a file path or bytes, placed by ``<video>`` tags
        (model/visuals.py) and pooled as frames.

        ``template=None`` uses the text as given (tokenizer special tokens added as the
        tokenizer does by default); a template name (see `chat_format`) wraps it as one user turn.
        Returns ``input_ids``, ``attention_mask`` (left-padded), ``pixel_values``, ``image_layouts``,
        ``image_samples`` (the prompt each image belongs to) and ``questions`` (each prompt, tagged),
        as one `ModelInputs`: `embed_inputs` reads them all.
        """
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer; load it with fovea.load or pass one")
        batch, per_prompt = _per_prompt(self, text, images, videos)
        rows, all_pixels, layouts, samples = [], [], [], []
        fmt = self.chat_format(template)
        for prompt, imgs in zip(batch, per_prompt):
            processed = self.processor.sample(list(imgs))
            rendered = self.render_prompt(prompt, len(imgs), template)
            ids = self._tokenize(rendered, add_special_tokens=fmt is None or fmt.add_special_tokens(rendered))
            rows.append(self._expand_placeholders(ids, processed.layouts))
            limit = self.config.max_length
            if limit is not None and len(rows[-1]) > limit:
                raise ConfigError(
                    f"the prompt is {len(rows[-1])} tokens with its images, over the model's max_length of {limit}"
                )
            if imgs:
                all_pixels.append(processed.pixels)
                layouts.extend(processed.layouts)
                samples.extend([len(rows) - 1] * len(processed.layouts))
        input_ids, attention_mask = self._pad_left(rows)
        return ModelInputs(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=torch.cat(all_pixels) if all_pixels else None,
            image_layouts=layouts or None,
            image_samples=samples or None,
            questions=[self.tagged(prompt, len(imgs)) for prompt, imgs in zip(batch, per_prompt)],
        )

    def _tokenize(self: VisionLanguageModel, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids with one image id per image tag (model/tokenize.py: the same as training)."""
        tag, image_id = self.config.image_token, self.config.image_token_id
        return tokenize(self.tokenizer, text, tag, image_id, add_special_tokens=add_special_tokens)[0]

    def _expand_placeholders(self: VisionLanguageModel, ids: list[int], layouts: list) -> list[int]:
        image_id = self.config.image_token_id
        found = sum(1 for i in ids if i == image_id)
        if found != len(layouts):
            raise ConfigError(
                f"the tokenized prompt has {found} image tokens but {len(layouts)} images were given "
                f"(is {self.config.image_token!r} a single special token of the tokenizer?)"
            )
        return expand_images(ids, image_id, [self.num_image_tokens(layout) for layout in layouts])

    def _pad_left(self: VisionLanguageModel, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
        return ids, mask

    def stop_token_ids(self: VisionLanguageModel, template: str | None = "default") -> list[int]:
        """EOS plus the template's stop markers that are single tokens."""
        stops = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        fmt = self.chat_format(template)
        if fmt is not None:
            for marker in fmt.stop:
                ids = self.tokenizer(marker, add_special_tokens=False)["input_ids"]
                if len(ids) == 1 and ids[0] not in stops:
                    stops.append(ids[0])
        return stops

    def prepare_chat(
        self: VisionLanguageModel,
        messages: list[dict],
        images: list[ImageSource] | ProcessedImages = (),
        template: str | None = "default",
        videos: list = (),
    ) -> ModelInputs:
        """Model inputs for a whole conversation (``[{"role", "content"}, ...]``), ready for the
        assistant's next turn. Images without tags go before the first user turn's text. `images`
        may come already through `self.processor.sample` (the server tiles them in a pool of its own)."""
        fmt = self.chat_format(template)
        if fmt is None:
            raise ConfigError(
                f"chat needs a template and this model has none: pass template=NAME "
                f"(one of {', '.join(self.template_choices())})"
            )
        tag = self.config.image_token  # video tags become image tags, items in tag order (model/visuals.py)
        messages, images = arrange_messages(messages, images, videos, tag, self.config.video)
        found = sum(m["content"].count(tag) for m in messages)
        if found == 0 and images:
            first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first is None:
                raise ConfigError("a conversation with images needs a user turn")
            messages = [dict(m) for m in messages]
            messages[first]["content"] = f"{tag}\n" * len(images) + messages[first]["content"]
        elif found != len(images):
            raise ConfigError(f"the conversation has {found} {tag} tags but {len(images)} images were given")
        text = fmt.render(messages, True, self.tokenizer.bos_token).text
        processed = images if isinstance(images, ProcessedImages) else self.processor.sample(list(images))
        ids = self._tokenize(text, add_special_tokens=fmt.add_special_tokens(text))
        ids = self._expand_placeholders(ids, processed.layouts)
        input_ids, attention_mask = self._pad_left([ids])
        return ModelInputs(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=processed.pixels if images else None,
            image_layouts=processed.layouts or None,
            image_samples=[0] * len(processed.layouts) or None,
            questions=[question_text(messages)],
        )

    def sampling(
        self: VisionLanguageModel,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: tuple[str, ...] | list[str] = (),
    ) -> Sampling:
        """The decoder's settings for `generate`/`chat`'s arguments (greedy unless `do_sample`)."""
        return Sampling(
            max_new_tokens=max_new_tokens,
            temperature=temperature if do_sample else 0.0,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=tuple(stop),
        )

    def sequence(
        self: VisionLanguageModel, prepared: dict, sampling: Sampling, template, emit=None
    ) -> Sequence:
        """One answer to decode for `prepared` (a `prepare`/`prepare_chat` output of one prompt)."""
        stops = set(self.stop_token_ids(template))
        length = int(prepared["attention_mask"].sum())
        return Sequence(sampling, stops, self.tokenizer, length, emit or (lambda piece: None))

    def chat(
        self: VisionLanguageModel,
        messages: list[dict],
        images: list[ImageSource] = (),
        template: str | None = "default",
        stream: bool = False,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        videos: list = (),
    ):
        """The assistant's reply to a conversation; with ``stream=True`` an iterator of text pieces.
        Decoded by fovea's decoder (`model.decoding`), as the chat session and the server do."""
        sampling = self.sampling(max_new_tokens, do_sample, temperature, top_p, top_k, seed)
        with torch.inference_mode():
            prepared = self.prepare_chat(messages, images, template, videos)
            pieces: list[str] = []
            seq = self.sequence(prepared, sampling, template, pieces.append)
            batch = RunningBatch.prefill(self, [seq], [prepared])  # errors raise here, not mid-stream
        if not stream:
            for _ in decode(self, batch):
                pass
            return seq.result().text.strip()
        return _streamed(self, batch, seq, pieces)

    def generate(
        self: VisionLanguageModel,
        text: str | list[str],
        images: list[ImageSource] | list[list[ImageSource]] | None = None,
        template: str | None = "default",
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: tuple[str, ...] | list[str] = (),
        videos: list | None = None,
    ) -> str | list[str]:
        """Answer a prompt (or a batch, decoded together); greedy unless `do_sample`, each answer
        seeded by `seed`. ``template="default"`` uses the model's own template (see `chat_format`);
        None uses the text as given. `stop`: strings that end an answer (not part of it)."""
        batch, per_prompt = _per_prompt(self, text, images, videos)
        sampling = self.sampling(max_new_tokens, do_sample, temperature, top_p, top_k, seed, stop)
        with torch.inference_mode():
            prepared = [self.prepare(p, items, template) for p, items in zip(batch, per_prompt)]
            results = run_to_end(self, prepared, [self.sequence(p, sampling, template) for p in prepared])
        answers = [r.text for r in results]
        return answers[0] if isinstance(text, str) else answers

    def segment(self: VisionLanguageModel, image: ImageSource, prompt: str, **options):
        """A segmenting model's (MLCD-Seg's) answer about `image` and a mask for each ``[SEG]`` in it:
        a `fovea.seg.model.SegResult` (``text``, ``masks`` (k, H, W) bool at the image's size,
        ``logits``). `options`: ``template``, ``max_new_tokens``, ``force`` (see `fovea.seg.model.segment`)."""
        from ..seg.model import segment

        return segment(self, image, prompt, **options)


def _per_prompt(model, text, images, videos=None) -> tuple[list[str], list[list]]:
    """(prompts, the visual items of each, in tag order) for one prompt with a list of images and
    one of videos, or a batch with a list of each per prompt."""
    batch = [text] if isinstance(text, str) else list(text)
    per_prompt = [images or []] if isinstance(text, str) else list(images or [[] for _ in batch])
    per_video = [videos or []] if isinstance(text, str) else list(videos or [[] for _ in batch])
    for name, lists in (("image", per_prompt), ("video", per_video)):
        if len(lists) != len(batch):
            raise ConfigError(f"{len(batch)} prompts but {len(lists)} {name} lists")
    tag, sampling = model.config.image_token, model.config.video
    arranged = [
        arrange([p], imgs, vids, tag, sampling) for p, imgs, vids in zip(batch, per_prompt, per_video)
    ]
    return [contents[0] for contents, _ in arranged], [items for _, items in arranged]


def _streamed(model, batch, seq, pieces: list[str]) -> Iterator[str]:
    """The pieces of `seq`'s text as `decode` forms them."""
    with torch.inference_mode():
        for _ in decode(model, batch):
            yield from pieces
            pieces.clear()
    seq.result()
    yield from pieces
