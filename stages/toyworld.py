"""DVC stage `toyworld`: generate the embedded default dataset (deterministic from its seed)."""

from __future__ import annotations

from stages.common import main, stage


@stage("toyworld", ["toyworld"], imports=("wsss.toyworld",))
def toyworld(settings, run) -> dict:
    """Generate the toy world into a temporary folder and swap it in whole."""
    from wsss.io import atomic_dir
    from wsss.toyworld import generate_from_settings

    with atomic_dir(settings.toyworld.root) as tmp:
        stats = generate_from_settings(tmp, settings.toyworld)
    run.log_dict(stats, "toyworld_stats.json")
    run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    return stats


if __name__ == "__main__":
    main(toyworld)
