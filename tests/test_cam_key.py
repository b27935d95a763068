"""The CAM files' settings key: the background set decides whether the learned prompts file is part of it
(`wsss.prompts.background` hands it to `wsss.cam.factory`, which never reads the prompts package)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from wsss.cam.factory import cam_settings_key
from wsss.prompts.background import cam_key, learned_prompts_file
from wsss.prompts.store import prompts_file
from wsss.settings import Settings


def _settings(tmp_path, background_prompts: str) -> Settings:
    s = Settings()
    return replace(s, text=replace(s.text, background_prompts=background_prompts),
                   prompts=replace(s.prompts, out=str(tmp_path / "prompts")))


def test_words_key_ignores_the_prompts_file(tmp_path):
    words = _settings(tmp_path, "words")
    assert learned_prompts_file(words) is None
    before = cam_key(words)
    prompts_file(words).parent.mkdir(parents=True)
    prompts_file(words).write_bytes(b"prompts")
    assert cam_key(words) == before == cam_settings_key(words)


def test_learned_key_follows_the_prompts_files_content(tmp_path):
    learned = _settings(tmp_path, "learned")
    path = prompts_file(learned)
    assert learned_prompts_file(learned) == path == tmp_path / "prompts" / "prompts.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"one")
    one = cam_key(learned)
    path.write_bytes(b"two!")
    two = cam_key(learned)
    assert len({one, two, cam_key(_settings(tmp_path, "both")), cam_key(_settings(tmp_path, "words"))}) == 4
    with pytest.raises(ValueError, match="needs the prompts file"):
        cam_settings_key(learned)
