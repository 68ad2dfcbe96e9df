"""A tiny, fully deterministic LLaMA model as a GGUF file, built on the spot: a real llama.cpp serves it and it
always answers one fixed sentence.

How it works. The file is an ordinary ``llama`` architecture GGUF whose transformer blocks are all zero: with
zero attention and FFN weights each block adds nothing to the residual stream, so after the last block the
stream is still the token's embedding, and the logits are ``output @ rmsnorm(embedding[token])``. The next token
therefore depends only on the current one (a bigram model), and the output matrix spells out a chain:

* every token that is not part of the answer (the whole prompt, whatever the chat template made of it) leads
  to the first answer token;
* answer token *i* leads to answer token *i + 1*, and the last one leads to the end-of-generation token.

So greedy decoding from any prompt writes the answer and stops (``finish_reason`` "stop"); a ``max_tokens``
below :func:`answer_token_count` cuts it (``finish_reason`` "length"). The logit margin is so wide
(:data:`LOGIT_MARGIN`) that sampling at any usual temperature picks the same tokens.

Embeddings are one-hot-ish: all non-answer tokens share direction 0, answer token *i* has direction *i + 1*,
so ``n_embd`` stays small (64 for answers of up to 63 pieces).

The vocabulary is GPT-2 style byte-level BPE (``tokenizer.ggml.model = "gpt2"``): the 256 byte tokens (so any
text, the prompt included, tokenizes and detokenizes exactly), one merged token (two spaces: llama.cpp wants at
least one merge), the ChatML control tokens, and one token per answer piece. A bigram chain needs every answer token to be a distinct id, so the answer is cut into pieces at
word starts (``"The"``, ``" quick"``, ...) and pieces whose text would repeat are merged with their neighbour.
No merge builds them, so the tokenizer turns text (the answer included) into byte tokens: only generation
produces the piece tokens, and their text concatenates to exactly the answer.

The chat template is ChatML, written in Jinja (llama.cpp's server renders it with its Jinja engine), so
``/v1/chat/completions`` works. The output is a pure function of the arguments: same bytes each time.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_ANSWER",
    "LOGIT_MARGIN",
    "answer_pieces",
    "answer_token_count",
    "build_tiny_gguf",
]

DEFAULT_ANSWER = "The quick brown fox jumps over the lazy dog."

LOGIT_MARGIN = 50.0  # logit of the chosen next token; every other token gets 0

BOS = "<s>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of turn, and the model's EOS
SPECIAL_TOKENS = (BOS, IM_START, IM_END)
# llama.cpp refuses a "gpt2" vocabulary without merges (and gguf drops an empty array), so there is one real
# merge: two spaces into one token, as in GPT-2's own vocabulary.
MERGED = "  "

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_HEAD_DIM = 64


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_CHARS = _bytes_to_unicode()


def _encode(text: str) -> str:
    return "".join(_BYTE_CHARS[b] for b in text.encode("utf-8"))


def answer_pieces(answer: str) -> list[str]:
    """The answer cut into the pieces the model generates, one token each (their concatenation is ``answer``).

    Cut at the start of each word (a piece carries the whitespace before its word); a piece whose text is
    already taken (by an earlier piece, a byte token or a control token) is merged with the next one, and a
    clash left at the end is merged backwards."""
    if not answer:
        raise ValueError("the answer must not be empty")
    words = re.findall(r"\s*\S+|\s+$", answer)
    assert "".join(words) == answer
    taken = {*SPECIAL_TOKENS, MERGED}
    pieces: list[str] = []
    current = ""
    for word in words:
        current += word
        if current in taken or len(current.encode("utf-8")) < 2:
            continue  # single bytes would clash with the byte tokens: grow the piece
        pieces.append(current)
        taken.add(current)
        current = ""
    if current:  # a leftover that clashed: merge it into the pieces before it until it is unique
        while pieces and (current in taken or len(current.encode("utf-8")) < 2):
            previous = pieces.pop()
            taken.discard(previous)
            current = previous + current
        if current in SPECIAL_TOKENS or current == MERGED or len(current.encode("utf-8")) < 2:
            raise ValueError(f"cannot make a token chain for the answer {answer!r}")
        pieces.append(current)
    assert "".join(pieces) == answer and len(set(pieces)) == len(pieces)
    return pieces


def answer_token_count(answer: str = DEFAULT_ANSWER) -> int:
    """How many tokens the model generates for ``answer`` before its EOS (``max_tokens`` below this cuts it)."""
    return len(answer_pieces(answer))


def build_tiny_gguf(
    path: Path,
    *,
    answer: str = DEFAULT_ANSWER,
    name: str = "dcn-tiny",
    n_layer: int = 1,
    context_length: int = 4096,
    endless: bool = False,
) -> Path:
    """Write the tiny model that always answers ``answer`` to ``path`` (a GGUF file of a few hundred KB).

    ``endless``: the last piece leads back to the first instead of to EOS, so the model repeats the answer
    until ``max_tokens`` or the context runs out (for tests of long streams, cancellation, disconnects)."""
    import gguf  # a test-only dependency: imported here so that importing this module costs nothing

    path = Path(path)
    pieces = answer_pieces(answer)

    # Vocabulary: 256 byte tokens, the merged token, the control tokens, then the answer pieces.
    tokens = [_BYTE_CHARS[b] for b in range(256)] + [_encode(MERGED)]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    special_ids = {}
    for text in SPECIAL_TOKENS:
        special_ids[text] = len(tokens)
        tokens.append(text)
        types.append(gguf.TokenType.CONTROL)
    first_piece_id = len(tokens)
    for piece in pieces:
        tokens.append(_encode(piece))
        types.append(gguf.TokenType.NORMAL)
    if len(set(tokens)) != len(tokens):
        raise AssertionError("token texts must be unique")  # answer_pieces() should have seen to it
    n_vocab = len(tokens)
    eos_id = special_ids[IM_END]

    # Direction 0 for every non-answer token, direction i + 1 for answer piece i.
    n_embd = _HEAD_DIM * (len(pieces) // _HEAD_DIM + 1)
    n_head = n_embd // _HEAD_DIM
    n_ff = n_embd
    embedding = np.zeros((n_vocab, n_embd), dtype=np.float32)  # numpy (rows, cols) = GGUF (ne1, ne0)
    embedding[:first_piece_id, 0] = 1.0
    output = np.zeros((n_vocab, n_embd), dtype=np.float32)
    # rmsnorm(one-hot) = sqrt(n_embd) * one-hot (output_norm weight 1): scale so the logit is LOGIT_MARGIN.
    value = LOGIT_MARGIN / np.sqrt(n_embd)
    output[first_piece_id, 0] = value  # anything outside the answer -> first piece
    for i in range(len(pieces)):
        embedding[first_piece_id + i, i + 1] = 1.0
        if i + 1 < len(pieces):
            following = first_piece_id + i + 1
        else:
            following = first_piece_id if endless else eos_id
        output[following, i + 1] = value

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_description(f"dcn test model: always answers {answer!r}" + (", endlessly" if endless else ""))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(_HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(n_vocab)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    space = _encode(" ")
    writer.add_token_merges([f"{space} {space}"])
    writer.add_bos_token_id(special_ids[BOS])
    writer.add_eos_token_id(eos_id)
    writer.add_eot_token_id(eos_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    zeros_sq = np.zeros((n_embd, n_embd), dtype=np.float32)
    ones = np.ones(n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embedding)
    for layer in range(n_layer):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", ones)
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{prefix}.{part}.weight", zeros_sq)
        writer.add_tensor(f"{prefix}.ffn_norm.weight", ones)
        writer.add_tensor(f"{prefix}.ffn_gate.weight", np.zeros((n_ff, n_embd), dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_up.weight", np.zeros((n_ff, n_embd), dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_down.weight", np.zeros((n_embd, n_ff), dtype=np.float32))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
