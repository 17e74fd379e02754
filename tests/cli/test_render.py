"""The CLI's tables keep their columns aligned, wide characters included."""

from __future__ import annotations

from rich.cells import cell_len

from cirron_cli.render import aligned_table, box_table


def test_wide_characters_keep_the_borders_in_line() -> None:
    text = box_table(["NAME", "SIZE"], [["中文名", "1"], ["ascii", "[3]"]], right=(1,))
    widths = {cell_len(line) for line in text.splitlines()}
    assert len(widths) == 1, text
    assert "│ 中文名 │    1 │" in text and "│ ascii  │  [3] │" in text  # [3] is text, not markup


def test_headers_follow_right_aligned_columns_in_aligned_table() -> None:
    assert "│ NAME │ SIZE  │" in box_table(["NAME", "SIZE"], [["a", "10000"]], right=(1,))
    assert "│ NAME │  SIZE │" in aligned_table(["NAME", "SIZE"], [["a", "10000"]], right=(1,))
