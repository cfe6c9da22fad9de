"""Regenerate wyckoff_alternatives.json: the Wyckoff-letter permutations of each space group.

The Euclidean normalizer of a space group maps the group onto itself while permuting its
Wyckoff positions (rock salt is Na 4a + Cl 4b or Na 4b + Cl 4a). The canonical SCOPE variant
picks the smallest assignment over these permutations. pyxtal tabulates them (from the
Bilbao Crystallographic Server); it is needed only to rebuild this table, not at run time:

    python -m tokenizer.tables.build_wyckoff_alternatives
"""

from __future__ import annotations

import json
from pathlib import Path

TABLE = Path(__file__).with_name("wyckoff_alternatives.json")
MULTIPLICITIES = Path(__file__).with_name("wyckoff_multiplicities.json")


def letters_of(group: int, multiplicities: dict[str, dict[str, str]]) -> list[str]:
    """Wyckoff letters of a group in table order: a..z then A (group 47 has 27 positions)."""
    letters = list(multiplicities[str(group)])
    return sorted(letters, key=lambda c: (c.isupper(), c))


def alternatives_of(group: int, letters: list[str]) -> list[str]:
    from pyxtal.symmetry import Group

    permutations = []
    for row in Group(group).get_alternatives()["Transformed WP"]:
        images = row.split()
        if sorted(images, key=lambda c: (c.isupper(), c)) != letters:
            raise ValueError(f"group {group}: pyxtal permutation {row!r} is not over {letters}")
        permutations.append("".join(images))
    return sorted(set(permutations))


def main() -> None:
    multiplicities = json.loads(MULTIPLICITIES.read_text())
    table = {str(n): alternatives_of(n, letters_of(n, multiplicities)) for n in range(1, 231)}
    TABLE.write_text(json.dumps(table, indent=0, sort_keys=False) + "\n")
    print(f"wrote {TABLE} ({sum(len(v) for v in table.values())} permutations)")


if __name__ == "__main__":
    main()
