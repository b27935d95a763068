"""Typed settings: params.yaml parses to the class defaults, every knob is in the file, and each kind of
mistake is one line naming the key, what was expected and the value."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from wsss.errors import ConfigError
from wsss.settings import SECTIONS, Settings, load_settings, parse_settings


def test_shipped_params_are_the_class_defaults():
    """The CLI and the library take their defaults from the classes: they must be what params.yaml says."""
    assert load_settings(REPO / "params.yaml") == Settings()


def test_params_yaml_lists_every_setting():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert list(raw) == list(SECTIONS)
    for name in SECTIONS:
        fields = {f.name for f in dataclasses.fields(getattr(Settings(), name))}
        assert set(raw[name]) == fields, name


@pytest.mark.parametrize("raw, message", [
    ({"cams": {"box_treshold": 0.4}}, "cams.box_treshold: unknown setting; did you mean cams.box_threshold?"),
    ({"cam": {}}, "cam: unknown setting; did you mean cams?"),
    ({"cams": {"zzz": 1}}, "cams.zzz: unknown setting; valid: splits, out, "),
    ({"cams": {"batch_size": 2.5}}, "cams.batch_size: expected an integer, got 2.5"),
    ({"cams": {"refine": "yes"}}, "cams.refine: expected true/false, got 'yes'"),
    ({"cams": {"sinkhorn_rounds": -1}}, "cams.sinkhorn_rounds: expected a value ≥ 0, got -1"),
    ({"cams": {"splits": "train"}}, "cams.splits: expected a list of strings, got 'train'"),
    ({"cams": {"refine": True, "caa_layers": 0}}, "cams.caa_layers: must be ≥ 1 when cams.refine is true"),
    ({"masks": {"crf": {"iterations": 2.5}}}, "masks.crf.iterations: expected an integer, got 2.5"),
    ({"masks": {"alpha": 0}}, "masks.alpha: expected a value > 0, got 0.0"),
    ({"data": {"format": "yolo"}}, "data.format: expected one of voc/coco/custom/auto, got 'yolo'"),
    ({"clip": {"device": "gpu"}}, "clip.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"text": {"templates": ["a photo"]}}, "text.templates: expected a non-empty list of templates, each with {}"),
    ({"toyworld": {"size_range": [0.3]}}, "toyworld.size_range: expected a list of 2 numbers, got [0.3]"),
    ({"prompts": {"split": "train_aug"}}, "prompts.split 'train_aug' is not among cams.splits ['train', 'val']"),
    ({"train": {"split": "train_aug"}}, "train.split 'train_aug' is not among cams.splits ['train', 'val']"),
    ({"train": {"arch": "toy"}}, "train.head deeplabv3plus needs stride-4 features: arch clip, resnet50 or resnet101, "
                                 "not toy"),
    ({"train": {"arch": "resnet50", "backbone_lr": 0}}, "train.backbone_lr 0 (a frozen backbone) is for arch clip"),
    ({"train": {"arch": "resnet101", "decoder_stride": 1}}, "train.decoder_stride 1 continues the V3+ decoder on the "
                                                            "clip backbone's pixel stem: it needs head deeplabv3plus"),
    ({"train": {"decoder_stride": 3}}, "train.decoder_stride: expected one of 1/2/4 or null, got 3"),
    ({"train": {"decoder_stride": True}}, "train.decoder_stride: expected one of 1/2/4 or null, got True"),
    (["cams"], "expected a mapping of sections at the top level, got list"),
])
def test_each_mistake_is_one_line(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_settings(raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("cams: {box_threshold: [}\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_settings(bad)
    bad.write_text("cams:\n  box_threshold: 2\n")
    with pytest.raises(ConfigError, match=f"^{bad}: cams.box_threshold: expected a value ≥ 0 and < 1, got 2"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="params file not found"):
        load_settings(tmp_path / "none.yaml")


def test_values_are_normalised_and_frozen():
    s = parse_settings({"masks": {"alpha": 2}, "cams": {"splits": ["train"]}})
    assert s.masks.alpha == 2.0 and isinstance(s.masks.alpha, float) and s.cams.splits == ("train",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.masks.alpha = 3.0
    assert "shards" not in s.cams.work_settings() and "box_threshold" in s.cams.work_settings()


def test_toyworld_command_defaults_come_from_the_settings():
    out = subprocess.run([sys.executable, "-m", "wsss.cli", "toyworld", "--help"], capture_output=True, text=True,
                         cwd=REPO, env={"COLUMNS": "200", "PATH": ""}, timeout=120).stdout
    toy = Settings().toyworld
    assert f"[default: {toy.num_train}]" in out and f"[default: {toy.num_val}]" in out
    assert "[required]" in out  # never writes over the pipeline's world by default
