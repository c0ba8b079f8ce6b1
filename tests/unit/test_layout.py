"""The package's shape stays walkable: what may import what, and how big a module may grow.

The dependency rule, by stage (a folder of gateway/, or the kernel modules beside them):

    kernel         errors, messages, supervise,      -> kernel
                   credentials, timeutil, pacing,
                   receipts
    settings                                          -> kernel
    observability                                     -> kernel, settings
    broker                                            -> kernel, settings, observability
    journal                                           -> kernel, settings, observability
    intake                                            -> kernel, settings, observability, broker, journal
    delivery                                          -> kernel, settings, observability, broker, journal
    operations                                        -> kernel, settings, observability, broker, journal, delivery
    inbox                                             -> kernel, settings, observability, broker, journal, intake
    runtime                                           -> everything but tools and cli
    tools                                             -> everything but cli
    cli, __main__                                     -> everything

Every import counts, the lazy ones inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
KERNEL = {"errors", "messages", "supervise", "credentials", "timeutil", "pacing", "receipts", "progress"}
BASE = {"kernel"}
ALLOWED: dict[str, set[str]] = {
    "kernel": BASE,
    "settings": BASE | {"settings"},
    "observability": BASE | {"settings", "observability"},
    "broker": BASE | {"settings", "observability", "broker"},
    "journal": BASE | {"settings", "observability", "journal"},
    "intake": BASE | {"settings", "observability", "broker", "journal", "intake"},
    "delivery": BASE | {"settings", "observability", "broker", "journal", "delivery"},
    "operations": BASE | {"settings", "observability", "broker", "journal", "delivery", "operations"},
    "inbox": BASE | {"settings", "observability", "broker", "journal", "intake", "inbox"},
}
ALLOWED["runtime"] = set().union(*ALLOWED.values()) | {"runtime"}
ALLOWED["tools"] = ALLOWED["runtime"] | {"tools"}
ALLOWED["cli"] = ALLOWED["tools"] | {"cli"}
MAX_LINES = 450


def stage_of(module: str) -> str:
    """gateway.intake.dedup.sqlite -> intake; gateway.errors -> kernel; gateway.cli -> cli."""
    parts = module.split(".")
    assert parts[0] == "gateway", module
    if len(parts) == 1:
        return "kernel"
    head = parts[1]
    if head in KERNEL:
        return "kernel"
    if head in ("cli", "__main__"):
        return "cli"
    return head


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every gateway module imported anywhere in `source` (relative imports resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "gateway"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "gateway":
                continue
            found.add(target)
            # `from gateway import tools` / `from gateway.intake import rules` name modules too
            for alias in node.names:
                sub = PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")
                if sub.is_dir() or sub.with_suffix(".py").is_file():
                    found.add(f"{target}.{alias.name}")
    return found


def violations(files: dict[str, tuple[str, bool]]) -> list[str]:
    out = []
    for module, (source, is_package) in sorted(files.items()):
        mine = stage_of(module)
        for target in sorted(imported_modules(source, module, is_package)):
            theirs = stage_of(target)
            if theirs not in ALLOWED[mine]:
                out.append(f"{module} ({mine}) imports {target} ({theirs})")
    return out


def package_files() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in PACKAGE.rglob("*.py")}


def test_every_stage_imports_only_what_the_rule_allows() -> None:
    assert not violations(package_files())


def test_the_rule_catches_a_forbidden_import_even_a_lazy_one() -> None:
    files = {
        "gateway.intake.handler": ("def f():\n    from gateway.delivery.worker import DestinationWorker\n", False),
        "gateway.delivery.worker": ("from gateway.operations import replay\n", False),
        "gateway.broker.publisher": ("from ..intake import routing\n", False),
        "gateway.operations.replay": ("import gateway.tools.simulator\n", False),
        "gateway.errors": ("from gateway.settings.config import Settings\n", False),
    }
    assert violations(files) == [
        "gateway.broker.publisher (broker) imports gateway.intake (intake)",
        "gateway.broker.publisher (broker) imports gateway.intake.routing (intake)",
        "gateway.delivery.worker (delivery) imports gateway.operations (operations)",
        "gateway.delivery.worker (delivery) imports gateway.operations.replay (operations)",
        "gateway.errors (kernel) imports gateway.settings.config (settings)",
        "gateway.intake.handler (intake) imports gateway.delivery.worker (delivery)",
        "gateway.operations.replay (operations) imports gateway.tools.simulator (tools)",
    ]


def test_every_stage_folder_says_what_it_owns_and_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "Owns" in doc, f"{init}: say what this stage owns"
        assert "import" in doc, f"{init}: say what it may import"
        assert init.parent.name in ALLOWED, f"{init.parent.name}: a stage the rule above does not know"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small_enough_to_read(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines < MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by idea"
