"""Answer strategies (p2pnode.core.combine): recorded candidate sets with exact outcomes, tables for the parsers,
and properties (symmetry, determinism under reordering) checked with hypothesis."""

from __future__ import annotations

import random
from dataclasses import replace
from collections import Counter
from statistics import mean

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.core.combine import (
    Candidate,
    Selection,
    can_stop_early,
    chrf,
    combine_judgements,
    extract_final_answer,
    fuse_prompt,
    judge_orders,
    judge_prompt,
    parse_judge_choice,
    select_best,
    strip_thinking,
    token_jaccard,
    usable,
)


def cand(node: str, content: str, *, weight: float = 1.0, latency: float = 10.0, outcome: str = "ok") -> Candidate:
    return Candidate(node=node, model="m", content=content, outcome=outcome, latency_ms=latency, weight=weight)


def reference_chrf(a: str, b: str, n: int = 6, beta: float = 2.0) -> float:
    """chrF written the plain way (sacrebleu's default: mean P and R over effective orders, then F-beta), both
    directions averaged: the oracle for the fast implementation."""

    def grams(text: str) -> list[Counter]:
        text = "".join(text.split())
        return [Counter(text[i : i + k] for i in range(len(text) - k + 1)) for k in range(1, n + 1)]

    def directional(hyp: list[Counter], ref: list[Counter]) -> float:
        pairs = [(sum((h & r).values()), h.total(), r.total()) for h, r in zip(hyp, ref) if h and r]
        if not pairs:
            return 0.0
        p, r = mean(m / th for m, th, _ in pairs), mean(m / tr for m, _, tr in pairs)
        return (1 + beta**2) * p * r / (beta**2 * p + r) if p + r else 0.0

    ga, gb = grams(a), grams(b)
    return (directional(ga, gb) + directional(gb, ga)) / 2


# ---- strip_thinking, usable ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  plain answer \n", "plain answer"),
        ("<think>weighing 41 against 42</think>The answer is 42.", "The answer is 42."),
        ("<THINK>shouting</THINK> quiet", "quiet"),
        ("<think>a</think>one <think>b</think>two", "one two"),
        ("<think>the model ran out of tokens while thinking", ""),  # unclosed leading block: nothing left
        ("Answer first. <think>then an unclosed afterthought", "Answer first."),
        ("reasoning whose opening tag was in the prompt</think>\nParis", "Paris"),
    ],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (cand("n", "Paris"), True),
        (cand("n", "Paris", outcome="error"), False),
        (cand("n", "Paris", outcome="truncated"), False),
        (cand("n", "Paris", outcome="cancelled"), False),
        (cand("n", ""), False),
        (cand("n", " \n\t"), False),
        (cand("n", "<think>only thoughts</think>"), False),
    ],
)
def test_usable(candidate, expected):
    assert usable(candidate) is expected


# ---- extract_final_answer -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"Summing up, we get \boxed{1,000}.", "1000"),
        (r"So $x = \boxed{\frac{1}{2}}$ and we are done.", r"\frac{1}{2}"),
        ("Each costs 1.75, so the answer is 3.50.", "3.5"),
        ("Final answer: 42", "42"),
        ("**Final Answer:** $18", "18"),
        ("Final Answer: The final answer is 12", "12"),  # the last marker wins
        ("The answer is x = 5, because 2x = 10.", "5"),
        ("The answer is Paris.", "paris"),
        ("Answer: (C)", "c"),
        ("Answer:\n-0.50", "-0.5"),
        ("It costs $1,234.50 in all.\nFinal answer: $1,234.50", "1234.5"),
        ("the answer is 007", "7"),
        ("The answer is 50%.", "50%"),
        ("Answer: \\text{Yes}", "yes"),
        ("Let me think step by step.\n\n42", "42"),  # a last line that is just a number
        ("Working...\n**B**", "b"),  # ... or a short token
        ("<think>so the answer is 3</think>The answer is 4.", "4"),  # reasoning does not count
        ("", None),
        ("I am not sure about this one.", None),
        ("The capital of France is Paris.", None),  # no marker and the last line is a sentence
        ("Here is the code:\n```\nprint(1)\n```", None),
        ("The answer is the set of all points equidistant from the two foci", None),  # prose, not a short answer
        (r"An unfinished \boxed{12", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


# ---- similarity ---------------------------------------------------------------------------------------------


def test_chrf_identities():
    assert chrf("The quick brown fox.", "The quick brown fox.") == 1.0
    assert chrf("a b c", "abc") == 1.0  # whitespace is removed before counting
    assert chrf("aaaa", "bbbb") == 0.0
    assert chrf("", " ") == 1.0 and chrf("", "x") == 0.0
    with pytest.raises(ValueError):
        chrf("a", "a", n=0)


def test_chrf_worked_example():
    # "ab" vs "abc", orders 1-2. ab->abc: P = (2/2 + 1/1)/2 = 1, R = (2/3 + 1/2)/2 = 7/12, F2 = 7/11.
    # abc->ab swaps P and R: F2 = 7/8. The mean of both directions is 133/176.
    assert chrf("ab", "abc", n=2) == pytest.approx(133 / 176, abs=1e-15)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab cd", max_size=40), st.text(alphabet="ab cd", max_size=40), st.integers(1, 6))
def test_chrf_matches_the_plain_definition_and_is_symmetric(a, b, n):
    # A small alphabet makes repeated n-grams common, which is the case the fast counting handles specially.
    score = chrf(a, b, n=n)
    assert score == chrf(b, a, n=n)
    assert 0.0 <= score <= 1.0
    if "".join(a.split()) and "".join(b.split()):
        assert score == pytest.approx(reference_chrf(a, b, n), abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("The cat sat", "the CAT sat!", 1.0),
        ("one two", "three four", 0.0),
        ("a b c", "b c d", 0.5),
        ("", "", 1.0),
    ],
)
def test_token_jaccard(a, b, expected):
    assert token_jaccard(a, b) == expected


# ---- select_best --------------------------------------------------------------------------------------------


def test_a_clear_majority_wins_the_vote_and_its_heaviest_voter_carries_it():
    candidates = [
        cand("n0", "Adding them up, the answer is 42."),
        cand("n1", "Final answer: 42"),
        cand("n2", "The answer is 41."),
        cand("n3", r"We find \boxed{42}", weight=2.0),
    ]
    assert select_best(candidates) == Selection(3, "vote", (0.75, 0.75, 0.25, 0.75), answer_key="42")


def test_a_tie_between_answers_goes_to_the_larger_total_weight():
    candidates = [
        cand("n0", "answer: 7"),
        cand("n1", "answer: 7"),
        cand("n2", "answer: 8", weight=3.0),
        cand("n3", "answer: 8", weight=0.5),
    ]
    assert select_best(candidates) == Selection(2, "vote", (0.5, 0.5, 0.5, 0.5), answer_key="8")


def test_a_tie_in_votes_and_weight_goes_to_the_answer_whose_best_member_agrees_most():
    explained = "The answer is 7. Both trains meet after seven hours of travel."
    candidates = [cand("b", explained), cand("a", explained), cand("c", "The answer is 9."), cand("d", "Answer: 9")]
    # The two identical explanations are each other's perfect match, so 7's best member has the higher MBR
    # score; between the two, the node id decides.
    assert select_best(candidates) == Selection(1, "vote", (0.5, 0.5, 0.5, 0.5), answer_key="7")


def test_without_a_majority_of_final_answers_mbr_picks_the_most_central_answer():
    texts = [
        "Paris is the capital of France.",
        "The capital of France is Paris.",
        "France's capital city is Paris.",
        "I think it might be Lyon, but I am not sure.",
    ]
    selection = select_best([cand(f"n{i}", t) for i, t in enumerate(texts)])
    assert (selection.winner, selection.method, selection.answer_key) == (1, "mbr", None)
    expected = [mean(chrf(t, o) for o in texts if o is not t) for t in texts]
    assert selection.scores == pytest.approx(expected, abs=1e-12)
    assert min(selection.scores) == selection.scores[3]  # the outlier


def test_exactly_half_with_a_final_answer_is_not_a_majority():
    candidates = [
        cand("n0", "Answer: 5"),
        cand("n1", "answer: 5"),
        cand("n2", "The weather is nice today."),
        cand("n3", "It is sunny and warm outside."),
    ]
    selection = select_best(candidates)
    assert (selection.method, selection.winner) == ("mbr", 1)


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        ({"weight": 1.0}, {"weight": 2.0}, 1),  # higher weight
        ({"latency": 30.0}, {"latency": 20.0}, 1),  # then lower latency
        ({}, {}, 0),  # then node id ("n0" < "n1")
    ],
)
def test_two_candidates_without_a_vote_are_decided_by_the_tie_break(first, second, winner):
    # MBR is symmetric: with two answers both score chrf(a, b), and only the tie-break can decide.
    a, b = "Rome was not built in a day.", "Patience builds great cities over time."
    selection = select_best([cand("n0", a, **first), cand("n1", b, **second)])
    assert selection.method == "mbr" and selection.winner == winner
    assert selection.scores == (chrf(a, b), chrf(a, b))


def test_unusable_candidates_are_dropped_and_one_left_is_single():
    candidates = [
        cand("n0", "Final answer: 1", outcome="error"),
        cand("n1", "Final answer: 1", outcome="truncated"),
        cand("n2", "Final answer: 1", outcome="cancelled"),
        cand("n3", ""),
        cand("n4", "<think>only thinking</think>"),
        cand("n5", "Final answer: 2"),
    ]
    assert select_best(candidates) == Selection(5, "single", (0.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def test_unusable_candidates_neither_vote_nor_count():
    candidates = [
        cand("n0", "Final answer: 1", outcome="error"),
        cand("n1", "Final answer: 1", outcome="truncated"),
        cand("n2", "Final answer: 2"),
        cand("n3", "Final answer: 2"),
    ]
    assert select_best(candidates) == Selection(2, "vote", (0.0, 0.0, 1.0, 1.0), answer_key="2")


def test_nothing_usable():
    candidates = [cand("n0", "", outcome="error"), cand("n1", "", outcome="truncated"), cand("n2", "x", outcome="cancelled")]
    assert select_best(candidates) == Selection(None, "none", (0.0, 0.0, 0.0))
    assert select_best([]) == Selection(None, "none", ())


def test_truncated_answers_are_compared_only_when_every_answer_was_cut_short():
    # The client asked for few tokens: cut answers are all there is, and the consensus among them wins.
    cut = [cand("n0", "The answer is"), cand("n1", "The answer is"), cand("n2", "Dogs bark")]
    cut = [replace(c, outcome="truncated") for c in cut]
    assert select_best(cut).winner in (0, 1)
    # One complete answer beats any number of cut ones.
    assert select_best([*cut, cand("n3", "Complete.")]) == Selection(3, "single", (0.0, 0.0, 0.0, 1.0))


def test_thinking_is_ignored_when_voting_and_comparing():
    thoughts = "<think>" + "Perhaps 41? Let me recount the apples once more. " * 20 + "</think>"
    voted = select_best([cand("n0", thoughts + "The answer is 42."), cand("n1", "The answer is 42."),
                         cand("n2", "<think>the answer is 42</think>The answer is 41.")])
    assert (voted.winner, voted.answer_key) == (0, "42")
    a, b, c = "Cats sleep most of the day.", "Most of the day, cats sleep.", "Dogs bark at night."
    plain = select_best([cand("n0", a), cand("n1", b), cand("n2", c)])
    thinking = select_best([cand("n0", thoughts + a), cand("n1", b), cand("n2", "<think>cats</think>" + c)])
    assert thinking == plain


def test_a_custom_similarity_is_used_as_given():
    texts = ["red green blue", "red green", "blue yellow", "purple"]
    selection = select_best([cand(f"n{i}", t) for i, t in enumerate(texts)], similarity=token_jaccard)
    assert selection.method == "mbr" and selection.winner == 0
    assert selection.scores[0] == pytest.approx((2 / 3 + 1 / 4 + 0) / 3)


def paraphrases(seed: int, count: int, size: int) -> list[str]:
    """Long answers: ``count - 2`` light edits of one text and two unrelated texts (the outliers)."""
    rng = random.Random(seed)
    words = "the of and a to in is you that it he was for on are as with his they at be this have from".split()
    base = [rng.choice(words) + rng.choice(["", "s", "ed", "ing"]) for _ in range(size // 4)]
    texts = []
    for _ in range(count - 2):
        edited = [w if rng.random() > 0.1 else rng.choice(words) for w in base]
        texts.append(" ".join(edited))
    texts += [" ".join(rng.choice(words) for _ in range(size // 4)) for _ in range(2)]
    return texts


def test_long_answers_still_pick_the_consensus():
    # 8 answers of about 2 KB: above the budget, so MBR compares a content-defined sample of the n-grams.
    texts = paraphrases(seed=7, count=8, size=2400)
    assert sum(len("".join(t.split())) for t in texts) > 2000
    selection = select_best([cand(f"n{i}", t) for i, t in enumerate(texts)])
    assert selection.method == "mbr" and selection.winner in range(6)
    assert max(selection.scores[6:]) < min(selection.scores[:6])
    twins = select_best([cand("n0", texts[0]), cand("n1", texts[0]), cand("n2", texts[7])])
    assert twins.scores[0] == twins.scores[1] > twins.scores[2]


VOTE_POOL = ["The answer is 42.", "Final answer: 42", "The answer is 41.", "answer: 41", "Hard to say, honestly."]
MBR_POOL = [
    "Paris is the capital of France.",
    "The capital of France is Paris.",
    "France's capital city is Paris.",
    "Lyon is a large city in France.",
    "Paris is the capital of France.",
]


@st.composite
def shuffled_sets(draw, pool: list[str]):
    texts = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6))
    candidates = [
        cand(
            f"n{i}",
            text,
            weight=draw(st.sampled_from([1.0, 2.0])),  # few distinct values, so ties are common
            latency=draw(st.sampled_from([5.0, 9.0])),
            outcome=draw(st.sampled_from(["ok", "ok", "ok", "error"])),
        )
        for i, text in enumerate(texts)
    ]
    return candidates, draw(st.permutations(range(len(candidates))))


@settings(max_examples=80, deadline=None)
@given(st.one_of(shuffled_sets(VOTE_POOL), shuffled_sets(MBR_POOL)))
def test_the_winner_does_not_depend_on_input_order(case):
    candidates, order = case
    before = select_best(candidates)
    after = select_best([candidates[i] for i in order])
    winner = lambda s, cs: None if s.winner is None else cs[s.winner].node  # noqa: E731
    assert winner(after, [candidates[i] for i in order]) == winner(before, candidates)
    assert after.scores == tuple(before.scores[i] for i in order)
    assert (after.method, after.answer_key) == (before.method, before.answer_key)


@settings(max_examples=10, deadline=None)
@given(st.permutations(range(8)))
def test_long_answers_give_the_same_winner_in_any_order(order):
    candidates = [cand(f"n{i}", t) for i, t in enumerate(paraphrases(seed=3, count=8, size=2400))]
    before, after = select_best(candidates), select_best([candidates[i] for i in order])
    assert candidates[order[after.winner]].node == candidates[before.winner].node
    assert after.scores == tuple(before.scores[i] for i in order)


# ---- early stop ---------------------------------------------------------------------------------------------


def answers(*contents: str, outcome: str = "ok") -> list[Candidate]:
    return [cand(f"n{i}", c, outcome=outcome) for i, c in enumerate(contents)]


PROSE = "Hard to say without more context."


@pytest.mark.parametrize(
    ("done", "pending", "expected"),
    [
        ([], 3, False),
        (answers("answer: 4"), 0, True),
        (answers("answer: 4", "answer: 4", "answer: 4"), 0, True),
        (answers("answer: 4", "answer: 4"), 1, True),  # 2 > 0 + 1, and 2 of at most 3 have an answer
        (answers("answer: 4", "answer: 4"), 2, False),  # two late "5"s would tie
        (answers("answer: 4", "answer: 5"), 0, False),  # a tie is not a lead
        (answers("answer: 4", "answer: 4", "answer: 5"), 1, False),
        (answers("answer: 4", "answer: 4", "answer: 4", "answer: 5"), 1, True),
        (answers("answer: 4", "answer: 4", PROSE, PROSE), 0, False),  # half with an answer: MBR decides
        (answers("answer: 4", "answer: 4", "answer: 4", PROSE), 1, True),  # 3 of 5 at worst
        (answers("answer: 4", "answer: 4", "answer: 4", PROSE, PROSE), 1, False),  # 3 of 6 at worst
        (answers(PROSE, PROSE), 0, False),  # no vote leader
        (answers("answer: 4", "answer: 4") + answers("answer: 5", "", outcome="error"), 1, True),  # errors never count
    ],
)
def test_can_stop_early(done, pending, expected):
    assert can_stop_early(done, pending) is expected


# ---- judge and aggregator -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("Response 2", 3, 1),
        ("2", 3, 1),
        ("**2**", 3, 1),
        ("response #3", 3, 2),
        ("[1]", 3, 0),
        ("2. It agrees with the others.", 3, 1),
        ("The most consistent response is Response 3.", 3, 2),
        ("Response 2 is the best: it matches the majority.", 3, 1),
        ("<think>Response 1 looks wrong</think>Response 2", 3, 1),
        ("Response 1 and Response 2 agree.", 3, None),  # ambiguous
        ("Response 4", 3, None),  # out of range
        ("0", 3, None),
        ("2.5", 3, None),
        ("", 3, None),
        ("I cannot decide.", 3, None),
    ],
)
def test_parse_judge_choice(text, count, expected):
    assert parse_judge_choice(text, count) == expected


def test_judge_orders():
    assert judge_orders(1) == [[0]]
    assert judge_orders(2) == [[0, 1], [1, 0]]
    assert judge_orders(3) == [[0, 1, 2]]


@pytest.mark.parametrize(
    ("choices", "count", "expected"),
    [
        ([1, 0], 2, 1),  # candidate 1 in both orders
        ([0, 1], 2, 0),  # candidate 0 in both orders
        ([0, 0], 2, 0),  # always the first position: one vote each, the tie goes to the lower index
        ([1, 1], 2, 0),  # always the second position: the same
        ([None, 0], 2, 1),  # one judgement failed: the other decides
        ([5, 0], 2, 1),  # an out-of-range choice is ignored
        ([None, None], 2, None),
        ([2], 3, 2),
        ([None], 3, None),
    ],
)
def test_combine_judgements(choices, count, expected):
    assert combine_judgements(choices, judge_orders(count), count) == expected


def test_prompts_show_every_response_and_the_question():
    question = "What is the capital of France?"
    responses = ["Paris.", "It is Paris, of course.", "<think>Lyon?</think>Paris"]
    for build in (judge_prompt, fuse_prompt):
        prompt = build(question, responses)
        assert question in prompt
        assert all(f"Response {i}:\n{strip_thinking(r)}" in prompt for i, r in enumerate(responses, 1))
        assert "Lyon" not in prompt  # reasoning is not shown
        assert build(question, responses) == prompt
    assert 'Reply with only its number, for example "Response 2".' in judge_prompt(question, responses)
    assert "Synthesize" in fuse_prompt(question, responses)
    assert fuse_prompt(question, responses).endswith(question)
