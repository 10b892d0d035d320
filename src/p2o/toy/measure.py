"""Measure a toy policy: greedy accuracies, GRPO starvation, templated group outcomes, CRM ratios.

All figures come from real generation on fresh held-out problems (never seen in pre-training):

- `instructed_acc`: greedy, an instruction naming a random rule, any easy or hard operator;
- `easy_acc` / `hard_acc`: greedy, no instruction;
- `hard_acc_by_operator`: the same for each hard operator alone, on `n_leak` problems each (a leak
  in one operator is what plain GRPO bootstraps from, and an average over operators hides it);
- `hard_group_success_frac`: K rollouts at temperature T, no instruction, hard problems: the
  fraction of groups with at least one success (plain GRPO's only learning signal);
- `templated_*`: K rollouts at T from x̃ = T(x, right instruction) on hard problems: how often a
  group is all-success (zero advantage) or mixed;
- `crm_*`: on those templated rollouts, the per-token ratio π(y|x) / π(y|x̃) the trainer's
  Context Ratio Mask tests (log-probs of temperature-scaled logits, as TRL computes them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from p2o.templates import render_augmented
from p2o.toy import world as W
from p2o.toy.model import render_chat


def prompt_text(problem: str, instruction: str | None = None) -> str:
    """The chat-rendered prompt: x (no instruction) or x̃ = T(x, instruction)."""
    return render_chat(render_augmented([{"role": "user", "content": problem}], instruction))


@dataclass
class Probe:
    """A set of fresh problems with their gold answers and (optional) instructions."""

    problems: list[str]
    answers: list[str]
    instructions: list[str | None]


def probe(world: W.ToyWorld, rng: random.Random, ops: list[str], n: int, instructed: str | None) -> Probe:
    """`n` held-out problems over `ops`. `instructed`: None, "random" rule, or "own" (the op's rule)."""
    problems, answers, instructions = [], [], []
    for i in range(n):
        op = ops[i % len(ops)]
        problem = world.problem(rng, op, held_out=True)
        a, _, b = W.parse_problem(problem)  # type: ignore[misc]
        if instructed is None:
            rule, ins = world.operators[op], None
        elif instructed == "own":
            rule = world.operators[op]
            ins = W.compose_instruction(rule, rng)
        else:
            rule = rng.choice(list(W.RULES))
            ins = W.compose_instruction(rule, rng)
        problems.append(problem)
        answers.append(W.apply_rule(rule, a, b))
        instructions.append(ins)
    return Probe(problems, answers, instructions)


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float | None = None,
    num_return_sequences: int = 1,
    batch_size: int = 256,
) -> list[list[int]]:
    """Completion token ids per (prompt, return sequence), greedy when `temperature` is None."""
    import torch

    out: list[list[int]] = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[start : start + batch_size],
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        kwargs: dict[str, Any] = {"do_sample": False}
        if temperature is not None:
            kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_return_sequences,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                **kwargs,
            )
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            ids = []
            for t in row:
                ids.append(t)
                if t == eos:
                    break
            out.append(ids)
    return out


def accuracy(model: Any, tokenizer: Any, p: Probe, digits: int) -> float:
    prompts = [prompt_text(q, ins) for q, ins in zip(p.problems, p.instructions, strict=True)]
    comps = generate(model, tokenizer, prompts, max_new_tokens=digits + 2)
    texts = tokenizer.batch_decode(comps, skip_special_tokens=True)
    return sum(_digits(t) == a for t, a in zip(texts, p.answers, strict=True)) / max(1, len(p.answers))


def group_outcomes(
    model: Any, tokenizer: Any, p: Probe, digits: int, k: int, temperature: float
) -> tuple[list[list[bool]], list[list[int]]]:
    """K sampled rollouts per problem: per-group success flags and the completion ids."""
    prompts = [prompt_text(q, ins) for q, ins in zip(p.problems, p.instructions, strict=True)]
    comps = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=digits + 2,
        temperature=temperature,
        num_return_sequences=k,
        batch_size=max(1, 256 // k),
    )
    texts = tokenizer.batch_decode(comps, skip_special_tokens=True)
    groups = [[_digits(texts[i * k + j]) == p.answers[i] for j in range(k)] for i in range(len(p.problems))]
    return groups, comps


def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    completions: list[list[int]],
    temperatures: tuple[float, ...] = (1.0,),
) -> dict[float, list[list[float]]]:
    """Per temperature: log π(token | prompt, previous tokens) of each completion token, computed
    from logits divided by the temperature (as TRL computes the log-probs its loss uses)."""
    import torch

    out: dict[float, list[list[float]]] = {t: [] for t in temperatures}
    pad = tokenizer.pad_token_id
    for start in range(0, len(prompts), 256):
        ps = tokenizer(prompts[start : start + 256], add_special_tokens=False)["input_ids"]
        cs = completions[start : start + 256]
        seqs = [a + b for a, b in zip(ps, cs, strict=True)]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding: positions are plain aranges
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        for t in temperatures:
            logp = torch.log_softmax(logits / t, dim=-1)
            for i, (pr, c) in enumerate(zip(ps, cs, strict=True)):
                pos = torch.arange(len(pr) - 1, len(pr) - 1 + len(c))
                out[t].append(logp[i, pos, torch.tensor(c, dtype=torch.long)].tolist())
    return out


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def symbol_cosine(model: Any, tokenizer: Any, world: W.ToyWorld) -> dict[str, float]:
    """Mean pairwise cosine similarity of the operator symbols' input embeddings, per role (as they
    appear in problems, with their leading space): how alike the policy sees, say, its hard symbols."""
    import torch

    emb = model.get_input_embeddings().weight.detach().float()
    roles = {
        "easy": list(world.easy),
        "familiar": list(world.familiar),
        "hard": list(world.hard),
        "unknown": list(world.unknown),
    }
    out: dict[str, float] = {}
    for role, ops in roles.items():
        if len(ops) < 2:
            continue
        ids = [tokenizer.convert_tokens_to_ids(" " + op) for op in ops]
        v = torch.nn.functional.normalize(emb[ids], dim=-1)
        sim = v @ v.T
        n = len(ids)
        out[role] = round(float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))), 4)
    return out


def measure(
    model: Any,
    tokenizer: Any,
    world: W.ToyWorld,
    n_problems: int = 400,
    n_groups: int = 300,
    k: int = 6,
    temperature: float = 0.6,
    crm_low: float = 0.01,
    crm_high: float = 10.0,
    seed: int = 0,
    n_leak: int = 600,
) -> dict[str, Any]:
    """All figures of the build report (see the module docstring)."""
    import math

    model.eval()
    rng = random.Random(f"p2o-toy-measure-{world.seed}-{seed}")
    easy, hard = list(world.known), list(world.hard)  # easy: the task's easy operators
    d = world.digits
    r: dict[str, Any] = {}
    r["instructed_acc"] = accuracy(model, tokenizer, probe(world, rng, easy + hard, n_problems, "random"), d)
    r["instructed_hard_acc"] = accuracy(model, tokenizer, probe(world, rng, hard, n_problems, "own"), d)
    r["easy_acc"] = accuracy(model, tokenizer, probe(world, rng, easy, n_problems, None), d)
    r["hard_acc"] = accuracy(model, tokenizer, probe(world, rng, hard, n_problems, None), d)
    # Vague instructions must not unlock hard operators either.
    vague = probe(world, rng, hard, n_problems, None)
    vague.instructions = [W.vague_instruction(rng) for _ in vague.problems]
    r["hard_vague_acc"] = accuracy(model, tokenizer, vague, d)

    plain = probe(world, rng, hard, n_groups, None)
    groups, _ = group_outcomes(model, tokenizer, plain, d, k, temperature)
    r["hard_group_success_frac"] = sum(any(g) for g in groups) / len(groups)
    r["hard_rollout_success"] = sum(map(sum, groups)) / (len(groups) * k)

    easy_p = probe(world, rng, easy, n_groups, None)
    groups, _ = group_outcomes(model, tokenizer, easy_p, d, k, temperature)
    r["easy_rollout_success"] = sum(map(sum, groups)) / (len(groups) * k)
    r["easy_group_all_success_frac"] = sum(all(g) for g in groups) / len(groups)

    templ = probe(world, rng, hard, n_groups, "own")
    groups, comps = group_outcomes(model, tokenizer, templ, d, k, temperature)
    r["templated_rollout_success"] = sum(map(sum, groups)) / (len(groups) * k)
    r["templated_group_all_success_frac"] = sum(all(g) for g in groups) / len(groups)
    r["templated_group_mixed_frac"] = sum(any(g) and not all(g) for g in groups) / len(groups)

    # Context Ratio Mask: the same rollouts scored under x (untemplated) and x̃ (templated).
    x = [prompt_text(q) for q in templ.problems for _ in range(k)]
    xt = [
        prompt_text(q, ins)
        for q, ins in zip(templ.problems, templ.instructions, strict=True)
        for _ in range(k)
    ]
    temps = (temperature, 1.0)
    lp_x = completion_logprobs(model, tokenizer, x, comps, temps)
    lp_xt = completion_logprobs(model, tokenizer, xt, comps, temps)
    for name, temp in (("", temperature), ("_t1", 1.0)):
        pairs = [
            (math.exp(a - b), t)
            for ra, rb, c in zip(lp_x[temp], lp_xt[temp], comps, strict=True)
            for a, b, t in zip(ra, rb, c, strict=True)
        ]
        ratios = [v for v, _ in pairs]
        # Digit tokens only (the EOS after the answer is as likely with or without the template).
        digit_ratios = [v for v, t in pairs if t != tokenizer.eos_token_id]
        r[f"crm_ratio_below_{crm_low}{name}"] = sum(v < crm_low for v in ratios) / max(1, len(ratios))
        r[f"crm_ratio_above_{crm_high:g}{name}"] = sum(v > crm_high for v in ratios) / max(1, len(ratios))
        r[f"crm_ratio_median{name}"] = _median(ratios)
        r[f"crm_digit_ratio_median{name}"] = _median(digit_ratios)

    # How much probability the untemplated policy gives the gold digits of hard problems (T=1).
    gold = probe(world, rng, hard, n_problems, None)
    gold_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in gold.answers]
    lps = completion_logprobs(model, tokenizer, [prompt_text(q) for q in gold.problems], gold_ids)[1.0]
    r["hard_gold_digit_prob_mean"] = sum(math.exp(v) for row in lps for v in row) / sum(map(len, lps))
    # Per hard operator, on its own random stream (the figures above stay as they were).
    leak_rng = random.Random(f"p2o-toy-leak-{world.seed}-{seed}")
    r["hard_acc_by_operator"] = {
        f"{op} {world.operators[op]}": accuracy(
            model, tokenizer, probe(world, leak_rng, [op], n_leak, None), d
        )
        for op in hard
    }
    r["eval"] = {
        "problems_per_accuracy": n_problems,
        "problems_per_hard_operator": n_leak,
        "groups": n_groups,
        "k": k,
        "temperature": temperature,
        "crm_bounds": [crm_low, crm_high],
        "crm_logprob_temperature": temperature,
    }
    return r
