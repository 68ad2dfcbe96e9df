"""Answer strategies as pure functions of candidate answers: pick one (``best``), or prompt a judge (``judge``) or
an aggregator (``fuse``).

``select_best`` follows self-consistency (Wang et al., 2022): when most answers end in a short final answer, the
most common one wins. Otherwise it uses minimum Bayes risk: the answer most similar to all the others wins, with
similarity measured by chrF (Popović, 2015, as sacrebleu computes it by default). Every tie ends in one fixed
order (weight, latency, node id), so the same answers give the same winner in any input order. ``judge_prompt``
follows Universal Self-Consistency (Chen et al., 2023), ``fuse_prompt`` Mixture-of-Agents (Wang et al., 2024).
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

_TIE_EPSILON = 1e-9  # MBR scores this close are equal: float noise must not beat the tie-break
_MBR_CHAR_BUDGET = 2000  # beyond this many characters in all, MBR samples n-grams (see _sample_chars)
_MAX_ANSWER_CHARS, _MAX_ANSWER_WORDS = 40, 5  # a longer "final answer" is prose, not a short answer


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
_MARKERS = (  # the answer follows the last marker of the first kind the text has
    ("final", re.compile(r"final\s+answer\s*(?::|=|\bis\b)", re.I)),
    ("answer", re.compile(r"\banswer\s+is\b\s*:?", re.I)),
    ("answer", re.compile(r"\banswer\s*[:=]", re.I)),
)
_SENTENCE_END = re.compile(r"\.\s|;\s|,\s+(?:because|since|as|which|so)\b")
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_MARKUP = re.compile(r"\\[,;:! ]|\\[()\[\]]|\$|`|\*\*|__")
_ASSIGNMENT = re.compile(r"^[a-z]\s*=\s*(?=\S)")
_NUMBER = re.compile(r"(?<![\w.,])([-+\u2212]?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\w,]|\.\d)")
_TOKEN = re.compile(r"[-+]?\d[\d.,]*%?|[a-z0-9][\w'-]{0,19}")
_EDGE_PUNCT = " \t.,;:!?\"'\u201c\u201d\u2018\u2019*"
_BRACKETS = {"(": ")", "[": "]", "{": "}"}


def strip_thinking(text: str) -> str:
    """The answer without its reasoning: drops ``<think>...</think>`` blocks, everything after an unclosed
    ``<think>`` (the model stopped while thinking), and everything before a stray ``</think>`` (templates such as
    DeepSeek-R1's put the opening tag in the prompt, so the output starts inside the block); then trims."""
    if "think>" not in text.lower():
        return text.strip()
    text = _THINK_BLOCK.sub("", text)
    close = text.lower().rfind("</think>")
    text = text[close + len("</think>") :] if close >= 0 else text
    opened = text.lower().find("<think>")
    return (text[:opened] if opened >= 0 else text).strip()


def usable(c: Candidate) -> bool:
    """Only complete answers take part: errors, truncated and cancelled answers, and empty ones are dropped."""
    return c.outcome == "ok" and strip_thinking(c.content) != ""


def _normalize_number(m: re.Match) -> str:
    whole, frac = m.group(2).replace(",", "").lstrip("0") or "0", (m.group(3) or "").rstrip("0")
    number = f"{whole}.{frac}" if frac else whole
    return "-" + number if m.group(1) in ("-", "\u2212") and number != "0" else number


def _strip_brackets(text: str) -> str:
    """Removes brackets around the whole text, only when the opening one closes at the very end ("(a) or (b)")."""
    while len(text) >= 2 and _BRACKETS.get(text[0]) == text[-1]:
        depth = 0
        for ch in text[:-1]:
            depth += (ch == text[0]) - (ch == text[-1])
            if depth == 0:
                return text
        text = text[1:-1].strip(_EDGE_PUNCT)
    return text


def _clean(raw: str) -> str:
    """An answer phrase as a vote key: first clause only, markup gone, lowercase, numbers normalized."""
    text = _MARKUP.sub("", _LATEX_WRAPPER.sub(r"\1", _SENTENCE_END.split(raw, maxsplit=1)[0]))
    text = " ".join(_ASSIGNMENT.sub("", _strip_brackets(text.strip(_EDGE_PUNCT)).lower()).split())
    return _NUMBER.sub(_normalize_number, text).strip(_EDGE_PUNCT)


def _boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    begin, depth = start + len("\\boxed{"), 0
    for i in range(begin, len(text) if start >= 0 else 0):  # up to the brace that closes the box
        depth += (text[i] == "{") - (text[i] == "}")
        if depth < 0:
            return text[begin:i]
    return None


def extract_final_answer(text: str) -> str | None:
    """The short final answer a text commits to, normalized for voting ("1,000" -> "1000", "3.50" -> "3.5",
    lowercase, no markup); None when it has no clear one.

    Looks, in this order, for the last ``\\boxed{...}``, "final answer: X", "the answer is X", "answer: X", and
    finally a last line that is a single number or word. Reasoning in ``<think>`` is ignored; an answer of more
    than 5 words or 40 characters is prose, not a final answer."""
    text = strip_thinking(text).replace("**", "").replace("__", "")
    raw, lower = _boxed(text), text.lower()
    for literal, marker in _MARKERS:
        if raw is None and literal in lower:  # the literal check spares most prose a regex scan
            found = list(marker.finditer(text))
            raw = text[found[-1].end() :].lstrip().partition("\n")[0] if found else None
    if raw is not None:
        answer = _clean(raw)
        short = len(answer) <= _MAX_ANSWER_CHARS and len(answer.split()) <= _MAX_ANSWER_WORDS
        return answer if answer and short else None
    last = text.rpartition("\n")[2]
    answer = _clean(last) if len(last) <= 2 * _MAX_ANSWER_CHARS else ""
    return answer if _TOKEN.fullmatch(answer) else None


def token_jaccard(a: str, b: str) -> float:
    """0..1: shared lowercase words over all words (two texts without words are identical: 1.0)."""
    wa, wb = set(re.findall(r"\w+", a.lower())), set(re.findall(r"\w+", b.lower()))
    return len(wa & wb) / len(wa | wb) if wa or wb else 1.0


# ---- chrF ---------------------------------------------------------------------------------------------------

# Per n-gram order: (counts, the counts above 1, total). With the repeated part apart, the common case (n-grams
# seen once) is matched by one C-level set intersection instead of a Python-level min per n-gram.
_Profile = list[tuple[Counter, dict, int]]


def _profile(text: str, n: int, keep: frozenset[str] | None = None) -> _Profile:
    """Character n-gram counts of orders 1..n of ``text`` (whitespace already removed). With ``keep``, only the
    n-grams whose first character is in ``keep``: a sample defined by content, so an n-gram is kept in every text
    or in none, and matches between samples are exact."""
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
        else:  # sum of min(count): the shared n-grams, plus what both repeat beyond a first occurrence
            both = ra.keys() & rb.keys()
            extra = sum(map(min, map(ra.__getitem__, both), map(rb.__getitem__, both))) - len(both)
            m = len(ca.keys() & cb.keys()) + extra
        stats.append((ha, hb, m))
    return stats


def _f_score(stats: list[tuple[int, int, int]], beta: float) -> float:
    """sacrebleu's default chrF: precision and recall averaged over the orders both texts reach, then F-beta;
    computed with each text as the hypothesis in turn and averaged, which makes it exactly symmetric."""
    effective = [(m / ha, m / hb) for ha, hb, m in stats if ha and hb]
    if not effective:
        return 0.0
    p = math.fsum(x for x, _ in effective) / len(effective)
    r = math.fsum(y for _, y in effective) / len(effective)
    b2, pr = beta * beta, p * r  # p * r, not (1 + b2) * p * r: swapping p and r must give the same bits
    f_ab = (1 + b2) * pr / (b2 * p + r) if b2 * p + r else 0.0
    f_ba = (1 + b2) * pr / (b2 * r + p) if b2 * r + p else 0.0
    return (f_ab + f_ba) / 2


def chrf(a: str, b: str, n: int = 6, beta: float = 2.0) -> float:
    """0..1: character n-gram F-score (orders 1..n, whitespace removed, recall weighted ``beta`` times) as
    sacrebleu computes it by default, averaged over both directions so that ``chrf(a, b) == chrf(b, a)``. Texts
    without characters are identical to each other (1.0) and share nothing with any other text (0.0)."""
    if n < 1:
        raise ValueError("chrF needs n >= 1")
    sa, sb = "".join(a.split()), "".join(b.split())
    if not sa or not sb:
        return 1.0 if sa == sb else 0.0
    return _f_score(_match_stats(_profile(sa, n), _profile(sb, n)), beta)


def _sample_chars(texts: list[str], rate: float) -> frozenset[str]:
    """Characters whose n-grams MBR keeps, about ``rate`` of all: taken in a fixed pseudo-random order (Knuth's
    multiplicative hash of the code point), skipping any that would overshoot. As in Broder's "mod p" shingle
    sampling, the choice depends on content only: an n-gram is kept in every candidate or in none."""
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
    """Pairwise chrF, each text's n-grams counted once rather than once per pair. Beyond _MBR_CHAR_BUDGET
    characters in all, only a content-defined sample of the n-grams is counted: exact chrF of 8 answers of 2 KB
    costs 20-30 ms in CPython, the sample about 5 ms, and MBR needs the ranking more than the last digit."""
    squeezed = ["".join(t.split()) for t in texts]
    total = sum(map(len, squeezed))
    keep = _sample_chars(squeezed, _MBR_CHAR_BUDGET / total) if total > _MBR_CHAR_BUDGET else None
    profiles = [_profile(s, 6, keep) for s in squeezed]
    sim = [[1.0] * len(texts) for _ in texts]
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if squeezed[i] != squeezed[j]:
                sim[i][j] = sim[j][i] = _f_score(_match_stats(profiles[i], profiles[j]), 2.0)
    return sim


# ---- choosing -----------------------------------------------------------------------------------------------


def _rank_key(c: Candidate) -> tuple:
    """Tie-break order, best first: higher weight, lower latency, node id (then model and content, which only
    separate two answers of one node)."""
    return (-c.weight, c.latency_ms, c.node, c.model, c.content)


def _mbr_scores(texts: dict[int, str], similarity: Callable[[str, str], float]) -> dict[int, float]:
    """Mean similarity of each text to every other one (fsum: the same result in any input order)."""
    idx = list(texts)
    if similarity is chrf:
        matrix = _chrf_matrix(list(texts.values()))
        sims = {(a, b): matrix[x][y] for x, a in enumerate(idx) for y, b in enumerate(idx)}
    else:
        sims = {(a, b): similarity(texts[a], texts[b]) for a in idx for b in idx if a != b}
    return {a: math.fsum(sims[a, b] for b in idx if b != a) / (len(idx) - 1) for a in idx}


def select_best(
    candidates: Sequence[Candidate], *, similarity: Callable[[str, str], float] | None = chrf
) -> Selection:
    """The consensus answer among the complete candidates (``similarity=None`` means chrF).

    1. Unusable candidates are dropped; none left gives method "none", one gives "single" (score 1.0). When
       every answer was cut at the length limit, the client asked for short answers: those are compared instead.
    2. Vote, when strictly more than half of the usable candidates have an extracted final answer: the most
       common answer wins (a tie between answers goes to the larger total weight of their voters, then to the
       higher MBR score of their best members) and its best-ranked voter is the winner. Scores are vote shares:
       the votes for the candidate's own answer over the usable candidates (0.0 without an answer).
    3. Otherwise MBR: the highest mean similarity to the other usable answers wins, ``<think>`` blocks ignored;
       scores within 1e-9 tie. With two usable answers MBR is symmetric, so the tie-break alone decides.

    Ties end in ``_rank_key`` order: higher weight, lower latency, node id. Answers of more than 2,000 characters
    in all are compared by chrF on a content-defined sample of their n-grams (see ``_chrf_matrix``)."""
    similarity = similarity or chrf
    scores = [0.0] * len(candidates)
    texts = {i: strip_thinking(c.content) for i, c in enumerate(candidates) if c.outcome == "ok"}
    texts = {i: t for i, t in texts.items() if t}
    if not texts:
        texts = {i: t for i, c in enumerate(candidates) if c.outcome == "truncated" and (t := strip_thinking(c.content))}
    if len(texts) < 2:
        for i in texts:
            scores[i] = 1.0
        return Selection(next(iter(texts), None), "single" if texts else "none", tuple(scores))
    answers = {i: a for i, a in ((i, extract_final_answer(t)) for i, t in texts.items()) if a is not None}
    if 2 * len(answers) > len(texts):
        votes = Counter(answers.values())
        tied = sorted(a for a, v in votes.items() if v == max(votes.values()))
        members = {a: [i for i in answers if answers[i] == a] for a in tied}
        if len(tied) > 1:
            mbr = _mbr_scores(texts, similarity)

            def answer_rank(a: str) -> tuple:
                best = min(members[a], key=lambda i: (-mbr[i], _rank_key(candidates[i])))
                weight = math.fsum(candidates[i].weight for i in members[a])
                return (-weight, -mbr[best], _rank_key(candidates[best]))

            tied.sort(key=answer_rank)
        for i, a in answers.items():
            scores[i] = votes[a] / len(texts)
        winner = min(members[tied[0]], key=lambda i: _rank_key(candidates[i]))
        return Selection(winner, "vote", tuple(scores), answer_key=tied[0])
    mbr = _mbr_scores(texts, similarity)
    for i, s in mbr.items():
        scores[i] = s
    contenders = [i for i, s in mbr.items() if s >= max(mbr.values()) - _TIE_EPSILON]
    return Selection(min(contenders, key=lambda i: _rank_key(candidates[i])), "mbr", tuple(scores))


def can_stop_early(done: Sequence[Candidate], pending: int) -> bool:
    """True when the answer that wins the vote is settled whatever the ``pending`` candidates answer: its lead
    over the runner-up exceeds ``pending``, and the vote rule still holds if every pending candidate comes back
    usable without a final answer. Only usable candidates count, as in ``select_best``. (A late candidate with
    the same answer and a higher weight could still become the one that carries it.)"""
    texts = [strip_thinking(c.content) for c in done if c.outcome == "ok"]
    texts = [t for t in texts if t]
    answers = [a for a in map(extract_final_answer, texts) if a is not None]
    if not answers or 2 * len(answers) <= len(texts) + pending:
        return False
    counts = sorted(Counter(answers).values(), reverse=True) + [0]
    return counts[0] > counts[1] + pending


# ---- prompts for a judge or an aggregator -------------------------------------------------------------------


def _numbered(candidates: Sequence[str]) -> str:
    return "\n\n".join(f"Response {i}:\n{strip_thinking(text)}" for i, text in enumerate(candidates, 1))


def judge_prompt(question: str, candidates: Sequence[str]) -> str:
    """Universal Self-Consistency: the judge sees the numbered responses (reasoning stripped) and names the one
    most consistent with the others, by its number only."""
    return (
        f"I have generated the following responses to the question below.\n\nQuestion:\n{question.strip()}\n\n"
        f"{_numbered(candidates)}\n\nSelect the response that is most consistent with the others, based on "
        "majority consensus, and most likely correct. Reply with only its number, for example "
        f'"Response {min(2, len(candidates))}".'
    )


_CHOICE_ALONE = re.compile(r"(?:response\s*)?#?\s*(\d+)\s*[.)!:]?", re.I)
_CHOICE_NAMED = re.compile(r"\bresponse\s*#?\s*(\d+)", re.I)
_CHOICE_LEADING = re.compile(r"#?\s*(\d+)\b(?![.,]\d)")


def parse_judge_choice(text: str, count: int) -> int | None:
    """The 0-based index a judge picked: from a bare choice ("2", "**2**", "Response 2"), from prose that names
    one response ("The most consistent response is Response 2."), or from prose that starts with a number and
    names none. None when the choice is missing, out of range, or ambiguous (several responses named)."""
    text = re.sub(r"[*_`\[\]()]", "", strip_thinking(text)).strip()
    named = set(_CHOICE_NAMED.findall(text))
    match = _CHOICE_ALONE.fullmatch(text) or (None if named else _CHOICE_LEADING.match(text))
    number = int(match.group(1)) if match else int(named.pop()) if len(named) == 1 else 0
    return number - 1 if 1 <= number <= count else None


def judge_orders(count: int) -> list[list[int]]:
    """Orders to show the candidates in: two are judged in both orders, so that a judge's taste for a position
    gives each one vote and cancels out; more are judged once, in input order."""
    return [[0, 1], [1, 0]] if count == 2 else [list(range(count))]


def combine_judgements(choices: Sequence[int | None], orders: Sequence[Sequence[int]], count: int) -> int | None:
    """The candidate most judgements picked, each choice (a position in its order) mapped back to a candidate;
    None without a valid choice. A tie goes to the lower index: a judge that picks the same position in both
    orders cancels out, and candidate 0 wins by that rule alone."""
    votes = Counter(
        order[choice]
        for choice, order in zip(choices, orders)
        if choice is not None and 0 <= choice < len(order) and 0 <= order[choice] < count
    )
    return min(votes, key=lambda i: (-votes[i], i)) if votes else None


def fuse_prompt(question: str, candidates: Sequence[str]) -> str:
    """Mixture-of-Agents aggregation: the aggregator gets every response (reasoning stripped) and the question,
    and writes one better answer of its own."""
    return (
        "You have been given a set of responses from various models to the latest user query. Synthesize them "
        "into a single, high-quality response. Critically evaluate the information they contain, recognizing "
        "that some of it may be biased or incorrect. Do not simply copy the given answers: offer a refined, "
        "accurate and comprehensive reply that is well-structured, coherent, accurate and reliable."
        f"\n\nResponses from models:\n\n{_numbered(candidates)}\n\nUser query:\n{question.strip()}"
    )
