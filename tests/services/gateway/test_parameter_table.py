"""docs/gateway.md's parameter tables against the field table they describe
(services/gateway/request_fields.py): every field the gateway honours, accepts or refuses has a
row in its endpoint's table, every row names such a field, and every row fills all four columns
(parameter, vLLM, Saguaro, the tests that show it). A field added to the code without a row, or a
row left behind by a removed field, fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from saguaro.services.gateway.request_fields import HARMLESS, HONOURED, REFUSED, RESPONSES_REFUSED

DOC = Path(__file__).resolve().parents[3] / "docs" / "gateway.md"
SECTION = "### Request parameters: vLLM's and ours"
TABLES = {
    "#### Completions and chat": HONOURED["completions"] | HONOURED["chat"] | HARMLESS | set(REFUSED),
    "#### Responses": HONOURED["responses"] | set(RESPONSES_REFUSED) | HARMLESS,
    "#### Tokenize and detokenize": HONOURED["tokenize_prompt"] | HONOURED["tokenize_chat"] | HONOURED["detokenize"],
}


def table_rows(heading: str) -> list[list[str]]:
    """The cells of each row of the first table after ``heading`` (within the section)."""
    text = DOC.read_text()
    section = text[text.index(SECTION):]
    after = section[section.index(heading + " "):]
    rows, started = [], False
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if not set(cells[0]) <= set("-|") and cells[0] != "parameter":
                rows.append(cells)
        elif started:
            break
    return rows


def names(cell: str) -> set[str]:
    """The field names a first cell lists (`` `stream_options` ``, `` `logprobs` (chat) ``)."""
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cell))


@pytest.mark.parametrize("heading", list(TABLES))
def test_every_field_has_a_row_and_every_row_a_field(heading):
    rows = table_rows(heading)
    documented = set().union(*(names(row[0]) for row in rows))
    assert not TABLES[heading] - documented, f"fields without a row under {heading!r}"
    assert not documented - TABLES[heading], f"rows for fields the gateway does not know under {heading!r}"
    assert all(len(row) == 4 and all(row) for row in rows), [row for row in rows if len(row) != 4 or not all(row)]
    assert not [row for row in rows if "TODO" in " ".join(row)], "a row still waits for its work"

