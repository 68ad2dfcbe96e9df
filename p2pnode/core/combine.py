"""Answer strategies as pure functions of candidate answers: pick one (``best``), prompt a judge (``judge``), or
prompt an aggregator (``fuse``).

``select_best`` follows self-consistency (Wang et al., 2022): when most answers end in a short final answer, the
most common one wins. Otherwise it uses minimum Bayes risk: the answer most similar to all the others wins, with
similarity measured by chrF (Popović, 2015, computed the way sacrebleu does by default). Ties always end in a
fixed order (weight, then latency, then node id), so the same answers give the same winner in any input order.
``judge_prompt`` follows Universal Self-Consistency (Chen et al., 2023) and ``fuse_prompt`` follows the
aggregate-and-synthesize prompt of Mixture-of-Agents (Wang et al., 2024).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import add, getitem, gt

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

TIE_EPSILON = 1e-9  # MBR scores this close count as equal, so float noise cannot beat the tie-break
MBR_CHAR_BUDGET = 2000  # above this many characters in total, MBR samples n-grams (see _sample_chars)
_MAX_ANSWER_CHARS = 40  # a "final answer" longer than this is prose, not a short answer
_MAX_ANSWER_WORDS = 5


@dataclass(frozen=True)
class Candidate:
    """One node's complete answer to the request."""

    node: str  # peer id of the node that produced it
    model: str
    content: str  # the full answer text ("" when it failed)
    outcome: str  # "ok", "error", "truncated" (done_reason == "length"), "cancelled"
    latency_ms: float
    weight: float = 1.0  # node weight for tie-breaks (higher wins), e.g. from capacity


@dataclass(frozen=True)
class Selection:
    """Which candidate ``select_best`` picked, and why."""

    winner: int | None  # index into the candidates list, None when none is usable
    method: str  # "vote", "mbr", "single", "none"
    scores: tuple[float, ...]  # one per candidate (0.0 for unusable ones), in input order
    answer_key: str | None = None  # the extracted final answer that won the vote, if method == "vote"


# ---- reading answers ----------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)


def strip_thinking(text: str) -> str:
    """The answer without its reasoning: drops ``<think>...</think>`` blocks, everything after an unclosed
    ``<think>`` (the model stopped while thinking), and everything before a stray ``</think>`` (templates such as
    DeepSeek-R1's put the opening tag in the prompt, so the output starts inside the block)."""
    if "think>" not in text.lower():
        return text.strip()
    text = _THINK_BLOCK.sub("", text)
    close = text.lower().rfind("</think>")
    text = text[close + len("</think>") :] if close >= 0 else text
    opened = text.lower().find("<think>")
    return (text[:opened] if opened >= 0 else text).strip()


def usable(c: Candidate) -> bool:
    """Only complete answers take part: errors, truncated and cancelled answers, and empty ones, are dropped."""
    return c.outcome == "ok" and strip_thinking(c.content) != ""


_FINAL = re.compile(r"final\s+answer\s*(?::|=|\bis\b)\s*([^\n]+)", re.I)
_ANSWER_IS = re.compile(r"\banswer\s+is\s*:?\s*([^\n]+)", re.I)
_ANSWER_COLON = re.compile(r"\banswer\s*[:=]\s*([^\n]+)", re.I)
_SENTENCE_END = re.compile(r"\.\s|;\s|,\s+(?:because|since|as|which|so)\b")
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_LATEX_NOISE = re.compile(r"\\[,;:! ]|\\[()\[\]]|\$|`|\*\*|__")
_ASSIGNMENT = re.compile(r"^[a-z]\s*=\s*(?=\S)")
_NUMBER = re.compile(r"(?<![\w.,])([-+\u2212]?)\$?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\w,]|\.\d)")
_TOKEN = re.compile(r"[-+]?\d[\d.,]*%?|[a-z0-9][\w'-]{0,19}")
_EDGE_PUNCT = " \t.,;:!?\"'\u201c\u201d\u2018\u2019*"
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _normalize_number(m: re.Match) -> str:
    sign, whole, frac = m.group(1), m.group(2).replace(",", "").lstrip("0") or "0", (m.group(3) or "").rstrip("0")
    number = f"{whole}.{frac}" if frac else whole
    return "-" + number if sign in ("-", "\u2212") and number != "0" else number


def _strip_brackets(text: str) -> str:
    """Removes one bracket pair around the whole text, only when the opening bracket closes at the very end."""
    while len(text) >= 2 and _PAIRS.get(text[0]) == text[-1]:
        depth = 0
        for i, ch in enumerate(text):
            depth += (ch == text[0]) - (ch == text[-1])
            if depth == 0 and i < len(text) - 1:
                return text
        text = text[1:-1].strip(_EDGE_PUNCT)
    return text


def _clean(raw: str) -> str:
    """A candidate answer phrase as a vote key: markup and wrappers gone, lowercase, numbers normalized."""
    text = _SENTENCE_END.split(raw, maxsplit=1)[0]
    text = _LATEX_NOISE.sub("", _LATEX_WRAPPER.sub(r"\1", text))
    text = _strip_brackets(text.strip(_EDGE_PUNCT))
    text = " ".join(_ASSIGNMENT.sub("", text.lower()).split())
    return _NUMBER.sub(_normalize_number, text).strip(_EDGE_PUNCT)


def _boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        depth += (text[i] == "{") - (text[i] == "}")
        if depth < 0:
            return text[begin:i]
    return None


def extract_final_answer(text: str) -> str | None:
    """The short final answer a text commits to, normalized for voting; None when it has no clear one.

    Looks, in this order, for the last ``\\boxed{...}``, "final answer: X", "the answer is X", "answer: X", and
    finally a last line that is a single number or short word. Reasoning inside ``<think>`` is ignored. An
    answer of more than 5 words or 40 characters is prose, not a final answer (None)."""
    text = strip_thinking(text).replace("**", "").replace("__", "")
    raw, lower = _boxed(text), text.lower()
    for pattern, literal in ((_FINAL, "final"), (_ANSWER_IS, "answer"), (_ANSWER_COLON, "answer")):
        if raw is None and literal in lower:  # the literal check skips a regex scan of most prose
            raw = (pattern.findall(text) or [None])[-1]
    if raw is not None:
        answer = _clean(raw)
        if not answer or len(answer) > _MAX_ANSWER_CHARS or len(answer.split()) > _MAX_ANSWER_WORDS:
            return None
        return answer
    lines = text.splitlines()
    answer = _clean(lines[-1]) if lines else ""
    return answer if _TOKEN.fullmatch(answer) else None


def token_jaccard(a: str, b: str) -> float:
    """0..1: shared lowercase words over all words (two texts without words are identical: 1.0)."""
    wa, wb = set(re.findall(r"\w+", a.lower())), set(re.findall(r"\w+", b.lower()))
    return len(wa & wb) / len(wa | wb) if wa or wb else 1.0


# ---- chrF ---------------------------------------------------------------------------------------------------

# Per n-gram order: (counts, the counts above 1, total). Keeping the repeated part apart lets the common case,
# n-grams seen once, be matched by one C-level set intersection instead of a Python-level min per n-gram.
_Profile = list[tuple[Counter, dict, int]]


def _profile(text: str, n: int, keep: frozenset[str] | None = None) -> _Profile:
    """Character n-gram counts of orders 1..n of ``text`` (whitespace already removed). With ``keep``, only the
    n-grams whose first character is in ``keep``: a content-defined sample, so an n-gram is kept in every text or
    in none, and matches between samples are exact."""
    grams: list = []
    if keep is None:
        g: Sequence[str] = text
        for k in range(1, n + 1):
            g = g if k == 1 else list(map(add, g, text[k - 1 :]))  # each k-gram is a (k-1)-gram plus a character
            grams.append(g)
    else:
        windows = [text[p : p + n] for p in compress(range(len(text)), map(keep.__contains__, text))]
        for k in range(1, n + 1):
            while windows and len(windows[-1]) < k:  # the short windows are the last ones
                windows.pop()
            grams.append(list(map(getitem, windows, repeat(slice(0, k)))))
    profile = []
    for g in grams:
        counts = Counter(g)
        mostly_repeated = 2 * len(counts) < len(g)
        repeated = counts if mostly_repeated else dict(compress(counts.items(), map(gt, counts.values(), repeat(1))))
        profile.append((counts, repeated, len(g)))
    return profile


def _match_stats(pa: _Profile, pb: _Profile) -> list[tuple[int, int, int]]:
    """Per order: (n-grams in a, n-grams in b, n-grams in common counted with multiplicity)."""
    stats = []
    for (ca, ra, ha), (cb, rb, hb) in zip(pa, pb):
        if ra is ca or rb is cb:
            common = ca.keys() & cb.keys()
            m = sum(map(min, map(ca.__getitem__, common), map(cb.__getitem__, common)))
        else:  # the sum of min(count) is |shared n-grams| plus what both repeat beyond a first occurrence
            both = ra.keys() & rb.keys()
            m = len(ca.keys() & cb.keys()) - len(both) + sum(map(min, map(ra.__getitem__, both), map(rb.__getitem__, both)))
        stats.append((ha, hb, m))
    return stats


def _f_score(stats: list[tuple[int, int, int]], beta: float) -> float:
    """sacrebleu's chrF: precision and recall averaged over the orders both texts reach, then F-beta; computed
    with each text as hypothesis in turn and averaged, so that the result is symmetric."""
    effective = [(m / ha, m / hb) for ha, hb, m in stats if ha and hb]
    if not effective:
        return 0.0
    p = math.fsum(x for x, _ in effective) / len(effective)
    r = math.fsum(y for _, y in effective) / len(effective)
    b2 = beta * beta
    f_ab = (1 + b2) * p * r / (b2 * p + r) if b2 * p + r else 0.0
    f_ba = (1 + b2) * p * r / (b2 * r + p) if b2 * r + p else 0.0
    return (f_ab + f_ba) / 2


def chrf(a: str, b: str, n: int = 6, beta: float = 2.0) -> float:
    """0..1: character n-gram F-score (orders 1..n, whitespace removed, recall weighted by ``beta``) as sacrebleu
    computes it by default, averaged over both directions so that ``chrf(a, b) == chrf(b, a)``. Texts with no
    characters at all are identical to each other (1.0) and share nothing with any other text (0.0)."""
    if n < 1:
        raise ValueError("chrF needs n >= 1")
    sa, sb = "".join(a.split()), "".join(b.split())
    if not sa or not sb:
        return 1.0 if sa == sb else 0.0
    return _f_score(_match_stats(_profile(sa, n), _profile(sb, n)), beta)


def _sample_chars(texts: list[str], rate: float) -> frozenset[str]:
    """Characters whose n-grams MBR keeps, about ``rate`` of all: taken in a fixed pseudo-random order (Knuth's
    multiplicative hash of the code point), skipping any that would overshoot. As in "mod p" shingle sampling
    (Broder, 1997), the choice depends only on content: an n-gram is kept in every candidate or in none."""
    freq: Counter = Counter()
    for text in texts:
        freq.update(text[::4])  # every 4th character estimates the frequencies well enough, 4 times faster
    wanted, kept, covered = rate * sum(freq.values()), set(), 0
    for ch in sorted(freq, key=lambda c: ((ord(c) * 2654435761) & 0xFFFFFFFF, c)):
        if covered + freq[ch] <= 1.1 * wanted:
            kept.add(ch)
            covered += freq[ch]
    return frozenset(kept)


def _chrf_matrix(texts: list[str]) -> list[list[float]]:
    """Pairwise chrF of all texts, each text's n-grams counted once rather than once per pair."""
    squeezed = ["".join(t.split()) for t in texts]
    total = sum(map(len, squeezed))
    keep = _sample_chars(squeezed, MBR_CHAR_BUDGET / total) if total > MBR_CHAR_BUDGET else None
    profiles = [_profile(s, 6, keep) for s in squeezed]
    sim = [[1.0] * len(texts) for _ in texts]
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            stats = _match_stats(profiles[i], profiles[j])
            same = squeezed[i] == squeezed[j]
            sim[i][j] = sim[j][i] = 1.0 if same else _f_score(stats, 2.0)
    return sim


# ---- choosing -----------------------------------------------------------------------------------------------


def _rank_key(c: Candidate) -> tuple:
    """Tie-break order, best first: higher weight, lower latency, then node id (model and content only separate
    two answers from one node)."""
    return (-c.weight, c.latency_ms, c.node, c.model, c.content)


def _mbr_scores(texts: dict[int, str], similarity: Callable[[str, str], float]) -> dict[int, float]:
    """Mean similarity of each text to every other one (fsum: the same result in any input order)."""
    idx = list(texts)
    if similarity is chrf:
        matrix = _chrf_matrix([texts[i] for i in idx])
        sims = {(a, b): matrix[x][y] for x, a in enumerate(idx) for y, b in enumerate(idx)}
    else:
        sims = {(a, b): similarity(texts[a], texts[b]) for a in idx for b in idx if a != b}
    return {a: math.fsum(sims[a, b] for b in idx if b != a) / (len(idx) - 1) for a in idx}


def select_best(
    candidates: Sequence[Candidate], *, similarity: Callable[[str, str], float] | None = chrf
) -> Selection:
    """The consensus answer among complete candidates.

    1. Unusable candidates are dropped; none left gives method "none", one gives "single".
    2. Vote, when strictly more than half of the usable candidates have an extracted final answer: the most
       common answer wins (a tie between answers goes to the larger total weight of voters, then to the higher
       MBR score of the answers' best members); its best-ranked voter is the winner. Scores are vote shares of
       the usable candidates (the share of the candidate's own answer; 0.0 without one).
    3. Otherwise MBR: the highest mean similarity to the other usable answers wins (``<think>`` blocks ignored);
       scores within 1e-9 tie. With two usable answers MBR is symmetric, so the tie-break alone decides.

    Ties end in ``_rank_key`` order: higher weight, lower latency, node id. With the default chrF and more than
    ``MBR_CHAR_BUDGET`` characters in total, n-grams are sampled by content to keep the cost bounded."""
    similarity = similarity or chrf
    zeros = [0.0] * len(candidates)
    texts = {i: strip_thinking(c.content) for i, c in enumerate(candidates) if c.outcome == "ok"}
    texts = {i: t for i, t in texts.items() if t}
    if not texts:
        return Selection(None, "none", tuple(zeros))
    if len(texts) == 1:
        (only,) = texts
        zeros[only] = 1.0
        return Selection(only, "single", tuple(zeros))
    answers = {i: a for i, a in ((i, extract_final_answer(t)) for i, t in texts.items()) if a is not None}
    if 2 * len(answers) > len(texts):
        votes = Counter(answers.values())
        top = max(votes.values())
        tied = sorted(a for a, v in votes.items() if v == top)
        members = {a: [i for i in answers if answers[i] == a] for a in tied}
        if len(tied) > 1:
            mbr = _mbr_scores(texts, similarity)

            def answer_rank(a: str) -> tuple:
                best = min(members[a], key=lambda i: (-mbr[i], _rank_key(candidates[i])))
                weight = math.fsum(candidates[i].weight for i in members[a])
                return (-weight, -round(mbr[best] / TIE_EPSILON), _rank_key(candidates[best]))

            tied.sort(key=answer_rank)
        key = tied[0]
        winner = min(members[key], key=lambda i: _rank_key(candidates[i]))
        for i, a in answers.items():
            zeros[i] = votes[a] / len(texts)
        return Selection(winner, "vote", tuple(zeros), answer_key=key)
    mbr = _mbr_scores(texts, similarity)
    best = max(mbr.values())
    contenders = [i for i, s in mbr.items() if s >= best - TIE_EPSILON]
    for i, s in mbr.items():
        zeros[i] = s
    return Selection(min(contenders, key=lambda i: _rank_key(candidates[i])), "mbr", tuple(zeros))


def can_stop_early(done: Sequence[Candidate], pending: int) -> bool:
    """True when the winning answer of the vote is settled whatever the ``pending`` candidates answer: its lead
    over the runner-up exceeds ``pending``, and the vote rule holds even if every pending candidate comes back
    usable but without a final answer. Only usable candidates count, as in ``select_best``. (A late candidate
    with the same answer and a higher weight could still become the member that carries it.)"""
    answers = [a for a in (extract_final_answer(c.content) for c in done if usable(c)) if a is not None]
    if not answers:
        return False
    usable_done = sum(1 for c in done if usable(c))
    if 2 * len(answers) <= usable_done + pending:
        return False
    counts = sorted(Counter(answers).values(), reverse=True) + [0]
    return counts[0] > counts[1] + pending


# ---- prompts for a judge or an aggregator -------------------------------------------------------------------


def _numbered(candidates: Sequence[str]) -> str:
    return "\n\n".join(f"Response {i}:\n{strip_thinking(text)}" for i, text in enumerate(candidates, 1))


def judge_prompt(question: str, candidates: Sequence[str]) -> str:
    """Universal Self-Consistency: the judge sees the numbered responses and names the one most consistent with
    the others, i.e. the majority view, answering with its number only."""
    return (
        f"I have generated the following responses to the question below.\n\nQuestion:\n{question.strip()}\n\n"
        f"{_numbered(candidates)}\n\n"
        "Select the response that is most consistent with the others, based on majority consensus, and most "
        f"likely correct. Reply with only its number, for example \"Response {min(2, len(candidates))}\"."
    )


_CHOICE_ALONE = re.compile(r"(?:response\s*)?#?\s*(\d+)\s*[.)!:]?", re.I)
_CHOICE_LEADING = re.compile(r"(?:response\s*)?#?\s*(\d+)\b(?![.,]\d)", re.I)
_CHOICE_MENTION = re.compile(r"\bresponse\s*#?\s*(\d+)", re.I)


def parse_judge_choice(text: str, count: int) -> int | None:
    """The 0-based index a judge picked: from a bare number ("2", "**2**"), a reply starting with its choice
    ("Response 2 is ..."), or prose that mentions only one response number. None when it is missing, out of
    range, or ambiguous (several different responses named)."""
    text = re.sub(r"[*_`\[\]()]", "", strip_thinking(text)).strip()
    match = _CHOICE_ALONE.fullmatch(text) or _CHOICE_LEADING.match(text)
    if match:
        number = int(match.group(1))
    else:
        named = set(_CHOICE_MENTION.findall(text))
        if len(named) != 1:
            return None
        number = int(named.pop())
    return number - 1 if 1 <= number <= count else None


def judge_orders(count: int) -> list[list[int]]:
    """Orders to show the candidates in: two candidates are judged in both orders, so that a judge that favours
    a position gives each one vote and cancels out; more are judged once, in input order."""
    return [[0, 1], [1, 0]] if count == 2 else [list(range(count))]


def combine_judgements(choices: Sequence[int | None], orders: Sequence[Sequence[int]], count: int) -> int | None:
    """The candidate most judgements picked, mapping each choice (a position in its order) back to a candidate.
    None without any valid choice. A tie goes to the lower candidate index: a judge that always picks the same
    position therefore picks candidate 0, as if it had not been asked."""
    votes = Counter(
        order[choice]
        for choice, order in zip(choices, orders)
        if choice is not None and 0 <= choice < len(order) and 0 <= order[choice] < count
    )
    return min(votes, key=lambda i: (-votes[i], i)) if votes else None


def fuse_prompt(question: str, candidates: Sequence[str]) -> str:
    """Mixture-of-Agents aggregation: the aggregator gets every response and the question, and writes one better
    answer of its own."""
    return (
        "You have been given a set of responses from various models to the latest user query. Synthesize them "
        "into a single, high-quality response. Critically evaluate the information they contain, recognizing "
        "that some of it may be biased or incorrect. Do not simply copy the given answers: offer a refined, "
        "accurate and comprehensive reply. Make it well-structured, coherent, and as accurate and reliable as "
        f"possible.\n\nResponses from models:\n\n{_numbered(candidates)}\n\nUser query:\n{question.strip()}"
    )
