"""deploy/docker: no image can be built here, so the container files are checked by
reading them: pinned base images, a non-root user, entrypoints naming modules that
exist, no torch in the slim image, the runner's base torch = pyproject's pin."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "deploy" / "docker"
SERVICE, RUNNER = DOCKER / "service.Dockerfile", DOCKER / "runner.Dockerfile"
HEAVY = ("torch", "torchvision", "timm", "segmentation", "onnx", "[runner]")


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> list[Stage]:
    """Stages of a Dockerfile with ARG defaults substituted in FROM; line continuations
    joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            stages.append(Stage(image))
        else:
            stages[-1].instructions.append((word, rest.strip()))
    return stages


def last(stage: Stage, word: str) -> str:
    return [rest for w, rest in stage.instructions if w == word][-1]


def runs(stage: Stage) -> str:
    return " ".join(rest for w, rest in stage.instructions if w == "RUN")


@pytest.mark.parametrize("path", [SERVICE, RUNNER], ids=lambda p: p.name)
def test_base_images_are_pinned(path: Path) -> None:
    for stage in parse(path):
        _, _, tag = stage.base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), stage.base


@pytest.mark.parametrize("path", [SERVICE, RUNNER], ids=lambda p: p.name)
def test_final_stage_runs_as_a_non_root_user(path: Path) -> None:
    final = parse(path)[-1]
    user = last(final, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0
    words = [w for w, _ in final.instructions]
    assert max(i for i, w in enumerate(words) if w == "RUN") < words.index("USER")
    assert f"--uid {user}" in runs(final)


@pytest.mark.parametrize("path", [SERVICE, RUNNER], ids=lambda p: p.name)
def test_the_wheel_has_every_package(path: Path) -> None:
    """Every package pyproject ships is copied into the build stage, and exists."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    build = parse(path)[0]
    copied = {src.rstrip("/") for w, rest in build.instructions
              if w == "COPY" and not rest.startswith("--from")
              for src in shlex.split(rest)[:-1]}
    assert packages <= copied and {"pyproject.toml", "README.md"} <= copied
    assert all((ROOT / c).exists() for c in copied)
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert not copied & set(ignored)
    assert {".venv", ".git", ".radtrain", "tests"} <= set(ignored)


def test_service_image_is_the_base_install_and_runs_gateway_or_handlers() -> None:
    final = parse(SERVICE)[-1]
    install = runs(final)
    assert "pip install /wheels/radtrain-" in install
    assert not any(h in install for h in HEAVY), install
    assert shlex.split(last(final, "ENTRYPOINT"))[0].startswith("[")
    entry = [w.strip('[]",') for w in last(final, "ENTRYPOINT").split()]
    cmd = [w.strip('[]",') for w in last(final, "CMD").split()]
    assert entry == ["python", "-m"] and cmd == ["gateway"]
    for module in ("gateway", "handlers"):
        assert (ROOT / module / "__main__.py").is_file()


def test_runner_image_is_cuda_torch_of_the_pinned_version() -> None:
    stages = parse(RUNNER)
    final = stages[-1]
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["runner"]
    (torch,) = [p.split("==")[1] for p in pins if p.startswith("torch==")]
    for stage in stages:
        repo, _, tag = stage.base.partition(":")
        assert repo == "pytorch/pytorch" and tag.startswith(f"{torch}-cuda")
        assert tag.endswith("-runtime")
    assert "[runner]" in runs(final)
    entry = [w.strip('[]",') for w in last(final, "ENTRYPOINT").split()]
    assert entry == ["python", "-m", "runner"]
    assert (ROOT / "runner" / "__main__.py").is_file()
