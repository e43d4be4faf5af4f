"""containerd filter expressions: grammar, matching and error messages (pkg/filters)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.errors import KIND_INVALID_ARGUMENT
from cimsnap.snapshotter.filters import FilterSyntaxError, parse, parse_all
from cimsnap.snapshotter.model import Info, Kind

CORPUS = [
    Info("base", Kind.COMMITTED, "", {"os": "windows", "tier": "1"}),
    Info("delta", Kind.COMMITTED, "base", {"os": "windows"}),
    Info("ctr", Kind.ACTIVE, "delta", {"app name": "web", "a.b": "dots"}),
    Info("peek", Kind.VIEW, "delta", {}),
    Info("odd", Kind.ACTIVE, "", {"text": "too complex, yes", "q": 'say "hi"'}),
]


def select(*filters: str) -> list[str]:
    matcher = parse_all(filters)
    return [info.name for info in CORPUS if matcher.match_info(info)]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ((), ["base", "delta", "ctr", "peek", "odd"]),
        (("",), ["base", "delta", "ctr", "peek", "odd"]),
        (("name",), ["base", "delta", "ctr", "peek", "odd"]),
        (("parent",), ["base", "delta", "ctr", "peek", "odd"]),  # always present, maybe empty
        (("labels",), []),  # no label has the empty key
        (("labels.os",), ["base", "delta"]),
        (("labels.os==windows,labels.tier",), ["base"]),
        (("labels.os!=windows",), ["ctr", "peek", "odd"]),
        (("kind==active",), ["ctr", "odd"]),
        (("kind==committed", "kind==view"), ["base", "delta", "peek"]),
        (("parent==delta",), ["ctr", "peek"]),
        (('labels."app name"==web',), ["ctr"]),
        (('labels."a.b"',), ["ctr"]),
        (("labels.a.b",), ["ctr"]),  # unquoted dotted path joins to the same key
        (('labels.text=="too complex, yes"',), ["odd"]),
        ((r'labels.q=="say \"hi\""',), ["odd"]),
        (("name~=^[bd]",), ["base", "delta"]),
        (("name~=/e$/",), ["base"]),
        (("name~=|^o|",), ["odd"]),
        (("name~=[",), []),  # an invalid pattern matches nothing
        (("name==  base",), ["base"]),  # spaces before a value are skipped
        (("unknownfield",), []),
        (("unknownfield!=x",), ["base", "delta", "ctr", "peek", "odd"]),
    ],
)
def test_matching(filters: tuple[str, ...], expected: list[str]) -> None:
    assert select(*filters) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name==x,", "filters: parse error: [name==x,]: expected field or quoted"),
        ("labels.", "filters: parse error: [labels.]: expected field or quoted"),
        ("labels.|k|==v", "filters: parse error: [labels. >|||< k|==v]: invalid quote encountered"),
        ("name~=,x", "filters: parse error: [name~= >|,|< x]: expected value or quoted"),
        (
            "labels.a/b==c",
            "filters: parse error: [labels.a >|/|< b==c]: quoted literal not terminated",
        ),
        ("name==/v", "filters: parse error: [name== >|/|< v]: quoted literal not terminated"),
        ("name=x", "filters: parse error: [name >|=|< x]: unsupported operator '='"),
        ("name==a b", "filters: parse error: [name==a >| |< b]: unexpected input:  "),
        ("name(", 'filters: parse error: [name >|(|< ]: expected an operator ("=="|"!="|"~=")'),
        ('labels."a\\qb"', 'filters: parse error: [labels. >|"|< a\\qb"]: illegal escape sequence'),
        ('labels."a\\x4"==1', None),
        ("labels.\x00==1", "filters: parse error: [labels. >|\x00|< ==1]: unexpected null"),
        ('name=="unterminated', None),
    ],
)
def test_syntax_errors(text: str, message: str | None) -> None:
    with pytest.raises(FilterSyntaxError) as err:
        parse(text)
    assert err.value.kind == KIND_INVALID_ARGUMENT
    if message is not None:
        assert str(err.value) == message


def test_escapes_in_quoted_fields() -> None:
    (selector,) = parse(r'labels."tab\there \u00e9 \x41 \101"==v')
    assert selector.fieldpath == ("labels", "tab\there é A A")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab.,=!~"/|\\ \t0_\x00é')), max_size=30))
def test_any_input_parses_or_fails_cleanly(text: str) -> None:
    try:
        matcher = parse_all([text])
    except FilterSyntaxError as err:
        assert "\n" not in str(err) or "\n" in text
        return
    for info in CORPUS:
        matcher.match_info(info)
