"""DVC stage `toyworld`: generate the embedded default dataset (deterministic from its seed)."""

from __future__ import annotations

from stages.common import main, stage_flow
from wsss.io import atomic_dir
from wsss.params import section
from wsss.toyworld import generate_toyworld


@stage_flow("toyworld", ["toyworld"])
def toyworld(params: dict, run) -> dict:
    """Generate the toy world into a temporary folder and swap it in whole."""
    cfg = dict(section(params, "toyworld"))
    root = cfg.pop("root")
    with atomic_dir(root) as tmp:
        stats = generate_toyworld(tmp, **cfg)
    run.log_dict(stats, "toyworld_stats.json")
    run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    return stats


if __name__ == "__main__":
    main(toyworld)
