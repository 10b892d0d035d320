"""What the fault tests run `p2o train` on, as a subprocess: the first-word world of `conftest.py`
(a tiny random Qwen3 whose first word one template changes) and a scripted teacher behind a real
OpenAI-compatible HTTP endpoint on loopback, reached through LiteLLM like any `teacher:` model.

`make_task` is the task plug-in (`--task tests.fault_world:make_task`); `ScriptedTeacher` always
proposes the template that unlocks the world's hard samples. No downloads, no network.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from p2o.tasks import Task


def make_task() -> Task:
    from tests.conftest import first_word_task

    return first_word_task()


def write_world(policy: Path, path: Path, n: int = 8) -> Path:
    """A JSONL dataset of `n` first-word problems for `policy` (a `build_tiny_policy` folder): each
    gold answer is the first word the policy says, greedily, under the unlocking template, kept where
    the plain prompt makes it say another."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.templates import render_augmented
    from tests.conftest import UNLOCKING_TEMPLATE

    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    task = make_task()

    @torch.no_grad()
    def first_word(messages) -> str:
        ids = tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**ids, max_new_tokens=2, do_sample=False)
        words = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).split()
        return words[0] if words else ""

    rows = []
    for a in range(10):
        for b in range(10):
            problem = f"what {a} + {b} ?"
            x = task.build_messages(problem)
            unlocked, plain = first_word(render_augmented(x, UNLOCKING_TEMPLATE)), first_word(x)
            if unlocked and unlocked != plain and len(rows) < n:
                rows.append({"id": f"s{a}{b}", "problem": problem, "answer": unlocked})
    assert len(rows) == n, f"the tiny policy gave only {len(rows)} prompt-sensitive problems"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ScriptedTeacher:
    """A loopback `/v1/chat/completions` endpoint that answers every request with `reply` (a
    stand-in for a teacher model; counts the requests it served)."""

    def __init__(self, reply: str):
        self.reply = reply
        self.requests = 0
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                teacher.requests += 1
                answer = {
                    "id": f"scripted-{teacher.requests}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "scripted"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": teacher.reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
