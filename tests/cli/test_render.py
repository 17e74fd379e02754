"""The CLI's tables keep their columns aligned, wide characters included."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len

from cirron_cli import render
from cirron_cli.render import aligned_table, box_table


def test_wide_characters_keep_the_borders_in_line() -> None:
    text = box_table(["NAME", "SIZE"], [["中文名", "1"], ["ascii", "[3]"]], right=(1,))
    widths = {cell_len(line) for line in text.splitlines()}
    assert len(widths) == 1, text
    assert "│ 中文名 │    1 │" in text and "│ ascii  │  [3] │" in text  # [3] is text, not markup


def test_headers_follow_right_aligned_columns_in_aligned_table() -> None:
    assert "│ NAME │ SIZE  │" in box_table(["NAME", "SIZE"], [["a", "10000"]], right=(1,))
    assert "│ NAME │  SIZE │" in aligned_table(["NAME", "SIZE"], [["a", "10000"]], right=(1,))


_CELL = st.text(alphabet=st.sampled_from(list(" abcXYZ019.:-_[]/…")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), ncols=st.integers(1, 5), nrows=st.integers(0, 4), follow=st.booleans())
def test_tables_of_one_column_characters_are_drawn_as_rich_draws_them(data, ncols, nrows, follow) -> None:
    # Such tables skip rich (its import is a third of a warm `traces list`); the drawing is the same.
    headers = data.draw(st.lists(_CELL, min_size=ncols, max_size=ncols))
    rows = data.draw(st.lists(st.lists(_CELL, min_size=ncols, max_size=ncols), min_size=nrows, max_size=nrows))
    aligns = data.draw(st.lists(st.sampled_from(["left", "right", "center"]), min_size=ncols, max_size=ncols))
    right = {i for i, a in enumerate(aligns) if a == "right"}
    center = {i for i, a in enumerate(aligns) if a == "center"}
    expected = render._rich_box_table(headers, rows, right, center, follow)
    assert box_table(headers, rows, right=right, center=center, headers_follow=follow) == expected
    if all(render._ONE_COLUMN.fullmatch(c) for c in [*headers, *(c for row in rows for c in row)]):
        assert render._plain_box_table(headers, rows, right, center, follow) == expected


def test_a_table_of_one_column_characters_leaves_rich_unimported() -> None:
    code = ("import sys; from cirron_cli.render import aligned_table; "
            "print(aligned_table(['ID', 'SIZE'], [['ab12…', '1 KB']], right=[1])); print('rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["┌───────┬──────┐", "│ ID    │ SIZE │", "├───────┼──────┤",
                                       "│ ab12… │ 1 KB │", "└───────┴──────┘", "False"]
