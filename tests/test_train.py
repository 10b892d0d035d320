"""P2OTrainer on a tiny random Qwen3 model: templated rollouts, distillation inputs, CRM, parity with
TRL's GRPOTrainer, phases, round state and resume. The phase runner here is a scripted stand-in
(labelled as such) so these tests isolate the trainer; the real GEPA phase has its own tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from p2o.config import P2OConfig
from p2o.tasks.data import to_dataset
from p2o.train.trainer import P2OTrainer, crm_keep_mask
from tests.tiny_world import TEMPLATE, build_tiny_model, tiny_samples, tiny_task


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def make_config(tmp_path: Path, **kw) -> P2OConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=6,
        num_generations=3,
        max_completion_length=4,
        learning_rate=1e-3,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        min_hard_samples=1,
        hard_max_successes=1,
        disable_tqdm=True,
        phase_after_last_step=True,  # short runs: a phase at the last step too
    )
    base.update(kw)
    return P2OConfig(**base)


@dataclass
class ScriptedPhaseResult:
    templates: dict[str, str]
    assignments: dict[str, list[str]]
    stats: dict = field(default_factory=dict)


class ScriptedPhase:
    """A scripted stand-in for the GEPA phase: assigns TEMPLATE to every hard sample."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, task, hard_samples, policy, output_dir):
        self.calls.append([s.sample_id for s in hard_samples])
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        k = config.num_generations
        res = ScriptedPhaseResult(
            {"t0": TEMPLATE}, {s.sample_id: ["t0"] * k for s in hard_samples}, {"metric_calls": 3}
        )
        (Path(output_dir) / "assignments.json").write_text(json.dumps(res.assignments, sort_keys=True))
        return res


def make_trainer(tiny_model, tmp_path, phase_runner=None, **kw):
    task = tiny_task()
    ds = to_dataset(task, tiny_samples())
    return P2OTrainer(
        model=str(tiny_model),
        task=task,
        args=make_config(tmp_path, **kw),
        train_dataset=ds,
        phase_runner=phase_runner or ScriptedPhase(),
    )


def generated_batch(trainer):
    """One generation batch through the trainer's real path."""
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    return batch, trainer._generate_and_score_completions(batch)


def test_templated_rollouts_loss_on_original_prompt(tiny_model, tmp_path):
    tr = make_trainer(tiny_model, tmp_path)
    tr.templates = {"t0": TEMPLATE}
    tr.assignments = {s.sample_id: ["t0"] * 3 for s in tiny_samples()}
    batch, out = generated_batch(tr)
    tok = tr.processing_class
    gen_text = [tok.decode(x["p2o_gen_prompt_ids"]) for x in batch]  # the rollout's fields, merged by TRL
    loss_text = [
        tok.decode(row[m.bool()]) for row, m in zip(out["prompt_ids"], out["prompt_mask"], strict=True)
    ]
    assert all(TEMPLATE in t for t in gen_text)
    assert not any("HINT" in t for t in loss_text)
    assert all(b["problem"] in t for b, t in zip(batch, loss_text, strict=True))
    assert "tool_mask" in out  # the CRM mask rides on TRL's loss-only mask


def test_no_distill_loss_on_templated_prompt(tiny_model, tmp_path):
    tr = make_trainer(tiny_model, tmp_path, distill=False)
    tr.templates = {"t0": TEMPLATE}
    tr.assignments = {s.sample_id: ["t0"] * 3 for s in tiny_samples()}
    _, out = generated_batch(tr)
    tok = tr.processing_class
    loss_text = [
        tok.decode(row[m.bool()]) for row, m in zip(out["prompt_ids"], out["prompt_mask"], strict=True)
    ]
    assert all(TEMPLATE in t for t in loss_text)
    assert "tool_mask" not in out


def test_untemplated_rollouts_and_same_template(tiny_model, tmp_path):
    tr = make_trainer(tiny_model, tmp_path, untemplated_rollouts=1)
    tr.templates = {"a": "HINT", "b": "think"}
    tr.assignments = {"s0": ["a", "b", "a"]}
    assert [tr.template_for("s0", k, 3) for k in range(3)] == ["a", "b", None]
    assert tr.template_for("s1", 0, 3) is None
    tr.args.same_template_in_group = True
    tr.args.untemplated_rollouts = 0
    assert [tr.template_for("s0", k, 3) for k in range(3)] == ["a", "a", "a"]


def test_retire_templates_drops_samples_solved_without_template(tiny_model, tmp_path):
    tr = make_trainer(tiny_model, tmp_path, untemplated_rollouts=1, retire_templates=True)
    tr.templates = {"a": "HINT"}
    tr.assignments = {"s0": ["a"] * 3, "s1": ["a"] * 3, "s2": ["a"] * 3}
    groups = [
        [("s0", 1.0, True), ("s0", 0.0, True), ("s0", 1.0, False)],  # plain rollout solved: retired
        [("s1", 1.0, True), ("s1", 1.0, True), ("s1", 0.0, False)],  # plain rollout failed: kept
        [("s2", 0.0, True), ("s2", 0.0, True), ("s2", 0.0, False)],
        [("s3", 1.0, False), ("s3", 1.0, False), ("s3", 1.0, False)],  # never templated
    ]
    tr._retire_solved(groups)
    assert sorted(tr.assignments) == ["s1", "s2"] and list(tr.retired) == ["s0"]
    # `no_gain`: also when the plain rollouts do at least as well as the templated ones.
    tr.args.retire_when = "no_gain"
    tr.assignments = {f"n{i}": ["a"] * 4 for i in range(5)}
    tr._retire_solved(
        [
            [("n0", 1.0, True), ("n0", 0.0, True), ("n0", 1.0, False), ("n0", 0.0, False)],  # 1/2 vs 1/2
            [
                ("n1", 1.0, True),
                ("n1", 1.0, True),
                ("n1", 1.0, False),
                ("n1", 0.0, False),
            ],  # 2/2 vs 1/2: kept
            [
                ("n2", 0.0, True),
                ("n2", 0.0, True),
                ("n2", 0.0, False),
                ("n2", 0.0, False),
            ],  # nothing solved: kept
            [("n3", 0.0, True), ("n3", 0.0, True), ("n3", 1.0, False), ("n3", 0.0, False)],  # 0/2 vs 1/2
            [("n4", 1.0, True), ("n4", 1.0, True), ("n4", 1.0, False), ("n4", 1.0, False)],  # solved
        ]
    )
    assert sorted(tr.assignments) == ["n1", "n2"] and {"n0", "n3", "n4"} <= set(tr.retired)
    tr.args.retire_when = "solved"
    tr.assignments = {"s1": ["a"] * 3, "s2": ["a"] * 3}
    tr.retired = {"s0": 0}
    assert tr.template_for("s0", 0, 3) is None
    state = tr.p2o_state()
    tr.retired, tr.assignments = {}, {}
    tr.load_p2o_state(state)
    assert list(tr.retired) == ["s0"] and "s0" not in tr.assignments


def test_crm_mask_hand_built():
    # ratios π(y|x)/π(y|x̃): 0.001, 0.01, 0.5, 1, 10, 11, 200
    ratios = torch.tensor([[0.001, 0.01, 0.5, 1.0, 10.0, 11.0, 200.0]], dtype=torch.float64)
    logp_aug = torch.full_like(ratios, -0.5)
    logp_x = logp_aug + ratios.log()
    keep = crm_keep_mask(logp_x, logp_aug, 0.01, 10.0)
    assert keep.int().tolist() == [[0, 1, 1, 1, 1, 0, 0]]
    keep = crm_keep_mask(logp_x, logp_aug, 0.4, 2.0)
    assert keep.int().tolist() == [[0, 0, 1, 1, 0, 0, 0]]


@pytest.mark.parametrize(
    "source, untemplated",
    [("forward", 0), ("generation", 0), ("generation", 1)],
    ids=["forward", "gen", "gen-split"],
)
def test_crm_masks_exactly_out_of_bound_tokens(tiny_model, tmp_path, source, untemplated):
    tr = make_trainer(
        tiny_model, tmp_path, crm_low=0.9, crm_high=1.1, crm_source=source, untemplated_rollouts=untemplated
    )
    tr.templates = {"t0": TEMPLATE}
    tr.assignments = {s.sample_id: ["t0"] * 3 for s in tiny_samples()}
    batch, out = generated_batch(tr)
    templated = [x["p2o_templated"] for x in batch]
    assert sum(templated) == len(batch) * (3 - untemplated) // 3
    # Recompute both log-probs independently (at the sampling temperature, as TRL scores tokens) and
    # compare with the mask the trainer produced.
    with torch.no_grad():
        for i in range(len(batch)):
            comp = out["completion_ids"][i][out["completion_mask"][i].bool()]
            if not templated[i]:
                assert batch[i]["p2o_gen_logps"] is None and out["tool_mask"][i].all()
                continue
            x = out["prompt_ids"][i][out["prompt_mask"][i].bool()]
            xt = torch.tensor(batch[i]["p2o_gen_prompt_ids"])

            def logps(prompt, comp=comp):
                ids = torch.cat([prompt, comp]).unsqueeze(0)
                logits = tr.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / tr.temperature
                return torch.log_softmax(logits, -1).gather(1, comp.unsqueeze(1)).squeeze(1)

            ratio = (logps(x) - logps(xt)).exp()
            generated = batch[i]["p2o_gen_logps"]
            if source == "generation":  # the generation's own log-probs are the forward's
                assert torch.allclose(torch.tensor(generated), logps(xt), atol=1e-4)
            else:
                assert generated is None
            expected = ((ratio >= 0.9) & (ratio <= 1.1)).int()
            got = out["tool_mask"][i][: len(comp)].int()
            # tokens within 1e-4 of a bound may flip on float noise; compare the others
            clear = ((ratio - 0.9).abs() > 1e-4) & ((ratio - 1.1).abs() > 1e-4)
            assert torch.equal(got[clear], expected[clear])
    masked = (out["tool_mask"] * out["completion_mask"]).sum()
    assert out["num_items_in_batch"].item() == masked.item()


def test_crm_off_means_no_mask(tiny_model, tmp_path):
    tr = make_trainer(tiny_model, tmp_path, crm=False)
    tr.templates = {"t0": TEMPLATE}
    tr.assignments = {s.sample_id: ["t0"] * 3 for s in tiny_samples()}
    _, out = generated_batch(tr)
    assert "tool_mask" not in out


def test_nothing_templated_matches_trl_grpo(tiny_model, tmp_path):
    """Same batch, same seed: P2OTrainer's loss equals TRL's GRPOTrainer's."""
    from transformers import set_seed
    from trl import GRPOTrainer

    task = tiny_task()
    ds = to_dataset(task, tiny_samples())
    args = make_config(tmp_path)
    ours = P2OTrainer(model=str(tiny_model), task=task, args=args, train_dataset=ds, enable_phases=False)
    theirs = GRPOTrainer(model=str(tiny_model), reward_funcs=[ours.reward], args=args, train_dataset=ds)
    losses = []
    for tr in (ours, theirs):
        batch = next(iter(tr.get_train_dataloader()))
        tr.model.train()
        tr.current_gradient_accumulation_steps = 1  # set by train(); we call the loss directly
        set_seed(123)
        inputs = tr._generate_and_score_completions(batch)
        losses.append((tr.compute_loss(tr.model, inputs).item(), inputs["completion_ids"].tolist()))
    assert losses[0][1] == losses[1][1]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-6, abs=1e-7)


def test_phase_runs_records_round_and_checkpoint(tiny_model, tmp_path):
    phase = ScriptedPhase()
    tr = make_trainer(
        tiny_model, tmp_path, phase_runner=phase, max_steps=4, phase_every_steps=2, save_strategy="no"
    )
    tr.train()
    out = Path(tr.args.output_dir)
    assert len(phase.calls) == 2 and phase.calls[0]  # every sample is hard for a random model
    r1 = json.loads((out / "rounds/round-001/round.json").read_text())
    assert r1["status"] == "done" and r1["global_step"] == 2 and r1["n_assigned"] == len(phase.calls[0])
    assert (out / "rounds/round-001/hard.jsonl").read_text().count("\n") == r1["n_hard"]
    assert (out / "rounds/round-001/policy/config.json").exists()  # the policy the phase saw
    state = json.loads((out / "p2o_state.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [1, 2]
    assert "checkpoint-2" in state["checkpoints"]  # a checkpoint right after each phase
    assert (out / "checkpoint-2/p2o_trainer_state.json").exists()
    # Rounds 2+ generate templated rollouts and log them.
    rows = [json.loads(line) for line in (out / "rounds/round-002/samples.jsonl").read_text().splitlines()]
    assert any(r["template"] == TEMPLATE for r in rows)
    assert any(k.startswith("p2o/") for h in tr.state.log_history for k in h)


def test_min_hard_samples_skips_phase(tiny_model, tmp_path):
    phase = ScriptedPhase()
    tr = make_trainer(
        tiny_model, tmp_path, phase_runner=phase, max_steps=2, phase_every_steps=2, min_hard_samples=999
    )
    tr.train()
    assert phase.calls == []
    assert tr.rounds[0]["status"] == "skipped"


class CrashingPhase(ScriptedPhase):
    """Writes part of its output, then the process is interrupted (a kill mid-phase)."""

    def __call__(self, config, task, hard_samples, policy, output_dir):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "partial.txt").write_text("half done")
        raise KeyboardInterrupt


class FailingPhase(ScriptedPhase):
    def __call__(self, config, task, hard_samples, policy, output_dir):
        raise RuntimeError("policy server at http://127.0.0.1:1 died; see policy_server.log")


def test_failed_phase_is_recorded_and_training_goes_on(tiny_model, tmp_path):
    tr = make_trainer(tiny_model, tmp_path, phase_runner=FailingPhase(), max_steps=4, phase_every_steps=2)
    tr.train()
    assert tr.state.global_step == 4
    assert [r["status"] for r in tr.rounds] == ["failed", "failed"]
    assert "policy server" in tr.rounds[0]["error"] and not tr.assignments
    saved = json.loads((Path(tr.args.output_dir) / "rounds/round-001/round.json").read_text())
    assert saved["status"] == "failed"


def test_bad_meta_prompt_fails_before_training(tiny_model, tmp_path):
    from p2o.config import ConfigError

    task = tiny_task()
    with pytest.raises(ConfigError, match="no_such_prompt"):
        P2OTrainer(
            model=str(tiny_model),
            task=task,
            args=make_config(tmp_path, meta_prompt="no_such_prompt"),
            train_dataset=to_dataset(task, tiny_samples()),
        )


def round_files(out: Path) -> dict[str, str]:
    keep = ("hard.jsonl", "assignments.json")
    return {
        str(p.relative_to(out)): p.read_text() for p in sorted((out / "rounds").rglob("*")) if p.name in keep
    }


def test_killed_mid_phase_then_resumed_matches_uninterrupted(tiny_model, tmp_path):
    kw = dict(max_steps=4, phase_every_steps=2, save_strategy="steps", save_steps=1)
    ref = make_trainer(tiny_model, tmp_path / "ref", phase_runner=ScriptedPhase(), **kw)
    ref.train()

    crashing = make_trainer(tiny_model, tmp_path / "run", phase_runner=CrashingPhase(), **kw)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    out = Path(crashing.args.output_dir)
    # The phase runs before its step's checkpoint is written: the crash leaves checkpoint-1 and a
    # half-written phase folder; resuming replays step 2 and the phase in the same folder.
    assert (out / "checkpoint-1").exists() and not (out / "checkpoint-2").exists()
    assert (out / "rounds/round-001/evolve/partial.txt").exists()
    assert not (out / "rounds/round-001/round.json").exists()

    resumed = make_trainer(tiny_model, tmp_path / "run", phase_runner=ScriptedPhase(), **kw)
    resumed.train(resume_from_checkpoint=True)
    assert [r["round"] for r in resumed.rounds] == [1, 2]
    assert round_files(out) == round_files(Path(ref.args.output_dir))


def scripted_reflection(prompt: str) -> str:
    """Scripted reflection LM (deterministic stand-in for a teacher): always proposes the same text."""
    return f"```\n{TEMPLATE}\n```"


def run_real_phase(tiny_model, tmp_path, **kw) -> tuple[P2OTrainer, dict, dict]:
    """Two steps with a real phase at step 2 (GEPA, a scripted reflection model): the trainer, the
    round's record and the phase's phase.json."""
    task = tiny_task()
    tr = P2OTrainer(
        model=str(tiny_model),
        task=task,
        args=make_config(
            tmp_path,
            max_steps=2,
            phase_every_steps=2,
            gepa_max_metric_calls=12,
            max_completion_length=3,
            **kw,
        ),
        train_dataset=to_dataset(task, tiny_samples()),
        reflection_lm=scripted_reflection,
    )
    try:
        tr.train()
    finally:
        if tr._policy_server is not None:
            tr._policy_server.stop()
    rdir = Path(tr.args.output_dir) / "rounds/round-001"
    record = json.loads((rdir / "round.json").read_text())
    assert record["status"] == "done", record
    phase = json.loads((rdir / "evolve/phase.json").read_text())
    assert phase["metric_calls"] > 0
    return tr, record, phase


@pytest.mark.slow
def test_real_phase_through_transformers_serve(tiny_model, tmp_path):
    """Trainer → p2o.evolve.run_phase → a real `transformers serve` on loopback, and back."""
    tr, _, _ = run_real_phase(tiny_model, tmp_path, gepa_num_threads=2, policy_server_timeout=120)
    out = Path(tr.args.output_dir)
    assert (out / "policy_server.log").exists()
    assigned = json.loads((out / "rounds/round-001/evolve/assignments.json").read_text())
    assert set(assigned) <= {s.sample_id for s in tiny_samples()}
    assert all(len(v) == 3 for v in assigned.values())


def test_real_phase_with_the_training_model_in_process(tiny_model, tmp_path):
    """`policy_server: trainer`: the phase's rollouts are generated by the training model itself, batched;
    no server starts, no checkpoint is written for it, and training goes on in training mode."""
    tr, _, phase = run_real_phase(tiny_model, tmp_path, policy_server="trainer")
    assert tr._policy_server is None and tr.model.training
    out = Path(tr.args.output_dir)
    assert phase["policy"]["backend"] == "trainer" and phase["policy"]["model"] == f"{tiny_model}@step-2"
    assert phase["policy_requests"] == phase["policy_item_evals"] > 0
    assert not (out / "policy_server.log").exists() and not (out / "rounds/round-001/policy").exists()
    assert json.loads((out / "preflight.json").read_text())["policy_server"].startswith("trainer")


def test_heldout_curve_matches_p2o_eval_on_the_saved_model(tiny_model, tmp_path):
    """The curve's last point and `p2o.evaluation.evaluate` on the final checkpoint agree."""
    from dataclasses import replace

    from p2o.evaluation import evaluate
    from p2o.evaluation.benchmarks import Benchmark

    task = replace(tiny_task(), splits=lambda split: tiny_samples(6))
    tr = P2OTrainer(
        model=str(tiny_model),
        task=task,
        args=make_config(tmp_path, max_steps=2, heldout_eval="test", heldout_every_steps=1),
        train_dataset=to_dataset(task, tiny_samples()),
        enable_phases=False,
    )
    tr.train()
    points = [json.loads(x) for x in (Path(tr.args.output_dir) / "heldout.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [0, 1, 2]
    tr.save_model(str(tmp_path / "final"))
    tr.processing_class.save_pretrained(tmp_path / "final")
    bench = Benchmark(name="test", task=task, split="test", n=1, temperature=0.0, max_tokens=4)
    report = evaluate(str(tmp_path / "final"), [bench], progress=False)
    assert report.accuracy(benchmark="test") == points[-1]["test"]


def test_split_generation_keeps_each_completion_with_its_prompt():
    # Templated and plain rows are generated in two batches; results go back to their own rows.
    from p2o.train.trainer import P2OTrainer

    class Fake:
        def __init__(self):
            self.calls = []

        def _generate_single_turn(self, prompt_ids, images, mm, n):
            self.calls.append(len(prompt_ids))
            return [[p[0], 7] for p in prompt_ids], [[-float(p[0])] for p in prompt_ids]

        def _add_seconds(self, what, seconds):
            pass

    fake = Fake()
    prompts = [[10, 1], [11], [12, 1, 1], [13], [14, 1]]
    templated = [True, False, True, False, True]
    comps, lps, scored = P2OTrainer._generate_split(fake, prompts, templated)
    assert comps == [[10, 7], [11, 7], [12, 7], [13, 7], [14, 7]]
    assert lps == [[-10.0], [-11.0], [-12.0], [-13.0], [-14.0]]
    assert fake.calls == [3, 2] and scored == [None] * 5
    # Every row templated: one batch, no empty second one.
    fake.calls = []
    comps, _, _ = P2OTrainer._generate_split(fake, prompts, [True] * 5)
    assert comps == [[p[0], 7] for p in prompts] and fake.calls == [5]


def test_scored_generation_samples_what_trls_generation_samples(tiny_model, tmp_path):
    """`crm_source: generation` changes where π(y|x̃) comes from, not what is generated."""
    from transformers import set_seed

    tr = make_trainer(tiny_model, tmp_path)
    prompts = [
        list(x)
        for x in tr._tokenize_prompts([s["prompt"] for s in to_dataset(tiny_task(), tiny_samples())])[0]
    ]
    set_seed(3)
    theirs, _ = tr._generate_single_turn(prompts, None, {}, 1)
    set_seed(3)
    ours, logps = tr._generate_scored(prompts)
    assert ours == theirs and [len(x) for x in logps] == [len(x) for x in ours]
    assert all(lp <= 0.0 for row in logps for lp in row)


def test_direct_logprobs_equal_trls_fused_kernel(tiny_model, tmp_path):
    """`logprob_kernel: direct` (the CPU default) gives TRL's fused kernel's log-probs and entropies,
    padding zeroed alike, with gradients that agree too."""
    tr = make_trainer(tiny_model, tmp_path)
    assert tr._direct_logprobs()  # auto, on CPU
    _, out = generated_batch(tr)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    mask[0, -1] = 0  # a padded last position: zero under both
    k = out["completion_ids"].size(1)
    figures = {}
    for kernel in ("direct", "trl"):
        tr.args.logprob_kernel = kernel
        tr.model.zero_grad()
        logps, ent, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, mask, k, compute_entropy=True)
        (logps.sum() + ent.sum()).backward()
        grads = [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]
        figures[kernel] = (logps.detach(), ent.detach(), grads)
    (lp_d, ent_d, g_d), (lp_t, ent_t, g_t) = figures["direct"], figures["trl"]
    assert lp_d.shape == lp_t.shape == (ids.size(0), k)
    assert lp_d[0, -1] == 0 and ent_d[0, -1] == 0
    torch.testing.assert_close(lp_d, lp_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_d, ent_t, atol=1e-5, rtol=1e-5)
    assert len(g_d) == len(g_t)
    for a, b in zip(g_d, g_t, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(Exception, match="logprob_kernel"):
        make_config(tmp_path, logprob_kernel="sideways")
