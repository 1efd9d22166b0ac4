"""The Dockerfile without docker: parsed into its stages and instructions, it builds the project's
wheel and installs it with requirements.txt as constraints on the official image of the Airflow
version requirements.txt pins, with the celery provider at requirements.txt's version, and bakes in
the DAGs and plugins; .dockerignore lets in exactly what the build copies. Each check is also shown
catching a broken copy."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .composefile import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def parse(text: str) -> list[Stage]:
    """Instructions with their continuation lines joined, comments dropped, grouped by FROM."""
    stages: list[Stage] = []
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        instruction, _, args = line.strip().partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            words = args.split()
            stages.append(Stage(base=words[0], name=words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        else:
            stages[-1].instructions.append((instruction, re.sub(r"\s+", " ", args)))
    return stages


def requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile's text, against requirements.txt."""
    found = []
    pins = requirements()
    stages = parse(text)
    airflow = pins["apache-airflow"]
    for stage in stages:
        match = re.fullmatch(r"apache/airflow:(?P<version>[0-9.]+)-python(?P<python>[0-9.]+)", stage.base)
        if not match:
            found.append(f"FROM {stage.base}: not the official image with a pinned version")
        elif match["version"] != airflow:
            found.append(f"FROM {stage.base}: requirements.txt pins apache-airflow {airflow}")
        elif match["python"] != "3.11":
            found.append(f"FROM {stage.base}: the project runs Python 3.11")
    final = stages[-1]
    builds = [s for s in stages[:-1] if any(re.search(r"\bpip wheel\b.* \.$", run) for run in s.args("RUN"))]
    if not builds:
        found.append("no stage builds the project's wheel (pip wheel .)")
    copied = " ".join(final.args("COPY"))
    if not re.search(r"--from=\S+ .*/\S*dist/", copied):
        found.append("the wheel is not copied from the build stage")
    installs = [run for run in final.args("RUN") if re.search(r"\bpip install\b", run)]
    if len(installs) != 1:
        found.append(f"expected one pip install in the image, found {len(installs)}")
        return found
    words = shlex.split(installs[0].split("&&")[0])
    constraint = next((words[i + 1] for i, w in enumerate(words) if w in ("--constraint", "-c")), None)
    constraint = constraint or next((w.split("=", 1)[1] for w in words if w.startswith("--constraint=")), None)
    if constraint is None:
        found.append("pip install without --constraint")
    elif not re.search(rf"COPY \S* ?requirements\.txt {re.escape(constraint)}\b", " ".join(
            f"COPY {a}" for a in final.args("COPY"))):
        found.append(f"the constraints file {constraint} is not requirements.txt")
    if not any(".whl" in w for w in words):
        found.append("the project's wheel is not installed")
    named = {}
    for word in words:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[a-z,]+\])?==([^\s]+)", word)
        if match:
            named[match[1].lower()] = match[3]
    for package, version in named.items():
        if pins.get(package) != version:
            found.append(f"{package}=={version}, requirements.txt: {pins.get(package)}")
    for word in words[2:]:
        if word.startswith("-") or word == constraint or ".whl" in word:
            continue
        package = re.split(r"[\[=<>~!]", word)[0].lower()
        if package not in pins:
            found.append(f"{package}: not in requirements.txt, so nothing pins it")
    for package in ("apache-airflow", "apache-airflow-providers-celery"):
        if package not in named:
            found.append(f"{package} is not pinned in the pip install")
    for folder in ("dags", "plugins"):
        if not re.search(rf"COPY (--chown=\S+ )?{folder}/ /opt/airflow/{folder}/", " ".join(
                f"COPY {a}" for a in final.args("COPY"))):
            found.append(f"{folder}/ is not copied to /opt/airflow/{folder}/")
    if any("_PIP_ADDITIONAL_REQUIREMENTS" in args for stage in stages for _, args in stage.instructions):
        found.append("_PIP_ADDITIONAL_REQUIREMENTS")
    return found


def test_the_dockerfile_builds_the_wheel_and_installs_it_with_the_tested_pins():
    assert problems(DOCKERFILE.read_text()) == []
    stages = parse(DOCKERFILE.read_text())
    assert [s.name for s in stages] == ["wheel", None]
    assert requirements()["apache-airflow-providers-celery"] in DOCKERFILE.read_text()


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda t: t.replace("--constraint /tmp/csl/requirements.txt ", ""), "pip install without --constraint"),
    (lambda t: t.replace("FROM apache/airflow:3.3.2-python3.11\n", "FROM apache/airflow:3.3.1-python3.11\n"),
     "FROM apache/airflow:3.3.1-python3.11: requirements.txt pins apache-airflow 3.3.2"),
    (lambda t: t.replace("apache-airflow-providers-celery==3.26.0", "apache-airflow-providers-celery==3.25.0"),
     "apache-airflow-providers-celery==3.25.0, requirements.txt: 3.26.0"),
    (lambda t: t.replace('"apache-airflow-providers-celery==3.26.0"', "apache-airflow-providers-celery"),
     "apache-airflow-providers-celery is not pinned in the pip install"),
    (lambda t: t.replace("COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/\n", ""),
     "plugins/ is not copied to /opt/airflow/plugins/"),
    (lambda t: t.replace("FROM apache/airflow:3.3.2-python3.11 AS wheel", "FROM apache/airflow:latest AS wheel"),
     "FROM apache/airflow:latest: not the official image with a pinned version"),
    (lambda t: t + "ENV _PIP_ADDITIONAL_REQUIREMENTS=psycopg\n", "_PIP_ADDITIONAL_REQUIREMENTS"),
    (lambda t: t.replace("        flower \\\n", "        flower \\\n        left-pad \\\n"),
     "left-pad: not in requirements.txt, so nothing pins it"),
])
def test_a_broken_dockerfile_is_caught(edit, problem):
    text = DOCKERFILE.read_text()
    assert edit(text) != text, "the edit no longer applies"
    assert problem in problems(edit(text))


def test_the_version_pins_match_requirements_txt():
    pins = requirements()
    assert pins["apache-airflow"] == "3.3.2" and pins["apache-airflow-providers-celery"]
    words = " ".join(parse(DOCKERFILE.read_text())[-1].args("RUN"))
    assert f'"apache-airflow=={pins["apache-airflow"]}"' in words
    assert f'"apache-airflow-providers-celery=={pins["apache-airflow-providers-celery"]}"' in words


# --- .dockerignore ----------------------------------------------------------------------------
def ignore_patterns(text: str) -> list[tuple[bool, re.Pattern]]:
    """Docker's rules: in order, the last matching pattern wins; ``!`` re-includes; a pattern
    matches a path or any of its parent folders; ``**`` any number of folders, ``*`` within one."""
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        patterns.append((keep, re.compile(regex)))
    return patterns


def in_context(path: str, patterns) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for keep, regex in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            included = keep
    return included


def tracked_files() -> list[str]:
    done = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_build_context_holds_what_the_build_copies_and_nothing_else():
    patterns = ignore_patterns(DOCKERIGNORE.read_text())
    files = tracked_files()
    sent = {f for f in files if in_context(f, patterns)}
    needed = {"pyproject.toml", "requirements.txt", "stack/airflow/pools.json"}
    assert needed <= sent
    for folder in ("include/csl/", "include/sql/", "dags/", "plugins/"):
        tracked = {f for f in files if f.startswith(folder)}
        assert tracked and tracked <= sent, folder
    assert not {f for f in sent if f.startswith(("tests/", "bench/", "scripts/", ".ci/", "stack/compose/"))}
    assert not in_context(".env", patterns) and not in_context(".local/x/stack.json", patterns)
    assert not in_context("plugins/csl_airflow/__pycache__/x.pyc", patterns)
    # every COPY source of the Dockerfile is in the context
    for stage in parse(DOCKERFILE.read_text()):
        for args in stage.args("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if "--from=" not in args:
                for source in words[:-1]:
                    assert in_context(source.rstrip("/"), patterns), source
    # the check does notice a file left out
    assert not in_context("requirements.txt", ignore_patterns(DOCKERIGNORE.read_text() + "\nrequirements.txt\n"))


def test_the_sql_link_stays_inside_what_the_wheel_stage_copies():
    """include/csl/sql links to include/sql: COPY include/ keeps the link and its target together."""
    link = REPO / "include" / "csl" / "sql"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve().is_relative_to(REPO / "include")
    wheel_stage = parse(DOCKERFILE.read_text())[0]
    assert any(args.endswith("include/ include/") for args in wheel_stage.args("COPY"))


def test_the_wheel_stage_builds_the_wheel_from_only_what_it_copies(tmp_path):
    """The wheel stage's COPY sources, as the build context has them (.dockerignore applied), are
    enough to build the wheel, SQL files included: nothing else of the checkout is needed."""
    patterns = ignore_patterns(DOCKERIGNORE.read_text())
    context = tmp_path / "context"
    for args in parse(DOCKERFILE.read_text())[0].args("COPY"):
        sources = [w for w in args.split() if not w.startswith("--")][:-1]
        for source in sources:
            for path in [REPO / source, *(REPO / source).rglob("*")] if (REPO / source).is_dir() else [REPO / source]:
                relative = path.relative_to(REPO).as_posix()
                if not in_context(relative, patterns) or path.is_dir() and not path.is_symlink():
                    continue
                target = context / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink():
                    target.symlink_to(path.readlink())
                else:
                    shutil.copyfile(path, target)
    uv = Path(sys.executable).parent / "uv"
    built = subprocess.run([str(uv), "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(context)],
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("csl_pipelines-*.whl"))
    shipped = {n.removeprefix("csl/sql/") for n in zipfile.ZipFile(wheel).namelist() if n.startswith("csl/sql/")}
    expected = {p.relative_to(REPO / "include" / "sql").as_posix() for p in (REPO / "include" / "sql").rglob("*.sql")}
    assert shipped == expected and expected
