"""The live policy behind an OpenAI-compatible server, for prompt-evolution phases.

`PolicyServer` launches and owns `transformers serve` (CPU) or `vllm serve` (GPU) and is pointed at
successive checkpoints with `use_checkpoint(path)`; `RemotePolicy` talks to a server someone else runs;
`LocalPolicy` is the training model itself, generating a phase's rollouts in process and batched;
`PolicyClient` sends chat completions and never caches. `open_policy(config, checkpoint, log_dir)`
picks one from `P2OConfig.policy_server`. `p2o.policy.pool.thread_map` is the thread pool that mining, a
phase's rollouts and evaluation's generation and scoring run on.
"""

from __future__ import annotations

from pathlib import Path

from p2o.policy.client import (
    CheckpointError,
    Completion,
    PolicyClient,
    PolicyRequestError,
    PolicyServerError,
)
from p2o.policy.local import LocalClient, LocalPolicy
from p2o.policy.server import (
    Policy,
    PolicyServer,
    RemotePolicy,
    free_port,
    resolve_checkpoint,
    vllm_server_url,
)


def open_policy(config, checkpoint: str | Path, log_dir: str | Path, *, log_name: str = "policy_server.log"):
    """The policy server a phase should use, from `config.policy_server` (not started: use `with`).

    - an http(s) URL → `RemotePolicy(url, model_name=checkpoint)` (the server serves it under that name);
    - 'vllm' → p2o launches `vllm serve`;
    - 'transformers' → p2o launches `transformers serve`;
    - 'auto' → TRL's vLLM server when `use_vllm` and `vllm_mode == 'server'`, else transformers;
    - 'trainer' → refused here: only the trainer has the model in process (`LocalPolicy`).
    """
    server = config.policy_server
    if server == "trainer":
        from p2o.errors import ConfigError

        raise ConfigError(
            "policy_server: 'trainer' generates with the training model inside `p2o train`; a phase run "
            "on its own (p2o evolve) has no model in process: use 'transformers', 'vllm' or a server URL"
        )
    template_kwargs = dict(getattr(config, "chat_template_kwargs", None) or {})
    if server.startswith(("http://", "https://")):
        return RemotePolicy(server, str(checkpoint))
    if (
        server == "auto"
        and getattr(config, "use_vllm", False)
        and getattr(config, "vllm_mode", "") == "server"
    ):
        return RemotePolicy(vllm_server_url(config), str(checkpoint))
    backend = "vllm" if server == "vllm" else "transformers"
    return PolicyServer(
        checkpoint,
        log_dir=log_dir,
        backend=backend,
        port=config.policy_server_port,
        timeout=config.policy_server_timeout,
        log_name=log_name,
        chat_template_kwargs=template_kwargs,
        continuous_batching=backend == "transformers"
        and bool(getattr(config, "policy_server_continuous_batching", False)),
    )


__all__ = [
    "CheckpointError",
    "Completion",
    "LocalClient",
    "LocalPolicy",
    "Policy",
    "PolicyClient",
    "PolicyRequestError",
    "PolicyServer",
    "PolicyServerError",
    "RemotePolicy",
    "free_port",
    "open_policy",
    "resolve_checkpoint",
    "vllm_server_url",
]
