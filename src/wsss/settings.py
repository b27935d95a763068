"""Typed settings: one frozen dataclass per `params.yaml` section, parsed and validated in one go.

A stage or command calls `load_settings()` before it imports anything heavy or touches an output, so a
typo (`cams.box_treshold`), a wrong type or an out-of-range value costs a second, not finished work:
`ConfigError` names the file, the key and what was expected (and the closest valid key for a typo). The
library takes these objects, never the raw dict, and the CLI takes its defaults from them. Keys left
out of the file take the class defaults, which match the shipped `params.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from wsss.errors import ConfigError

DEVICE_WORDS = ("auto", "cpu", "cuda", "mps")


def knob(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, scheduling: bool = False,
         check=None, expect: str | None = None) -> Any:
    """A setting: its default, its range, and whether it only says how work is scheduled (shards,
    workers, output folders), so that changing it never invalidates finished outputs. `check(value)` is
    an extra rule returning True when the value is fine; `expect` says what it wants."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "scheduling": scheduling, "check": check, "expect": expect}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults: settings are frozen")
    return field(default=default, metadata=meta)


class Section:
    """Base of every settings section: validated on construction (from params.yaml or in code alike),
    values normalised (lists → tuples, integers → floats where a float is wanted)."""

    KEY: ClassVar[str] = ""  # the section's path in params.yaml, for messages

    def __post_init__(self):
        hints = _hints(type(self))
        for f in fields(self):
            key = f"{self.KEY}.{f.name}"
            value = _check_range(_coerce(getattr(self, f.name), hints[f.name], key), f.metadata, key)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Rules between settings of the section (override)."""

    def work_settings(self) -> dict[str, Any]:
        """Everything that changes what this section's stage computes (scheduling knobs left out)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if not f.metadata.get("scheduling")}

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


# ---- the sections ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyworldSettings(Section):
    KEY = "toyworld"
    root: str = knob("data/raw/toyworld", scheduling=True)
    num_train: int = knob(400, ge=0)
    num_val: int = knob(100, ge=0)
    image_size: int = knob(64, ge=32)  # the generator's bound too (it validates through this section)
    patterns: bool = knob(True)
    colour_prior: float = knob(0.9, ge=0, le=1)
    size_range: tuple[float, float] = knob((0.16, 0.32), check=lambda r: 0 < r[0] <= r[1] <= 0.5,
                                           expect="[low, high] with 0 < low ≤ high ≤ 0.5")
    max_rotation: float = knob(0.35, ge=0, le=3.1416)
    seed: int = knob(0, ge=0)


@dataclass(frozen=True)
class DataSettings(Section):
    KEY = "data"
    root: str = knob("data/raw/toyworld")
    format: Literal["voc", "coco", "custom", "auto"] = knob("voc")
    classes: str | None = knob(None)
    labels: str | None = knob(None)
    splits: tuple[str, ...] = knob(("train", "val"), check=bool, expect="a non-empty list of split names")
    prepared: str = knob("data/prepared", scheduling=True)
    drops: str | None = knob("drops", check=lambda v: v is None or (v and ".." not in v.split("/")),
                             expect="a sub-folder name of data.root, or null")
    exif: Literal["ignore", "apply"] = knob("ignore")  # EXIF orientation: pixels as stored | as displayed


@dataclass(frozen=True)
class ValidationSettings(Section):
    KEY = "validation"
    report_dir: str = knob("reports/validation", scheduling=True)
    max_pixels: int = knob(50_000_000, gt=0)  # decompression bombs claim billions; real photos stay far below
    min_side: int = knob(16, ge=1)
    near_duplicate: int = knob(32, ge=0, le=256)  # pHash (256 bits) Hamming distance of near-duplicates
    blank: Literal["refuse", "warn"] = knob("refuse")
    min_entropy: float = knob(1.0, ge=0, le=8)  # bits of the grey-level histogram; one flat colour has 0
    label_audit: Literal["off", "warn", "quarantine", "refuse"] = knob("warn")
    audit_max_share: float = knob(0.1, ge=0, le=1)  # refuse: the most flagged images a drop may carry
    audit_min_images: int = knob(50, ge=2)  # fewer images than this (drop + dataset): no audit
    drift_share: float = knob(0.25, gt=0, le=1)
    drift_size: float = knob(2.0, gt=1)
    workers: int = knob(4, ge=1, scheduling=True)


@dataclass(frozen=True)
class TrackingSettings(Section):
    KEY = "tracking"
    experiment: str = knob("wsss", check=bool, expect="a non-empty experiment name")
    uri: str | None = knob(None)
    on_outage: Literal["buffer", "fail"] = knob("buffer")
    timeout: int = knob(8, ge=1, le=60)  # seconds one MLflow request may wait for an answer
    retries: int = knob(2, ge=0, le=10)  # MLflow's own retries of a failed request (backoff 0 s, 2 s, 4 s, ...)

    def check(self) -> None:
        if self.give_up_seconds() > 120:
            raise ConfigError(f"tracking.timeout × (tracking.retries + 1) plus backoff is {self.give_up_seconds():.0f} s: "
                              "a dead MLflow server would hold each stage that long; keep it under 120 s")

    def give_up_seconds(self) -> float:
        """The longest one MLflow request takes to give up on a server that accepts but never answers."""
        return self.timeout * (self.retries + 1) + sum(2 ** k for k in range(1, self.retries))


def _is_device(spec: str) -> bool:
    head, _, index = spec.partition(":")
    return head in DEVICE_WORDS and (not index or (head == "cuda" and index.isdigit()))


@dataclass(frozen=True)
class ClipSettings(Section):
    KEY = "clip"
    model: str = knob("wsss-toy-vit", check=bool, expect="an open_clip model name")
    pretrained: str | None = knob("assets/toyclip/wsss-toy-vit.pt")
    device: str = knob("auto", check=_is_device, expect="auto, cpu, cuda or cuda:N")
    precision: Literal["fp32", "fp16", "bf16"] = knob("fp32")


@dataclass(frozen=True)
class TextSettings(Section):
    KEY = "text"
    templates: tuple[str, ...] = knob(("a photo of a {}.",), check=lambda ts: bool(ts) and all("{}" in t for t in ts),
                                      expect="a non-empty list of templates, each with {} for the class")
    synonyms: str | dict[str, str] | None = knob(None)
    background: str | tuple[str, ...] = knob(("grass", "water", "wall", "sky", "road", "sand"), check=bool,
                                             expect="voc, coco, a file, or a non-empty word list")
    background_prompts: Literal["words", "learned", "both"] = knob("learned")


@dataclass(frozen=True)
class CamsSettings(Section):
    KEY = "cams"
    splits: tuple[str, ...] = knob(("train", "val"), scheduling=True, check=bool, expect="a non-empty list")
    out: str = knob("data/cams", scheduling=True)
    caa_layers: int = knob(8, ge=0)
    box_threshold: float = knob(0.4, ge=0, lt=1)
    box_reference_quirk: bool = knob(True)
    refine: bool = knob(True)
    sinkhorn_rounds: int = knob(3, ge=0)
    amp: Literal["fp16", "bf16"] | None = knob(None)
    grad_mode: Literal["vmap", "loop"] = knob("vmap")
    class_chunk: int | None = knob(None, ge=1)
    batch_size: int = knob(8, ge=1)
    pos_embed_fp16: bool = knob(False)
    attn_chunk_elems: int | None = knob(None, ge=1, scheduling=True)  # memory knobs: same maps either way
    token_chunk: int | None = knob(None, ge=1, scheduling=True)
    shards: int = knob(1, ge=1, scheduling=True)
    dask_address: str | None = knob(None, scheduling=True)
    overlays: int = knob(8, ge=0, scheduling=True)
    device: str | None = knob("auto", scheduling=True, check=_is_device, expect="auto, cpu, cuda or cuda:N")

    def check(self):
        if self.refine and self.caa_layers < 1:
            raise ConfigError("cams.caa_layers: must be ≥ 1 when cams.refine is true, got 0")


@dataclass(frozen=True)
class PromptsSettings(Section):
    """Learned per-class background prompts (docs/method.md §6); defaults sized for the toy world."""

    KEY = "prompts"
    teacher: str = knob("data/cams_words", scheduling=True)
    out: str = knob("data/prompts", scheduling=True)
    split: str = knob("train", check=bool, expect="a split name")
    source: Literal["refined", "cam"] = knob("refined")
    mask_threshold: float | None = knob(0.4, ge=0, lt=1)
    length: int = knob(8, ge=1)
    init: Literal["words", "uniform"] = knob("words")
    template: str = knob("a photo of {}.", check=lambda t: "{}" in t, expect="a template with {} for the tokens")
    period_quirk: bool = knob(False)
    image_embedding: Literal["cls", "patch_mean"] = knob("patch_mean")
    class_text: Literal["clip_es", "semples"] = knob("clip_es")
    crops: Literal["native", "augmented"] = knob("native")
    epochs: int = knob(60, ge=1)
    batch_size: int = knob(128, ge=1)
    batch_unit: Literal["pairs", "images"] = knob("pairs")
    lr: float = knob(0.025, gt=0)
    lr_schedule: Literal["constant", "cosine"] = knob("constant")
    weight_decay: float = knob(0.01, ge=0)
    class_push: float = knob(0.3, ge=0)
    foreground_repel: float = knob(0.0, ge=0)
    softmax_match: float = knob(1.0, ge=0)
    amp: Literal["fp16", "bf16"] | None = knob(None)
    device: str = knob("auto", scheduling=True, check=_is_device, expect="auto, cpu, cuda or cuda:N")
    seed: int = knob(0)


@dataclass(frozen=True)
class CrfSettings(Section):
    """Dense-CRF kernels and mean-field iterations; defaults are the CLIP-ES reference values."""

    KEY = "masks.crf"
    gaussian_sxy: float = knob(1.0, gt=0)
    gaussian_compat: float = knob(3.0, ge=0)
    bilateral_sxy: float = knob(67.0, gt=0)
    bilateral_srgb: float = knob(3.0, gt=0)
    bilateral_compat: float = knob(4.0, ge=0)
    iterations: int = knob(10, ge=0)


@dataclass(frozen=True)
class MasksSettings(Section):
    KEY = "masks"
    out: str = knob("data/masks", scheduling=True)
    source: Literal["refined", "cam"] = knob("refined")
    alpha: float = knob(1.0, gt=0)
    use_crf: bool = knob(True)
    crf: CrfSettings = field(default_factory=CrfSettings)
    confidence: float | None = knob(0.95, ge=0, le=1)
    workers: int = knob(0, ge=0, scheduling=True)
    shards: int = knob(1, ge=1, scheduling=True)
    dask_address: str | None = knob(None, scheduling=True)


@dataclass(frozen=True)
class EvaluateMasksSettings(Section):
    KEY = "evaluate_masks"
    out: str = knob("reports/pseudo", scheduling=True)
    alphas: tuple[float, ...] = knob((1.0, 2.0), check=lambda a: all(x > 0 for x in a), expect="exponents > 0")
    ablation_split: str | None = knob(None)
    examples: int = knob(6, ge=0)
    workers: int = knob(0, ge=0, scheduling=True)


V3PLUS_ARCHS = ("clip", "resnet50", "resnet101")  # backbones with stride-4 features for the V3+ decoder


@dataclass(frozen=True)
class TrainSettings(Section):
    """The segmenter (docs/method.md §5); defaults sized for the toy world on a CPU."""

    KEY = "train"
    out: str = knob("data/train", scheduling=True)
    arch: Literal["toy", "clip", "resnet50", "resnet101", "mobilenet_v3_large"] = knob("clip")
    width: int = knob(16, ge=4)
    head: Literal["deeplabv3", "deeplabv3plus"] = knob("deeplabv3plus")
    decoder_stride: Literal[1, 2, 4] | None = knob(None)
    backbone_lr: float | None = knob(None, ge=0)
    weights: str | None = knob(None)
    target: Literal["pseudo", "ground_truth"] = knob("pseudo")
    split: str = knob("train", check=bool, expect="a split name")
    iterations: int = knob(750, ge=1)
    batch_size: int = knob(16, ge=1)
    crop: int = knob(64, ge=8)
    scale: tuple[float, float] = knob((0.75, 1.5), check=lambda s: len(s) == 2 and 0 < s[0] <= s[1],
                                      expect="[low, high] with 0 < low ≤ high")
    lr: float = knob(0.02, gt=0)
    momentum: float = knob(0.9, ge=0, lt=1)
    weight_decay: float = knob(1e-4, ge=0)
    poly_power: float = knob(0.9, ge=0)
    prompt_refine: float = knob(0.0, ge=0)
    self_training: int = knob(1, ge=0)
    self_training_scales: tuple[float, ...] = knob((1.0, 1.25, 1.5), check=lambda s: bool(s) and all(x > 0 for x in s),
                                                   expect="positive scales")
    checkpoint_every: int = knob(250, ge=1, scheduling=True)
    log_every: int = knob(25, ge=1, scheduling=True)
    amp: Literal["fp16", "bf16"] | None = knob(None)
    workers: int = knob(0, ge=0, scheduling=True)
    device: str = knob("auto", scheduling=True, check=_is_device, expect="auto, cpu, cuda or cuda:N")
    seed: int = knob(0)

    def check(self):
        if self.head == "deeplabv3plus" and self.arch not in V3PLUS_ARCHS:
            raise ConfigError(f"train.head deeplabv3plus needs stride-4 features: arch clip, resnet50 or resnet101, "
                              f"not {self.arch} (set train.head: deeplabv3)")
        if self.decoder_stride not in (None, 4) and (self.head != "deeplabv3plus" or self.arch != "clip"):
            raise ConfigError(f"train.decoder_stride {self.decoder_stride} continues the V3+ decoder on the clip "
                              f"backbone's pixel stem: it needs head deeplabv3plus and arch clip (or set 4)")
        if self.self_training and self.target != "pseudo":
            raise ConfigError("train.self_training re-labels the pseudo masks' images with the segmenter; with "
                              "target ground_truth there is nothing to re-label (set train.self_training: 0)")
        if self.backbone_lr == 0 and self.arch != "clip":
            raise ConfigError(f"train.backbone_lr 0 (a frozen backbone) is for arch clip; a {self.arch} backbone "
                              f"trains with its BatchNorm statistics: use a factor > 0")


@dataclass(frozen=True)
class OpsSettings(Section):
    """Operations (flows/retrain.py, `wsss serve`): where drops arrive and how retraining runs."""

    KEY = "ops"
    drops: str | None = knob(None, check=lambda v: v is None or bool(v), expect="s3://bucket/prefix, a folder or null")
    endpoint_url: str | None = knob(None)
    drop_format: Literal["voc", "coco", "custom", "auto"] = knob("auto")
    retries: int = knob(4, ge=1)
    schedule: str = knob("0 3 * * 1", check=lambda v: len(v.split()) == 5, expect="a 5-field cron expression")
    timezone: str = knob("UTC")
    pull: bool = knob(True)
    push: bool = knob(True)
    commit: bool = knob(True)
    git_sync: bool = knob(False)


@dataclass(frozen=True)
class EvaluateSettings(Section):
    KEY = "evaluate"
    out: str = knob("reports/seg", scheduling=True)
    split: str = knob("val", check=bool, expect="a split name")
    scales: tuple[float, ...] = knob((1.0, 1.25, 1.5), check=lambda s: bool(s) and all(x > 0 for x in s),
                                     expect="positive scales")
    flip: bool = knob(True)
    examples: int = knob(6, ge=0)
    registered_model: str = knob("wsss-segmenter", check=bool, expect="a registered model name")
    device: str = knob("auto", scheduling=True, check=_is_device, expect="auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class Settings:
    """All of `params.yaml`."""

    toyworld: ToyworldSettings = field(default_factory=ToyworldSettings)
    data: DataSettings = field(default_factory=DataSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    clip: ClipSettings = field(default_factory=ClipSettings)
    text: TextSettings = field(default_factory=TextSettings)
    prompts: PromptsSettings = field(default_factory=PromptsSettings)
    cams: CamsSettings = field(default_factory=CamsSettings)
    masks: MasksSettings = field(default_factory=MasksSettings)
    evaluate_masks: EvaluateMasksSettings = field(default_factory=EvaluateMasksSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)

    def __post_init__(self):
        """Rules between sections."""
        if self.prompts.split not in self.cams.splits:
            raise ConfigError(f"prompts.split {self.prompts.split!r} is not among cams.splits "
                              f"{list(self.cams.splits)}: the teacher makes CAMs only for those splits")
        if self.train.target == "pseudo" and self.train.split not in self.cams.splits:
            raise ConfigError(f"train.split {self.train.split!r} is not among cams.splits {list(self.cams.splits)}: "
                              f"pseudo masks are made only for those splits")

    def sections(self, names) -> dict[str, dict[str, Any]]:
        """{name: section as a plain dict} for the given section names (what a stage logs)."""
        return {name: getattr(self, name).as_dict() for name in names}


SECTIONS = tuple(f.name for f in fields(Settings))


# ---- loading ---------------------------------------------------------------------------------------------
def project_root() -> Path:
    """DVC_ROOT under `dvc repro`, else the nearest ancestor of the working directory holding dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists():
            return d
    return here


def params_path() -> Path:
    """WSSS_PARAMS, else params.yaml in the project root (DVC_ROOT under `dvc repro`)."""
    return Path(os.environ.get("WSSS_PARAMS") or project_root() / "params.yaml")


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate a params file (default `params_path()`); every error is one `ConfigError` line."""
    import yaml

    path = Path(path) if path else params_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (run from the project root or set WSSS_PARAMS)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return parse_settings(raw or {})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def project_settings() -> Settings:
    """The project's settings when there is a params file (`params_path()`), else the defaults: for the
    commands that also work outside a project (`wsss validate`, the validate-drop flow)."""
    return load_settings() if params_path().is_file() else Settings()


def parse_settings(raw: Any) -> Settings:
    """A mapping of sections (as in params.yaml) → `Settings`; missing sections and keys take defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of sections at the top level, got {type(raw).__name__}")
    values = {name: parse_section(_section_type(name), raw.get(name), name) for name in SECTIONS}
    _reject_unknown(raw, SECTIONS, "")
    return Settings(**values)


def parse_section(cls: type, raw: Any, prefix: str):
    """One section (or nested section) from a mapping, validating each key against its annotation."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping of settings, got {raw!r}")
    _reject_unknown(raw, [f.name for f in fields(cls)], prefix + ".")
    return cls(**raw)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(name: str) -> type:
    return _hints(Settings)[name]


def _reject_unknown(raw: dict, known, prefix: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid: {', '.join(known)}"
            raise ConfigError(f"{prefix}{key}: unknown setting{hint}")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + "/".join(str(a) for a in args)
    if origin is tuple:
        plural = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}.get(args[0], "values")
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {plural}"
        return f"a list of {len(args)} {plural}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping of settings"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    try:
        return _convert(value, tp, key)
    except _Mismatch:
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}") from None


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arg in sorted(args, key=lambda a: a is not type(None)):  # null first, then the others in order
            try:
                return _convert(value, arg, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args and (not isinstance(value, bool) or any(isinstance(a, bool) for a in args)):
            return value  # (True == 1: a boolean is no numeric choice)
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise _Mismatch
        return tuple(_convert(v, t, key) for v, t in zip(value, items))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return {str(k): _convert(v, args[1], key) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else parse_section(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"{key}: unsupported settings type {tp!r}")  # a bug in this module, not the user's


def _check_range(value: Any, meta, key: str) -> Any:
    if value is None or isinstance(value, (bool, dict)) or dataclasses.is_dataclass(value):
        return value
    bounds = [("ge", "≥", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "≤", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    if isinstance(value, (int, float)):
        for name, sign, ok in bounds:
            if meta.get(name) is not None and not ok(value, meta[name]):
                wanted = " and ".join(f"{s} {meta[n]}" for n, s, _ in bounds if meta.get(n) is not None)
                raise ConfigError(f"{key}: expected a value {wanted}, got {value!r}")
    if meta.get("check") is not None and not meta["check"](value):
        raise ConfigError(f"{key}: expected {meta['expect']}, got {_plain(value)!r}")
    return value


def _plain(value: Any) -> Any:
    """Tuples → lists and sections → dicts: the YAML/JSON shape of a value (for logs and fingerprints)."""
    if isinstance(value, Section):
        return value.as_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
