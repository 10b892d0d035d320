"""Reflection meta-prompts: user-editable text files with two placeholders.

`<curr_param>` is replaced by the current template and `<side_info>` by the reflective examples
(GEPA's markdown: `# Example N` / `## Inputs` / `## Generated Outputs` / `## Feedback`). A meta-prompt
is a name in `programs/meta_prompts/` (`default`, `compact`, `toy`; `.md` or `.txt`) or a file path. A
file missing either placeholder is refused before any model is called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2o.errors import ConfigError
from p2o.resources import search_dirs

PLACEHOLDERS = ("<curr_param>", "<side_info>")
SUFFIXES = (".md", ".txt")


@dataclass(frozen=True)
class MetaPrompt:
    name: str
    path: Path
    text: str

    def render(self, current_template: str, examples: Sequence[Mapping[str, Any]]) -> str:
        """The reflection prompt: GEPA's own renderer with this file as its template."""
        from gepa.strategies.instruction_proposal import InstructionProposalSignature

        prompt = InstructionProposalSignature.prompt_renderer(
            {
                "current_instruction_doc": current_template,
                "dataset_with_feedback": list(examples),
                "prompt_template": self.text,
            }
        )
        assert isinstance(prompt, str)  # images are never part of p2o's reflective examples
        return prompt


def meta_prompt_dirs() -> list[Path]:
    return [d / "meta_prompts" for d in search_dirs("programs")]


def list_meta_prompts() -> list[str]:
    return sorted(
        {p.stem for d in meta_prompt_dirs() if d.is_dir() for p in d.iterdir() if p.suffix in SUFFIXES}
    )


def _find(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.suffix in SUFFIXES or "/" in spec:
        if not path.exists():
            raise ConfigError(f"meta_prompt: file {path} does not exist")
        return path
    for d in meta_prompt_dirs():
        for suffix in SUFFIXES:
            if (d / f"{spec}{suffix}").exists():
                return d / f"{spec}{suffix}"
    raise ConfigError(
        f"meta_prompt: no meta-prompt named {spec!r} in {', '.join(str(d) for d in meta_prompt_dirs())}. "
        f"Known: {', '.join(list_meta_prompts()) or '(none)'}; or give a file path."
    )


def load_meta_prompt(spec: str) -> MetaPrompt:
    """Load and check a meta-prompt. Raises `ConfigError` naming the file and the missing placeholder."""
    path = _find(spec)
    text = path.read_text(encoding="utf-8").rstrip()
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise ConfigError(
            f"meta_prompt: {path} lacks the placeholder(s) {', '.join(missing)}. A meta-prompt must contain "
            "<curr_param> (replaced by the current template) and <side_info> (replaced by the examples with "
            "the policy's outputs and feedback)."
        )
    return MetaPrompt(name=path.stem, path=path, text=text)
