"""LLM-Match (OpenEQA, as MLCD-Embodied scores it): a judge model marks each answer from 1 to 5.

The protocol: the judge sees the question, the reference answer (and any extra correct answers)
and the model's response, and replies with one integer mark; the sample scores (mark - 1) / 4,
averaged per category. Sampling as the original: temperature 0.2, top_p 0.95, 32 tokens, seed 1234.
The judge is any OpenAI-compatible chat endpoint — GPT-4 as published, a local vLLM, or
``fovea serve`` itself. Every mark is appended to a cache as soon as it arrives, keyed by the judge
model and the exact texts, so a stopped run (or a rerun with the same judge) asks nothing twice.
A reply without a readable mark is kept as an error, counted and listed — never scored silently.

The prompt below is fovea's own wording of that protocol, with its own examples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

JUDGE_PROMPT = """You grade answers to questions about a scene. Compare the response with the \
correct answer{extra_intro} and reply with a single integer from 1 to 5: 5 when the response means the \
same as {target}, 1 when it has nothing in common with {target}, and 2 to 4 for partial agreement.

Example 1:
Question: What colour is the kettle on the stove?
Answer: red
{extra_example1}Response: It is blue.
Your mark: 1

Example 2:
Question: How many chairs are around the dining table?
Answer: four
{extra_example2}Response: There are three or four chairs.
Your mark: 3

Example 3:
Question: Is the bedroom window open?
Answer: no
{extra_example3}Response: No, it is closed.
Your mark: 5

Your turn:
Question: {question}
Answer: {answer}
{extra}Response: {prediction}
Your mark:"""


def judge_prompt(question: str, answer: str, prediction: str, extra_answers=None) -> str:
    extra = [str(a) for a in extra_answers or []]
    if extra:
        fields = {
            "extra_intro": " (or any of the extra answers, which are also correct)",
            "target": "the answer or one of the extra answers",
            "extra_example1": "Extra Answers: ['crimson', 'dark red']\n",
            "extra_example2": "Extra Answers: ['4']\n",
            "extra_example3": "Extra Answers: ['it is closed']\n",
            "extra": f"Extra Answers: {extra}\n",
        }
    else:
        fields = dict.fromkeys(
            ("extra_intro", "extra_example1", "extra_example2", "extra_example3", "extra"), ""
        )
        fields["target"] = "the answer"
    return JUDGE_PROMPT.format(question=question, answer=answer, prediction=prediction, **fields)


def parse_mark(reply: str) -> int | None:
    """The mark in a judge's reply: the whole reply if it is a number, else the number after
    "Your mark:" (up to the line's end); None unless it is 1..5."""
    text = reply.strip()
    if text.isdigit():
        mark = int(text)
    else:
        found = re.search(r"your mark:\s*(\d+)\s*(?:\n|$)", text, re.IGNORECASE)
        if not found:
            return None
        mark = int(found.group(1))
    return mark if 1 <= mark <= 5 else None


class LLMJudge:
    """Marks answers through an OpenAI-compatible endpoint (or any ``complete(prompt) -> str``)."""

    def __init__(
        self,
        base_url: str = "",
        model: str = "gpt-4-1106-preview",
        api_key: str = "",
        *,
        temperature: float = 0.2,
        top_p: float = 0.95,
        max_tokens: int = 32,
        seed: int = 1234,
        complete: Callable[[str], str] | None = None,
    ):
        self.model = model
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
        if complete is None:
            import openai

            client = openai.OpenAI(
                base_url=base_url or None,
                api_key=api_key or "none",
                default_headers={"api-key": api_key} if api_key else None,  # Azure-style endpoints
                max_retries=5,
                timeout=120,
            )

            def complete(prompt: str) -> str:
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], **self.sampling
                )
                return reply.choices[0].message.content or ""

        self._complete = complete

    def _key(self, question, answer, prediction, extra) -> str:
        blob = json.dumps([self.model, self.sampling, question, answer, extra, prediction])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def score(self, spec, records: list[dict], cache: Path, progress: bool = True) -> None:
        """Set ``scores["llm_match"]`` on every record the judge can mark (``judge_error`` else)."""
        from .runner import drop_partial_line

        cached = _read_cache(cache)
        drop_partial_line(cache)
        with cache.open("a", encoding="utf-8") as sink:
            for record in tqdm(records, desc=f"{spec.name} judge", unit="q", disable=not progress):
                doc = record["doc"]
                question, answer = str(doc["question"]), str(doc[spec.answer])
                extra = doc.get("extra_answers") or []
                prediction = record["prediction"].split("\n")[-1]
                key = self._key(question, answer, prediction, extra)
                if key not in cached or cached[key].get("mark") is None:
                    try:
                        reply = self._complete(judge_prompt(question, answer, prediction, extra))
                    except Exception as err:  # network, auth, rate limit after retries: keep going
                        reply = f"<judge call failed: {type(err).__name__}: {err}>"
                    cached[key] = {"key": key, "id": record["id"], "mark": parse_mark(reply), "reply": reply}
                    sink.write(json.dumps(cached[key]) + "\n")
                    sink.flush()
                mark = cached[key]["mark"]
                record["scores"].pop("judge_error", None)
                if mark is None:
                    record["scores"]["judge_error"] = cached[key]["reply"][:200]
                else:
                    record["scores"]["llm_match"] = (mark - 1) / 4
        failed = [r["id"] for r in records if "judge_error" in r["scores"]]
        if failed:
            logger.warning(
                "%s: %d answers have no mark from the judge (see %s): %s",
                spec.name,
                len(failed),
                cache,
                failed[:5],
            )


def _read_cache(path: Path) -> dict[str, dict]:
    out = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            out[entry["key"]] = entry
    return out
