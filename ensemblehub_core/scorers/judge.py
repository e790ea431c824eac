"""`JudgeScorer`: a local model is asked whether a proposed step is correct.

Score = P(yes) / (P(yes) + P(no)) read from its next-token distribution after the question, summed over the
usual spellings of each word. The part of the prompt before the step (question, solution so far) stays in a KV
cache across candidates and rounds, so each candidate costs only its own tokens.
"""

from __future__ import annotations

from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.scorers.base import Scorer, ScoreRequest, question_of
from ensemblehub_core.types import Message

__all__ = ["DEFAULT_COMPARE_TEMPLATE", "DEFAULT_JUDGE_TEMPLATE", "CompareJudgeScorer", "JudgeScorer"]

DEFAULT_JUDGE_TEMPLATE = (
    "You are checking a solution one step at a time.\n\n"
    "Question:\n{question}\n\n"
    "Solution so far:\n{prefix}\n\n"
    "Proposed next step:\n{step}\n\n"
    "Is the proposed next step correct and does it move the solution forward? Answer Yes or No."
)

_MARK = "\u2063STEP\u2063"  # an invisible marker where the step goes
_YES = ("Yes", " Yes", "yes", " yes", "YES")
_NO = ("No", " No", "no", " no", "NO")


class JudgeScorer(Scorer):
    """Asks ``generator``'s model a yes/no question about each candidate.

    Args:
        name: Scorer name in traces.
        generator: The judging model (often a member; its prompt format is used).
        template: Question template with ``{question}``, ``{prefix}`` and ``{step}``.
        member: Set when ``generator`` is an ensemble member (lets ``exclude_own`` work).
    """

    def __init__(
        self,
        name: str,
        generator: HFGenerator,
        *,
        template: str = DEFAULT_JUDGE_TEMPLATE,
        member: str | None = None,
    ) -> None:
        super().__init__(name, member=member)
        self.gen = generator
        self.template = template
        self.yes_ids = _first_token_ids(generator, _YES)
        self.no_ids = _first_token_ids(generator, _NO)

    def prompt_parts(self, messages: list[Message], prefix: str) -> tuple[list[int], str]:
        """The judge's prompt split at the step: token ids of what comes before, and the text after it.

        Everything before the step (question, solution so far) is shared by the round's candidates and only
        grows from round to round, so its KV cache is kept; only each step and the closing words are new.
        """
        text = self.template.format(
            question=question_of(messages), prefix=prefix.strip() or "(nothing yet)", step=_MARK
        )
        head, _, tail = _judge_prompt(self.gen, text).partition(_MARK)
        return _judge_ids(self.gen, head), tail

    def score(self, request: ScoreRequest) -> list[float | None]:
        import torch

        from ensemblehub_core._torch import PrefixCache, device_lock

        head, tail = self.prompt_parts(request.messages, request.prefix)
        cache = request.state.setdefault(id(self), PrefixCache(self.gen.model))
        scores: list[float | None] = []
        with device_lock(str(self.gen.model.device)):
            for cand in request.candidates:
                cache.sync(head)
                logits = cache.run(self.gen.encode((cand.text.strip() or "(empty)") + tail))[-1]
                probs = torch.softmax(logits, dim=-1)
                yes, no = float(probs[self.yes_ids].sum()), float(probs[self.no_ids].sum())
                scores.append(yes / (yes + no) if yes + no > 0 else None)
        return scores


def _judge_prompt(gen: HFGenerator, text: str) -> str:
    """The judge's question as its model sees it, ready for the first word of its reply."""
    rendered = gen.render_prompt([Message(role="user", content=text)])
    return rendered if gen.prompt_format == "chat" else rendered + " Answer:"


def _judge_ids(gen: HFGenerator, text: str) -> list[int]:
    """Token ids of rendered judge text (the tokenizer's BOS only for plain-text prompts, as members get)."""
    return list(gen.tokenizer.encode(text, add_special_tokens=gen.prompt_format != "chat"))


def _first_token_ids(gen: HFGenerator, words: tuple[str, ...]) -> list[int]:
    ids = {gen.encode(w)[0] for w in words if gen.encode(w)}
    return sorted(ids)


DEFAULT_COMPARE_TEMPLATE = (
    "Question:\n{question}\n\n"
    "Solution so far:\n{prefix}\n\n"
    "Candidate continuations:\n{options}\n\n"
    "Which candidate is correct and best continues the solution? Answer with its letter only."
)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class CompareJudgeScorer(Scorer):
    """A local model sees every candidate at once, as lettered options, and names the best.

    Score = the judge's probability for a candidate's letter (normalised over the letters shown), averaged over
    cyclic shifts of the options so that each candidate stands at each position once: a judge's bias towards
    "A" then favours no candidate. The options are first put in a canonical order (by text), so the scores do
    not depend on the order the candidates arrive in, and identical texts get identical scores.

    Args:
        name: Scorer name in traces.
        generator: The judging model (its prompt format is used).
        template: Prompt with ``{question}``, ``{prefix}`` and ``{options}``.
        shifts: How many cyclic shifts to average over (default: one per candidate, every position once).
        member: Set when ``generator`` is an ensemble member.
    """

    def __init__(
        self,
        name: str,
        generator: HFGenerator,
        *,
        template: str = DEFAULT_COMPARE_TEMPLATE,
        shifts: int | None = None,
        member: str | None = None,
    ) -> None:
        super().__init__(name, member=member)
        self.gen = generator
        self.template = template
        self.shifts = shifts
        self.letter_ids = [_first_token_ids(generator, (c, " " + c)) for c in _LETTERS]

    def prompt_ids(self, messages: list[Message], prefix: str, options: list[str]) -> list[int]:
        """The judge's prompt for one presentation of the options, ready for its answer letter."""
        listed = "\n\n".join(f"{_LETTERS[i]}. {text.strip() or '(empty)'}" for i, text in enumerate(options))
        text = self.template.format(question=question_of(messages), prefix=prefix.strip() or "(nothing yet)",
                                    options=listed)
        return _judge_ids(self.gen, _judge_prompt(self.gen, text))

    def score(self, request: ScoreRequest) -> list[float | None]:
        import torch

        from ensemblehub_core._torch import PrefixCache, device_lock

        cands = request.candidates
        if len(cands) > len(_LETTERS):
            raise ValueError(f"the compare judge shows at most {len(_LETTERS)} candidates, got {len(cands)}")
        texts = sorted({c.text for c in cands})  # canonical order; duplicates shown once
        if len(texts) == 1:
            return [1.0] * len(cands)
        n = len(texts)
        shifts = min(self.shifts or n, n)
        totals = [0.0] * n
        cache = request.state.setdefault(id(self), PrefixCache(self.gen.model))
        with device_lock(str(self.gen.model.device)):
            for s in range(shifts):
                order = [(s + i) % n for i in range(n)]  # position i shows text order[i]
                logits = cache.sync(self.prompt_ids(request.messages, request.prefix, [texts[j] for j in order]))
                probs = torch.softmax(logits.float(), dim=-1)
                mass = [float(probs[self.letter_ids[i]].sum()) for i in range(n)]
                total = sum(mass)
                for i, j in enumerate(order):
                    totals[j] += mass[i] / total if total > 0 else 1.0 / n
        by_text = {t: totals[k] / shifts for k, t in enumerate(texts)}
        return [by_text[c.text] for c in cands]
