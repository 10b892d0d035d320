"""Policy servers: the live policy behind an OpenAI-compatible endpoint for a prompt-evolution phase.

- `PolicyServer(backend="transformers")` — the CPU default. p2o launches `transformers serve` on
  127.0.0.1 (a free port unless one is given), waits for `/health`, keeps its log in `log_dir`, and
  stops it. `transformers serve` loads models on demand by the request's model name, and a local
  directory is a model name, so `use_checkpoint(path)` points the server at a new checkpoint: it
  unloads every loaded model (`POST /reset`) and preloads `path` (`POST /load_model`), failing loudly
  if the checkpoint does not load. Every later request names `path`. A new directory per phase is
  the contract: the server memory-maps safetensors, so a checkpoint overwritten in place could be
  read half old, half new — save each phase's weights to a fresh directory.
- `PolicyServer(backend="vllm")` — launches `vllm serve <checkpoint>` with the weight-transfer flags
  TRL's server mode uses (docs/design.md); `use_checkpoint` restarts it on the new directory.
- `RemotePolicy(url, model_name)` — a server someone else runs (TRL's `vllm serve` whose weights the
  trainer pushes before each phase): p2o only talks to it.

All three expose `base_url` (ending in `/v1`, as DSPy/LiteLLM's `api_base`), `model_name`,
`log_path`, `client()`, `check_alive()` and `stop()`.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from p2o.policy.client import CheckpointError, PolicyClient, PolicyServerError, log_tail

BACKENDS = ("transformers", "vllm")

# Servers this process launched and has not stopped yet: stopped at exit so no server outlives p2o.
_LIVE: weakref.WeakSet[PolicyServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def die_with_parent() -> None:
    """`preexec_fn` for a server process: on Linux it gets SIGTERM when the process that launched it
    dies, however it died (atexit does not run on SIGTERM or SIGKILL), so no server outlives p2o."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@runtime_checkable
class Policy(Protocol):
    """What a phase needs from the live policy: where it is and how to talk to it."""

    base_url: str
    model_name: str
    backend: str

    @property
    def log_path(self) -> Path | None: ...

    def client(self, **kwargs: Any) -> PolicyClient: ...

    def check_alive(self) -> None: ...

    def stop(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def vllm_server_url(args: Any) -> str:
    """The root URL of TRL's vLLM server (`trl vllm-serve`) as a `GRPOConfig` names it: its
    `vllm_server_base_url`, else `http://<vllm_server_host>:<vllm_server_port>`."""
    base = getattr(args, "vllm_server_base_url", None)
    return (base or f"http://{args.vllm_server_host}:{args.vllm_server_port}").rstrip("/")


def _root(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def resolve_checkpoint(model: str | Path, revision: str | None = None) -> str:
    """A local checkpoint folder for `model`: the folder itself, or a hub id's snapshot.

    A hub id resolves through the Hugging Face cache the way `from_pretrained` resolves it (with
    `HF_HUB_OFFLINE=1`, from the cache alone; online, downloading what is missing), so a run that
    names `Qwen/Qwen3-4B` serves the very files its trainer loaded. Raises `CheckpointError`.
    """
    p = Path(model).expanduser()
    if p.is_dir():
        return str(p)
    text = str(model)
    looks_like_id = text.count("/") <= 1 and not text.startswith((".", "/", "~")) and text.strip() == text
    if not looks_like_id:
        raise CheckpointError(f"checkpoint {p} is not a directory (and not a hub id like 'Qwen/Qwen3-4B')")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=text, revision=revision)
    except Exception as e:
        from huggingface_hub import constants

        where = "the Hugging Face cache" + (" (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "")
        raise CheckpointError(
            f"checkpoint {text!r} is neither a local directory nor a model found in {where} at "
            f"{constants.HF_HUB_CACHE}: {type(e).__name__}: {str(e)[:300]}. Give a checkpoint folder, "
            "or download the model first (huggingface-cli download ID)"
        ) from e


def _checkpoint_dir(path: str | Path) -> str:
    """Absolute checkpoint directory (a hub id is resolved to its cached snapshot), checked: it must
    exist and hold a config.json."""
    p = Path(resolve_checkpoint(path))
    if not (p / "config.json").exists():
        raise CheckpointError(f"checkpoint {p} has no config.json: save it with `save_pretrained` first")
    resolved = str(p.resolve())
    if "@" in resolved:
        # transformers serve reads `name@revision`; a path with '@' would be cut in two.
        raise CheckpointError(
            f"checkpoint path {resolved} contains '@', which transformers serve cannot load"
        )
    return resolved


class PolicyServer:
    """A policy server p2o launches, addresses per checkpoint, and stops. A context manager.

    ```python
    with PolicyServer("out/ckpt-0", log_dir="out") as server:
        client = server.client()
        ...
        server.use_checkpoint("out/ckpt-100")  # same server, new weights
    ```

    Args:
        model: the checkpoint to serve first (a local directory; for vllm a hub id works too), or None
            to start empty (transformers only) and call `use_checkpoint` later.
        log_dir: where the server's log goes (`<log_dir>/<log_name>`, appended across restarts).
        backend: 'transformers' (CPU default) or 'vllm'.
        port: 0 = a free port.
        timeout: seconds to wait for the server to come up and for a checkpoint to load.
        chat_template_kwargs: sent with every request by clients from `client()`.
        extra_args: more command-line flags for the server.
    """

    def __init__(
        self,
        model: str | Path | None,
        *,
        log_dir: str | Path,
        backend: str = "transformers",
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 300.0,
        log_name: str = "policy_server.log",
        device: str = "auto",
        continuous_batching: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
        if backend == "vllm" and model is None:
            raise ValueError("a vllm server needs a model to start with")
        self.backend = backend
        self.host = host
        self.port = port
        self.timeout = float(timeout)
        self.device = device
        self.continuous_batching = continuous_batching
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.extra_args = list(extra_args)
        self._log_path = Path(log_dir) / log_name
        self._initial_model = model
        self.model_name: str = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._healthy = False
        self._log_file: Any = None

    # ---------------------------------------------------------------- addresses

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"PolicyServer({self.backend} at {self.url}, model={self.model_name!r}, log={self.log_path})"

    # ---------------------------------------------------------------- lifecycle

    def _command(self, model: str | None) -> list[str]:
        if self.backend == "transformers":
            cmd = [
                sys.executable,
                "-c",
                "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()",
                "serve",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--device",
                self.device,
                # Keep the checkpoint loaded through long reflection pauses; `use_checkpoint` unloads it.
                "--model-timeout=-1",
                "--log-level",
                "info",
            ]
            if self.continuous_batching:
                cmd.append("--continuous-batching")
        else:
            assert model is not None
            # TRL's own builder, so the server has every flag TRL's weight sync and log-probs rely on
            # (weight transfer, processed log-probs, ...), as TRL's version at hand adds them.
            from trl.scripts.vllm_serve import ScriptArguments, build_command

            cmd = build_command(
                ScriptArguments(model=model, host=self.host, port=self.port), ["--served-model-name", model]
            )
        return cmd + self.extra_args

    def start(self) -> PolicyServer:
        """Launch the server and wait until it is healthy (and the first checkpoint is loaded)."""
        if self.running:
            return self
        model = None
        if self._initial_model is not None:
            model = (
                _checkpoint_dir(self._initial_model)
                if self.backend == "transformers"
                else self._local_or_id()
            )
        self._launch(model)
        if self.backend == "transformers" and model is not None:
            self.use_checkpoint(model)
        elif model is not None:
            self.model_name = model
        return self

    def _local_or_id(self) -> str:
        m = str(self._initial_model)
        return str(Path(m).resolve()) if Path(m).exists() else m

    def launch(self) -> PolicyServer:
        """Start the server process without waiting for it and without a model (transformers
        backend): it boots while the caller does other work (the trainer: the first steps), and the
        first `use_checkpoint` waits until it is healthy."""
        if self.backend != "transformers":
            raise PolicyServerError("launch() without a model is for the transformers backend; use start()")
        if self._proc is None:
            self._launch(None, wait=False)
        return self

    def _launch(self, model: str | None, wait: bool = True) -> None:
        if not self.port:
            self.port = free_port(self.host)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - owned until stop()
        cmd = self._command(model)
        header = f"\n=== p2o: {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.backend} server: {' '.join(cmd)}\n"
        self._log_file.write(header.encode())
        self._log_file.flush()
        env = dict(os.environ)
        env.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.backend == "vllm":
            env["VLLM_SERVER_DEV_MODE"] = "1"
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: stop() ends it and its children
                preexec_fn=die_with_parent,
            )
        except FileNotFoundError as e:
            self._close_log()
            raise PolicyServerError(
                f"cannot launch the {self.backend} policy server ({e}). For vllm: pip install 'p2o[vllm]'."
            ) from e
        _LIVE.add(self)
        self._healthy = False
        if wait:
            self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise PolicyServerError(
                    f"policy server at {self.url} exited with code {code} while starting; "
                    f"log: {self.log_path}\n{log_tail(self.log_path)}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    self._healthy = True
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise PolicyServerError(
            f"policy server at {self.url} did not become healthy within {self.timeout:.0f}s "
            f"(raise policy_server_timeout if the model is large); log: {self.log_path}\n{log_tail(self.log_path)}"
        )

    def wait_healthy(self) -> None:
        """Return once the server answers `/health` (at once when it already did); a server launched
        without waiting (`launch()`) is waited for here. Raises `PolicyServerError`."""
        if not self._healthy:
            self._wait_healthy()

    def use_checkpoint(self, path: str | Path) -> None:
        """Serve the checkpoint in `path` from now on: new weights, nothing cached from the old ones."""
        if not self.running:
            if self._proc is None:
                self._initial_model = path
                self.start()
                return
            self.check_alive()
        if self.backend == "vllm":
            new = str(Path(path).resolve()) if Path(path).exists() else str(path)
            self._restart(new)
            return
        ckpt = _checkpoint_dir(path)
        self.wait_healthy()
        try:
            httpx.post(f"{self.url}/reset", timeout=60.0).raise_for_status()
            events = self._load_model(ckpt)
        except httpx.HTTPError as e:
            self.check_alive()
            raise PolicyServerError(
                f"policy server at {self.url} failed while switching to checkpoint {ckpt} ({e}); log: {self.log_path}"
            ) from e
        errors = [ev for ev in events if ev.get("status") == "error"]
        if errors or not any(ev.get("status") == "ready" for ev in events):
            detail = errors[0].get("message") if errors else "no 'ready' event"
            raise PolicyServerError(
                f"policy server at {self.url} could not load checkpoint {ckpt}: {detail}; "
                f"log: {self.log_path}\n{log_tail(self.log_path)}"
            )
        self.model_name = ckpt

    def _load_model(self, ckpt: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        with httpx.stream(
            "POST", f"{self.url}/load_model", json={"model": ckpt}, timeout=self.timeout
        ) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    try:
                        events.append(json.loads(line[len("data: ") :]))
                    except json.JSONDecodeError:
                        continue
        return events

    def _restart(self, model: str) -> None:
        self._terminate()
        self._launch(model)
        self.model_name = model

    def diagnose(self) -> str:
        """One sentence about the server process, for error messages."""
        if self._proc is None:
            return f"the server was never started; log: {self.log_path}"
        code = self._proc.poll()
        state = "is still running" if code is None else f"exited with code {code}"
        return f"the server process (pid {self._proc.pid}) {state}; log: {self.log_path}\n{log_tail(self.log_path)}"

    def check_alive(self) -> None:
        """Raise `PolicyServerError` naming the URL and log if the server process has died."""
        if self._proc is None:
            raise PolicyServerError(f"policy server at {self.url} is not started; call start() first")
        if self._proc.poll() is not None:
            raise PolicyServerError(
                f"policy server at {self.url} died (exit code {self._proc.returncode}); "
                f"log: {self.log_path}\n{log_tail(self.log_path)}"
            )

    def client(self, **kwargs: Any) -> PolicyClient:
        """A client of the current checkpoint (make a new one after `use_checkpoint`)."""
        if not self.model_name:
            raise PolicyServerError(
                f"policy server at {self.url} has no checkpoint: call use_checkpoint(path)"
            )
        kwargs.setdefault("chat_template_kwargs", self.chat_template_kwargs)
        return PolicyClient(
            self.base_url, self.model_name, backend=self.backend, diagnose=self.diagnose, **kwargs
        )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(timeout=15)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Stop the server (and its children). Safe to call twice."""
        self._terminate()
        _LIVE.discard(self)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RemotePolicy:
    """A policy server that p2o does not own (an http(s) URL): p2o only sends it requests.

    For TRL's `vllm serve` in server mode, the trainer pushes the current weights before each phase;
    `model_name` is the name the server serves them under.
    """

    log_path: Path | None = None

    def __init__(self, url: str, model_name: str, *, backend: str = "vllm", api_key: str | None = None):
        self.url = _root(url)
        self.base_url = f"{self.url}/v1"
        self.model_name = model_name
        self.backend = backend
        self.api_key = api_key if api_key is not None else os.environ.get("P2O_POLICY_API_KEY")

    def __repr__(self) -> str:
        return f"RemotePolicy({self.base_url}, model={self.model_name!r})"

    def diagnose(self) -> str:
        return "the server is not managed by p2o: check that it is running and reachable"

    def check_alive(self) -> None:
        try:
            r = httpx.get(f"{self.url}/health", timeout=10.0)
        except httpx.HTTPError as e:
            raise PolicyServerError(
                f"policy server at {self.url} is unreachable ({e}); {self.diagnose()}"
            ) from e
        if r.status_code >= 500:
            raise PolicyServerError(
                f"policy server at {self.url} is unhealthy (HTTP {r.status_code} on /health)"
            )

    def client(self, **kwargs: Any) -> PolicyClient:
        kwargs.setdefault("api_key", self.api_key)
        return PolicyClient(
            self.base_url, self.model_name, backend=self.backend, diagnose=self.diagnose, **kwargs
        )

    def use_checkpoint(self, path: str | Path) -> None:
        raise PolicyServerError(
            f"policy server at {self.url} is not managed by p2o: push the weights to it (TRL's server mode "
            f"does this before each phase) instead of pointing it at {path}"
        )

    def stop(self) -> None:
        """Nothing to stop: p2o does not own this server."""

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
