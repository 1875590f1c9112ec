"""Puts the generated `stylebase` package into the wheel and the sdist, from the repository's
gen/ (written by `make generate`) or, when building from an sdist, from the copy it carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

HERE = Path(__file__).resolve().parent


class GeneratedCode(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        for source in (HERE.parent.parent / "gen" / "stylebase", HERE / "gen" / "stylebase"):
            if (source / "__init__.py").exists():
                break
        else:
            raise RuntimeError("no generated code: run 'make generate' at the repository root")
        target = "stylebase" if self.target_name == "wheel" else "gen/stylebase"
        build_data["force_include"][str(source)] = target
