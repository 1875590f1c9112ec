"""Pieces of the client package tests: the wheel in a fresh venv, Node packages kept in the
pytest cache, and buf generate with the repository's templates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.harness import ROOT

BUF = Path(sys.executable).parent / "buf"
# @grpc/* for the smoke client, protoc-gen-es for buf.gen.ts.yaml.
NODE_PACKAGES = {
    "@grpc/grpc-js": "1.14.7",
    "@grpc/proto-loader": "0.8.1",
    "@bufbuild/protoc-gen-es": "2.17.0",
}


@dataclass
class ClientVenv:
    wheel: Path
    python: Path
    workdir: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # Outside the repository and without PYTHONPATH: only what the venv has is importable.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.run(
            [str(self.python), *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def build_client_venv(folder: Path) -> ClientVenv:
    """The wheel built from clients/python, installed alone into a new venv in `folder`."""
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(folder)]
    subprocess.run([*build, str(ROOT / "clients" / "python")], check=True, timeout=300)
    (wheel,) = folder.glob("stylebase_client-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=120)
    python = folder / "venv" / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", str(wheel)]
    subprocess.run(install, check=True, timeout=300)
    return ClientVenv(wheel, python, folder)


def install_node_packages(npm: str, folder: Path) -> Path:
    """NODE_PACKAGES in folder/node_modules, installed only when a version differs."""
    modules = folder / "node_modules"

    def installed(package: str) -> str | None:
        manifest = modules / package / "package.json"
        version: str | None = (
            json.loads(manifest.read_text())["version"] if manifest.exists() else None
        )
        return version

    if any(installed(p) != v for p, v in NODE_PACKAGES.items()):
        (folder / "package.json").write_text('{"private": true}\n')
        specs = [f"{p}@{v}" for p, v in NODE_PACKAGES.items()]
        command = [npm, "install", "--no-audit", "--no-fund", "--silent", *specs]
        subprocess.run(command, cwd=folder, check=True, timeout=300)
    return modules


def buf_generate(template: str, out: Path, path_prefix: Path | None = None) -> Path:
    """Runs `buf generate --template <template>` with its outputs under `out`; the folder
    the template names (build/gen/<language>)."""
    env = dict(os.environ)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    ran = subprocess.run(
        [str(BUF), "generate", "--template", template, "-o", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    return out / "build" / "gen"
