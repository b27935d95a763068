"""No copyleft dependency: every package pinned in requirements.lock is read from its installed metadata
(License-Expression, else the License field and the License :: classifiers) and the test fails when one is
under the GPL or AGPL. The project itself is Apache-2.0 (LICENSE, pyproject's `license`).

Rules (docs/real-data.md's licence note repeats them):
- GPL / AGPL (any version) fail; so does a package that declares no licence at all (nothing to judge).
- LGPL and MPL / EPL (weak, file- or library-level copyleft) pass: the project imports them unmodified, which
  they allow from code under any licence.
- A dual licence in an SPDX expression ("Apache-2.0 OR GPL-2.0-or-later") passes when one alternative is not
  GPL/AGPL: the project takes that one. "A AND GPL" fails.
- The same holds for an SPDX expression written in the older License field (asyncssh: "EPL-2.0 OR GPL-2.0-or-later").
- Free-text fields and classifiers cannot say OR from AND: a GPL/AGPL mention there fails unless the package
  is in ALLOWED, which names each exception and why (read from its own licence files).
"""

from __future__ import annotations

import importlib.metadata as md
import re

import pytest

from conftest import REPO

ALLOWED = {
    "grandalf": "dual-licensed 'GPLv2 | EPLv1' (its License field; the classifier names only one): used under EPL-1.0",
    "pygit2": "GPLv2 with the linking exception: any program may link and import it without the GPL applying",
    "text-unidecode": "dual-licensed Artistic License or GPL (its classifiers), as Perl: used under the Artistic License",
    "cuda-toolkit": "NVIDIA's CUDA runtime (via torch) under NVIDIA's EULA: proprietary redistributable, no copyleft; "
                    "its metadata declares no licence",
    "huey": "MIT (its LICENSE file; its metadata declares no licence)",
}
COPYLEFT = re.compile(r"\bA?GPL|GNU (Affero )?General Public", re.I)
WEAK = re.compile(r"LGPL|Lesser General Public|Library General Public", re.I)


def locked() -> list[str]:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    return [ln.split("==")[0].strip() for ln in lines if re.match(r"^[A-Za-z0-9]", ln) and "==" in ln]


def strong_copyleft(text: str) -> bool:
    return bool(COPYLEFT.search(text)) and not WEAK.search(text)


def expression_verdict(expr: str) -> bool:
    """An SPDX expression is copyleft when every OR-alternative holds a GPL/AGPL term."""
    alternatives = re.split(r"\s+OR\s+", expr.strip().strip("()"))
    return all(any(strong_copyleft(term) for term in re.split(r"\s+AND\s+|\s+WITH\s+", alt)) for alt in alternatives)


def licence_problem(name: str) -> str | None:
    """Why this installed distribution is not acceptable, or None."""
    meta = md.metadata(name)
    expr = meta.get("License-Expression") or ""
    if expr:
        return f"{name}: {expr}" if expression_verdict(expr) else None
    field = (meta.get("License") or "").splitlines()[0] if meta.get("License") else ""
    if re.fullmatch(r"[\w.+-]+(\s+(OR|AND|WITH)\s+[\w.+-]+)+", field.strip()):  # an SPDX expression in License
        return f"{name}: {field}" if expression_verdict(field) else None
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    texts = [field] + classifiers
    if any(strong_copyleft(t) for t in texts):
        return f"{name}: {' / '.join(filter(None, texts))}"
    if not field.strip() and not classifiers:
        return f"{name}: declares no licence"
    return None


def test_the_project_is_apache_2():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()


def test_no_locked_dependency_is_gpl_or_agpl():
    names = locked()
    assert len(names) > 100 and "cleanlab" in names and "imagehash" in names
    missing, problems = [], []
    for name in names:
        try:
            problem = licence_problem(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        if problem and md.metadata(name)["Name"].lower().replace("_", "-") not in ALLOWED:
            problems.append(problem)
    assert not missing, f"pinned but not installed (run `bash scripts/run.sh setup`): {missing}"
    assert not problems, "copyleft or unlicensed dependencies (add a reasoned exception to ALLOWED only if "\
                         f"another licence applies): {problems}"
    stale = sorted(set(ALLOWED) - {n.lower() for n in names})
    assert not stale, f"ALLOWED names packages no longer locked: {stale}"


@pytest.mark.parametrize("expr, copyleft", [
    ("MIT", False), ("GPL-3.0-only", True), ("AGPL-3.0-or-later", True), ("LGPL-2.1-or-later", False),
    ("Apache-2.0 OR GPL-2.0-or-later", False), ("MIT AND GPL-2.0-only", True), ("EPL-2.0 OR GPL-2.0-or-later", False),
])
def test_expression_rules(expr, copyleft):
    assert expression_verdict(expr) is copyleft
