"""Answer strategies as pure functions of candidate answers: majority vote on extracted final answers, else
minimum Bayes risk by character n-gram F-score (chrF); prompts for a judge (Universal Self-Consistency) and an
aggregator (Mixture-of-Agents); early stopping when a vote can no longer change. No I/O, no clock."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Candidate",
    "Selection",
    "can_stop_early",
    "chrf",
    "combine_judgements",
    "extract_final_answer",
    "fuse_prompt",
    "judge_orders",
    "judge_prompt",
    "parse_judge_choice",
    "select_best",
    "strip_thinking",
    "token_jaccard",
    "usable",
]


@dataclass(frozen=True)
class Candidate:
    node: str
    model: str
    content: str
    outcome: str  # "ok", "error", "truncated", "cancelled"
    latency_ms: float
    weight: float = 1.0


@dataclass(frozen=True)
class Selection:
    winner: int | None
    method: str  # "vote", "mbr", "single", "none"
    scores: tuple[float, ...]
    answer_key: str | None = None


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_STATED = re.compile(r"(?:final answer|the answer is|answer)\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"^[-+]?\d[\d,]*(?:\.\d+)?$")


def strip_thinking(text: str) -> str:
    text = _THINK.sub("", text)
    if text.lstrip().lower().startswith("<think>"):  # never closed: all of it was thinking
        return ""
    return text.strip()


def _normalize(answer: str) -> str | None:
    answer = answer.strip().strip("*`").strip().rstrip(".!").strip().strip("\"'").lower()
    if _NUMBER.match(answer):
        answer = answer.replace(",", "")
        if "." in answer:
            answer = answer.rstrip("0").rstrip(".")
    return answer if 0 < len(answer) <= 64 else None


def extract_final_answer(text: str) -> str | None:
    text = strip_thinking(text)
    if match := _BOXED.findall(text):
        return _normalize(match[-1])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if match := _STATED.search(line):
            return _normalize(match.group(1).split("\n")[0])
    if lines and len(lines[-1].split()) <= 3:
        return _normalize(lines[-1])
    return None


def _ngrams(text: str, n: int) -> list[Counter[str]]:
    chars = "".join(text.split())
    return [Counter(chars[i : i + k] for i in range(len(chars) - k + 1)) for k in range(1, n + 1)]


def _chrf_grams(a: list[Counter[str]], b: list[Counter[str]], beta: float) -> float:
    precisions, recalls = [], []
    for ga, gb in zip(a, b):
        total_a, total_b = sum(ga.values()), sum(gb.values())
        if not total_a or not total_b:
            continue
        common = sum((ga & gb).values())
        precisions.append(common / total_a)
        recalls.append(common / total_b)
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    return (1 + beta**2) * p * r / (beta**2 * p + r)


def chrf(a: str, b: str, n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (whitespace removed), averaged over both directions so it is symmetric."""
    ga, gb = _ngrams(a, n), _ngrams(b, n)
    return (_chrf_grams(ga, gb, beta) + _chrf_grams(gb, ga, beta)) / 2


def token_jaccard(a: str, b: str) -> float:
    sa, sb = set(a.lower().split()), set(b.lower().split())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def usable(candidate: Candidate) -> bool:
    return candidate.outcome == "ok" and bool(strip_thinking(candidate.content))


def _tiebreak(c: Candidate) -> tuple[float, float, str]:
    return (-c.weight, c.latency_ms, c.node)


def select_best(candidates: Sequence[Candidate], *, similarity: Callable[[str, str], float] | None = None) -> Selection:
    """Drop unusable answers; vote when most have an extracted final answer; else minimum Bayes risk.
    With two answers and no vote, MBR scores are equal by symmetry: the tie-break (weight, latency, node) decides."""
    scores = [0.0] * len(candidates)
    good = [i for i, c in enumerate(candidates) if usable(c)]
    if not good:
        return Selection(None, "none", tuple(scores))
    if len(good) == 1:
        scores[good[0]] = 1.0
        return Selection(good[0], "single", tuple(scores))
    texts = {i: strip_thinking(candidates[i].content) for i in good}
    if similarity is None:
        grams = {i: _ngrams(texts[i], 6) for i in good}
        sim = lambda i, j: (_chrf_grams(grams[i], grams[j], 2.0) + _chrf_grams(grams[j], grams[i], 2.0)) / 2  # noqa: E731
    else:
        sim = lambda i, j: similarity(texts[i], texts[j])  # noqa: E731
    mbr = {i: sum(sim(i, j) for j in good if j != i) / (len(good) - 1) for i in good}
    keys = {i: extract_final_answer(texts[i]) for i in good}
    with_key = [i for i in good if keys[i] is not None]
    if len(with_key) * 2 > len(good):
        votes = Counter(keys[i] for i in with_key)
        weight = Counter()
        for i in with_key:
            weight[keys[i]] += candidates[i].weight
        best_key = min(votes, key=lambda k: (-votes[k], -weight[k], -max(mbr[i] for i in with_key if keys[i] == k), k))
        members = [i for i in with_key if keys[i] == best_key]
        winner = min(members, key=lambda i: _tiebreak(candidates[i]))
        for i in with_key:
            scores[i] = votes[keys[i]] / len(good)
        return Selection(winner, "vote", tuple(scores), best_key)
    for i in good:
        scores[i] = mbr[i]
    top = max(mbr.values())
    winner = min((i for i in good if top - mbr[i] <= 1e-9), key=lambda i: _tiebreak(candidates[i]))
    return Selection(winner, "mbr", tuple(scores))


def can_stop_early(done: Sequence[Candidate], pending: int) -> bool:
    """True when the vote's winner can no longer change, whatever the pending candidates answer."""
    total = len([c for c in done if usable(c)]) + pending
    keys = [extract_final_answer(c.content) for c in done if usable(c)]
    keys = [k for k in keys if k is not None]
    if len(keys) * 2 <= total:  # the vote might not even apply
        return False
    counts = Counter(keys).most_common(2)
    lead = counts[0][1]
    second = counts[1][1] if len(counts) > 1 else 0
    return lead > second + pending


def judge_prompt(question: str, candidates: Sequence[str]) -> str:
    responses = "\n\n".join(f"Response {i + 1}:\n{text}" for i, text in enumerate(candidates))
    return (
        "I have generated the following responses to the question below.\n\n"
        f"Question: {question}\n\n{responses}\n\n"
        "Evaluate these responses. Select the most consistent response based on majority consensus and "
        "correctness. Answer with only its number, in the form \"Response N\"."
    )


def parse_judge_choice(text: str, count: int) -> int | None:
    match = re.search(r"response\s*\**\s*(\d+)", text, re.IGNORECASE) or re.search(r"\b(\d+)\b", text)
    if match is None:
        return None
    number = int(match.group(1))
    return number - 1 if 1 <= number <= count else None


def judge_orders(count: int) -> list[list[int]]:
    """Both orders for two candidates, to cancel a judge's bias for a position; one order otherwise."""
    return [[0, 1], [1, 0]] if count == 2 else [list(range(count))]


def combine_judgements(choices: Sequence[int | None], orders: Sequence[Sequence[int]], count: int) -> int | None:
    """Map each choice (a position in its order) back to a candidate; majority wins; a tie goes to the lower
    index (so a judge that always picks the first position gives candidate 0)."""
    votes = Counter(order[choice] for choice, order in zip(choices, orders) if choice is not None and choice < len(order))
    if not votes:
        return None
    return min(votes, key=lambda i: (-votes[i], i))


def fuse_prompt(question: str, candidates: Sequence[str]) -> str:
    responses = "\n\n".join(f"{i + 1}. {text}" for i, text in enumerate(candidates))
    return (
        "You have been provided with a set of responses from various models to the latest user query. Your task "
        "is to synthesize these responses into a single, high-quality response. Critically evaluate the "
        "information, recognizing that some of it may be biased or incorrect. Do not simply copy them: offer a "
        "refined, accurate and comprehensive reply.\n\n"
        f"Responses from models:\n{responses}\n\nUser query: {question}"
    )
