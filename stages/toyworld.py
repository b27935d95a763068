"""DVC stage `toyworld`: generate the embedded default dataset (deterministic from its seed)."""

from __future__ import annotations

from stages.common import main, stage


@stage("toyworld", ["toyworld"], imports=("wsss.toyworld",))
def toyworld(settings, run) -> dict:
    """Generate the toy world (drawn into a temporary folder and swapped in whole)."""
    from wsss.toyworld import generate_from_settings

    cfg = settings.toyworld
    print(f"toyworld: drawing {cfg.num_train} train + {cfg.num_val} val images (seed {cfg.seed}) into {cfg.root}, "
          "replacing it whole")
    stats = generate_from_settings(cfg.root, cfg)
    run.log_dict(stats, "toyworld_stats.json")
    run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    return stats


if __name__ == "__main__":
    main(toyworld)
