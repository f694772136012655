"""The mutation list stays applicable: every planted bug's text occurs exactly once in its file
and names tests that exist, so `make mutation` cannot silently test nothing."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_mutation_applies_once_and_names_existing_tests():
    mutations = yaml.safe_load((ROOT / "tests" / "mutations.yaml").read_text())
    assert len(mutations) >= 25
    assert len({m["id"] for m in mutations}) == len(mutations)
    for m in mutations:
        assert (ROOT / m["file"]).read_text().count(m["find"]) == 1, m["id"]
        assert m["find"] != m["replace"] and m["why"] and m["tests"], m["id"]
        for t in m["tests"]:
            path = t.split("::")[0].split()[0]
            assert (ROOT / path).exists(), (m["id"], path)
            if "::" in t:
                name = t.split("::")[1].split("[")[0].split()[0]
                assert f"def {name}(" in (ROOT / path).read_text(), (m["id"], name)
