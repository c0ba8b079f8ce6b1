"""The rules are one module per message family; each family's RULES reaches `rules.check`."""

from __future__ import annotations

import pkgutil
from importlib import import_module

from gateway.intake import rules


def test_every_family_module_is_registered_and_no_root_is_claimed_twice() -> None:
    families = [m.name for m in pkgutil.iter_modules(rules.__path__) if m.name != "checker"]
    assert sorted(families) == ["asean", "cargo", "common", "customs"]
    roots: list[str] = []
    for name in families:
        family = import_module(f"gateway.intake.rules.{name}").RULES
        assert family, f"rules/{name}.py has an empty RULES"
        assert all(rules.RULES[root] is rule for root, rule in family.items()), f"rules/{name}.py is not registered"
        roots += family
    assert sorted(roots) == sorted(rules.RULES)
