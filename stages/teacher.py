"""DVC stage `teacher`: CLIP-ES CAMs with the hand-written background words only, into `prompts.teacher`.

They teach the background prompts (stage `prompts` cuts its object/background crops from them), they are
the `words` row of the pseudo-mask ablation, and `cams` copies them instead of recomputing when
`text.background_prompts` is `words`: no teacher map is computed twice. The code is the `cams` stage's,
run with those settings (`wsss.cam.factory.teacher_settings`).
"""

from __future__ import annotations

from dataclasses import replace

from stages.cams import cams
from stages.common import main
from wsss.cam.factory import teacher_settings

teacher = replace(cams, name="teacher", sections=("clip", "text", "cams", "prompts"), view=teacher_settings)

if __name__ == "__main__":
    main(teacher)
