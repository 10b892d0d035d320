"""Stand-ins for what a real run reaches over the network, built locally for a CPU rehearsal.

Each is labelled a stand-in wherever it appears (its files, its replies, `rehearsal.json`); the code
under test is never told it is talking to one.

- `write_cached_model(hub_id, cache_dir)` — a tiny random Qwen3 written into a Hugging Face hub
  cache under a real hub id (`models--Qwen--Qwen3-4B/snapshots/<rev>/`, `refs/main`), so that with
  `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=cache_dir` every loader resolves `Qwen/Qwen3-4B` to it. Its
  tokenizer is byte-level (any text, any math prompt, round-trips) and its chat template follows
  Qwen3's layout, including `enable_thinking=False` → an empty `<think></think>` block.
- `write_hub_schema_data(kind, path, n)` — a small local file in the hub dataset's own schema
  (DeepScaleR: `problem`/`answer`; DeepMath-103K: `question`/`final_answer`/`difficulty`).
- `ScriptedTeacher` — an OpenAI-compatible chat-completions server on loopback (real HTTP, real
  LiteLLM on the client side) whose replies are scripted templates; it checks the bearer key, can
  refuse it (401) or answer 429/500 first, and counts what it was sent.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STANDIN_REVISION = "0" * 39 + "1"  # the snapshot folder name; a real cache uses the commit sha

# Qwen3's chat layout, reduced to what the rehearsal sends (system/user/assistant turns, the
# generation prompt and `enable_thinking`).
QWEN3_LIKE_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _repo_folder(hub_id: str) -> str:
    return "models--" + hub_id.replace("/", "--")


def tiny_qwen3_config(
    vocab_size: int,
    *,
    pad: int,
    eos: int,
    bos: int | None = None,
    max_positions: int = 4096,
    init_range: float = 0.02,
) -> Any:
    """The tiny Qwen3 architecture of the stand-ins and the tests: 2 layers, hidden 32, 2 heads."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=max_positions,
        initializer_range=init_range,
        tie_word_embeddings=True,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=bos,
    )


def build_tiny_qwen3(path: Path, *, seed: int = 0, max_positions: int = 4096) -> Path:
    """A tiny random Qwen3 (2 layers, hidden 32) with a byte-level BPE tokenizer, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = QWEN3_LIKE_TEMPLATE
    fast.save_pretrained(path)
    vocab_size = len(fast)
    eos = fast.convert_tokens_to_ids("<|im_end|>")
    pad = fast.convert_tokens_to_ids("<|endoftext|>")
    cfg = tiny_qwen3_config(vocab_size, pad=pad, eos=eos, max_positions=max_positions)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    model.save_pretrained(path)
    (path / "STANDIN.md").write_text(
        "A rehearsal stand-in: a tiny random Qwen3 (2 layers, hidden 32, byte-level tokenizer) built "
        "locally by p2o.rehearse, not the model its hub id names.\n",
        encoding="utf-8",
    )
    return path


def write_cached_model(hub_id: str, cache_dir: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny stand-in into a hub cache under `hub_id`; returns its snapshot folder.

    Loaders find it with `HF_HUB_CACHE=cache_dir HF_HUB_OFFLINE=1` (or `cache_dir=`) by the hub id
    alone, as they would find a model downloaded earlier.
    """
    repo = Path(cache_dir) / _repo_folder(hub_id)
    snapshot = repo / "snapshots" / STANDIN_REVISION
    if not (snapshot / "config.json").exists():
        build_tiny_qwen3(snapshot, seed=seed)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(STANDIN_REVISION, encoding="utf-8")
    return snapshot


# ------------------------------------------------------------------ data in the hub's own schema


def _problem(rng: random.Random, i: int) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    kind = i % 3
    if kind == 0:
        return f"Compute ${a} \\times {b}$.", str(a * b)
    if kind == 1:
        return f"Let $x$ satisfy $x - {a} = {b}$. Find $x$.", str(a + b)
    return f"What is the remainder when ${a * b + 1}$ is divided by ${a}$?", str(1 % a)


def write_hub_schema_data(kind: str, path: str | Path, n: int, *, seed: int = 0) -> Path:
    """`n` rows of small math problems in the hub dataset's schema, as JSONL."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            problem, answer = _problem(rng, i)
            if kind == "deepscaler":
                row: dict[str, Any] = {"problem": problem, "answer": answer, "solution": "(stand-in)"}
            elif kind == "deepmath":
                row = {
                    "question": problem,
                    "final_answer": answer,
                    "difficulty": float(7 + i % 3),
                    "topic": "Mathematics -> Algebra (stand-in)",
                    "r1_solution_1": "(stand-in)",
                }
            else:
                raise ValueError(f"kind must be deepscaler or deepmath (got {kind!r})")
            f.write(json.dumps(row) + "\n")
    return path


# ------------------------------------------------------------------ a scripted teacher over HTTP

SCRIPTED_TEMPLATES = [
    "Read the problem twice. Work step by step, check the arithmetic, and put only the final answer "
    "inside \\boxed{}.",
    "First restate what is asked. Then compute carefully, verify each intermediate result, and end "
    "with the answer in \\boxed{}.",
    "Write the equation the problem describes, solve it, substitute back to check, and give the "
    "final answer in \\boxed{}.",
]


class ScriptedTeacher:
    """An OpenAI-compatible `/v1/chat/completions` endpoint on 127.0.0.1 with scripted replies.

    A stand-in for a teacher behind an API: the transport (HTTP, bearer auth, status codes, usage
    fields) is real, the model is a script that answers each reflection prompt with a template in
    a fenced block. `key`: the bearer key it accepts (None: any). `fail_first`: status codes to
    answer before the first success (e.g. [429, 500] to exercise retries).
    """

    def __init__(self, *, key: str | None = None, fail_first: list[int] | None = None, model: str = ""):
        self.key = key
        self.fail_first = list(fail_first or [])
        self.model = model
        self.calls = 0
        self.answered = 0
        self.refused = 0
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_base(self) -> str:
        assert self._server is not None, "start() the teacher first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def reply(self, prompt: str) -> str:
        digest = int(hashlib.sha1(prompt.encode("utf-8")).hexdigest(), 16)
        text = SCRIPTED_TEMPLATES[digest % len(SCRIPTED_TEMPLATES)]
        return f"Here is an improved instruction.\n```\n{text}\n```"

    def _handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.calls += 1
            if self.fail_first:
                code = self.fail_first.pop(0)
                return code, {"error": {"message": f"scripted HTTP {code}", "type": "server_error"}}
        auth = handler.headers.get("Authorization", "")
        if self.key is not None and auth != f"Bearer {self.key}":
            with self._lock:
                self.refused += 1
            return 401, {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        text = self.reply(prompt)
        with self._lock:
            self.answered += 1
            self.prompts.append(prompt)
        return 200, {
            "id": f"scripted-{self.answered}",
            "object": "chat.completion",
            "model": body.get("model", self.model),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": max(1, len(prompt) // 4),
                "completion_tokens": max(1, len(text) // 4),
                "total_tokens": max(1, len(prompt) // 4) + max(1, len(text) // 4),
            },
        }

    def start(self) -> ScriptedTeacher:
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self.send_error(404)
                    return
                code, payload = teacher._handle(self)
                data = json.dumps(payload).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                data = json.dumps({"object": "list", "data": [{"id": teacher.model or "scripted"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="scripted-teacher"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"calls": self.calls, "answered": self.answered, "refused": self.refused}

    def __enter__(self) -> ScriptedTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
