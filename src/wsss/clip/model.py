"""Load a frozen CLIP by open_clip model name + weights: a pretrained tag, a local checkpoint, or none.

One code path for real and toy use: `load_clip("ViT-B-16", "openai")` downloads (or reuses open_clip's
cache) on a machine with network; `load_clip("ViT-B-16", "/models/ViT-B-16.pt")` reads an OpenAI
(TorchScript or state dict) or open_clip checkpoint; the project's toy CLIP is `load_clip("wsss-toy-vit",
"assets/toyclip/wsss-toy-vit.pt")`. The project's own architectures (JSON files in `configs/`) are
registered with open_clip first, so they are ordinary open_clip models.

Every way of not getting the weights (no network, unknown tag, missing file, wrong architecture) becomes
one `ConfigError` line that says how to provide a local file. Without network the Hugging Face hub is put
in offline mode for the call, so a missing download fails in seconds instead of retrying for a minute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from wsss.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
PRECISIONS = ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16")
HOW_TO = ("set clip.pretrained in params.yaml to a local checkpoint file (.pt/.bin/.safetensors, OpenAI or "
          "open_clip format), e.g. one copied from a machine with network")
_registered = False


def register_configs() -> None:
    """Register the project's model configs (`configs/*.json`) with open_clip, once per process."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def project_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """OpenAI's released CLIP files are TorchScript archives (a zip with code/ and constants.pkl)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_if_unreachable():
    """Hugging Face hub offline mode for the duration of the call when the hub cannot be reached."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip then downloads by URL only
        yield
        return
    if constants.HF_HUB_OFFLINE or _hub_reachable():
        yield
        return
    log.info("Hugging Face hub unreachable: looking for CLIP weights in the local cache only")
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


@contextlib.contextmanager
def _as_state_dict_file(pretrained: str | None):
    """OpenAI's TorchScript archives cannot be read with `torch.load(weights_only=True)`: take their
    state dict with `torch.jit.load` (TorchScript, not arbitrary pickle) into a temporary plain file."""
    if pretrained is None or not os.path.isfile(pretrained) or not is_torchscript_file(pretrained):
        yield pretrained
        return
    import tempfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the only reader
        state = torch.jit.load(pretrained, map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):  # not weights
        state.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="wsss-clip-") as tmp:
        path = os.path.join(tmp, Path(pretrained).stem + ".state_dict.pt")
        torch.save(state, path)
        del state
        yield path


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or Path(value).suffix.lower() in (
        ".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def load_clip(model_name: str, pretrained: str | os.PathLike | None, device: str | torch.device = "cpu",
              precision: str = "fp32", quick_gelu: bool | None = None):
    """Build an open_clip CLIP, load its weights, put it in eval mode with frozen parameters.

    `pretrained`: an open_clip tag for `model_name` ("openai", "laion2b_s34b_b88k", ...), a local checkpoint
    file, or None for random initialisation (tests, benchmarks). `quick_gelu`: None = automatic (the tag's
    setting; True for OpenAI TorchScript files, whose models were trained with QuickGELU). Returns
    (model, tokenizer).
    """
    import open_clip

    register_configs()
    if precision not in PRECISIONS:
        raise ConfigError(f"clip.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if model_name not in open_clip.list_models():
        raise ConfigError(f"unknown CLIP model {model_name!r}: use an open_clip model name (e.g. ViT-B-16) or one "
                          f"of the project's configs ({', '.join(project_models())})")
    pretrained = None if pretrained in (None, "", "none", "None") else str(pretrained)
    kwargs: dict = {}
    if pretrained is None:
        log.info("CLIP %s: random initialisation (no pretrained weights)", model_name)
    elif os.path.isfile(pretrained):
        if quick_gelu is None and is_torchscript_file(pretrained) and not model_name.endswith("quickgelu"):
            log.info("%s is an OpenAI TorchScript checkpoint: using QuickGELU activations", pretrained)
            quick_gelu = True
        elif quick_gelu is None and model_name in _openai_arches() and not model_name.endswith("quickgelu"):
            warnings.warn(f"CLIP checkpoint {pretrained} for {model_name}: if it holds OpenAI weights, load it as "
                          f"'{model_name}-quickgelu' (or quick_gelu=True); GELU vs QuickGELU differ silently",
                          UserWarning, stacklevel=2)
    elif _looks_like_path(pretrained):
        raise ConfigError(f"CLIP checkpoint file {pretrained} not found: {HOW_TO}")
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ConfigError(f"{pretrained!r} is neither a file nor a pretrained tag of CLIP {model_name} (tags: "
                              f"{', '.join(tags) or 'none'}); {HOW_TO}")
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if quick_gelu is None and tag_cfg.get("quick_gelu") and not model_name.endswith("quickgelu"):
            quick_gelu = True  # OpenAI's weights were trained with QuickGELU; plain GELU would differ silently
    if quick_gelu:
        kwargs["force_quick_gelu"] = True
    try:
        with _offline_if_unreachable(), warnings.catch_warnings(), _as_state_dict_file(pretrained) as weights:
            warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
            model = open_clip.create_model(model_name, pretrained=weights, device=device, precision=precision,
                                           **kwargs)
    except Exception as e:  # noqa: BLE001 - every failure to get weights becomes one actionable line
        if pretrained is None:
            raise
        first = " ".join(str(e).split())[:300] or type(e).__name__
        if not os.path.isfile(pretrained):
            raise ConfigError(f"could not download CLIP weights {pretrained!r} for {model_name} and they are not in "
                              f"open_clip's cache (no network?); {HOW_TO}") from None
        if isinstance(e, AssertionError) or any(k in str(e) for k in (
                "size mismatch", "Missing key", "Unexpected key", "loading state_dict")):
            raise ConfigError(f"CLIP checkpoint {pretrained} does not fit model {model_name} ({first}); set "
                              f"clip.model to the checkpoint's architecture") from None
        raise ConfigError(f"could not read CLIP checkpoint {pretrained} ({type(e).__name__}: {first}); "
                          f"{HOW_TO}") from None
    model.eval()
    model.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, tokenizer


def _openai_arches() -> set[str]:
    """Architectures OpenAI released weights for (their open_clip tag 'openai' exists)."""
    import open_clip

    return {m for m, t in open_clip.list_pretrained() if t == "openai"}


def clip_config(model_name: str) -> dict:
    """The open_clip config dict of a (registered) model name."""
    import open_clip

    register_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ConfigError(f"unknown CLIP model {model_name!r}")
    return cfg
