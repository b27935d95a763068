"""`wsss`: the map of the product. Pipeline stages, dataset validation and the helpers behind them.

User errors print as one line (`error: <file>: <problem>`) and exit 2; a failed validation, or a `predict`
that refused some files (each listed), exits 1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from wsss.errors import WsssError
from wsss.ops.infra import infra_app
from wsss.prefect_env import apply_prefect_defaults
from wsss.settings import ToyworldSettings, ValidationSettings
from wsss.toyclip.settings import ToyClipTraining

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Weakly-supervised semantic segmentation with CLIP (CLIP-ES + SemPLeS), as a "
                       "DVC / Prefect / MLflow pipeline. Run `wsss repro` for the whole pipeline.")

app.add_typer(infra_app, name="infra")

STAGES = ["toyworld", "prepare", "teacher", "prompts", "cams", "masks", "evaluate_masks", "train", "evaluate"]


def _project_root() -> Path:
    from wsss.settings import project_root

    root = project_root()
    if not (root / "dvc.yaml").exists():
        raise WsssError(f"{Path.cwd()}: not inside the wsss project (no dvc.yaml found above it)")
    return root


@app.command()
def repro(stage: Optional[str] = typer.Argument(None, help="Reproduce up to this stage (default: all)."),
          force: bool = typer.Option(False, "--force", "-f", help="Rerun even if nothing changed.")):
    """Run the DVC pipeline (`dvc repro`) with one local Prefect API shared by all its stages (instead of
    one started per stage); with $PREFECT_API_URL set, that server is used."""
    from wsss.prefect_env import local_api

    cmd = [sys.executable, "-m", "dvc", "repro", *([stage] if stage else []), *(["--force"] if force else [])]
    root = _project_root()
    with local_api(wait=False):  # inherited by dvc and its stages, which wait for it while DVC starts
        code = _run_child(cmd, root)
    raise typer.Exit(code)


def _run_child(cmd: list[str], cwd: Path) -> int:
    """Run a child that handles its own interrupts: a terminal's Ctrl-C reaches it directly, so wait for it
    to stop cleanly (MLflow run KILLED, outputs whole); a SIGTERM sent to us is passed on. Returns its exit
    code, 128 + N when a signal N ended it."""
    import signal

    proc = subprocess.Popen(cmd, cwd=cwd)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 - code if code < 0 else code


@app.command()
def stage(name: str = typer.Argument(..., help=f"One of: {', '.join(STAGES)}.")):
    """Run one stage directly (no DVC bookkeeping), as a Prefect flow tracked in MLflow."""
    if name not in STAGES:
        raise WsssError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    raise typer.Exit(_run_child([sys.executable, "-m", f"stages.{name}"], _project_root()))


_CHECKS = ValidationSettings()


@app.command()
def validate(path: Path = typer.Argument(..., help="Dataset root (a drop) to validate."),
             format: str = typer.Option("auto", help="voc | coco | custom | auto."),
             classes: Optional[Path] = typer.Option(None, help="Class list (JSON or one name per line); a "
                                                    "relative path: current directory first, then the drop."),
             labels: Optional[Path] = typer.Option(None, help="Labels file (custom CSV/JSON, COCO labels); "
                                                   "found like --classes."),
             split: Optional[list[str]] = typer.Option(None, help="Splits to read (repeatable)."),
             report_dir: Optional[Path] = typer.Option(None, help="Where the report goes "
                                                       "[default: reports/drops/<drop folder name>]."),
             max_pixels: int = typer.Option(_CHECKS.max_pixels, help="Refuse images with more pixels (bombs)."),
             min_side: int = typer.Option(_CHECKS.min_side, help="Refuse images with a smaller side."),
             against: Optional[Path] = typer.Option(None, help="A prepared dataset (e.g. data/prepared): compare the "
                                                    "drop with its content store (near-copies of its val/test "
                                                    "images, label audit, drift)."),
             exif: Optional[str] = typer.Option(None, help="ignore | apply: EXIF orientation [default: data.exif]."),
             label_audit: Optional[str] = typer.Option(None, help="off | warn | quarantine | refuse "
                                                       "[default: validation.label_audit].")):
    """Validate a dataset drop with Great Expectations; exit 1 and name each defect if it fails. One line
    per finding: FAIL (refused) and WARN (converted modes, near-duplicates, likely wrong labels, drift, ...).
    Works anywhere: inside the project its params.yaml gives the rules and the label audit's CLIP."""
    from dataclasses import replace

    from wsss.settings import project_settings
    from wsss.validation import report_lines, validate_drop
    from wsss.validation.store import STORE, load_store

    settings = project_settings()
    data = replace(settings.data, exif=exif) if exif else settings.data
    rules = replace(settings.validation, label_audit=label_audit) if label_audit else settings.validation
    settings = replace(settings, data=data, validation=rules)
    reference = load_store(against / STORE) if against is not None else None
    result = validate_drop(path, format=format, classes=classes, labels=labels, splits=split,
                           report_dir=report_dir, max_pixels=max_pixels, min_side=min_side, settings=settings,
                           reference=reference)
    for line in report_lines(result.summary):
        typer.echo(line)
    raise typer.Exit(0 if result.success else 1)


_TOY = ToyworldSettings()


@app.command()
def toyworld(out: Path = typer.Argument(..., help="Output dataset root (replaced as a whole; the pipeline's own "
                                                  f"world is the toyworld stage's, {_TOY.root})."),
             num_train: int = typer.Option(_TOY.num_train), num_val: int = typer.Option(_TOY.num_val),
             image_size: int = typer.Option(_TOY.image_size), seed: int = typer.Option(_TOY.seed)):
    """Generate a toy world (VOC format) deterministically from a seed; other settings as params.yaml's."""
    from dataclasses import replace

    from wsss.toyworld import generate_from_settings

    settings = replace(_TOY, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
    stats = generate_from_settings(out, settings)
    typer.echo(f"wrote {out}: {stats}")


_TRAIN = ToyClipTraining()


@app.command("train-toy-clip")
def train_toy_clip_cmd(data_root: Path = typer.Option(Path("data/raw/toyclip-corpus"),
                                                      help="Toy-world corpus (generated there if absent)."),
                       out: Path = typer.Option(Path("assets/toyclip/wsss-toy-vit.pt"), help="fp16 checkpoint."),
                       epochs: float = typer.Option(_TRAIN.epochs), batch_size: int = typer.Option(_TRAIN.batch_size),
                       lr: float = typer.Option(_TRAIN.lr), seed: int = typer.Option(_TRAIN.seed),
                       max_steps: Optional[int] = typer.Option(None, help="Stop early (smoke runs)."),
                       threads: int = typer.Option(_TRAIN.num_threads, help="torch CPU threads.")):
    """Train the toy world's small CLIP contrastively on its captions (CPU, minutes) and save it; the
    other settings are `wsss.toyclip.settings.ToyClipTraining`'s defaults, recorded in the sidecar."""
    from dataclasses import replace

    from wsss.toyclip.train import train_toy_clip

    settings = replace(_TRAIN, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, max_steps=max_steps,
                       num_threads=threads)
    result = train_toy_clip(data_root, out, settings)
    typer.echo(f"wrote {out}: {result}")


@app.command("select-template")
def select_template_cmd(split: str = typer.Option("train", help="Split of the prepared dataset to score on."),
                        limit: int = typer.Option(500, help="Images to use (multi-label ones only count)."),
                        candidates: Optional[Path] = typer.Option(None, help="File of templates, one per line "
                                                                  "with {} for the class; default: CLIP-ES's + ImageNet's."),
                        top: int = typer.Option(10, help="Rows of the ranking to print."),
                        out: Path = typer.Option(Path("reports/templates.json"), help="Full ranking (JSON).")):
    """Rank prompt templates by sharpness on labelled images (labels only, never masks; docs/method.md §1)."""
    from itertools import islice

    from wsss.clip.model import load_clip
    from wsss.clip.text import fuse_synonyms, select_template
    from wsss.data.manifest import read_dataset
    from wsss.io import write_json
    from wsss.settings import load_settings

    settings = load_settings()
    clip, text = settings.clip, settings.text
    ds = read_dataset(settings.data.prepared).split(split)
    rows = ds.table[ds.table["labels"].map(len) >= 2]
    pairs = ((ds.load_rgb(r), [c - 1 for c in r["labels"]]) for _, r in islice(rows.iterrows(), limit))
    model, tokenizer = load_clip(clip.model, clip.pretrained, device=_device(clip.device), precision=clip.precision)
    names = fuse_synonyms(ds.vocab.names, text.synonyms)
    cands = [ln for ln in candidates.read_text().splitlines() if "{}" in ln] if candidates else None
    ranking = select_template(model, tokenizer, pairs, names, cands)
    write_json(out, [{"template": s.template, "sharpness": s.sharpness, "images": s.images} for s in ranking])
    typer.echo(f"{'rank':>4}  {'sharpness':>10}  template   ({ranking[0].images} multi-label images)")
    for i, s in enumerate(ranking[:top], 1):
        typer.echo(f"{i:>4}  {s.sharpness:>10.4f}  {s.template}")
    typer.echo(f"best: {ranking[0].template!r} (set text.templates in params.yaml); full ranking: {out}")


@app.command()
def predict(inputs: list[Path] = typer.Argument(..., help="Images and/or folders of images."),
            model: str = typer.Option("models:/wsss-segmenter@champion",
                                      help="MLflow model URI, or a segmenter file / folder (e.g. data/train)."),
            out: Path = typer.Option(Path("predictions"), help="Output folder: <name>.png + <name>_overlay.png."),
            scales: str = typer.Option("1.0", help="Comma-separated inference scales, e.g. 0.75,1,1.25."),
            flip: bool = typer.Option(False, help="Also average horizontally flipped predictions."),
            device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N.")):
    """Segment new images with the registered champion (or any segmenter): palette PNGs and overlays. Files
    that are not usable images are listed with their reason after the others are done; then exit 1."""
    from wsss.seg.infer import load_segmenter
    from wsss.seg.predict import image_files, predict_files, resolve_segmenter

    try:
        scale_list = [float(s) for s in scales.split(",")]
    except ValueError:
        raise WsssError(f"--scales: {scales!r} is not a comma-separated list of numbers") from None
    files = image_files(inputs)
    segmenter, info = load_segmenter(resolve_segmenter(model), _device(device))
    written, refused = predict_files(segmenter, info, files, out, scale_list, flip)
    typer.echo(f"wrote {len(written)} prediction(s) and overlays to {out} (classes: {', '.join(info['classes'])})")
    for reason in refused:
        typer.echo(f"refused: {reason}", err=True)
    if refused:
        typer.echo(f"error: {len(refused)} of {len(files)} file(s) refused", err=True)
        raise typer.Exit(1)


@app.command()
def serve():
    """Serve the retrain deployment (flows/retrain.py) from this process on `ops.schedule`, concurrency 1:
    it appears in the Prefect UI, where its schedule can be changed and runs triggered. Needs a Prefect
    server ($PREFECT_API_URL); stops on Ctrl-C (the schedule stays active). GPU work pools: prefect.yaml."""
    from wsss.settings import load_settings

    load_settings()  # a typo in params.yaml is one line before anything starts
    from prefect.settings import PREFECT_API_URL  # the environment or the active Prefect profile

    if not PREFECT_API_URL.value():
        raise WsssError("PREFECT_API_URL is not set: start a server (`prefect server start` or `wsss infra dev-up`, "
                        "then `source .wsss/dev/env`) so the schedule outlives this process")
    raise typer.Exit(_run_child([sys.executable, "-m", "flows.retrain", "--serve"], _project_root()))


drops_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="Dataset drops: deliver one, list the drop area, ingest the new ones now.")
app.add_typer(drops_app, name="drops")
_AREA = typer.Option(None, "--area", help="Drop area: s3://bucket/prefix or a folder [default: params.yaml "
                                          "ops.drops, else $WSSS_DROPS].")


def _drop_area(spec: str | None):
    from wsss.ops.drops import area_from
    from wsss.settings import load_settings

    area = area_from(load_settings(), spec)
    if area is None:
        raise WsssError("no drop area: pass --area, set ops.drops in params.yaml or $WSSS_DROPS")
    return area


@drops_app.command("deliver")
def drops_deliver(folder: Path = typer.Argument(..., help="The drop: images + labels (+ masks), VOC/COCO/custom."),
                  name: Optional[str] = typer.Option(None, help="Drop name [default: the folder's name]."),
                  area: Optional[str] = _AREA):
    """Put a drop into the area's incoming/ (upload to S3, or copy), then its _READY marker: the next retrain
    takes it only once complete."""
    if not folder.is_dir():
        raise WsssError(f"{folder}: not a folder")
    target = _drop_area(area)
    files = target.deliver(folder, name or folder.resolve().name)
    typer.echo(f"delivered {files} file(s) to {target}/incoming/{name or folder.resolve().name}")


@drops_app.command("ls")
def drops_ls(area: Optional[str] = _AREA, findings: int = typer.Option(5, help="Finding lines shown per drop.")):
    """The drops waiting (incoming), merged (accepted), refused (quarantine, each with its report) and still
    uploading (in incoming/ without their _READY marker: left alone). Under each merged or refused drop, its
    validation findings (FAIL/WARN lines, images held back by the label audit), from its report."""
    from wsss.ops.drops import ACCEPTED, QUARANTINE

    target = _drop_area(area)
    rows = {"incoming": target.incoming(), ACCEPTED: target.names(ACCEPTED), QUARANTINE: target.names(QUARANTINE),
            "uploading": target.uploading()}
    for place, names in rows.items():
        typer.echo(f"{place:10} {len(names):3}  {', '.join(names)}")
        if place in (ACCEPTED, QUARANTINE):
            for name in names:
                for line in _drop_findings(target.report(place, name), findings):
                    typer.echo(f"{'':16}{name}: {line}")


def _drop_findings(summary: dict | None, limit: int) -> list[str]:
    """A drop report's finding lines (failures first), at most `limit`, then how many more."""
    if not summary:
        return []
    audit = summary.get("label_audit") or {}
    lines = list(summary.get("verdicts", [])) + list(summary.get("warnings", []))
    if audit.get("images_flagged") and audit.get("policy") == "quarantine" and summary.get("success"):
        lines.append(f"{audit['images_flagged']} image(s) held back by the label audit")
    if not lines:
        return ["PASSED, no findings"]
    return lines[:limit] + ([f"... and {len(lines) - limit} more (see its report)"] if len(lines) > limit else [])


@drops_app.command("ingest")
def drops_ingest(area: Optional[str] = _AREA):
    """Ingest the new drops now, without retraining: validate each, merge (dvc add, push, commit) or
    quarantine it. Exit 1 when a drop could not be processed (it stays in incoming/)."""
    from wsss.ops.ingest import ingest
    from wsss.ops.lock import LOCK, workspace_lock
    from wsss.settings import load_settings

    from wsss.ops.s3 import bound_retries

    root = _project_root()
    with workspace_lock(root) as mine:
        if not mine:
            raise WsssError(f"{root / LOCK}: a retrain or another ingest holds this workspace; try again later")
        settings = load_settings()
        bound_retries(settings.ops.retries)
        outcomes = ingest(_drop_area(area), settings, root, log=typer.echo)
    raise typer.Exit(1 if any(o.status == "error" for o in outcomes) else 0)


tracking_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                           help="MLflow runs kept locally while the tracking server was down: list, send.")
app.add_typer(tracking_app, name="tracking")


@tracking_app.command("sync")
def tracking_sync(uri: Optional[str] = typer.Option(None, help="Tracking server [default: tracking.uri in "
                                                    "params.yaml, else $MLFLOW_TRACKING_URI].")):
    """Send the runs buffered during an outage (.wsss/tracking) to the tracking server, as they would have
    been; then register and gate a segmenter whose registration was pending. Safe to repeat or interrupt."""
    from wsss.seg.pending import sync_and_register
    from wsss.settings import load_settings

    _project_root()
    tracking = load_settings().tracking
    for line in sync_and_register(uri or tracking.uri, tracking, log=typer.echo):
        typer.echo(line)


@tracking_app.command("ls")
def tracking_ls():
    """The buffered runs not yet sent, with their server and status."""
    from wsss.tracking import buffer

    _project_root()
    if not buffer.exists():
        typer.echo("no buffered runs")
        return
    client = buffer.open_buffer()
    rows = [r for exp in client.search_experiments() for r in client.search_runs([exp.experiment_id], max_results=1000)
            if "dvc.stage" in r.data.tags and buffer.SYNCED_TAG not in r.data.tags]
    for r in sorted(rows, key=lambda r: r.info.start_time):
        typer.echo(f"{r.info.run_name:30} {r.info.status:9} → {r.data.tags.get(buffer.SERVER_TAG, '?')}")
    typer.echo(f"{len(rows)} run(s) to sync (`wsss tracking sync`)")


data_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                       help="Public datasets: download and lay them out as the readers expect.")
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(dataset: str = typer.Argument(..., help="voc (VOC 2012 + SBD train_aug) | coco (COCO 2014)."),
               root: Path = typer.Argument(..., help="Where the data goes (voc: ROOT/VOCdevkit/VOC2012)."),
               mirror: Optional[list[str]] = typer.Option(None, "--mirror", help="NAME=URL: fetch archive NAME "
                                                          "(voc, sbd; train2014, val2014, annotations2014) from "
                                                          "URL (ending in / : a folder with the same file name)."),
               split: Optional[list[str]] = typer.Option(None, "--split", "--splits", help="Splits to get "
                                                         "(repeatable; voc: train, val, train_aug; coco: train, val; "
                                                         "default: all)."),
               downloads: Optional[Path] = typer.Option(None, help="Where archives are kept "
                                                        "(default: ROOT/downloads).")):
    """Download (resumable, checksummed), extract safely and build what the readers need: VOC's
    `train_aug` from SBD, or COCO's VOC-style class masks and image labels. A rerun finishes what is left."""
    from wsss.data.fetch import datasets
    from wsss.data.fetch.archives import parse_mirrors

    if dataset == "voc":
        splits = split or datasets.VOC_SPLITS
        out = datasets.fetch_voc(root, splits, parse_mirrors(mirror, datasets.VOC_ARCHIVES), downloads)
        first = "train_aug" if "train_aug" in splits else "train"
        typer.echo(f"VOC ready: data.root: {out}, data.format: voc, data.splits: [{first}, val]")
    elif dataset == "coco":
        out = datasets.fetch_coco(root, split or tuple(datasets.COCO_SPLITS),
                                  parse_mirrors(mirror, datasets.COCO_ARCHIVES), downloads)
        typer.echo(f"COCO ready: data.root: {out}, data.format: coco, data.labels: image_labels.json")
    else:
        raise WsssError(f"unknown dataset {dataset!r} (use voc or coco)")


def _device(spec: str | None) -> str:
    from wsss.device import pick_device

    return pick_device(spec)


def main() -> None:
    """Entry point: user errors become one line on stderr, exit code 2."""
    apply_prefect_defaults()
    try:
        app()
    except WsssError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
