"""Image-label audit: which image labels are likely wrong, judged by the pipeline's own CLIP.

Weak supervision lives on the image labels: a wrong one becomes a confidently wrong pseudo mask. Each image
is scored against every class (`wsss.clip.scores`: the CAM stage's image embedding and text side); then
confident learning (cleanlab's multi-label label-issue finder, `find_multilabel_issues_per_class`) learns
one threshold per class from the dataset itself (the mean probability CLIP gives that class's labelled
images) and flags, per class, the labels that disagree with it:
- a named label CLIP finds absent (probability below what the class's true images get),
- a missing label CLIP finds clearly present.
A class is audited only with at least `MIN_PER_CLASS` labelled and unlabelled images (thresholds are
learned, not guessed), and only when the whole set has `validation.audit_min_images` images. Ground-truth
masks are never read. Measured on the toy world: benchmarks/label_audit.py (benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PER_CLASS = 5


@dataclass(frozen=True)
class Finding:
    row: int  # row of the audited set
    label: int  # class id 1..C
    kind: str  # "absent": labelled, CLIP finds it absent | "missing": unlabelled, CLIP finds it present
    score: float  # CLIP's probability of the class
    suggestion: int | None  # the class id CLIP suggests instead (absent), None when it suggests none

    def text(self, names) -> str:
        name = names[self.label - 1]
        if self.kind == "missing":
            return f"{name} not labelled but CLIP finds it (p {self.score:.2f}): add {name}?"
        instead = f"{names[self.suggestion - 1]} instead?" if self.suggestion else "remove it?"
        return f"label {name} looks wrong (CLIP p {self.score:.2f}): {instead}"


@dataclass
class AuditResult:
    findings: list[Finding]
    audited_classes: list[int]  # class ids with learned thresholds
    skipped: str = ""  # why nothing (or some classes) could be audited

    def by_row(self) -> dict[int, list[Finding]]:
        out: dict[int, list[Finding]] = {}
        for f in self.findings:
            out.setdefault(f.row, []).append(f)
        return out


def multi_hot(label_sets, num_classes: int) -> np.ndarray:
    """Tuples of class ids 1..C → [N, C] uint8."""
    out = np.zeros((len(label_sets), num_classes), np.uint8)
    for i, labels in enumerate(label_sets):
        ids = [int(c) - 1 for c in labels if 1 <= int(c) <= num_classes]
        out[i, ids] = 1
    return out


def audit_labels(labels: np.ndarray, probs: np.ndarray, min_images: int) -> AuditResult:
    """Findings for every image of the set (labels [N, C] multi-hot, CLIP probabilities [N, C]); the
    caller keeps the rows it reports (a drop's, with the dataset's rows lending their statistics)."""
    n, c = labels.shape
    if n < min_images:
        return AuditResult([], [], f"{n} images, fewer than validation.audit_min_images ({min_images})")
    positives = labels.sum(axis=0)
    audited = [k for k in range(c) if positives[k] >= MIN_PER_CLASS and n - positives[k] >= MIN_PER_CLASS]
    skipped = [k + 1 for k in range(c) if k not in audited]
    note = f"classes {skipped} not audited (fewer than {MIN_PER_CLASS} images with and without them)" if skipped else ""
    if not audited:
        return AuditResult([], [], note)
    issues = _issues_per_class(labels[:, audited], probs[:, audited])
    findings = []
    for row, col in zip(*np.nonzero(issues)):
        k = audited[col]
        labelled = bool(labels[row, k])
        suggestion = None
        if labelled:  # what CLIP would name instead: a flagged missing class, else the likeliest unlabelled one
            missing = [audited[j] for j in np.flatnonzero(issues[row]) if not labels[row, audited[j]]]
            pool = missing or [j for j in range(c) if not labels[row, j]]
            if pool:
                suggestion = int(max(pool, key=lambda j: probs[row, j])) + 1
        findings.append(Finding(int(row), k + 1, "absent" if labelled else "missing", float(probs[row, k]),
                                suggestion))
    return AuditResult(findings, [k + 1 for k in audited], note)


def _issues_per_class(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's confident learning, one binary problem per class → [N, K] booleans."""
    import warnings

    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

    label_lists = [list(np.flatnonzero(r)) for r in labels]
    p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        issues = find_multilabel_issues_per_class(label_lists, p, filter_by="confident_learning")
    issues = np.stack(issues, axis=1) if isinstance(issues, list) else np.asarray(issues)
    return issues.astype(bool)
