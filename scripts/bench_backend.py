"""What the backend layer costs: tokens/s and time to first token through dcn's OpenAI-compatible adapter vs. the
same server called directly (httpx + SSE parsing by hand), on a real llama.cpp server (xllamacpp) serving the
tiny deterministic model, which generates endlessly until max_tokens. Targets: under 2% fewer tokens/s and under
1 ms more to the first token.

    python scripts/bench_backend.py [--requests 30] [--tokens 400]

Requests alternate between the two paths so both see the same machine load; figures are medians."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pnode.backends.base import BackendConfig, ChatRequest  # noqa: E402
from p2pnode.backends.llama_process import llama_server  # noqa: E402
from p2pnode.backends.openai import OpenAIBackend  # noqa: E402
from p2pnode.testing.tiny_gguf import build_tiny_gguf  # noqa: E402

MESSAGES = [{"role": "user", "content": "Go."}]


async def direct(client: httpx.AsyncClient, tokens: int) -> tuple[float, float, int]:
    """(seconds to first token, total seconds, tokens) calling the server with plain httpx."""
    body = {"model": "tiny", "messages": MESSAGES, "stream": True, "max_tokens": tokens}
    start = time.perf_counter()
    first = None
    count = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    count += 1
    return first - start, time.perf_counter() - start, count


async def through_backend(backend: OpenAIBackend, tokens: int) -> tuple[float, float, int]:
    request = ChatRequest(model="tiny", messages=tuple(MESSAGES), options={"num_predict": tokens})
    start = time.perf_counter()
    first = None
    count = 0
    async with backend.open_chat(request) as chunks:
        async for chunk in chunks:
            if chunk.content:
                first = first or time.perf_counter()
                count += 1
    return first - start, time.perf_counter() - start, count


async def main(requests: int, tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_gguf(Path(tmp) / "endless.gguf", endless=True)
        async with llama_server(model, alias="tiny", parallel=1, ctx_size=4096, threads=1) as server:
            backend = OpenAIBackend(server.base_url, BackendConfig())
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                for _ in range(3):  # warm both paths
                    await direct(client, tokens)
                    await through_backend(backend, tokens)
                results: dict[str, list[tuple[float, float, int]]] = {"direct": [], "backend": []}
                for i in range(requests):
                    results["direct"].append(await direct(client, tokens))
                    results["backend"].append(await through_backend(backend, tokens))
                    print(f"request pair {i + 1}/{requests}", file=sys.stderr)
            await backend.aclose()
    ttft = {k: statistics.median(r[0] for r in v) * 1000 for k, v in results.items()}
    rate = {k: statistics.median(r[2] / r[1] for r in v) for k, v in results.items()}
    loss = (1 - rate["backend"] / rate["direct"]) * 100
    added = ttft["backend"] - ttft["direct"]
    print("| what | direct | through the backend layer | difference | target | pass |")
    print("|---|---|---|---|---|---|")
    print(f"| tokens/s (median, {tokens} tokens) | {rate['direct']:.0f} | {rate['backend']:.0f} | {loss:+.1f}% fewer | "
          f"< 2% | {'yes' if loss < 2 else 'no'} |")
    print(f"| time to first token (median) | {ttft['direct']:.2f} ms | {ttft['backend']:.2f} ms | {added:+.2f} ms | "
          f"< 1 ms | {'yes' if added < 1 else 'no'} |")
    print(f"\n{requests} request pairs, alternating; llama.cpp (xllamacpp) on the tiny model, 1 slot, 1 thread.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=400)
    args = parser.parse_args()
    trio.run(main, args.requests, args.tokens)
