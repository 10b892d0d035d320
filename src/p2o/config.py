"""Configuration: `P2OConfig` extends TRL's `GRPOConfig` with the P²O fields; `P2OScriptArguments`
names the task, data and program.

Parsed with `trl.TrlParser`, so `p2o train --config configs/x.yaml --learning_rate 1e-6` works like
`trl grpo`: YAML gives defaults, command-line flags override them. Every field is checked in
`__post_init__` before any model is loaded; a bad value raises `ConfigError` naming the field and
what is allowed.

Defaults follow the paper (v3) and its authors' released configuration; see docs/design.md.

P²O fields, by group:

> Hard-sample mining
hard_max_successes, min_hard_samples

> Phase schedule
phase_every_steps, max_phases, phase_after_last_step

> Prompt evolution (GEPA)
program, dev_max_size, gepa_max_metric_calls, gepa_patience, gepa_reflection_minibatch_size,
gepa_candidate_selection, gepa_samples_per_item, gepa_temperature, gepa_max_tokens, gepa_num_threads,
feedback_include_gold, proposal_max_chars, assign_score_all

> Reflection model
reflection, reflection_temperature, reflection_max_tokens, reflection_server, reflection_api_base,
reflection_api_key_env, reflection_litellm_kwargs, reflection_retries, reflection_retry_seconds,
reflection_max_input_tokens, meta_prompt

> Failures and several processes
preflight, phase_retries, min_phase_success, phase_wait_poll_seconds

> Context distillation
distill, crm, crm_low, crm_high, crm_source, same_template_in_group, untemplated_rollouts, template_lifetime,
retire_templates, retire_when

> Policy server
policy_server, policy_server_port, policy_server_timeout, policy_server_continuous_batching

> Speed
logprob_kernel
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from p2o.devices import cuda_available
from p2o.errors import ConfigError

# transformers 5 renamed gradient checkpointing to activation checkpointing; TRL 1.16 still uses the
# old names (the config field, and the model methods around every generation), so each run would
# print the same FutureWarnings several times a phase. The rename is theirs to finish.
warnings.filterwarnings(
    "ignore",
    message=r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated",
    category=FutureWarning,
)

REFLECTION_CHOICES = ("self", "initial", "teacher:<litellm model>")  # and the names plug-ins register
CANDIDATE_SELECTION = ("pareto", "current_best", "epsilon_greedy")
TEMPLATE_LIFETIMES = ("retire", "round")
CRM_SOURCES = ("forward", "generation")
LOGPROB_KERNELS = ("auto", "trl", "direct")
RETIRE_WHEN = ("solved", "no_gain")


def _check(cond: bool, field_name: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: must be {allowed} (got {value!r})")


def check_reflection(value: str, field_name: str = "reflection") -> None:
    from p2o.plugins import list_reflectors

    registered = list_reflectors()
    ok = value in ("self", "initial", *registered) or (value.startswith("teacher:") and len(value) > 8)
    _check(ok, field_name, "one of " + ", ".join((*REFLECTION_CHOICES, *registered)), value)


# ---------------------------------------------------------------- field types

# TRL's parser makes YAML values the defaults of its argparse options, and argparse converts only
# string defaults: `learning_rate: yes` arrives as True and `num_generations: [6]` as a list.
# So every field is checked against its annotation before any validation. Fields whose
# __post_init__ accepts more than the annotation says keep accepting it:
_ALSO_ACCEPTED: dict[str, tuple[type, ...]] = {
    "scale_rewards": (bool,),  # TRL maps True/False to "group"/"none"
    "debug": (type(None),),  # transformers' own parser gives None when the flag is absent
}
_YAML_TYPES = (bool, int, float, str, list, tuple, dict, type(None))


def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved is not checked
        return {}


def _matches(value: Any, tp: Any) -> bool:
    """Whether `value` fits annotation `tp`. A bool is never an int or a float; an int is a float."""
    import enum
    import types
    import typing

    if tp is Any or tp is typing.Any or isinstance(tp, typing.TypeVar):
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if tp is type(None) or tp is None:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp) or any(value == m.value for m in tp)
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        container = origin or tp
        if not isinstance(value, list | tuple if container in (list, tuple) else container):
            return False
        if not args or (container is tuple and len(args) == 2 and args[1] is Ellipsis):
            return not args or all(_matches(v, args[0]) for v in value)
        if container is tuple:
            return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return False
        return len(args) != 2 or all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a typing construct this check does not know: not checked


def _describe(tp: Any) -> str:
    import enum
    import types
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        parts = [_describe(a) for a in args if a is not type(None)]
        if any(a is type(None) for a in args):
            parts.append("null")
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if origin in (list, tuple) or tp in (list, tuple):
        plural = {
            "an integer": "integers",
            "a number": "numbers",
            "a string": "strings",
            "true or false": "booleans",
        }
        return f"a list of {plural.get(_describe(args[0]), _describe(args[0]))}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _what(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean (in YAML, yes/no/on/off/true/false are booleans)"
    kinds = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return kinds.get(type(value), type(value).__name__)


def check_field_types(obj: Any) -> None:
    """Check every field of the dataclass `obj` against its annotation; raise `ConfigError` naming
    the first field whose value has the wrong type. A number where only a string belongs becomes
    its text (`dataset_config: 2024`). Values of other types than YAML's (objects that an earlier
    `__post_init__` built, such as an `AcceleratorConfig`) are not checked."""
    import dataclasses

    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints.get(f.name)
        if tp is None or not f.init:
            continue
        value = getattr(obj, f.name)
        if not isinstance(value, _YAML_TYPES) or isinstance(value, _ALSO_ACCEPTED.get(f.name, ())):
            continue
        if _matches(value, tp):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and _matches("", tp):
            setattr(obj, f.name, str(value))
            continue
        raise ConfigError(
            f"{f.name}: must be {_describe(tp)}, got {value!r}, {_what(value)}. Fix it in the config "
            f"file or pass --{f.name}."
        )


@dataclass
class P2OConfig(GRPOConfig):
    r"""GRPO configuration plus the P²O fields. See the module docstring for the groups."""

    # ---- GRPO defaults the paper uses (override TRL's) ----
    num_generations: int | None = field(
        default=6, metadata={"help": "K: rollouts per prompt (the paper uses 6)."}
    )
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature of training rollouts."})
    per_device_train_batch_size: int = field(
        default=6,
        metadata={"help": "Completions per device per step; a multiple of num_generations overall."},
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "TRL's vLLM importance-sampling correction. Off by default: it would weight templated "
            "rollouts by π(y|x)/π(y|x̃), undoing context distillation. p2o never applies it to templated "
            "rollouts even when on."
        },
    )

    # ---- hard-sample mining ----
    hard_max_successes: int = field(
        default=1,
        metadata={"help": "τ: a prompt is hard when at most this many of its K rollouts succeed."},
    )
    min_hard_samples: int = field(
        default=100, metadata={"help": "A prompt-evolution phase runs only when at least this many are hard."}
    )

    # ---- phase schedule ----
    phase_every_steps: int | None = field(
        default=None,
        metadata={"help": "Run a phase every N optimizer steps; None = at the end of each epoch."},
    )
    max_phases: int | None = field(default=None, metadata={"help": "Stop running phases after this many."})
    phase_after_last_step: bool = field(
        default=False,
        metadata={
            "help": "Run a phase when the last step (or epoch) ends too. Off, as the authors run it: no "
            "rollout would use its templates; on, its templates are still saved for export and eval."
        },
    )

    # ---- prompt evolution (GEPA) ----
    program: str = field(
        default="math_cot",
        metadata={"help": "Template program: a name in programs/, a .py file, or a dotted path."},
    )
    dev_max_size: int = field(
        default=300,
        metadata={"help": "GEPA's dev set: min(dev_max_size, n // 2) of the n hard samples; the rest train."},
    )
    gepa_max_metric_calls: int = field(
        default=2000, metadata={"help": "GEPA budget: policy evaluations (one per sample per candidate)."}
    )
    gepa_patience: int = field(
        default=0,
        metadata={
            "help": "Stop GEPA before its budget after this many iterations in a row in which no dev sample "
            "got a better score from any candidate (at once when every dev sample has a perfect candidate). "
            "0 runs the whole budget, as the paper does."
        },
    )
    gepa_reflection_minibatch_size: int = field(
        default=3, metadata={"help": "Hard samples shown to the reflection model per proposal."}
    )
    gepa_candidate_selection: str = field(
        default="pareto",
        metadata={"help": "GEPA candidate selection: " + ", ".join(CANDIDATE_SELECTION) + "."},
    )
    gepa_samples_per_item: int = field(
        default=1, metadata={"help": "Policy samples per dev item when scoring a template (paper: 1 greedy)."}
    )
    gepa_temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature when scoring templates (0 = greedy)."}
    )
    gepa_max_tokens: int | None = field(
        default=None,
        metadata={"help": "Max new tokens when scoring templates; None = max_completion_length."},
    )
    gepa_num_threads: int = field(default=8, metadata={"help": "Concurrent policy requests during a phase."})
    feedback_include_gold: bool = field(
        default=True, metadata={"help": "Show the gold answer to the reflection model in the feedback."}
    )
    proposal_max_chars: int = field(
        default=4000, metadata={"help": "Reject proposed templates longer than this (characters)."}
    )
    assign_score_all: bool = field(
        default=False,
        metadata={
            "help": "After GEPA, score the cover templates on the hard samples outside dev too (cover × "
            "train extra policy evaluations), so every hard sample draws its K templates from those that "
            "solved it, and one that none solved stays untemplated (and hard, to be mined again). False = "
            "the paper's assignment: unsolved and train-side samples draw from the whole cover."
        },
    )

    # ---- reflection model ----
    reflection: str = field(
        default="initial",
        metadata={
            "help": "Reflection model: 'teacher:<litellm model>' (Teacher-Ref; keys from the environment), "
            "'self' (the live policy), 'initial' (the frozen initial policy: the paper's Self-Ref), "
            "or a name a plug-in registers (p2o.plugins.register_reflector)."
        },
    )
    reflection_temperature: float = field(default=1.0, metadata={"help": "Reflection model temperature."})
    reflection_max_tokens: int = field(default=4096, metadata={"help": "Reflection model max new tokens."})
    reflection_server: str = field(
        default="auto",
        metadata={
            "help": "reflection=initial: where the frozen initial policy is served. 'auto' (vllm with "
            "use_vllm, else transformers), 'transformers' (p2o launches transformers serve: CPU), 'vllm' "
            "(p2o launches vllm serve) or the http(s) URL of a server already serving it under the "
            "model's name (a second `vllm serve <model>` on its own GPU)."
        },
    )
    reflection_api_base: str | None = field(
        default=None,
        metadata={
            "help": "Teacher-Ref: the endpoint, e.g. https://api.example.com/v1 for any OpenAI-compatible "
            "server with teacher:openai/<model>. None: the provider's default."
        },
    )
    reflection_api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "Teacher-Ref: the NAME of the environment variable that holds the key (e.g. "
            "MOONSHOT_API_KEY). None: the provider's usual variable. Keys are read from the environment "
            "only, never from a config, and never written or logged."
        },
    )
    reflection_litellm_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Teacher-Ref: more arguments for litellm.completion, e.g. {timeout: 600, "
            "num_retries: 6, extra_headers: {...}} (a YAML mapping or a JSON string)."
        },
    )
    reflection_retries: int = field(
        default=4,
        metadata={
            "help": "Retries of a reflection call that failed for a passing reason (429, 5xx, time-out), "
            "with exponential backoff. Lasting errors (a refused key, an unknown model) stop the run."
        },
    )
    reflection_retry_seconds: float = field(
        default=2.0, metadata={"help": "First backoff of a reflection retry; doubled each retry (max 60 s)."}
    )
    reflection_max_input_tokens: int = field(
        default=30000,
        metadata={
            "help": "Budget of the reflection prompt, sized to the reflection model's context. Examples show "
            "the full prompt x and the whole policy output; outputs are cut in the middle (the cut marked) "
            "only when the prompt would exceed this (estimated at 3 characters a token)."
        },
    )
    meta_prompt: str = field(
        default="default",
        metadata={
            "help": "Reflection meta-prompt: a name in programs/meta_prompts/ or a file path. Must contain "
            "<curr_param> and <side_info>."
        },
    )

    # ---- context distillation ----
    distill: bool = field(
        default=True,
        metadata={"help": "Loss of templated rollouts on the original prompt x (False: on x̃, the ablation)."},
    )
    crm: bool = field(default=True, metadata={"help": "Context Ratio Mask on templated rollouts."})
    crm_low: float = field(
        default=0.01, metadata={"help": "CRM: mask tokens whose π(y|x)/π(y|x̃) is below this."}
    )
    crm_high: float = field(
        default=10.0, metadata={"help": "CRM: mask tokens whose π(y|x)/π(y|x̃) is above this."}
    )
    crm_source: str = field(
        default="forward",
        metadata={
            "help": "Where the CRM takes π(y|x̃) from. `forward`: a forward pass of the training model over "
            "each templated rollout after generation, as the authors do. `generation`: the log-probs "
            "the generation itself produced (vLLM's processed log-probs, or in process the generated "
            'logits at the sampling temperature), which saves that forward (docs/toy.md, "Where the '
            'time goes"). π(y|x) comes from a forward pass either way.'
        },
    )
    same_template_in_group: bool = field(
        default=False, metadata={"help": "One template for all K rollouts of a group (ablation)."}
    )
    untemplated_rollouts: int = field(
        default=0, metadata={"help": "Rollouts of each templated group generated without a template."}
    )
    template_lifetime: str = field(
        default="retire",
        metadata={
            "help": "How long a phase's assignments last. `retire`: until retire_templates drops them "
            "(for the whole run without it). `round`: until the next phase, the authors' rule: each "
            "phase's assignments replace every earlier one, and a skipped or failed phase leaves "
            "nothing templated."
        },
    )
    retire_templates: bool = field(
        default=False,
        metadata={
            "help": "Drop a sample's templates once every untemplated rollout of one of its groups "
            "succeeded: the policy solves it unprompted, so it trains as a plain GRPO sample again "
            "(and a later phase can assign it anew if it turns hard). Needs untemplated_rollouts >= 1."
        },
    )
    retire_when: str = field(
        default="solved",
        metadata={
            "help": "retire_templates: which group retires a sample's templates. `solved`: every untemplated "
            "rollout succeeded. `no_gain`: that, or the untemplated rollouts succeeded at least once and at "
            'least as often as the templated ones: the template no longer helps (docs/toy.md, "Retiring '
            'templates that no longer help").'
        },
    )

    # ---- failures and several processes ----
    preflight: bool = field(
        default=True,
        metadata={
            "help": "Before step 1, check what a phase needs: the program and meta-prompt load, the "
            "reflection model answers one short request, the policy checkpoint resolves and its server "
            "starts. A failure stops the run before any training."
        },
    )
    phase_retries: int = field(
        default=1,
        metadata={
            "help": "A phase that failed for a passing reason (its policy server died, the teacher kept "
            "answering 5xx) is run again this many times, the server relaunched. Configuration errors "
            "are never retried: they stop the run."
        },
    )
    min_phase_success: float = field(
        default=0.5,
        metadata={
            "help": "p2o train exits 1 when, of the phases that were attempted, fewer than this share "
            "finished (failed rounds are named in its last lines). 0 = never."
        },
    )
    phase_wait_poll_seconds: float = field(
        default=30.0,
        metadata={
            "help": "Several processes: while the main process runs a phase, the others wait in short "
            "collectives of this period instead of one that lasts the whole phase (a phase may last "
            "hours; a collective times out after ddp_timeout)."
        },
    )

    # ---- held-out evaluation during training ----
    heldout_eval: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated splits of the task's own data (e.g. 'test_hard,test_easy') measured "
            "greedy, without instruction, at the start, every heldout_every_steps and at the end."
        },
    )
    heldout_every_steps: int = field(
        default=0, metadata={"help": "Held-out evaluation period in optimizer steps; 0 = start and end only."}
    )

    # ---- policy server (GEPA phase) ----
    policy_server: str = field(
        default="auto",
        metadata={
            "help": "Server the phase queries: 'auto' (vllm with vllm_mode=server, else transformers), "
            "'transformers', 'vllm', an http(s) URL of a running OpenAI-compatible server, or 'trainer' "
            "(no server: the training model generates the phase's rollouts in process, batched; not "
            "with FSDP or DeepSpeed ZeRO-3)."
        },
    )
    policy_server_port: int = field(
        default=0, metadata={"help": "Port for a server p2o launches; 0 = free port."}
    )
    policy_server_timeout: float = field(
        default=300.0, metadata={"help": "Seconds to wait for the policy server to come up."}
    )
    policy_server_continuous_batching: bool = field(
        default=False,
        metadata={
            "help": "transformers backend: launch `transformers serve --continuous-batching`, which batches "
            "concurrent requests (raise gepa_num_threads to feed it)."
        },
    )
    logprob_kernel: str = field(
        default="auto",
        metadata={
            "help": "How the loss's per-token log-probs are computed. `trl`: TRL's fused, chunked LM-head "
            "kernel (memory-lean for large vocabularies; off Triton devices it scores every position, "
            "prompt included). `direct`: the LM head on the completion positions only, then log-softmax "
            "(the same figures; fast on CPU for small vocabularies, memory-hungry for large ones). "
            '`auto`: direct on CPU, trl elsewhere (docs/toy.md, "Where the time goes").'
        },
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if not cuda_available():
            # CPU-safe settings instead of failing on a machine without a GPU.
            self.use_cpu = True
            self.bf16 = False
            self.fp16 = False
            if self.use_vllm:
                warnings.warn("no CUDA GPU: use_vllm disabled, rollouts generate in-process", stacklevel=2)
                self.use_vllm = False
        self.validate_p2o()
        super().__post_init__()

    def validate_p2o(self) -> None:
        """Check the P²O fields and the GRPO fields the paper relies on. Raises `ConfigError`."""
        lr = self.learning_rate
        _check(isinstance(lr, int | float) and math.isfinite(lr) and lr > 0, "learning_rate", "> 0", lr)
        _check(
            self.num_generations is not None and self.num_generations >= 2,
            "num_generations",
            "an integer >= 2 (GRPO needs a group)",
            self.num_generations,
        )
        _check(self.temperature >= 0, "temperature", ">= 0", self.temperature)
        _check(self.beta >= 0, "beta", ">= 0", self.beta)
        _check(
            self.per_device_train_batch_size >= 1,
            "per_device_train_batch_size",
            ">= 1",
            self.per_device_train_batch_size,
        )
        k = self.num_generations
        _check(
            0 <= self.hard_max_successes < k,
            "hard_max_successes",
            f"in [0, num_generations={k})",
            self.hard_max_successes,
        )
        _check(self.min_hard_samples >= 1, "min_hard_samples", ">= 1", self.min_hard_samples)
        _check(
            self.phase_every_steps is None or self.phase_every_steps >= 1,
            "phase_every_steps",
            "None or >= 1",
            self.phase_every_steps,
        )
        _check(self.max_phases is None or self.max_phases >= 0, "max_phases", "None or >= 0", self.max_phases)
        _check(self.dev_max_size >= 1, "dev_max_size", ">= 1", self.dev_max_size)
        _check(self.gepa_max_metric_calls >= 1, "gepa_max_metric_calls", ">= 1", self.gepa_max_metric_calls)
        _check(self.gepa_patience >= 0, "gepa_patience", ">= 0", self.gepa_patience)
        _check(
            self.gepa_reflection_minibatch_size >= 1,
            "gepa_reflection_minibatch_size",
            ">= 1",
            self.gepa_reflection_minibatch_size,
        )
        _check(
            self.gepa_candidate_selection in CANDIDATE_SELECTION,
            "gepa_candidate_selection",
            "one of " + ", ".join(CANDIDATE_SELECTION),
            self.gepa_candidate_selection,
        )
        _check(self.gepa_samples_per_item >= 1, "gepa_samples_per_item", ">= 1", self.gepa_samples_per_item)
        _check(self.gepa_temperature >= 0, "gepa_temperature", ">= 0", self.gepa_temperature)
        _check(
            self.gepa_max_tokens is None or self.gepa_max_tokens >= 1,
            "gepa_max_tokens",
            "None or >= 1",
            self.gepa_max_tokens,
        )
        _check(self.gepa_num_threads >= 1, "gepa_num_threads", ">= 1", self.gepa_num_threads)
        _check(self.proposal_max_chars >= 16, "proposal_max_chars", ">= 16", self.proposal_max_chars)
        check_reflection(self.reflection)
        _check(
            self.reflection_temperature >= 0, "reflection_temperature", ">= 0", self.reflection_temperature
        )
        _check(self.reflection_max_tokens >= 16, "reflection_max_tokens", ">= 16", self.reflection_max_tokens)
        _check(
            bool(self.meta_prompt),
            "meta_prompt",
            "a name in programs/meta_prompts/ or a file path",
            self.meta_prompt,
        )
        _check(0 < self.crm_low < 1, "crm_low", "in (0, 1)", self.crm_low)
        _check(self.crm_high > 1, "crm_high", "> 1", self.crm_high)
        _check(
            0 <= self.untemplated_rollouts < k,
            "untemplated_rollouts",
            f"in [0, num_generations={k})",
            self.untemplated_rollouts,
        )
        _check(
            not self.retire_templates or self.untemplated_rollouts >= 1,
            "retire_templates",
            "false unless untemplated_rollouts >= 1 (only untemplated rollouts show that the policy "
            "solves a sample without its template)",
            self.retire_templates,
        )
        _check(self.retire_when in RETIRE_WHEN, "retire_when", " or ".join(RETIRE_WHEN), self.retire_when)
        _check(self.crm_source in CRM_SOURCES, "crm_source", " or ".join(CRM_SOURCES), self.crm_source)
        _check(
            self.logprob_kernel in LOGPROB_KERNELS,
            "logprob_kernel",
            " or ".join(LOGPROB_KERNELS),
            self.logprob_kernel,
        )
        _check(
            self.template_lifetime in TEMPLATE_LIFETIMES,
            "template_lifetime",
            " or ".join(TEMPLATE_LIFETIMES),
            self.template_lifetime,
        )
        _check(self.heldout_every_steps >= 0, "heldout_every_steps", ">= 0", self.heldout_every_steps)
        rs = self.reflection_server
        _check(
            rs in ("auto", "transformers", "vllm") or rs.startswith(("http://", "https://")),
            "reflection_server",
            "'auto', 'transformers', 'vllm' or an http(s) URL",
            rs,
        )
        _check(
            self.reflection_api_base is None or self.reflection_api_base.startswith(("http://", "https://")),
            "reflection_api_base",
            "None or an http(s) URL",
            self.reflection_api_base,
        )
        env = self.reflection_api_key_env
        _check(
            env is None or (env.replace("_", "").isalnum() and not env[0].isdigit()),
            "reflection_api_key_env",
            "the NAME of an environment variable (like MOONSHOT_API_KEY), not a key",
            "<hidden>" if env and len(env) > 40 else env,
        )
        if isinstance(self.reflection_litellm_kwargs, str):
            import json

            try:
                self.reflection_litellm_kwargs = json.loads(self.reflection_litellm_kwargs)
            except json.JSONDecodeError as e:
                raise ConfigError(f"reflection_litellm_kwargs: must be a JSON object ({e})") from e
        _check(
            self.reflection_litellm_kwargs is None or isinstance(self.reflection_litellm_kwargs, dict),
            "reflection_litellm_kwargs",
            "a mapping",
            self.reflection_litellm_kwargs,
        )
        if isinstance(self.reflection_litellm_kwargs, dict):
            secret = {"api_key", "key"} & set(self.reflection_litellm_kwargs)
            _check(
                not secret,
                "reflection_litellm_kwargs",
                "free of keys (put the key in an environment variable and name it in reflection_api_key_env)",
                "{" + ", ".join(sorted(secret)) + ": <hidden>}",
            )
        _check(self.reflection_retries >= 0, "reflection_retries", ">= 0", self.reflection_retries)
        _check(
            self.reflection_retry_seconds >= 0,
            "reflection_retry_seconds",
            ">= 0",
            self.reflection_retry_seconds,
        )
        _check(
            self.reflection_max_input_tokens >= 256,
            "reflection_max_input_tokens",
            ">= 256",
            self.reflection_max_input_tokens,
        )
        _check(self.phase_retries >= 0, "phase_retries", ">= 0", self.phase_retries)
        _check(0 <= self.min_phase_success <= 1, "min_phase_success", "in [0, 1]", self.min_phase_success)
        _check(
            self.phase_wait_poll_seconds > 0, "phase_wait_poll_seconds", "> 0", self.phase_wait_poll_seconds
        )
        server = self.policy_server
        _check(
            server in ("auto", "transformers", "vllm", "trainer")
            or server.startswith(("http://", "https://")),
            "policy_server",
            "'auto', 'transformers', 'vllm', 'trainer' or an http(s) URL",
            server,
        )
        _check(
            0 <= self.policy_server_port < 65536,
            "policy_server_port",
            "in [0, 65535]",
            self.policy_server_port,
        )
        _check(self.policy_server_timeout > 0, "policy_server_timeout", "> 0", self.policy_server_timeout)
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ConfigError(
                f"importance_sampling_level: must be 'token' or 'sequence' (got {self.importance_sampling_level!r})"
            )


@dataclass
class P2OScriptArguments:
    """What to train on: model, task, data. (Training hyper-parameters live in `P2OConfig`.)"""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Policy: a local directory or a hub id."}
    )
    task: str = field(
        default="math",
        metadata={"help": "Task: a registry name (math, toy) or a dotted path 'pkg.mod:factory'."},
    )
    task_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Options for the task factory, e.g. {seed: 0} (a YAML mapping or a JSON string)."},
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a hub id or a local .json/.jsonl/.parquet file. None = the task's own."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to load from a hub dataset."})
    problem_field: str | None = field(
        default=None,
        metadata={"help": "Column holding the problem (DeepScaleR: problem; DeepMath: question)."},
    )
    answer_field: str | None = field(
        default=None, metadata={"help": "Column holding the reference answer (DeepMath: final_answer)."}
    )
    id_field: str | None = field(
        default=None, metadata={"help": "Column holding a stable sample id; None = derived from the content."}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Seeded random subset of this many rows."}
    )
    subset_seed: int = field(default=42, metadata={"help": "Seed of the max_samples subset."})
    skip_bad_rows: bool = field(
        default=False,
        metadata={"help": "Skip (and count) rows with a missing/empty problem or answer instead of failing."},
    )
    drop_duplicates: bool = field(
        default=False,
        metadata={
            "help": "Drop rows whose problem repeats an earlier row's (same text up to spacing). Without "
            "it they are kept, and reported with their count and first example."
        },
    )
    max_problem_chars: int = field(
        default=20000,
        metadata={
            "help": "A problem longer than this many characters is a bad row (named; skipped with "
            "skip_bad_rows): such a prompt would exhaust memory on the first step. 0 = no limit."
        },
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Held-out data (same forms as dataset) for TRL's evaluation loop: rollouts and rewards "
            "every eval_steps when eval_strategy is set."
        },
    )
    hard_samples: str | None = field(
        default=None,
        metadata={
            "help": "p2o evolve: JSONL of hard samples (sample_id[, problem, answer]); None = mine them."
        },
    )
    resume: bool = field(default=False, metadata={"help": "p2o train: continue the run in output_dir."})
    dry_run: bool = field(default=False, metadata={"help": "Resolve the config, print the plan, exit."})

    # ---- model loading and PEFT: the names of TRL's ModelConfig (`trl grpo`) ----
    model_revision: str = field(
        default="main", metadata={"help": "Hub revision of the model: a branch, tag or commit id."}
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Load the model under this dtype: bfloat16, float16, float32 or auto. None: TRL's "
            "default (GRPOConfig.model_init_kwargs)."
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention implementation: eager, sdpa, flash_attention_2, ..."}
    )
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters instead of all weights. Templated rollouts, the loss on x and the "
            "CRM run with the adapters active; each phase's policy checkpoint has them merged."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules that get adapters (e.g. q_proj v_proj); None: PEFT's default for the model."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full beside the adapters (e.g. lm_head)."}
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling alpha/sqrt(r)."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})

    def model_init_kwargs(self) -> dict[str, Any]:
        """The `from_pretrained` options these fields ask for (what `trl grpo` passes)."""
        out: dict[str, Any] = {}
        if self.model_revision != "main":
            out["revision"] = self.model_revision
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.attn_implementation is not None:
            out["attn_implementation"] = self.attn_implementation
        return out  # trust_remote_code is GRPOConfig's own field, forwarded by TRL

    def peft_config(self) -> Any:
        """A `peft.LoraConfig` when `use_peft`, built by TRL's own `get_peft_config`; else None."""
        if not self.use_peft:
            return None
        from trl import ModelConfig, get_peft_config

        try:
            import peft  # noqa: F401
        except ImportError as e:
            raise ConfigError("use_peft: needs the peft package (pip install peft)") from e
        return get_peft_config(
            ModelConfig(
                model_name_or_path=self.model_name_or_path,
                use_peft=True,
                lora_r=self.lora_r,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                lora_target_modules=self.lora_target_modules,
                lora_modules_to_save=self.lora_modules_to_save,
                use_rslora=self.use_rslora,
                use_dora=self.use_dora,
            )
        )

    def __post_init__(self) -> None:
        check_field_types(self)
        _check(
            self.dtype in (None, "auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32"),
            "dtype",
            "one of auto, bfloat16, float16, float32",
            self.dtype,
        )
        _check(self.lora_r >= 1, "lora_r", ">= 1", self.lora_r)
        _check(0 <= self.lora_dropout < 1, "lora_dropout", "in [0, 1)", self.lora_dropout)
        _check(
            self.max_samples is None or self.max_samples >= 1, "max_samples", "None or >= 1", self.max_samples
        )
        _check(
            self.max_problem_chars >= 0, "max_problem_chars", ">= 0 (0 = no limit)", self.max_problem_chars
        )
        if isinstance(self.task_kwargs, str):
            import json

            try:
                self.task_kwargs = json.loads(self.task_kwargs)
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"task_kwargs: must be a JSON object (got {self.task_kwargs!r}): {e}"
                ) from e
        _check(
            self.task_kwargs is None or isinstance(self.task_kwargs, dict),
            "task_kwargs",
            "a mapping",
            self.task_kwargs,
        )


def parse_config(
    argv: list[str] | None = None, extra: tuple[type, ...] = ()
) -> tuple[P2OScriptArguments, P2OConfig, Any]:
    """Parse `--config x.yaml` + CLI overrides into (script args, P2OConfig, *extra).

    A `--config` value that is not an existing file is a recipe name, looked up as `p2o.resources`
    says (./configs, then the recipes shipped with p2o): `--config paper/deepscaler_p2o_teacher`,
    `--config toy_p2o.yaml` or `--config configs/toy_p2o.yaml` work from any directory.

    Raises `ConfigError` for invalid values and `SystemExit(2)` for unknown flags.
    """
    import sys

    from trl import TrlParser

    from p2o.resources import ResourceError, find_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):  # TrlParser only reads `--config FILE`
            argv[i : i + 1] = ["--config", arg.partition("=")[2]]
        if argv[i] == "--config" and i + 1 < len(argv):
            try:
                argv[i + 1] = str(find_recipe(argv[i + 1]))
            except ResourceError as e:
                raise ConfigError(f"--config: {e}") from e
    parser = TrlParser((P2OScriptArguments, P2OConfig, *extra))
    try:
        parsed = parser.parse_args_and_config(args=argv, fail_with_unknown_args=True)
    except ConfigError:
        raise
    except ValueError as e:  # TRL / transformers validation: keep their message, mark it as config
        raise ConfigError(str(e)) from e
    return tuple(parsed[: 2 + len(extra)])  # type: ignore[return-value]
