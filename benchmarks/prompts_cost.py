"""What prompt processing costs on the demo model: a ~300-token weighted prompt against one 20-step
generation (issue #20: at most 5%), and a plain 10-token prompt beside it.  Writes
benchmarks/results/prompts_cost.{json,md}.

    python -m benchmarks.prompts_cost [--rounds 31] [--out DIR]

Prompt processing is the pipeline's conditioning step through its public pieces: the prompt
encoder's ``plan`` (parse, tokenize, chunk and check every text) then ``encode`` (the text
encoder on every chunk, weights applied, chunks concatenated), for the prompt and its negative
prompt with guidance, as a call does them.  A generation is one whole call of the same prompts
(``out.timings["total"]``, its own conditioning included).  The two alternate in each round,
the order swapped every round; the figure judged is the median of the rounds' ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdlite import Pipeline
from sdlite.conditioning import SDXLOptions
from sdlite.models import demo_path
from sdlite.prompt_encoding import chunk_tokens

from benchmarks import machine
from benchmarks.common import rounds_main, write_study
from benchmarks.docs import REPO, RESULTS

STEPS = 20
GUIDANCE = 7.5
GOAL = 0.05  # prompt processing at most 5% of one generation
THREADS = 1  # the machine is shared: ORT's default (a thread per core) spins against other processes
# Four phrases of the demo model's words with A1111's syntax: (word:1.3), [word], nesting, BREAK.
# 27 tokens, so that BREAK closes a chunk short of its 14 tokens (28 would fill two chunks anyway).
PHRASES = (
    "a (large:1.3) red circle on a [white] background,",
    "(small blue square:1.2) top left,",
    "[[green]] triangle right,",
    "a (yellow:0.8) circle on a black background center BREAK",
)
WEIGHTED = " ".join(PHRASES * 11) + " a (purple:1.1) square"  # 300 tokens
NEGATIVE = "(gray:1.2) background, [black], a large orange triangle"
PLAIN = "a small red circle on a white background top left"  # 10 tokens
CASES = {"weighted": (WEIGHTED, NEGATIVE), "plain": (PLAIN, None)}

Timed = Callable[[], dict[str, float]]


def alternate(first: Timed, second: Timed, rounds: int) -> list[tuple[dict[str, float], dict[str, float]]]:
    """``rounds`` pairs of (first's figures, second's figures), each pair measured back to back and
    the order swapped every round, so that a drift of the machine's load weighs on both alike."""
    pairs = []
    for r in range(rounds):
        if r % 2:
            b = second()
            pairs.append((first(), b))
        else:
            a = first()
            pairs.append((a, second()))
    return pairs


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of a figure over the rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def conditioning(pipe: Pipeline, prompt: str, negative: str | None) -> Timed:
    """Plan + encode the texts of a guided call, as the pipeline does (seconds of each)."""
    enc, options = pipe.prompt_encoder, SDXLOptions()

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        plan = enc.plan([prompt], [negative or ""], negative is not None, True, options, STEPS)
        t1 = time.perf_counter()
        enc.encode(plan, 1, options, pipe.default_size, pipe.default_size)
        t2 = time.perf_counter()
        return {"plan": t1 - t0, "encode": t2 - t1, "conditioning": t2 - t0}

    return run


def generation(pipe: Pipeline, prompt: str, negative: str | None) -> Timed:
    """One whole 20-step call of the same texts: its total and its text encoder's seconds."""

    def run() -> dict[str, float]:
        out = pipe(prompt, negative, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=0)
        return {"total": out.timings["total"], "text_encoder": out.timings["text_encoder"]}

    return run


def text_size(pipe: Pipeline, text: str) -> dict[str, int]:
    """A text's tokens (start, end and padding left out) and its chunks, as the plan counts them."""
    plan = pipe.prompt_encoder.plan([text], [""], False, False, SDXLOptions(), STEPS)
    (chunks,) = plan.chunks[0].values()
    eos = pipe.tokenizer.eos_token_id
    return {"tokens": sum(c.ids.index(eos, 1) - 1 for c in chunks), "chunks": len(chunks)}


def measure(pipe: Pipeline, prompt: str, negative: str | None, rounds: int) -> dict[str, Any]:
    """One case: a warm-up call, then ``rounds`` alternating rounds of conditioning and generation."""
    cond, gen = conditioning(pipe, prompt, negative), generation(pipe, prompt, negative)
    cond(), gen()  # warm-up: the sessions' first runs allocate
    pairs = alternate(cond, gen, rounds)
    ratios = [c["conditioning"] / g["total"] for c, g in pairs]
    med = {key: statistics.median(c[key] for c, _ in pairs) for key in ("plan", "encode")}
    return {
        "prompt": prompt,
        "negative_prompt": negative,
        **text_size(pipe, prompt),
        "negative_tokens": text_size(pipe, negative or "")["tokens"],
        "conditioning_s": spread([c["conditioning"] for c, _ in pairs]),
        "plan_s": med["plan"],
        "encode_s": med["encode"],
        "generation_s": spread([g["total"] for _, g in pairs]),
        "generation_text_encoder_s": statistics.median(g["text_encoder"] for _, g in pairs),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def run(rounds: int = 31) -> dict[str, Any]:
    machine_before = machine.describe(REPO)  # the load average before the work
    pipe = Pipeline.from_pretrained(demo_path(), "cpu", num_threads=THREADS)
    cases = {name: measure(pipe, p, n, rounds) for name, (p, n) in CASES.items()}
    return {
        "machine": machine_before,
        "model": f"demo (embedded, {pipe.default_size} px)",
        "sampler": pipe.preset.sampler,
        "steps": STEPS,
        "guidance": GUIDANCE,
        "threads": THREADS,
        "rounds": rounds,
        "chunk_tokens": chunk_tokens(pipe.tokenizer),
        "goal": GOAL,
        "goal_met": cases["weighted"]["ratio"] <= GOAL,
        "cases": cases,
    }


def _ms(x: float) -> str:
    return f"{x * 1000:.2f} ms"


def markdown(doc: dict[str, Any]) -> str:
    m, w = doc["machine"], doc["cases"]["weighted"]
    met = "met" if doc["goal_met"] else "MISSED"
    lines = [
        f"The {doc['model']} model on the CPU, {doc['threads']} thread: prompt processing (the prompt "
        f"encoder's `plan` + `encode` of the prompt and its negative prompt) against one whole "
        f"{doc['steps']}-step generation of the same texts ({doc['sampler']}, guidance {doc['guidance']:g}), "
        f"alternating, {doc['rounds']} rounds; medians.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['loadavg_start'][0]:.2f} at the start "
        f"({m['date_utc']}).",
        "",
        f"**Goal (a ~300-token weighted prompt's processing at most {doc['goal']:.0%} of one generation): "
        f"{met}**: {w['ratio']:.1%} ({w['tokens']} tokens with `(word:1.3)`, `[word]` and BREAK, "
        f"negative prompt of {w['negative_tokens']}).",
        "",
        "| prompt | tokens | chunks | negative prompt's tokens | plan | encode | processing "
        "| text encoder in the call | generation | processing / generation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in doc["cases"].items():
        lines.append(
            f"| {name} | {c['tokens']} | {c['chunks']} | {_negative(c)} | {_ms(c['plan_s'])} "
            f"| {_ms(c['encode_s'])} "
            f"| {_ms(c['conditioning_s']['median'])} | {_ms(c['generation_text_encoder_s'])} "
            f"| {_ms(c['generation_s']['median'])} | {c['ratio']:.1%} |"
        )
    lines += [
        "",
        f"The demo model's text encoder is small (16 positions), so a chunk holds {doc['chunk_tokens']} "
        f"tokens (SD's CLIP: 75) and the weighted prompt is {w['chunks']} chunks, "
        f"which every U-Net call also attends to. Ratios over the rounds: weighted "
        f"{_range(w['ratios'])}, plain {_range(doc['cases']['plain']['ratios'])}.",
    ]
    return "\n".join(lines) + "\n"


def _negative(case: dict[str, Any]) -> str:
    return "none given" if case["negative_prompt"] is None else str(case["negative_tokens"])


def _range(values: list[float]) -> str:
    return f"{min(values):.1%} to {max(values):.1%}"


def write(doc: dict[str, Any], out: Path = RESULTS) -> dict[str, Path]:
    """prompts_cost.json and prompts_cost.md, each written whole or not at all."""
    return write_study(out, "prompts_cost", doc, markdown(doc))


def main(argv: list[str] | None = None) -> int:
    return rounds_main(argv, "prompts_cost", __doc__.splitlines()[0], run, markdown, write, RESULTS)


if __name__ == "__main__":
    raise SystemExit(main())
