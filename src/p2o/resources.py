"""Where p2o finds template programs, meta-prompts, benchmark definitions and recipes.

Each kind of file lives in a folder of its own, which can be given by an environment variable:

| files | folder | environment variable |
|---|---|---|
| template programs (`math_cot.py`) and meta-prompts (`meta_prompts/default.md`) | `programs/` | `P2O_PROGRAMS_DIR` |
| benchmark definitions (`aime24.yaml`) | `evals/` | `P2O_EVALS_DIR` |
| recipes for `--config` (`paper/deepscaler_p2o_teacher.yaml`, `accelerate/zero3.yaml`) | `configs/` | `P2O_CONFIGS_DIR` |

A name is looked up in these folders, first match wins:

1. the folder the environment variable names, when it is set;
2. `./<folder>` in the current directory;
3. the copy shipped inside the package, `importlib.resources.files("p2o") / "_data" / <folder>`.

In a checkout, `src/p2o/_data/<folder>` is a link to the repository's top-level folder, so an editable
install reads the files you edit and a wheel carries a copy of them. A path to an existing file is
always used as it is.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

FOLDERS: dict[str, str] = {
    "programs": "P2O_PROGRAMS_DIR",
    "evals": "P2O_EVALS_DIR",
    "configs": "P2O_CONFIGS_DIR",
}
RECIPE_SUFFIXES = (".yaml", ".yml")


class ResourceError(LookupError):
    """A program, benchmark or recipe name that none of the search folders holds."""


def _check_folder(folder: str) -> None:
    if folder not in FOLDERS:
        raise ValueError(f"unknown resource folder {folder!r}; one of {', '.join(FOLDERS)}")


def packaged_dir(folder: str) -> Path:
    """The copy of `folder` shipped with p2o (resolved: in a checkout, the repository's own folder)."""
    _check_folder(folder)
    # A regular install (wheel or editable) is a directory on disk; p2o is not zip-safe (programs are
    # imported from files), so the Traversable is always a real path here.
    return Path(str(files("p2o") / "_data" / folder)).resolve()


def search_dirs(folder: str) -> list[Path]:
    """Where names of `folder`'s kind are looked up, in order (see the module docstring)."""
    _check_folder(folder)
    dirs: list[Path] = []
    env = os.environ.get(FOLDERS[folder])
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.cwd() / folder)
    dirs.append(packaged_dir(folder))
    out: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def find_file(folder: str, name: str, suffixes: tuple[str, ...], subdir: str = "") -> Path | None:
    """The first `<dir>/<subdir>/<name><suffix>` over `search_dirs(folder)`, or None."""
    for d in search_dirs(folder):
        for suffix in suffixes:
            path = d / subdir / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def list_names(folder: str, suffixes: tuple[str, ...], subdir: str = "") -> list[str]:
    """Names (stems) of the files with these suffixes in `<dir>/<subdir>` over all search folders."""
    names: set[str] = set()
    for d in search_dirs(folder):
        where = d / subdir
        if where.is_dir():
            names.update(p.stem for p in where.iterdir() if p.suffix in suffixes and p.stem[0] not in "._")
    return sorted(names)


def list_recipes() -> list[str]:
    """Recipe names, as `--config` takes them: `toy_p2o`, `paper/deepscaler_p2o_teacher`, ..."""
    names: set[str] = set()
    for d in search_dirs("configs"):
        if d.is_dir():
            names.update(
                p.relative_to(d).with_suffix("").as_posix()
                for suffix in RECIPE_SUFFIXES
                for p in d.rglob(f"*{suffix}")
            )
    return sorted(names)


def find_recipe(spec: str | Path) -> Path:
    """A recipe file: an existing path as it is, else a name looked up in `search_dirs("configs")`.

    The name may carry its folder and suffix or not: `toy_p2o`, `deepscaler_p2o_teacher.yaml`,
    `paper/deepscaler_p2o_teacher`, `configs/paper/deepscaler_p2o_teacher.yaml` (as the README writes
    it, from any directory). A bare file name is found in subfolders too when only one file has it.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    rel = Path(str(spec).strip()).as_posix().removeprefix("./").removeprefix("configs/")
    stem = rel[: -len(Path(rel).suffix)] if Path(rel).suffix in RECIPE_SUFFIXES else rel
    dirs = search_dirs("configs")
    for d in dirs:
        for suffix in RECIPE_SUFFIXES:
            if (d / f"{stem}{suffix}").is_file():
                return d / f"{stem}{suffix}"
        if "/" not in stem and d.is_dir():
            hits = sorted(p for suffix in RECIPE_SUFFIXES for p in d.rglob(f"{stem}{suffix}"))
            if len(hits) == 1:
                return hits[0]
            if hits:
                names = ", ".join(p.relative_to(d).with_suffix("").as_posix() for p in hits)
                raise ResourceError(
                    f"recipe {str(spec)!r} is ambiguous in {d}: {names}. Give the one you mean with its folder."
                )
    raise ResourceError(
        f"recipe {str(spec)!r}: no such file, and no recipe of that name in "
        f"{', '.join(str(d) for d in dirs)}. Known recipes: {', '.join(list_recipes()) or '(none)'}."
    )
