"""Where a fresh `dvc repro` of the default pipeline spends its time: per stage, the stage's own work
against the fixed cost every stage process pays (process start, imports, Prefect API, MLflow).

    python benchmarks/pipeline_overhead.py                 # both entry points, fresh copies, ~10 min
    python benchmarks/pipeline_overhead.py --modes dvc     # only `dvc repro`

Each mode runs in a fresh copy of the repository (tracked files, a new git repo, empty MLflow store;
Prefect's database in a home of its own that the first mode creates, as on a machine that has run
Prefect once). Stages write their phase marks to $WSSS_TIMINGS (`wsss.timings`):

  main         process start → the stage's `main` (interpreter, `stages` package)
  settings     reading and validating params.yaml
  pending      looking for a missing/stale output (a stage with nothing to do stops here)
  imports      Prefect, MLflow (and opening its store), the stage's heavy modules (torch, open_clip,
               GX, ...), while the stage's own Prefect API boots in its process
  prefect_api  what is left of waiting for that API (0 when one is shared and up)
  flow_start   creating the flow run
  mlflow_start opening the MLflow run (parent run, params)
  work         the stage's own computation
  flow_end     closing the MLflow run and the flow run
  teardown     sending the last logs, stopping the Prefect API, exit
Then: `dvc repro` with nothing to do, a stage rerun with nothing to do, and a settings error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("main", "settings", "pending", "imports", "prefect_api", "flow_start", "mlflow_start", "work", "flow_end",
          "teardown")
COMMANDS = {"dvc": [sys.executable, "-m", "dvc", "repro"], "wsss": [sys.executable, "-m", "wsss.cli", "repro"]}


def copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dst, check=True)


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def table(rows: list[dict], wall: float) -> str:
    head = "| stage | " + " | ".join(PHASES) + " | fixed | work | total |"
    lines = [head, "|---|" + "---:|" * (len(PHASES) + 3)]
    sums = {p: 0.0 for p in PHASES}
    for r in rows:
        ph = r["phases"]
        for p in PHASES:
            sums[p] += ph.get(p, 0.0)
        fixed = r["total"] - ph.get("work", 0.0)
        lines.append(f"| {r['stage']} | " + " | ".join(f"{ph.get(p, 0.0):.1f}" for p in PHASES)
                     + f" | {fixed:.1f} | {ph.get('work', 0.0):.1f} | {r['total']:.1f} |")
    total = sum(r["total"] for r in rows)
    lines.append("| **all stages** | " + " | ".join(f"{sums[p]:.1f}" for p in PHASES)
                 + f" | {total - sums['work']:.1f} | {sums['work']:.1f} | {total:.1f} |")
    lines.append(f"\nwhole command: {wall:.1f} s (DVC itself and any shared Prefect API: {wall - total:.1f} s)")
    return "\n".join(lines)


def run_mode(mode: str, base: Path, prefect_home: Path) -> dict:
    work = base / mode
    work.mkdir()
    copy_repo(work)
    timings = work / "timings.jsonl"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PREFECT_HOME": str(prefect_home),
           "WSSS_TIMINGS": str(timings), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)
    wall, proc = timed(COMMANDS[mode], work, env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    print(f"\n### `{' '.join(COMMANDS[mode][2:])}` from scratch (500 toy images)\n")
    print(table(rows, wall))
    noop, _ = timed([sys.executable, "-m", "dvc", "repro"], work, env)
    timings.unlink()
    rerun, _ = timed([sys.executable, "-m", "stages.cams"], work, env)
    bad = work / "bad.yaml"
    bad.write_text((work / "params.yaml").read_text().replace("box_threshold:", "box_treshold:"))
    error, err = timed([sys.executable, "-m", "stages.cams"], work, {**env, "WSSS_PARAMS": str(bad)})
    print(f"\n`dvc repro` with nothing to do: {noop:.1f} s; `python -m stages.cams` with every image current: "
          f"{rerun:.1f} s; a settings error reported after {error:.1f} s (exit {err.returncode}: "
          f"{err.stderr.strip()[:90]})")
    return {"wall": wall, "rows": rows, "noop": noop, "rerun": rerun, "error": error}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["dvc", "wsss"], choices=list(COMMANDS))
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wsss-overhead-"))
    prefect_home = base / "prefect-home"
    try:
        # create Prefect's database once, as on any machine that has used Prefect before
        subprocess.run([sys.executable, "-c", "from wsss.prefect_env import local_api\nwith local_api(): pass"],
                       env={**os.environ, "PREFECT_HOME": str(prefect_home)}, check=True)
        results = {mode: run_mode(mode, base, prefect_home) for mode in args.modes}
        print("\n" + json.dumps({m: {k: r[k] for k in ("wall", "noop", "rerun", "error")} for m, r in results.items()}))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
