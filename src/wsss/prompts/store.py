"""The learned prompts file: per class its prompt embedding and tokens, the class ids they belong to and
the CLIP model they were learned in. Loading them for another model or another class list is a clear
error: a prompt embedding means nothing outside the text tower that produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsss.errors import ConfigError
from wsss.io import atomic_path, write_json

if TYPE_CHECKING:
    import torch

    from wsss.settings import Settings

FORMAT = "wsss-prompts/1"
PROMPTS_FILE = "prompts.pt"
SIDECAR_SUFFIX = ".json"  # prompts.json beside prompts.pt: the key and identity, readable without torch


def clip_identity(model_name: str, pretrained: str | None) -> dict[str, str]:
    """The CLIP a prompt belongs to: the open_clip model name and its weights (a tag, or a local file's
    content hash)."""
    from wsss.identity import weights_id

    return {"model": model_name, "weights": weights_id(pretrained)}


def prompts_file(settings: Settings) -> Path:
    """Where the `prompts` stage writes the prompts and every reader finds them: `<prompts.out>/prompts.pt`."""
    return Path(settings.prompts.out) / PROMPTS_FILE


def save_prompts(path: str | Path, embeddings: torch.Tensor, ctx: torch.Tensor, class_names: list[str],
                 identity: dict[str, str], template: str, meta: dict[str, Any] | None = None) -> None:
    """Write atomically: `embeddings` [C, E] normalised prompt embeddings, `ctx` [C, L, d] their tokens;
    then the sidecar (a crash between the two leaves an old sidecar key: the file counts as stale)."""
    import torch

    if embeddings.shape[0] != len(class_names) or ctx.shape[0] != len(class_names):
        raise ValueError(f"{len(class_names)} classes but {embeddings.shape[0]} embeddings / {ctx.shape[0]} prompts")
    state = {"format": FORMAT, "classes": list(class_names), "class_ids": list(range(1, len(class_names) + 1)),
             "clip": dict(identity), "template": template, "embeddings": embeddings.detach().float().cpu(),
             "ctx": ctx.detach().float().cpu(), "meta": dict(meta or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    write_json(Path(path).with_suffix(SIDECAR_SUFFIX), {"format": FORMAT, "classes": state["classes"],
                                                         "clip": state["clip"], "key": state["meta"].get("key")})


def stored_prompts_key(path: str | Path) -> str | None:
    """The inputs' key of an existing prompts file (from its sidecar, without loading torch), else None."""
    import json

    sidecar = Path(path).with_suffix(SIDECAR_SUFFIX)
    if not Path(path).is_file():
        return None
    try:
        return json.loads(sidecar.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def read_prompts(path: str | Path) -> dict:
    from wsss.io import load_versioned

    return load_versioned(path, FORMAT, "learned-prompts file",
                          "run `dvc repro prompts`, or set text.background_prompts: words")


def load_prompts(path: str | Path, identity: dict[str, str], class_names: list[str]):
    """The [C, E] prompt embeddings, after checking they were learned with this CLIP for these classes."""
    state = read_prompts(path)
    theirs = state["clip"]
    if theirs != identity:
        raise ConfigError(f"{path}: prompts were learned with CLIP {theirs['model']} ({theirs['weights']}), not "
                          f"{identity['model']} ({identity['weights']}); rerun the prompts stage for this model")
    if list(state["classes"]) != list(class_names):
        raise ConfigError(f"{path}: prompts are for the classes {state['classes']}, the dataset has {list(class_names)}; "
                          "rerun the prompts stage")
    return state["embeddings"]
