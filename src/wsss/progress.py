"""Progress bars whose rate and ETA start after warm-up.

The first unit of work pays for model loading, first-call kernel set-up or spawning workers; counted in
the rate, it makes the ETA of a 500-image run read hours ("1/500 [00:15<2:05:30"). `WarmProgress`
shows a plain "warming up" bar until the first unit is done, then starts the clock there."""

from __future__ import annotations

from tqdm.auto import tqdm


class WarmProgress:
    """`update(n)` like tqdm; the rate and ETA count only the work after the first update."""

    def __init__(self, total: int, desc: str, unit: str = "img", disable: bool = False):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.warm = False
        self.bar = tqdm(total=total, desc=f"{desc} (warming up)", unit=unit, disable=disable,
                        bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]")

    def update(self, n: int = 1) -> None:
        if not self.warm:
            self.warm = True
            self.bar.close()
            self.bar = tqdm(total=self.total, initial=n, desc=self.desc, unit=self.unit, disable=self.disable)
            return
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "WarmProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
