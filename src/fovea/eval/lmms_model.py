"""fovea models inside lmms-eval (the "simple" model interface).

``--model_args`` (all optional but ``pretrained``): ``pretrained`` (directory or hub id, any layout
fovea loads), ``device`` (default: this process's GPU, or the CPU), ``dtype`` (fp32, bf16, fp16),
``template`` (default: the checkpoint's); lmms-eval's own ``--batch_size`` sets how many prompts are
generated together. Under
``accelerate launch`` each process holds the whole model on its own device; lmms-eval splits the
requests. Multi-round generation is not offered: fovea's chat sessions cover that outside lmms-eval.
"""

from __future__ import annotations

import json
import os

import torch
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ..checkpoints import dtype_from_name, load


class FoveaLMM(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str = "",
        device: str | None = None,
        dtype: str = "",
        template: str = "default",
        batch_size: int | str = 1,
        **unused,
    ):
        super().__init__()
        if not pretrained:
            raise ValueError("fovea: model_args needs pretrained=<checkpoint directory or hub id>")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device in (None, "", "cuda") and torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if world > 1 else "cuda"
        self.model = load(str(pretrained), dtype=dtype_from_name(dtype), device=device or "cpu")
        self.template = template
        self.batch_size_per_gpu = max(1, int(batch_size))
        if world > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes

    @property
    def device(self):
        return self.model.device

    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests) -> list[str]:
        """Greedy (or sampled, when the task asks) answers, batched among requests whose generation
        settings agree, cut at the task's ``until`` strings."""
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc="fovea", disable=self.rank != 0)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0) or 0)
            options = {
                "max_new_tokens": int(kwargs.get("max_new_tokens", 128)),
                "do_sample": bool(kwargs.get("do_sample", False)) and temperature > 0,
                "temperature": temperature or 1.0,
                "top_p": float(kwargs.get("top_p", 1.0) or 1.0),
            }
            for start in range(0, len(indices), self.batch_size_per_gpu):
                chunk = indices[start : start + self.batch_size_per_gpu]
                prompts, images = [], []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual else None
                    prompts.append(context)
                    images.append(list(visuals or []))
                stops = tuple(s for s in until if s)  # the decoder ends each answer before one
                texts = self.model.generate(
                    prompts, images=images, template=self.template, stop=stops, **options
                )
                for i, text in zip(chunk, texts):
                    answers[i] = text
                bar.update(len(chunk))
        bar.close()
        return answers

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Log-probability of each target after its prompt (and images), and whether greedy
        decoding would produce exactly the target."""
        out = []
        for request in tqdm(requests, desc="fovea loglikelihood", disable=self.rank != 0):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            target = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            visuals = list(doc_to_visual(doc) or []) if doc_to_visual else []
            out.append(self._continuation_logprob(context, str(target), visuals))
        return out

    def _continuation_logprob(self, context: str, target: str, images: list) -> tuple[float, bool]:
        model = self.model
        inputs = model.prepare(context, images, self.template)
        target_ids = model.tokenizer(target, add_special_tokens=False)["input_ids"]
        ids = torch.cat([inputs["input_ids"], torch.tensor([target_ids])], dim=1).to(model.device)
        embeds = model.embed_inputs(inputs.replace(input_ids=ids))
        logits = model.lm(inputs_embeds=embeds).logits[0, -len(target_ids) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        wanted = torch.tensor(target_ids, device=logprobs.device)
        total = logprobs.gather(1, wanted[:, None]).sum().item()
        return total, bool((logprobs.argmax(-1) == wanted).all())

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(
            "fovea's lmms-eval model answers single-round tasks; use fovea chat / ChatSession for multi-round"
        )
