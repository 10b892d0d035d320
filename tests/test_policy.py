"""The policy server: a real `transformers serve` on loopback, launched, addressed and stopped by p2o."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from p2o.policy import PolicyClient, PolicyRequestError, PolicyServer, PolicyServerError, free_port

from .conftest import build_tiny_policy

PROMPTS = [f"what {a} + {b} ?" for a in range(3) for b in range(3)]


def greedy(server: PolicyServer) -> list[str]:
    with server.client() as c:
        return [c.chat([{"role": "user", "content": p}], max_tokens=3).text for p in PROMPTS]


def test_server_is_healthy_on_loopback_and_keeps_its_log(tiny_policy_server, tiny_policy):
    s = tiny_policy_server
    assert s.host == "127.0.0.1" and s.base_url == f"http://127.0.0.1:{s.port}/v1"
    assert s.model_name == str(tiny_policy.resolve())
    assert httpx.get(f"{s.url}/health").json() == {"status": "ok"}
    with s.client() as c:
        out = c.chat([{"role": "user", "content": "what 1 + 2 ?"}], max_tokens=3)
        assert (
            out.completion_tokens >= 1 and out.prompt_tokens > 0 and out.finish_reason in ("stop", "length")
        )
        assert c.usage.requests == 1 and c.usage.completion_tokens == out.completion_tokens
    log = s.log_path.read_text()
    assert "starting transformers server" in log and "POST /v1/chat/completions" in log


def test_no_caching_greedy_is_repeatable_and_sampling_varies(tiny_policy_server):
    with tiny_policy_server.client() as c:
        msgs = [{"role": "user", "content": "what 4 + 4 ?"}]
        assert len({c.chat(msgs, max_tokens=6).text for _ in range(3)}) == 1
        sampled = {c.chat(msgs, max_tokens=6, temperature=2.0).text for _ in range(6)}
        assert len(sampled) > 1  # temperature reaches the model (transformers serve needs do_sample)
        assert c.usage.requests == 9  # every call is a request: nothing is cached


def test_use_checkpoint_serves_the_new_weights(tiny_policy_server, tiny_policy, tmp_path):
    s = tiny_policy_server
    before = greedy(s)
    other = build_tiny_policy(tmp_path / "other", seed=1)
    try:
        s.use_checkpoint(other)
        assert s.model_name == str(other.resolve())
        after = greedy(s)
        assert after != before
        with pytest.raises(PolicyServerError, match="is not a directory"):
            s.use_checkpoint(tmp_path / "missing")
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "config.json").write_text("{}")
        with pytest.raises(
            PolicyServerError, match=r"could not load checkpoint .*broken.*log: .*policy_server\.log"
        ):
            s.use_checkpoint(broken)
    finally:
        s.use_checkpoint(tiny_policy)
    assert greedy(s) == before  # back to the first weights: nothing was kept from the others


def test_request_errors_are_per_request(tiny_policy_server):
    c = PolicyClient(tiny_policy_server.base_url, "/no/such/model", backend="transformers")
    with pytest.raises(PolicyRequestError, match="HTTP 500"):
        c.chat([{"role": "user", "content": "what ?"}], max_tokens=2)
    assert tiny_policy_server.running


def test_unreachable_server_names_the_url():
    port = free_port()
    c = PolicyClient(f"http://127.0.0.1:{port}/v1", "m", retries=0)
    with pytest.raises(
        PolicyServerError, match=rf"policy server at http://127.0.0.1:{port}/v1 is unreachable"
    ):
        c.chat([{"role": "user", "content": "x"}], max_tokens=1)


def test_server_that_does_not_come_up_names_the_log(tiny_policy, tmp_path):
    server = PolicyServer(tiny_policy, log_dir=tmp_path, timeout=60, extra_args=["--no-such-flag"])
    with pytest.raises(
        PolicyServerError, match=r"exited with code \d+ while starting; log: .*policy_server\.log"
    ):
        server.start()
    assert not server.running
    assert "no-such-flag" in (tmp_path / "policy_server.log").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_server_process_dies_with_a_killed_parent():
    # A p2o process killed with SIGKILL runs no atexit handler; its server must not outlive it.
    parent = (
        "import os, signal, subprocess\n"
        "from p2o.policy.server import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True, preexec_fn=die_with_parent)\n"
        "print(p.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):  # a zombie: dead, reaped by init soon
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError("the child outlived its killed parent")


def test_launched_server_boots_unwaited_and_the_first_checkpoint_waits_for_it(tiny_policy, tmp_path):
    # What the trainer does at the start of training: the server boots during the first steps.
    s = PolicyServer(None, log_dir=tmp_path).launch()
    try:
        assert s.running and s.model_name == ""
        s.use_checkpoint(tiny_policy)  # waits until healthy, then loads
        assert s.model_name == str(tiny_policy.resolve())
        assert greedy(s)
        with pytest.raises(PolicyServerError, match="transformers backend"):
            PolicyServer("m", log_dir=tmp_path, backend="vllm").launch()
    finally:
        s.stop()
    assert not s.running


def test_the_vllm_server_command_is_trls_own(tmp_path):
    """`vllm serve` gets every flag TRL's weight sync relies on, from TRL's builder (no copy to go stale)."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    s = PolicyServer("org/model", log_dir=tmp_path, backend="vllm", port=8123, extra_args=["--seed", "1"])
    cmd = s._command("org/model")
    trl = build_command(ScriptArguments(model="org/model", host="127.0.0.1", port=8123))
    assert cmd == [*trl, "--served-model-name", "org/model", "--seed", "1"]
    for flag in ("--weight-transfer-config", "--logprobs-mode", "--max-logprobs"):
        assert flag in cmd


def test_continuous_batching_reaches_the_transformers_server_command(tmp_path):
    from p2o.config import P2OConfig
    from p2o.policy import open_policy

    def command(**kw):
        cfg = P2OConfig(output_dir=str(tmp_path), **kw)
        return open_policy(cfg, tmp_path, log_dir=tmp_path)._command(None)

    assert "--continuous-batching" in command(policy_server_continuous_batching=True)
    assert "--continuous-batching" not in command()
    assert "--continuous-batching" not in open_policy(
        P2OConfig(output_dir=str(tmp_path), policy_server="vllm", policy_server_continuous_batching=True),
        "org/model",
        log_dir=tmp_path,
    )._command("org/model")


# ---------------------------------------------------------------- the policy in process


def local_policy(path, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.policy import LocalPolicy

    model = AutoModelForCausalLM.from_pretrained(str(path))
    return LocalPolicy(model, AutoTokenizer.from_pretrained(str(path)), name=str(path), **kw)


def test_in_process_policy_answers_as_the_server_does(tiny_policy_server, tiny_policy):
    """Greedy completions of the same messages: batched in process == one request each on the server."""
    policy = local_policy(tiny_policy, batch_size=4)  # 9 prompts: three batches, padded differently
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    with policy.client() as c:
        rows = c.chat_many(messages, max_tokens=3)
        assert c.usage.requests == len(PROMPTS) and c.usage.completion_tokens >= len(PROMPTS)
        assert c.chat(messages[4], max_tokens=3).text == rows[4][0].text
    # Up to a leading space: `transformers serve` drops one that opens a completion; in process, the
    # text is decoded as the trainer decodes its rollouts (verifiers read answers either way).
    assert [r[0].text.lstrip() for r in rows] == [t.lstrip() for t in greedy(tiny_policy_server)]
    assert all(len(r) == 1 and r[0].finish_reason in ("stop", "length") for r in rows)


def test_in_process_generation_leaves_training_mode_and_the_rng_as_they_were(tiny_policy):
    import torch

    policy = local_policy(tiny_policy, seed=3)
    policy.model.train()
    messages = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    state = torch.random.get_rng_state()
    with policy.client() as c:
        sampled = c.chat_many(messages, n=4, temperature=1.0, max_tokens=3)
        greedy_rows = c.chat_many(messages, n=3, temperature=0.0, max_tokens=3)
    assert policy.model.training
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [len(r) for r in sampled] == [4, 4, 4]
    assert all(len({x.text for x in r}) == 1 and len(r) == 3 for r in greedy_rows)  # greedy: one, repeated
    # Seeded per call: the same policy seed gives the same samples.
    again = local_policy(tiny_policy, seed=3)
    with again.client() as c:
        assert [[x.text for x in r] for r in c.chat_many(messages, n=4, temperature=1.0, max_tokens=3)] == [
            [x.text for x in r] for r in sampled
        ]


def test_in_process_policy_that_cannot_work_raises_a_config_error(tiny_policy):
    """No chat template, or no end-of-sequence token: a `ConfigError`, which stops a training run's
    phase for good instead of being retried as a passing failure."""
    from p2o.errors import ConfigError
    from p2o.train.trainer import is_fatal

    messages = [[{"role": "user", "content": PROMPTS[0]}]]
    policy = local_policy(tiny_policy)
    policy.tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template") as e, policy.client() as c:
        c.chat_many(messages, max_tokens=2)
    assert is_fatal(e.value)
    policy = local_policy(tiny_policy)
    policy.model.generation_config.eos_token_id = None
    policy.tokenizer.eos_token = None
    with pytest.raises(ConfigError, match="end-of-sequence") as e, policy.client() as c:
        c.chat_many(messages, max_tokens=2)
    assert is_fatal(e.value)


def test_policy_server_trainer_is_refused_outside_training(tmp_path):
    from p2o.config import P2OConfig
    from p2o.errors import ConfigError
    from p2o.policy import open_policy

    config = P2OConfig(output_dir=str(tmp_path), policy_server="trainer")
    with pytest.raises(ConfigError, match="p2o evolve"):
        open_policy(config, "some/model", tmp_path)
    with pytest.raises(ConfigError, match="'trainer'"):
        P2OConfig(output_dir=str(tmp_path), policy_server="trainr")


@pytest.mark.gpu
def test_in_process_policy_on_cuda_answers_as_on_cpu_and_restores_both_rngs(tiny_policy):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cpu, gpu = local_policy(tiny_policy), local_policy(tiny_policy, seed=3)
    gpu.model.to("cuda").train()
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    cpu_rng, cuda_rng = torch.random.get_rng_state(), torch.cuda.get_rng_state()
    with cpu.client() as a, gpu.client() as b:
        on_cpu = [r[0].text for r in a.chat_many(messages, max_tokens=3)]
        on_gpu = [r[0].text for r in b.chat_many(messages, max_tokens=3)]
        sampled = [[x.text for x in r] for r in b.chat_many(messages, n=4, temperature=1.0, max_tokens=3)]
    assert on_gpu == on_cpu
    assert gpu.model.training and next(gpu.model.parameters()).device.type == "cuda"
    assert torch.equal(torch.random.get_rng_state(), cpu_rng) and torch.equal(
        torch.cuda.get_rng_state(), cuda_rng
    )
    again = local_policy(tiny_policy, seed=3)  # each generation is seeded with the seed and its count
    again.model.to("cuda")
    with again.client() as c:
        c.chat_many(messages, max_tokens=3)
        assert [
            [x.text for x in r] for r in c.chat_many(messages, n=4, temperature=1.0, max_tokens=3)
        ] == sampled
