"""Load test for a running `specdec serve`: requests/s, latency and time to first token.

    specdec serve --demo --port 8080 &
    python scripts/measure/load_test.py --url http://127.0.0.1:8080/v1 --clients 16 --requests 4 --max-tokens 32

Each client sends its requests one after another as streaming chat completions (greedy unless
--temperature), so with one generation at a time the server's queue holds up to `clients`
requests. Reports requests/s, completion tokens/s over the whole run, p50/p95 latency and time to
first token (TTFT: until the first content or reasoning delta), and the server's own speculative
statistics (mean accepted drafts per round). Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

PROMPTS = [
    "What does the len function do?",
    "Explain the with statement.",
    "What is a list comprehension?",
    "How do I read a file line by line?",
]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


def one_request(client, model: str, prompt: str, args) -> dict:
    t0 = time.perf_counter()
    ttft, usage, accepted = None, None, None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"draft_tokens": args.draft_tokens},
    )
    for chunk in stream:
        for c in chunk.choices:
            extra = c.delta.model_extra or {}
            if ttft is None and (c.delta.content or extra.get("reasoning_content")):
                ttft = time.perf_counter() - t0
        spec = (chunk.model_extra or {}).get("specdec")
        if spec:
            accepted = spec["mean_accepted_per_round"] if spec["rounds"] else None
        if chunk.usage is not None:
            usage = chunk.usage
    latency = time.perf_counter() - t0
    return {
        "latency": latency,
        "ttft": ttft if ttft is not None else latency,
        "tokens": usage.completion_tokens if usage else 0,
        "accepted": accepted,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--draft-tokens", default="auto")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args()

    client = openai.OpenAI(base_url=args.url, api_key=args.api_key, max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    results, errors, lock = [], [], threading.Lock()

    def run_client(i: int) -> None:
        for j in range(args.requests):
            try:
                r = one_request(client, model, PROMPTS[(i + j) % len(PROMPTS)], args)
            except openai.APIError as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(run_client, range(args.clients)))
    wall = time.perf_counter() - t0

    lat, ttft = [r["latency"] for r in results], [r["ttft"] for r in results]
    acc = [r["accepted"] for r in results if r["accepted"] is not None]
    summary = {
        "model": model,
        "clients": args.clients,
        "requests": len(results) + len(errors),
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
        "completion_tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "latency_p50_s": round(percentile(lat, 0.5), 3),
        "latency_p95_s": round(percentile(lat, 0.95), 3),
        "ttft_p50_s": round(percentile(ttft, 0.5), 3),
        "ttft_p95_s": round(percentile(ttft, 0.95), 3),
        "mean_accepted_per_round": round(statistics.mean(acc), 2) if acc else None,
    }
    if args.json:
        print(json.dumps(summary))
        return
    for k, v in summary.items():
        print(f"{k:>24}: {v}")
    for e in errors[:5]:
        print(f"error: {e}")


if __name__ == "__main__":
    main()
