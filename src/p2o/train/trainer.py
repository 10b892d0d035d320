"""`P2OTrainer`: TRL's GRPO trainer with templated rollouts, context distillation and hard-sample mining.

How one P²O round reads, top to bottom:

1. **Rollouts.** TRL's sampler hands each prompt x K times in a row. For a sample with an assignment,
   rollout k is generated from x̃ = T(x, z_k) (`render_augmented`, the one renderer); the rest from x.
   Generation is TRL's own (`_tokenize_prompts` + `_generate_single_turn`: in-process on CPU, the vLLM
   server in server mode) called through TRL's `rollout_func` hook.
2. **Context distillation.** The hook returns the token ids of the *original* x as `prompt_ids`, so
   TRL computes the policy-gradient loss and old log-probs on log π(y | x). With `distill=False` it
   returns x̃'s ids instead (the paper's "w/o context distillation" ablation).
3. **Context Ratio Mask.** For templated rollouts, per token, ratio = π(y|x)/π(y|x̃) under the
   generating policy; tokens outside [crm_low, crm_high] get a 0 in TRL's loss-only `tool_mask`
   (attention is untouched). `num_items_in_batch` is recomputed so the masked tokens leave the
   normaliser too.
4. **Importance sampling.** Templated rollouts hand NaN sampling log-probs to TRL, which turns them
   into a ratio of exactly 1: no vLLM correction ever multiplies a templated rollout by
   π(y|x)/π(y|x̃).
5. **Hard-sample mining.** Rewards are gathered across ranks; each group updates the
   `HardSampleTracker` on every rank. With `retire_templates`, a sample whose untemplated rollouts
   all succeeded loses its assignment (on every rank alike) and trains as a plain sample again.
6. **Phase** (end of each epoch, or every `phase_every_steps`; none after the last step unless
   `phase_after_last_step`): sync the policy to the server, run the GEPA phase on the main process
   when at least `min_hard_samples` are hard, broadcast the assignments. They take effect from the
   next generation and last until retired (`template_lifetime: retire`) or until the next phase
   (`round`, the authors' rule). A checkpoint is saved right after, and `p2o_state.json` ties each
   round to it. Each round's record holds, per sample group the task names (`Task.group_of`), the
   hard and assigned samples and the templated and plain success rates since the previous round.

With nothing templated a step is exactly TRL's GRPO step.

Where p2o departs from the paper: `untemplated_rollouts` (from the authors' configuration) can leave
some rollouts of a templated group untemplated, so a group whose templated rollouts all succeed
still carries advantage; the CRM is computed once, at generation time, with the generating policy
(`crm_source: generation` takes π(y|x̃) from the generation's own log-probs instead of a forward);
`retire_templates` (off by default) ends a sample's templating once the policy solves it unprompted
(`retire_when: no_gain`: or once the template no longer raises its success).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather, gather_object
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler, pad

from p2o.config import P2OConfig
from p2o.errors import GROUP_STILL_HELD, ConfigError
from p2o.files import write_json_atomic
from p2o.policy import vllm_server_url
from p2o.tasks.base import Sample, Task
from p2o.templates import render_augmented
from p2o.train.hard import HardSampleTracker
from p2o.train.resume import CHECKPOINT_STATE_FILE
from p2o.train.rewards import VerifierReward, completion_text
from p2o.train.tracking import RoundTracking

STATE_FILE = "p2o_state.json"
SAMPLE_LOG_LIMIT = 400  # rows per round in rounds/round-NNN/samples.jsonl
# Per-row fields the rollout returns beside TRL's own; TRL merges them into the batch's `inputs`.
ROLLOUT_TEMPLATED = "p2o_templated"
ROLLOUT_TEMPLATE_ID = "p2o_template_id"
ROLLOUT_GEN_PROMPT_IDS = "p2o_gen_prompt_ids"
ROLLOUT_GEN_LOGPS = "p2o_gen_logps"  # log π(y|x̃) per completion token, from the generation (crm_source)


def _say(message: str) -> None:
    print(f"p2o: {message}", file=sys.stderr, flush=True)


@dataclass
class PolicyHandle:
    """What a phase needs to reach the live policy: a checkpoint directory (CPU: served by
    `transformers serve`) or the URL of a server whose weights were just synced (vLLM)."""

    checkpoint: Path | None = None
    url: str | None = None
    model_name: str | None = None


PhaseRunner = Callable[..., Any]


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose shuffle of epoch e is the same in a run resumed at epoch e as in
    one that never stopped. TRL draws one permutation per epoch from a generator seeded once, so a
    resumed run, whose generator starts afresh, would shuffle epoch e as the first epoch; here
    `set_epoch(e)` (called by the training loop before each epoch) reseeds it and draws the e
    permutations before it, which gives TRL's order exactly."""

    @classmethod
    def like(cls, sampler: RepeatSampler) -> EpochSeededRepeatSampler:
        twin = cls.__new__(cls)
        twin.__dict__.update(sampler.__dict__)
        return twin

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(epoch):
                torch.randperm(self.num_samples, generator=self.generator)


class PhaseFatalError(RuntimeError):
    """A phase cannot work for a reason no retry fixes (a refused key, an unknown model, a missing
    checkpoint, a bad program): the run stops with this message instead of training on as GRPO."""


def is_fatal(error: BaseException) -> bool:
    """Configuration errors stop the run; passing ones (a server that died, a teacher that kept
    answering 5xx) cost a retry and, at worst, the round."""
    from p2o.config import ConfigError
    from p2o.evolve.phase import PhaseError
    from p2o.evolve.reflection import ReflectionError
    from p2o.policy import CheckpointError

    if isinstance(error, ReflectionError):
        return error.fatal
    return isinstance(error, CheckpointError | ConfigError | PhaseError | ImportError)


def release_process_group() -> bool:
    """Destroy the default process group, if one is up, and free it; call it once a process is done
    with collectives and holds no trainer or DDP-wrapped model any more.

    A process that exits with a gloo group alive can abort at interpreter shutdown (SIGABRT,
    "terminate called without an active exception"): gloo's worker threads outlive the interpreter
    and one that drops the last reference to a finished collective's tensor then needs the GIL, which
    is gone; `accelerate launch` reports the finished run as failed. `destroy_process_group` alone
    does not stop those threads while anything still references the group (a DDP-wrapped model
    does, and a trainer holds one), so this also collects garbage and checks the group is gone:
    False, with a warning on stderr, when something still holds it. `p2o train` calls this on every
    way out, after its trainer is dropped; a script driving `P2OTrainer` under `accelerate launch`
    should end the same way (`del trainer`, then this)."""
    import gc
    import weakref

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    group = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    gc.collect()
    if group() is None:
        return True
    _say(
        f"warning: {GROUP_STILL_HELD} (a trainer or a DDP-wrapped model is alive): its gloo threads "
        "run on and this process may abort at exit; drop them before calling release_process_group()"
    )
    return False


class P2OTrainer(GRPOTrainer):
    """GRPO + templated rollouts + context distillation + hard-sample mining + GEPA phases.

    Args:
        model: as for `GRPOTrainer` (a path, hub id or model).
        task: the `Task` (its verifier is the reward).
        args: a `P2OConfig`.
        train_dataset: a dataset with `prompt` (messages of x), `sample_id` and `answer` columns
            (`p2o.tasks.data.to_dataset`).
        samples: sample id → `Sample`, for building the hard set; derived from `train_dataset` if omitted.
        phase_runner: called on the main process as `phase_runner(config=, task=, hard_samples=,
            policy=PolicyHandle, output_dir=)` and returning an object with `templates` (id → text),
            `assignments` (sample id → K template ids) and `stats`; default `evolve_phase`
            (`p2o.evolve.run_phase` on a policy server kept for the run).
        enable_phases: False trains plain GRPO (the baseline) while still tracking hard samples.
        reflection_lm: a `prompt -> str` callable overriding `args.reflection` in the default phase.

    What a rollout decided per row (templated, template id, the generated prompt's ids) reaches the
    CRM and the sample log as extra fields of the rollout's output, which TRL merges into the batch's
    `inputs` dicts. Two things still pass between TRL's hooks on the instance, because TRL offers no
    per-batch field for them: the batch's sample ids (`rollout_func` receives only the prompts) and
    the rewards gathered across ranks (`_calculate_rewards` returns them to TRL alone; a reward
    function sees only this process's rows).
    """

    def __init__(
        self,
        model: Any,
        task: Task,
        args: P2OConfig,
        train_dataset: Any,
        samples: dict[str, Sample] | None = None,
        phase_runner: PhaseRunner | None = None,
        enable_phases: bool = True,
        reflection_lm: Any = None,
        processing_class: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        **kwargs: Any,
    ):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        self.task = task
        self.reward = VerifierReward(task.verifier)
        self.tracker = HardSampleTracker(args.hard_max_successes)
        self.templates: dict[str, str] = {}
        self.assignments: dict[str, list[str]] = {}
        self.retired: dict[str, int] = {}  # sample id -> step its templates were dropped (retire_templates)
        self.rounds: list[dict[str, Any]] = []
        self.phase_runner = phase_runner or self.evolve_phase
        self.initial_model = str(model) if isinstance(model, str | Path) else str(model.config._name_or_path)
        self.enable_phases = enable_phases
        self.reflection_lm = reflection_lm
        if samples is None:
            samples = {
                sid: Sample(sid, prob, str(ans))
                for sid, prob, ans in zip(
                    train_dataset["sample_id"], train_dataset["problem"], train_dataset["answer"], strict=True
                )
            }
        self.samples = samples
        self._batch_sample_ids: list[str] | None = None
        self._last_rewards: torch.Tensor | None = None
        self._sample_log_rows = 0
        self._said_no_gen_logps = False
        # Per sample group (`Task.group_of`), rollouts since the last round: [templated successes,
        # templated rollouts, plain successes, plain rollouts]. Each round records and resets them.
        self._group_window: dict[str, list[int]] = {}
        self._group_labels: dict[str, str] = {}
        # Where the time goes: seconds of generation (templated and plain), the CRM's forward passes,
        # the phases and the held-out evaluations (`timings()`).
        self._seconds: dict[str, float] = {}
        self._policy_server: Any = None
        self._replay_rounds: set[int] = set()  # rounds finished after the checkpoint resumed from
        super().__init__(
            model=model,
            reward_funcs=[self.reward],
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            rollout_func=self._rollout,
            callbacks=callbacks,
            **kwargs,
        )
        self.add_callback(PhaseCallback(self))
        self.add_callback(RoundTracking(self))  # each round's templates to tensorboard / trackio
        self.heldout = None
        if args.heldout_eval:
            from p2o.train.heldout import HeldOutEval

            splits = [x.strip() for x in args.heldout_eval.split(",") if x.strip()]
            self.heldout = HeldOutEval(self, splits, args.heldout_every_steps)
            self.add_callback(self.heldout)
        if enable_phases and phase_runner is None and args.max_phases != 0:
            # Fail before any work on what a phase would trip over much later.
            from p2o.templates import load_meta_prompt, load_program

            load_program(args.program)
            load_meta_prompt(args.meta_prompt)
            if self.in_process_policy and (self.is_fsdp_enabled or self._zero3()):
                raise ConfigError(
                    "policy_server: 'trainer' generates a phase's rollouts with the training model on the "
                    "main process, which cannot hold parameters sharded by FSDP or DeepSpeed ZeRO-3; use "
                    "policy_server: transformers or vllm (or auto) with this setup"
                )

    @property
    def in_process_policy(self) -> bool:
        """Whether phases generate with the training model itself (`policy_server: trainer`)."""
        return self.args.policy_server == "trainer"

    def _zero3(self) -> bool:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return bool(self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)

    # ------------------------------------------------------------------ rollouts

    def template_for(self, sample_id: str, k: int, num_generations: int) -> str | None:
        """The template id of rollout k of a sample's group, or None for an untemplated rollout."""
        tids = self.assignments.get(sample_id)
        if not tids:
            return None
        if k >= num_generations - self.args.untemplated_rollouts:
            return None
        return tids[0] if self.args.same_template_in_group else tids[k % len(tids)]

    def _rollout(self, prompts: list, trainer: Any) -> dict[str, Any]:
        """TRL's `rollout_func`. Besides TRL's keys it returns, per row, `p2o_templated`,
        `p2o_template_id` and `p2o_gen_prompt_ids` (the prompt generated from), which TRL merges
        into the batch's `inputs`."""
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        ids = self._batch_sample_ids or [None] * len(prompts)
        offset = self.accelerator.process_index * len(prompts)
        template_ids: list[str | None] = []
        for i, sid in enumerate(ids):
            tid = None
            if mode == "train" and sid is not None:
                tid = self.template_for(sid, (offset + i) % num_generations, num_generations)
            template_ids.append(tid)
        templated = [t is not None for t in template_ids]

        gen_prompts = [
            render_augmented(p, self.templates[t]) if t is not None else p
            for p, t in zip(prompts, template_ids, strict=True)
        ]
        gen_prompt_ids, images, mm_fields = self._tokenize_prompts(gen_prompts)
        gen_prompt_ids = [list(x) for x in gen_prompt_ids]
        # Every rank must pass the same `num_generations` (vLLM server mode gathers prompts and
        # de-duplicates by stride): once any assignment exists, each rollout is its own request.
        n = 1 if self.assignments else num_generations
        # The CRM's π(y|x̃) from the generation itself (`crm_source: generation`) instead of a forward.
        score = (
            any(templated) and self.args.distill and self.args.crm and self.args.crm_source == "generation"
        )
        gen_logps: list[Any] = [None] * len(prompts)
        t0 = time.perf_counter()
        in_process_text = not self.use_vllm and images is None and not mm_fields
        if any(templated) and in_process_text and (score or not all(templated)):
            completion_ids, logprobs, gen_logps = self._generate_split(gen_prompt_ids, templated, score)
        else:
            completion_ids, logprobs = self._generate_single_turn(gen_prompt_ids, images, mm_fields, n)
            if score and logprobs is not None:  # vLLM: its processed log-probs of the sampled tokens
                gen_logps = [list(lp) if t else None for lp, t in zip(logprobs, templated, strict=True)]
        if mode == "train":
            self._add_seconds("generation", time.perf_counter() - t0)

        if any(templated) and self.args.distill:
            # x's ids for the loss; a plain row was generated from x itself.
            originals = iter(
                self._tokenize_prompts([p for p, t in zip(prompts, templated, strict=True) if t])[0]
            )
            loss_prompt_ids = [
                list(next(originals)) if t else g for g, t in zip(gen_prompt_ids, templated, strict=True)
            ]
            if logprobs is not None:  # neutralise IS correction for templated rollouts (ratio := 1)
                logprobs = [
                    [float("nan")] * len(lp) if t else lp for lp, t in zip(logprobs, templated, strict=True)
                ]
        else:
            loss_prompt_ids = gen_prompt_ids
        return {
            "prompt_ids": loss_prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": logprobs,
            ROLLOUT_TEMPLATED: templated,
            ROLLOUT_TEMPLATE_ID: template_ids,
            ROLLOUT_GEN_PROMPT_IDS: gen_prompt_ids,
            ROLLOUT_GEN_LOGPS: gen_logps,
        }

    def _generate_split(
        self, prompt_ids: list[list[int]], templated: list[bool], score: bool = False
    ) -> tuple[list, Any, list]:
        """In-process generation in two batches, templated and plain: one batch would pad every
        plain prompt to the templated prompts' length (on the toy world, most of the prefill). With
        `score`, the templated batch also returns each token's log-prob (`_generate_scored`)."""
        completions: list[Any] = [None] * len(prompt_ids)
        logprobs: list[Any] | None = [None] * len(prompt_ids)
        scored: list[Any] = [None] * len(prompt_ids)
        for flag in (True, False):
            rows = [i for i, t in enumerate(templated) if t is flag]
            if not rows:
                continue
            t0 = time.perf_counter()
            batch = [prompt_ids[i] for i in rows]
            lps = None
            if flag and score:
                ids, token_logps = self._generate_scored(batch)
                for j, i in enumerate(rows):
                    scored[i] = token_logps[j]
            else:
                ids, lps = self._generate_single_turn(batch, None, {}, 1)
            if flag:
                self._add_seconds("generation_templated", time.perf_counter() - t0)
            for j, i in enumerate(rows):
                completions[i] = ids[j]
                if logprobs is not None and lps is not None:
                    logprobs[i] = lps[j]
            if lps is None:
                logprobs = None
        return completions, logprobs, scored

    def _generate_scored(self, prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[list[float]]]:
        """In-process generation, as TRL's own, that also returns log π(y_t | prompt, y_<t) of each
        generated token at the sampling temperature: the generated logits are what a forward pass
        over prompt + completion would give, so the CRM needs no forward of its own on x̃."""
        from transformers import Trainer
        from trl.models import unwrap_model_for_generation

        tensors = [torch.tensor(ids) for ids in prompt_ids]
        multiple = self.pad_to_multiple_of
        inputs = Trainer._prepare_inputs(
            self,
            {
                "input_ids": pad(
                    tensors, self._tokenizer.pad_token_id, padding_side="left", pad_to_multiple_of=multiple
                ),
                "attention_mask": pad(
                    [torch.ones_like(t) for t in tensors], 0, padding_side="left", pad_to_multiple_of=multiple
                ),
            },
        )
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            out = unwrapped.generate(
                **inputs,
                generation_config=self.generation_config,
                output_logits=True,
                return_dict_in_generate=True,
            )
        completion = out.sequences[:, inputs["input_ids"].size(1) :]
        logits = torch.stack(out.logits, dim=1).float() / self.temperature
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        is_eos = torch.isin(completion, torch.tensor(self.eos_token_ids, device=completion.device))
        # Everything after the first EOS is dropped, as TRL does.
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completion.size(1)).tolist()
        ids = [row[:n].tolist() for row, n in zip(completion.cpu(), lengths, strict=True)]
        logps = [row[:n].tolist() for row, n in zip(token_logps.cpu(), lengths, strict=True)]
        return ids, logps

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards  # gathered across ranks: (global batch, n reward funcs)
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        self._batch_sample_ids = [str(x["sample_id"]) if "sample_id" in x else None for x in inputs]
        out = super()._generate_and_score_completions(inputs)  # adds the rollout's fields to `inputs`
        templated = [x.get(ROLLOUT_TEMPLATED, False) for x in inputs]
        if mode != "train":
            return out

        crm_stats = None
        if any(templated) and self.args.distill and self.args.crm:
            t0 = time.perf_counter()
            crm_stats = self._apply_crm(out, inputs)
            self._add_seconds("crm", time.perf_counter() - t0)
        self._track_and_log(inputs, templated, crm_stats)
        return out

    @torch.no_grad()
    def _apply_crm(self, out: dict[str, Any], inputs: list[dict[str, Any]]) -> tuple[int, int]:
        """Mask templated-rollout tokens whose π(y|x)/π(y|x̃) is outside [crm_low, crm_high]."""
        rows = [i for i, x in enumerate(inputs) if x.get(ROLLOUT_TEMPLATED, False)]
        comp_ids, comp_mask = out["completion_ids"][rows], out["completion_mask"][rows]
        generated = [inputs[i].get(ROLLOUT_GEN_LOGPS) for i in rows]
        from_generation = self.args.crm_source == "generation" and all(g is not None for g in generated)
        if self.args.crm_source == "generation" and not from_generation and not self._said_no_gen_logps:
            self._said_no_gen_logps = True
            _say(
                "crm_source: generation, but this generation path gave no log-probs for templated rollouts "
                "(in process with images or multimodal inputs); the CRM takes π(y|x̃) from a forward pass"
            )
        if from_generation:
            logp_aug = torch.zeros(comp_ids.shape, dtype=torch.float32, device=comp_ids.device)
            for j, g in enumerate(generated):
                n = min(len(g), comp_ids.size(1))
                logp_aug[j, :n] = torch.tensor(g[:n], dtype=torch.float32)
        else:
            logp_aug = self._completion_logps(
                [torch.tensor(inputs[i][ROLLOUT_GEN_PROMPT_IDS]) for i in rows], comp_ids, comp_mask
            )
        old = out.get("old_per_token_logps")
        if old is not None:
            logp_x = old[rows]
        else:
            # log π(y|x) in a forward of its own: padded together with x̃, every short x would be
            # padded to the templated length.
            p_ids, p_mask = out["prompt_ids"][rows], out["prompt_mask"][rows]
            prompts = [ids[m.bool()].cpu() for ids, m in zip(p_ids, p_mask, strict=True)]
            logp_x = self._completion_logps(prompts, comp_ids, comp_mask)
        keep = crm_keep_mask(logp_x, logp_aug, self.args.crm_low, self.args.crm_high).int() * comp_mask
        crm_mask = torch.ones_like(out["completion_mask"])
        crm_mask[rows] = keep
        if "tool_mask" in out:
            crm_mask = crm_mask * out["tool_mask"]
        out["tool_mask"] = crm_mask
        loss_mask = out["completion_mask"] * crm_mask
        out["num_items_in_batch"] = gather(loss_mask.sum()).sum()
        return int(comp_mask.sum().item() - keep.sum().item()), int(comp_mask.sum().item())

    def _direct_logprobs(self) -> bool:
        """Whether `logprob_kernel` picks the direct path for this run (`auto`: on CPU)."""
        kernel = self.args.logprob_kernel
        return kernel == "direct" or (kernel == "auto" and self.accelerator.device.type == "cpu")

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        """TRL's per-token log-probs (and entropies), or with `logprob_kernel` direct the same figures
        from the LM head applied to the completion positions only. TRL's fused kernel scores every
        position off Triton devices, the prompt's included; on CPU that is most of a small model's
        loss step. Multimodal inputs and MoE aux losses always take TRL's path."""
        if compute_aux_loss or any(v is not None for v in multimodal.values()) or not self._direct_logprobs():
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size,
                compute_entropy,
                compute_aux_loss,
                **multimodal,
            )
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            with self.accelerator.autocast():
                logits = model(
                    input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1, use_cache=False
                ).logits
            # position t's logits predict token t + 1; the last position predicts past the end
            logits = logits[:, :-1].float() / self.temperature
            log_probs = torch.log_softmax(logits, dim=-1)
            targets = ids[:, -logits_to_keep:]
            valid = mask[:, -logits_to_keep:] != 0  # as TRL: 0 at padding
            logps.append(log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).masked_fill(~valid, 0.0))
            if compute_entropy:
                entropy = -(log_probs.exp() * log_probs).sum(-1)
                entropies.append(entropy.masked_fill(~valid, 0.0))
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _completion_logps(
        self, prompts: list[torch.Tensor], comp_ids: torch.Tensor, comp_mask: torch.Tensor
    ) -> torch.Tensor:
        """log π(y_t | prompt, y_<t) of each completion token, one forward pass (no grad)."""
        device = self.accelerator.device
        ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        mask = pad([torch.ones_like(x) for x in prompts], padding_value=0, padding_side="left").to(device)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            self.model,
            torch.cat([ids, comp_ids], 1),
            torch.cat([mask, comp_mask], 1),
            comp_ids.size(1),
            len(prompts),
        )
        return logps

    def _track_and_log(self, inputs: list[dict[str, Any]], templated: list[bool], crm_stats) -> None:
        metrics = self._metrics["train"]
        k = self.num_generations
        all_ids = gather_object([str(x.get("sample_id")) for x in inputs])
        all_templated = gather_object(list(templated))
        rewards = self._last_rewards[:, 0].nan_to_num(0.0).tolist() if self._last_rewards is not None else []
        rows = list(zip(all_ids, rewards, all_templated, strict=False))
        counts = self.tracker.update_groups(rows, k, self.state.global_step)
        self._count_groups(rows)
        groups = [rows[s : s + k] for s in range(0, len(rows) - k + 1, k)]
        if self.args.retire_templates:
            self._retire_solved(groups)

        n = max(len(rows), 1)
        t_rewards = [r for _, r, t in rows if t]
        p_rewards = [r for _, r, t in rows if not t]
        metrics["p2o/templated_frac"].append(len(t_rewards) / n)
        if t_rewards:
            metrics["p2o/reward_templated"].append(sum(t_rewards) / len(t_rewards))
        if p_rewards:
            metrics["p2o/reward_plain"].append(sum(p_rewards) / len(p_rewards))
        zero_t = [len({r for _, r, _ in g}) == 1 for g in groups if any(t for _, _, t in g)]
        zero_p = [len({r for _, r, _ in g}) == 1 for g in groups if not any(t for _, _, t in g)]
        if zero_t:
            metrics["p2o/zero_std_frac_templated"].append(sum(zero_t) / len(zero_t))
        if zero_p:
            metrics["p2o/zero_std_frac_plain"].append(sum(zero_p) / len(zero_p))
        metrics["p2o/hard_group_frac"].append(counts["hard"] / max(counts["groups"], 1))
        metrics["p2o/rescued_groups"].append(float(counts["rescued"]))
        metrics["p2o/hard_count"].append(float(len(self.tracker.hard_ids())))
        metrics["p2o/assigned_samples"].append(float(len(self.assignments)))
        if self.args.retire_templates:
            metrics["p2o/retired_samples"].append(float(len(self.retired)))
        if crm_stats is not None:
            local = torch.tensor(crm_stats, dtype=torch.float64, device=self.accelerator.device)
            masked, total = gather(local.unsqueeze(0)).sum(0).tolist()
            metrics["p2o/crm_masked_frac"].append(masked / max(total, 1.0))
        self._log_samples(inputs, templated)

    def _add_seconds(self, what: str, seconds: float) -> None:
        self._seconds[what] = self._seconds.get(what, 0.0) + seconds

    def timings(self) -> dict[str, float]:
        """Seconds spent so far on this process: `generation` (all training rollouts;
        `generation_templated` the templated part where plain and templated prompts are generated
        apart), `crm` (the Context Ratio Mask's forward passes: π(y|x), and π(y|x̃) unless
        `crm_source: generation`), `phase` and `heldout`."""
        out = dict(self._seconds)
        out["phase"] = sum(float(r.get("seconds", 0.0)) for r in self.rounds)
        if self.heldout is not None:
            out["heldout"] = sum(float(p.get("seconds", 0.0)) for p in self.heldout.curve)
        return {k: round(v, 2) for k, v in sorted(out.items())}

    def group_of(self, sample_id: str) -> str | None:
        """The task's group label of a training sample (`Task.group_of`), or None."""
        if self.task.group_of is None or sample_id not in self.samples:
            return None
        label = self._group_labels.get(sample_id)
        if label is None:
            label = self._group_labels[sample_id] = str(self.task.group_of(self.samples[sample_id]))
        return label

    def _count_groups(self, rows: list[tuple[str, float, bool]]) -> None:
        for sid, reward, templated in rows:
            label = self.group_of(sid)
            if label is None:
                continue
            w = self._group_window.setdefault(label, [0, 0, 0, 0])
            at = 0 if templated else 2
            w[at] += int(reward >= 1.0)
            w[at + 1] += 1

    def _round_groups(self, hard_ids: list[str], assigned: list[str]) -> dict[str, dict[str, Any]]:
        """Per group: hard samples at this round, samples the phase assigned templates, and the
        success rate of templated and plain rollouts since the previous round."""
        out: dict[str, dict[str, Any]] = {}

        def row(label: str) -> dict[str, Any]:
            return out.setdefault(label, {"hard": 0, "assigned": 0})

        for sid in hard_ids:
            if (label := self.group_of(sid)) is not None:
                row(label)["hard"] += 1
        for sid in assigned:
            if (label := self.group_of(sid)) is not None:
                row(label)["assigned"] += 1
        for label, (ts, tn, ps, pn) in self._group_window.items():
            r = row(label)
            r["templated_success"] = round(ts / tn, 4) if tn else None
            r["templated_rollouts"] = tn
            r["plain_success"] = round(ps / pn, 4) if pn else None
            r["plain_rollouts"] = pn
        self._group_window = {}
        return dict(sorted(out.items()))

    def _retire_solved(self, groups: list[list[tuple[str, float, bool]]]) -> None:
        """`retire_templates`: drop the templates of a sample whose untemplated rollouts all succeeded
        (`retire_when: solved`), or, with `no_gain`, also of one whose untemplated rollouts succeeded
        at least once and at least as often as its templated ones.

        Fed the gathered groups (rows `(sample_id, reward, templated)`), so every rank drops the same
        samples. A retired sample trains as a plain one from its next group on; a later phase may
        assign it again if it turns hard.
        """
        no_gain = self.args.retire_when == "no_gain"
        for group in groups:
            sid = group[0][0]
            plain = [r >= 1.0 for _, r, t in group if not t]
            templated = [r >= 1.0 for _, r, t in group if t]
            if sid not in self.assignments or not plain or not templated:
                continue
            solved = all(plain)
            gain_gone = any(plain) and sum(plain) / len(plain) >= sum(templated) / len(templated)
            if solved or (no_gain and gain_gone):
                del self.assignments[sid]
                self.retired[sid] = self.state.global_step

    def _log_samples(self, inputs: list[dict[str, Any]], templated: list[bool]) -> None:
        """A few readable rows per generation: prompt, template, completion, verdict."""
        if not self.accelerator.is_main_process or self._sample_log_rows >= SAMPLE_LOG_LIMIT:
            return
        verdicts = self.reward.last_verdicts
        logs = self._logs
        completions = list(logs["completion"])[-len(inputs) :] if logs.get("completion") else []
        path = self.round_dir(len(self.rounds) + 1) / "samples.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        picks = [i for i, t in enumerate(templated) if t][:2] + [i for i, t in enumerate(templated) if not t][
            :2
        ]
        with path.open("a") as f:
            for i in picks:
                v = verdicts[i] if i < len(verdicts) else None
                template_id = inputs[i].get(ROLLOUT_TEMPLATE_ID)
                row = {
                    "step": self.state.global_step,
                    "sample_id": inputs[i].get("sample_id"),
                    "problem": inputs[i].get("problem"),
                    "template_id": template_id,
                    "template": self.templates.get(template_id or ""),
                    "completion": completion_text(completions[i]) if i < len(completions) else None,
                    "answer": inputs[i].get("answer"),
                    "score": v.score if v else None,
                    "feedback": v.feedback if v else None,
                }
                f.write(json.dumps(row) + "\n")
                self._sample_log_rows += 1

    # ------------------------------------------------------------------ the phase

    def round_dir(self, index: int) -> Path:
        return Path(self.args.output_dir) / "rounds" / f"round-{index:03d}"

    def phases_left(self) -> bool:
        return self.enable_phases and (
            self.args.max_phases is None or len(self.rounds) < self.args.max_phases
        )

    def sync_policy(self, round_dir: Path) -> PolicyHandle:
        """Make the server see the current weights. Called on every rank. In process
        (`policy_server: trainer`) there is nothing to sync: the phase uses the model itself."""
        if self.in_process_policy:
            return PolicyHandle(model_name=self._local_policy_name())
        if self.use_vllm and self.args.vllm_mode == "server":
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
            url = vllm_server_url(self.args) + "/v1"
            return PolicyHandle(url=url, model_name=str(self.model.config._name_or_path))
        ckpt = round_dir / "policy"
        if self.accelerator.is_main_process:
            self.merged_policy().save_pretrained(ckpt, safe_serialization=True)
            self.processing_class.save_pretrained(ckpt)
        self.accelerator.wait_for_everyone()
        return PolicyHandle(checkpoint=ckpt)

    def merged_policy(self) -> Any:
        """The policy as one plain model: with LoRA, a copy with the adapters merged into the weights
        (what a server loads); the training model keeps its adapters."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        if hasattr(unwrapped, "merge_and_unload"):
            import copy

            return copy.deepcopy(unwrapped).merge_and_unload()
        return unwrapped

    def evolve_phase(
        self,
        config: P2OConfig,
        task: Task,
        hard_samples: list[Sample],
        policy: PolicyHandle,
        output_dir: Path,
    ) -> Any:
        """The default phase runner: `p2o.evolve.run_phase` against one policy server kept for the
        whole run and pointed at each round's checkpoint (or the synced vLLM server)."""
        from p2o.evolve import run_phase
        from p2o.policy import LocalPolicy, RemotePolicy, open_policy

        if self.in_process_policy:
            served: Any = LocalPolicy(
                self.accelerator.unwrap_model(self.model),
                self.processing_class,
                name=policy.model_name or self._local_policy_name(),
                batch_size=self.args.per_device_train_batch_size,
                seed=self.args.seed + self.state.global_step,
            )
        elif policy.url:
            served = RemotePolicy(policy.url, policy.model_name)
        elif self._policy_server is None:
            self._policy_server = open_policy(config, policy.checkpoint, log_dir=Path(config.output_dir))
            self._policy_server.start()
            served = self._policy_server
        else:
            self._policy_server.use_checkpoint(policy.checkpoint)
            served = self._policy_server
        return run_phase(
            config=config,
            task=task,
            hard_samples=hard_samples,
            policy=served,
            output_dir=output_dir,
            reflection_lm=self.reflection_lm,
            initial_model=self.initial_model,
            restart_if_changed=True,
            progress=not config.disable_tqdm,
        )

    def _local_policy_name(self) -> str:
        """What identifies the in-process policy's weights: the model and the step (a resumed phase
        is checked against it)."""
        return f"{self.initial_model}@step-{self.state.global_step}"

    def _boot_policy_server(self) -> None:
        """Launch the CPU policy server now, without waiting, so that it boots during the first steps
        instead of inside the first phase (which then only loads that round's checkpoint)."""
        if not (self.phases_left() and self.phase_runner == self.evolve_phase) or self._policy_server:
            return
        if self.in_process_policy:
            return
        if self.use_vllm or not self.accelerator.is_main_process:
            return
        from p2o.policy import PolicyServer, open_policy

        server = open_policy(self.args, self.initial_model, log_dir=Path(self.args.output_dir))
        if isinstance(server, PolicyServer) and server.backend == "transformers":
            self._policy_server = server.launch()

    def run_p2o_phase(self) -> dict[str, Any]:
        """One prompt-evolution phase, on every rank (the GEPA work runs on the main process): write
        the hard set, run the phase (or read back a round the resumed run finished), adopt its
        templates, record the round."""
        index = len(self.rounds) + 1
        rdir = self.round_dir(index)
        hard_ids = self.tracker.hard_ids()
        record: dict[str, Any] = {
            "round": index,
            "global_step": self.state.global_step,
            "epoch": self.state.epoch,
            "n_hard": len(hard_ids),
            "n_tracked": len(self.tracker.stats),
        }
        t0 = time.perf_counter()
        if self.args.template_lifetime == "round" and self.assignments:
            # The authors' lifetime: a phase's templates serve until the next phase, whatever it finds.
            record["expired_assignments"] = len(self.assignments)
            self.assignments = {}
        if self.accelerator.is_main_process:
            self._write_hard_set(rdir, hard_ids)
        assigned_ids: list[str] = []
        earlier: dict[str, Any] | None = None
        if len(hard_ids) < self.args.min_hard_samples:
            record["status"] = "skipped"
            record["reason"] = f"{len(hard_ids)} hard < min_hard_samples={self.args.min_hard_samples}"
        else:
            outcome, earlier = self._phase_outcome(index, rdir, hard_ids)
            if earlier is not None:
                record["reused"] = True
            assigned_ids = self._adopt_outcome(index, outcome, record)
        groups = self._round_groups(hard_ids, assigned_ids)
        if groups:
            record["groups"] = groups
        record["seconds"] = round(time.perf_counter() - t0, 3)
        if earlier is not None:
            record["seconds"] = earlier.get("seconds", record["seconds"])
        self._record_round(index, rdir, record)
        return record

    def _write_hard_set(self, rdir: Path, hard_ids: list[str]) -> None:
        """rounds/round-NNN/hard.jsonl: each hard sample and how its last group did (main process)."""
        rdir.mkdir(parents=True, exist_ok=True)
        with (rdir / "hard.jsonl").open("w") as f:
            for sid in hard_ids:
                s, st = self.samples.get(sid), self.tracker.stats[sid]
                row = {
                    "sample_id": sid,
                    "problem": s.problem if s else None,
                    "answer": s.answer if s else None,
                    "last_successes": st.last_successes,
                    "last_templated": st.last_templated,
                }
                f.write(json.dumps(row) + "\n")

    def _phase_outcome(
        self, index: int, rdir: Path, hard_ids: list[str]
    ) -> tuple[tuple[str, Any, int], dict[str, Any] | None]:
        """(outcome, earlier record) on every rank. A round that finished after the checkpoint this
        run resumed from is read back, not rerun (its earlier record); otherwise the policy is synced
        and the phase runs on the main process (None)."""
        main = self.accelerator.is_main_process
        if index in self._replay_rounds:
            reused = self._await_phase(lambda: self._finished_round(index, rdir) if main else None)
            if reused is not None:
                return reused
        if main:
            self._notify("phase_started", index, len(hard_ids), self.state.global_step)
        policy = self.sync_policy(rdir)
        outcome = self._await_phase(lambda: self._phase_on_main(hard_ids, policy, rdir) if main else None)
        return outcome, None

    def _adopt_outcome(self, index: int, outcome: tuple[str, Any, int], record: dict[str, Any]) -> list[str]:
        """Record a failed phase, or take a finished one's templates and assignments (ids prefixed
        `r<index>:`); the ids of the samples it assigned."""
        kind, value, attempts = outcome
        record["attempts"] = attempts
        if kind != "done":
            record["status"] = "failed"
            record["error"] = value
            record["fatal"] = kind == "fatal"
            if self.accelerator.is_main_process:
                self._notify("phase_failed", index, value)
            return []
        templates, assignments, stats = value
        prefix = f"r{index}:"
        self.templates.update({prefix + tid: text for tid, text in templates.items()})
        self.assignments.update({sid: [prefix + t for t in tids] for sid, tids in assignments.items()})
        for sid in assignments:  # hard again after retiring: templated again
            self.retired.pop(sid, None)
        record["retired_samples"] = len(self.retired)
        record["status"] = "done"
        record["n_templates"] = len(templates)
        record["n_assigned"] = len(assignments)
        record["phase"] = {
            k: v for k, v in stats.items() if not isinstance(v, dict | list) or k in ("rejected", "cost")
        }
        if isinstance(stats.get("cost"), dict):
            record["cost"] = stats["cost"]
        return list(assignments)

    def _record_round(self, index: int, rdir: Path, record: dict[str, Any]) -> None:
        """Keep the round: round.json and p2o_state.json (main process), the report, then a fatal
        failure stops the run; else the phase's metrics."""
        self.rounds.append(record)
        if self.accelerator.is_main_process:
            write_json_atomic(rdir / "round.json", record)
            self.write_run_state()
            self._notify("report_round", record)
        if record.get("fatal"):
            raise PhaseFatalError(f"round {index} (step {self.state.global_step}): {record['error']}")
        metrics = self._metrics["train"]
        metrics["p2o/phase_seconds"].append(record["seconds"])
        metrics["p2o/phase_hard"].append(float(record["n_hard"]))
        if "phase" in record:
            metrics["p2o/phase_metric_calls"].append(float(record["phase"].get("metric_calls", 0)))

    def _phase_on_main(self, hard_ids: list[str], policy: PolicyHandle, rdir: Path) -> tuple[str, Any, int]:
        """Run the phase (main process): ("done", (templates, assignments, stats), attempts), or
        ("failed" | "fatal", message, attempts). A passing failure is retried `phase_retries` times,
        a policy server that died relaunched first; a configuration error is never retried."""
        hard = [self.samples[sid] for sid in hard_ids if sid in self.samples]
        attempts = 0
        while True:
            attempts += 1
            try:
                result = self.phase_runner(
                    config=self.args,
                    task=self.task,
                    hard_samples=hard,
                    policy=policy,
                    output_dir=rdir / "evolve",
                )
                return (
                    "done",
                    (dict(result.templates), dict(result.assignments), dict(result.stats)),
                    attempts,
                )
            except Exception as e:  # a failed phase costs its round, or the run when nothing can fix it
                message = f"{type(e).__name__}: {e}"
                if is_fatal(e):
                    return "fatal", message, attempts
                if attempts > self.args.phase_retries:
                    return "failed", message, attempts
                self._relaunch_policy_server_if_dead()
                self._notify("phase_retry", attempts, message)

    def _finished_round(self, index: int, rdir: Path) -> tuple[tuple[str, Any, int], dict[str, Any]] | None:
        """(outcome, earlier record) of round `index` when its phase finished, at this step, in the
        run this one resumed (main process)."""
        from p2o.train.resume import finished_round

        found = finished_round(rdir, self.state.global_step)
        if found is None:
            return None
        templates, assignments, stats, earlier = found
        _say(
            f"round {index} (step {self.state.global_step}) finished before the interruption: its "
            f"{len(templates)} templates and {len(assignments)} assignments are read back from {rdir}"
        )
        return ("done", (templates, assignments, stats), 0), earlier

    def _relaunch_policy_server_if_dead(self) -> None:
        server = self._policy_server
        if server is not None and not getattr(server, "running", True):
            server.stop()
            self._policy_server = None  # evolve_phase starts a new one on the round's checkpoint

    def _await_phase(self, run: Callable[[], Any]) -> Any:
        """`run()` on the main process; its result on every rank.

        With several processes the others do not wait inside one collective for the whole phase (it
        may last hours, a collective times out after `ddp_timeout`): the main process runs the phase
        in this thread while a helper thread broadcasts a heartbeat every `phase_wait_poll_seconds`,
        so each collective the others wait in lasts one period at most.
        """
        if self.accelerator.num_processes == 1:
            return run()
        main = self.accelerator.is_main_process
        if not main:
            while True:
                box: list[Any] = [None]
                broadcast_object_list(box, from_process=0)
                if box[0] != "p2o-phase-running":
                    return box[0]
        done = threading.Event()
        failure: list[BaseException] = []

        def heartbeat() -> None:
            try:
                if torch.cuda.is_available() and self.accelerator.device.type == "cuda":
                    torch.cuda.set_device(self.accelerator.device)  # the current device is per thread
                while not done.wait(self.args.phase_wait_poll_seconds):
                    broadcast_object_list(["p2o-phase-running"], from_process=0)
            except BaseException as e:  # surfaced on the main thread below
                failure.append(e)

        beat = threading.Thread(target=heartbeat, name="p2o-phase-heartbeat", daemon=True)
        beat.start()
        try:
            outcome = run()
        finally:
            done.set()
            beat.join()
        if failure:
            raise failure[0]
        box = [outcome]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def preflight(self) -> None:
        """Before step 1, check what a phase will need, on the main process; every rank stops with
        the same `PhaseFatalError` when something cannot work."""
        if not (self.args.preflight and self.phases_left() and self.phase_runner == self.evolve_phase):
            return
        error = self._await_phase(
            self._preflight_on_main if self.accelerator.is_main_process else lambda: None
        )
        if error:
            raise PhaseFatalError(f"preflight: {error}")

    def _preflight_on_main(self) -> str | None:
        from p2o.evolve.reflection import ReflectionError, reflection_server, reflector_from_config
        from p2o.policy import PolicyServerError, resolve_checkpoint

        checks: dict[str, Any] = {}
        try:
            spec = self.args.reflection
            template_kwargs = {
                **(self.task.chat_template_kwargs or {}),
                **(self.args.chat_template_kwargs or {}),
            }
            where = reflection_server(self.args)
            remote_initial = spec == "initial" and where.startswith(("http://", "https://"))
            if self.reflection_lm is not None:
                checks["reflection"] = "given in code (not checked)"
            elif spec.startswith("teacher:") or remote_initial:
                reflector = reflector_from_config(
                    self.args,
                    initial_model=self.initial_model,
                    log_dir=Path(self.args.output_dir),
                    chat_template_kwargs=template_kwargs,
                )
                try:
                    reflector.preflight()
                finally:
                    reflector.close()
                checks["reflection"] = f"{reflector.name} answered" + (
                    f" at {where}" if remote_initial else ""
                )
            elif spec == "initial":
                if where == "transformers":
                    checks["reflection"] = f"initial policy {resolve_checkpoint(self.initial_model)}"
                else:
                    checks["reflection"] = (
                        f"initial policy {self.initial_model} (vllm serve, launched per phase)"
                    )
            else:
                checks["reflection"] = spec
            if self._policy_server is not None:
                server = self._policy_server
                server.wait_healthy()
                checks["policy_server"] = f"{server.backend} at {server.url}"
            elif self.in_process_policy:
                checks["policy_server"] = "trainer (the training model, in process)"
        except (ReflectionError, PolicyServerError) as e:
            return f"{type(e).__name__}: {e}"
        except Exception as e:
            if is_fatal(e):
                return f"{type(e).__name__}: {e}"
            raise
        path = Path(self.args.output_dir) / "preflight.json"
        write_json_atomic(path, {"status": "ok", **checks})
        return None

    def _notify(self, event: str, *args: Any) -> None:
        for cb in self.callback_handler.callbacks:
            fn = getattr(cb, event, None)
            if callable(fn):
                fn(*args)

    # ------------------------------------------------------------------ state & resume

    def p2o_state(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "templates": self.templates,
            "assignments": self.assignments,
            "retired": self.retired,
            "tracker": self.tracker.to_json(),
            "global_step": self.state.global_step,
        }

    def load_p2o_state(self, data: dict[str, Any]) -> None:
        self.rounds = list(data.get("rounds", []))
        self.templates = dict(data.get("templates", {}))
        self.assignments = {k: list(v) for k, v in data.get("assignments", {}).items()}
        self.retired = {k: int(v) for k, v in data.get("retired", {}).items()}
        self.tracker = HardSampleTracker.from_json(data.get("tracker", {}))
        self.tracker.hard_max_successes = self.args.hard_max_successes

    def write_run_state(self, checkpoint: str | None = None) -> None:
        """`output_dir/p2o_state.json`: the rounds and the checkpoint each is tied to."""
        out = Path(self.args.output_dir)
        path = out / STATE_FILE
        prev = json.loads(path.read_text()) if path.exists() else {}
        checkpoints = {k: v for k, v in prev.get("checkpoints", {}).items() if (out / k).is_dir()}
        if checkpoint:
            checkpoints[checkpoint] = {"global_step": self.state.global_step, "rounds": len(self.rounds)}
        latest = checkpoint or prev.get("latest_checkpoint")
        write_json_atomic(
            path,
            {
                "rounds": self.rounds,
                "checkpoints": checkpoints,
                "latest_checkpoint": latest if latest in checkpoints else None,
                "assigned_samples": len(self.assignments),
                "retired_samples": len(self.retired),
                "templates": len(self.templates),
            },
        )

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(dataset)
        return EpochSeededRepeatSampler.like(sampler) if type(sampler) is RepeatSampler else sampler

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from p2o.train.resume import TRAINER_STATE_FILE

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.accelerator.is_main_process:
            # p2o's state first, TRL's trainer_state.json last: a folder holding both was saved to the
            # end (`p2o.train.resume`); one a kill cut short is never taken for a resume point.
            (folder / TRAINER_STATE_FILE).unlink(missing_ok=True)
            write_json_atomic(folder / CHECKPOINT_STATE_FILE, self.p2o_state())
        super()._save_checkpoint(model, trial)
        if self.accelerator.is_main_process and folder.exists():
            self.write_run_state(folder.name)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        if resume_from_checkpoint:
            resume_from_checkpoint = self._resume_point(resume_from_checkpoint)
        self._boot_policy_server()
        try:
            self.preflight()
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            if self._policy_server is not None:
                self._policy_server.stop()

    def _resume_point(self, resume_from_checkpoint: str | bool) -> str | None:
        """The checkpoint to resume from (None: step 0, in a folder an interrupted run left before its
        first checkpoint), with p2o's state restored from it and what the run will write again
        dropped from the output folder. Says which checkpoint and which rounds."""
        from p2o.config import ConfigError
        from p2o.train import resume as R

        out = Path(self.args.output_dir)
        main = self.accelerator.is_main_process
        if resume_from_checkpoint is True:
            if not R.holds_a_run(out):
                what = "does not exist" if not out.exists() else "holds no checkpoint and no p2o run"
                raise ConfigError(
                    f"resume: {out} {what}: nothing to resume. Check --output_dir, or drop --resume to "
                    "start a fresh run"
                )
            point = R.find_resume_point(out)
        else:
            ckpt = Path(str(resume_from_checkpoint))
            problem = R.checkpoint_problem(ckpt)
            if problem:
                raise ConfigError(
                    f"resume_from_checkpoint: {ckpt} is not a complete checkpoint ({problem}); pass "
                    f"another one, or --resume for the newest complete one in {out}"
                )
            point = R.ResumePoint(ckpt)
        self.accelerator.wait_for_everyone()  # every rank has chosen before a folder is renamed
        if main:
            for folder, why in point.skipped:
                aside = R.set_aside(folder)
                _say(f"skipped {folder}: not a complete checkpoint ({why}); moved to {aside.name}")
        step = 0
        if point.checkpoint is not None:
            self.load_p2o_state(json.loads((point.checkpoint / CHECKPOINT_STATE_FILE).read_text()))
            step = int(json.loads((point.checkpoint / R.TRAINER_STATE_FILE).read_text())["global_step"])
        # Rounds whose phase finished after that checkpoint: read back when training reaches them.
        later = sorted(
            int(p.parent.name.split("-")[1])
            for p in (out / "rounds").glob("round-*/round.json")
            if p.parent.name.split("-")[1].isdigit()
        )
        later = [i for i in later if i > len(self.rounds)]
        box = [{i for i in later if R.finished_round(self.round_dir(i), self._round_step(i)) is not None}]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(box, from_process=0)
        self._replay_rounds = box[0]
        if main:
            # What the resumed steps will write again.
            R.trim_jsonl(out / "heldout.jsonl", lambda row: int(row.get("step", -1)) < step)
            for p in (out / "rounds").glob("round-*/samples.jsonl"):
                R.trim_jsonl(p, lambda row: int(row.get("step", -1)) < step)
            if point.checkpoint is None:
                _say(f"no complete checkpoint in {out}: training starts again from step 0 in the same folder")
            else:
                _say(f"resuming from {point.checkpoint} (step {step}); {describe_rounds(self.rounds)}")
            for i in sorted(self._replay_rounds):
                _say(
                    f"round {i} finished in the interrupted run after that point: it is read back from "
                    f"{self.round_dir(i)}, not rerun, when training reaches step {self._round_step(i)}"
                )
        self.accelerator.wait_for_everyone()
        return str(point.checkpoint) if point.checkpoint is not None else None

    def _round_step(self, index: int) -> int:
        try:
            return int(json.loads((self.round_dir(index) / "round.json").read_text())["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1


def describe_rounds(rounds: list[dict[str, Any]]) -> str:
    """`restored rounds 1 (done: 5 templates, 134 samples assigned), 2 (failed)` for a resume message."""
    if not rounds:
        return "no round had run yet"
    parts = []
    for r in rounds:
        what = str(r.get("status"))
        if what == "done":
            what += f": {r.get('n_templates')} templates, {r.get('n_assigned')} samples assigned"
        parts.append(f"{r['round']} ({what})")
    return f"restored round{'s' if len(rounds) > 1 else ''} " + ", ".join(parts)


def crm_keep_mask(logp_x: torch.Tensor, logp_aug: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """1 where low <= π(y|x)/π(y|x̃) <= high, computed in log space."""
    log_ratio = logp_x - logp_aug
    import math

    return (log_ratio >= math.log(low)) & (log_ratio <= math.log(high))


class PhaseCallback(TrainerCallback):
    """Runs the phase on schedule and asks for a checkpoint right after it, so a finished round is
    never lost."""

    def __init__(self, trainer: P2OTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        every = self.trainer.args.phase_every_steps
        due = bool(every) and state.global_step % every == 0
        if due and self._useful(state) and self.trainer.phases_left() and self._run(state):
            control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        due = self.trainer.args.phase_every_steps is None
        if due and self._useful(state) and self.trainer.phases_left() and self._run(state):
            control.should_save = True
        return control

    def _useful(self, state) -> bool:
        """No phase after the last step unless `phase_after_last_step`: no rollout would use its
        templates (the authors run none)."""
        last = bool(state.max_steps) and state.global_step >= state.max_steps
        return not last or self.trainer.args.phase_after_last_step

    def _run(self, state) -> bool:
        done = {r["global_step"] for r in self.trainer.rounds}
        if state.global_step in done:  # resumed right after this step's phase
            return False
        self.trainer.run_p2o_phase()
        return True
