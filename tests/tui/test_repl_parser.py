"""The REPL's tokenizer and quoting (repl_tokens) and its statement parser (repl_parser):
what each input means, and that every malformed input is refused saying what to fix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikv_core.client import Consistency
from minikv_core.net.limits import SCAN_LIMIT_MAX
from minikv_tui import repl_grammar
from minikv_tui.repl_errors import ParseError
from minikv_tui.repl_parser import (
    Clear,
    Delete,
    Discard,
    Exec,
    Exists,
    Exit,
    FileValue,
    Get,
    Help,
    Leader,
    Multi,
    Put,
    Scan,
    SetConsistency,
    SetTiming,
    ShardOf,
    Status,
    Unwatch,
    Watch,
    command_of,
    parse,
)
from minikv_tui.repl_tokens import TokenKind, escape_bytes, quote_bytes, tokenize

# ----------------------------------------------------------------------------- tokenizer


def test_bare_words_and_quoted_strings_are_tokens_with_their_offsets() -> None:
    tokens = tokenize("PUT  'a b' \"c\\nd\"")
    assert [(t.kind, t.raw, t.start, t.value) for t in tokens] == [
        (TokenKind.WORD, "PUT", 0, b"PUT"),
        (TokenKind.QUOTED, "'a b'", 5, b"a b"),
        (TokenKind.QUOTED, '"c\\nd"', 11, b"c\nd"),
    ]


@pytest.mark.parametrize(
    ("source", "value"),
    [
        (r'"\n\t\r\0\\\""', b'\n\t\r\0\\"'),
        (r'"\x00\xff\x7F"', b"\x00\xff\x7f"),
        (r'"\a\b"', b"\a\b"),
        ('"héllo ✓"', "héllo ✓".encode()),
        (r"'it\'s'", b"it's"),
        (r"'back\\slash'", b"back\\slash"),
        (r"'no\nescape'", b"no\\nescape"),
        ('""', b""),
    ],
)
def test_escapes_inside_quotes_decode_to_bytes(source: str, value: bytes) -> None:
    (token,) = tokenize(source)
    assert token.value == value


def test_bare_words_keep_backslashes_and_inner_quotes_literally() -> None:
    assert [t.value for t in tokenize(r"a\nb it's")] == [b"a\\nb", b"it's"]


def test_semicolons_and_newlines_separate_commands_but_not_inside_quotes() -> None:
    assert parse('PUT a "x;y"; GET a\nDEL a') == [Put(b"a", b"x;y"), Get(b"a"), Delete(b"a")]


def test_a_hash_starts_a_comment_only_at_the_start_of_a_command() -> None:
    assert parse("# setting up\nGET a") == [Get(b"a")]
    with pytest.raises(ParseError):  # the second '#' word makes three arguments
        parse("PUT tag #red # not a comment")
    assert parse("PUT tag #red") == [Put(b"tag", b"#red")]
    assert parse("GET a; # the rest is a comment; GET b") == [Get(b"a")]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('GET "abc', "unterminated double quote starting at column 5"),
        ("GET 'abc", "unterminated single quote starting at column 5"),
        (r'PUT a "\q"', "unknown escape \\q at column 8"),
        (r'PUT a "\x4"', "\\x at column 8 needs two hex digits"),
        ('PUT a "b"c', "text right after the closing quote at column 10"),
    ],
)
def test_malformed_strings_are_refused_naming_the_column(source: str, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(source)
    assert message in caught.value.message
    assert caught.value.hint


def test_partial_mode_marks_bad_tokens_instead_of_raising() -> None:
    tokens = tokenize('GET "abc', partial=True)
    assert tokens[-1].kind is TokenKind.QUOTED
    assert tokens[-1].value == b"abc"
    assert "unterminated" in tokens[-1].error


# ------------------------------------------------------------------------------- quoting


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"user/1", "user/1"),
        (b"a b", '"a b"'),
        (b"", '""'),
        (b"\x00\xff", '"\\x00\\xff"'),
        (b'say "hi"', '"say \\"hi\\""'),
        (b"@file", '"@file"'),
        (b"#tag", '"#tag"'),
        (b"limit", '"limit"'),
        (b"x;y", '"x;y"'),
        ("é✓".encode(), "é✓"),
        (b"line\n", '"line\\n"'),
    ],
)
def test_quote_bytes_writes_the_shortest_input_that_reads_back(data: bytes, text: str) -> None:
    assert quote_bytes(data) == text


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=40))
def test_any_bytes_quoted_tokenize_back_to_the_same_bytes(data: bytes) -> None:
    (token,) = tokenize(quote_bytes(data))
    assert token.value == data
    (forced,) = tokenize(quote_bytes(data, force_quotes=True))
    assert forced.value == data


@settings(max_examples=200, derandomize=True)
@given(st.text(max_size=40))
def test_any_text_round_trips_through_escape_and_a_double_quoted_string(text: str) -> None:
    data = text.encode()
    (token,) = tokenize('"' + escape_bytes(data) + '"')
    assert token.value == data


# ---------------------------------------------------------------------------- statements


@pytest.mark.parametrize(
    ("source", "statement"),
    [
        ("GET a", Get(b"a")),
        ("get a", Get(b"a")),
        ("PUT k v", Put(b"k", b"v")),
        ("set k 'v w'", Put(b"k", b"v w")),
        ("PUT k @/tmp/file.bin", Put(b"k", FileValue("/tmp/file.bin"))),
        ('PUT k "@/tmp/file.bin"', Put(b"k", b"@/tmp/file.bin")),
        ("DEL a", Delete(b"a")),
        ("delete a", Delete(b"a")),
        ("SCAN", Scan(b"", repl_grammar.SCAN_LIMIT_DEFAULT, limit_given=False)),
        ("SCAN user/", Scan(b"user/", repl_grammar.SCAN_LIMIT_DEFAULT, limit_given=False)),
        ("scan user/ limit 5", Scan(b"user/", 5, limit_given=True)),
        ("SCAN LIMIT 7", Scan(b"", 7, limit_given=True)),
        ('SCAN "LIMIT"', Scan(b"LIMIT", repl_grammar.SCAN_LIMIT_DEFAULT, limit_given=False)),
        ("EXISTS a", Exists(b"a")),
        ("MULTI", Multi()),
        ("exec", Exec()),
        ("Discard", Discard()),
        ("WATCH a", Watch((b"a",))),
        ("watch a 'b c' a", Watch((b"a", b"b c"))),
        ("UNWATCH", Unwatch()),
        ("STATUS", Status()),
        ("SHARD a", ShardOf(b"a")),
        ("LEADER", Leader(None)),
        ("LEADER 3", Leader(3)),
        ("CONSISTENCY", SetConsistency(None)),
        ("CONSISTENCY Stale", SetConsistency(Consistency.STALE)),
        ("consistency linearizable", SetConsistency(Consistency.LINEARIZABLE)),
        ("TIMING on", SetTiming(on=True)),
        ("TIMING OFF", SetTiming(on=False)),
        ("TIMING", SetTiming(None)),
        ("HELP", Help(None)),
        ("help set", Help("PUT")),
        ("HELP multi", Help("MULTI")),
        ("HELP watch", Help("WATCH")),
        ("CLEAR", Clear()),
        ("EXIT", Exit()),
        ("quit", Exit()),
        ("  ;  ; ", None),
    ],
)
def test_each_command_parses_to_its_statement(source: str, statement: object) -> None:
    assert parse(source) == ([statement] if statement is not None else [])


@pytest.mark.parametrize(
    ("source", "message", "hint"),
    [
        ("FROB", "unknown command 'FROB'", "HELP lists the commands"),
        ("GTE a", "unknown command 'GTE'", "Did you mean GET?"),
        ("GET", "GET takes 1 argument, got 0", "Usage: GET key"),
        ("GET a b", "GET takes 1 argument, got 2", "Usage: GET key"),
        ("PUT k hello world", "PUT takes 2 arguments, got 3", 'PUT key "two words"'),
        ("STATUS now", "STATUS takes no arguments, got 1", "Usage: STATUS"),
        ('GET ""', "a key cannot be empty", "1 byte or more"),
        ('"GET" a', "must start with a command name", "HELP"),
        ("SCAN a b", "SCAN takes one prefix, got 2 words", "Quote a prefix"),
        ("SCAN a LIMIT", "LIMIT needs a number", 'Quote "LIMIT"'),
        ("SCAN LIMIT x", "LIMIT must be a whole number, got x", ""),
        ("SCAN LIMIT 0", f"LIMIT must be from 1 to {SCAN_LIMIT_MAX}, got 0", ""),
        (f"SCAN LIMIT {SCAN_LIMIT_MAX + 1}", "LIMIT must be from 1", ""),
        ("SCAN LIMIT 5 extra", "unexpected extra after LIMIT 5", "Usage: SCAN"),
        ("LEADER -1", "the shard must be a whole number, got -1", ""),
        ("CONSISTENCY eventual", "CONSISTENCY takes linearizable or stale", "Usage"),
        ("TIMING maybe", "TIMING takes on or off", "Usage"),
        ("HELP frob", "no command named 'frob'", "HELP lists"),
        ("PUT k @", "@ needs a file path", 'Quote it to store a lone "@"'),
        ("MULTI now", "MULTI takes no arguments, got 1", "Usage: MULTI"),
        ("EXEC a", "EXEC takes no arguments, got 1", "Usage: EXEC"),
        ("DISCARD a b", "DISCARD takes no arguments, got 2", "Usage: DISCARD"),
        ("WATCH", "WATCH takes 1 or more keys, got none", "Usage: WATCH key [key ...]"),
        ('WATCH a ""', "a key cannot be empty", "1 byte or more"),
        ("UNWATCH a", "UNWATCH takes no arguments, got 1", "Usage: UNWATCH"),
        ("EXECC", "unknown command 'EXECC'", "Did you mean EXEC?"),
    ],
)
def test_bad_commands_are_refused_with_what_to_do(source: str, message: str, hint: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(source)
    assert message in caught.value.message
    assert hint in caught.value.hint


def test_a_transaction_typed_on_one_line_parses_in_order() -> None:
    assert parse("MULTI; PUT a 1; SET b 2; GET c; DEL d; EXEC") == [
        Multi(),
        Put(b"a", b"1"),
        Put(b"b", b"2"),
        Get(b"c"),
        Delete(b"d"),
        Exec(),
    ]


def test_a_line_with_any_bad_command_runs_none_of_it() -> None:
    with pytest.raises(ParseError):
        parse("PUT a 1; FROB; PUT b 2")


def test_every_command_in_the_table_has_usage_and_summary() -> None:
    for spec in repl_grammar.COMMANDS:
        assert spec.usage.split()[0] == spec.name
        assert spec.summary.endswith(".")
        for word in (spec.name, *spec.aliases):
            assert repl_grammar.lookup(word.lower()) is spec


ONE_OF_EACH = {
    "GET": "GET a",
    "PUT": "SET a 1",
    "DEL": "DELETE a",
    "SCAN": "SCAN",
    "EXISTS": "EXISTS a",
    "MULTI": "MULTI",
    "EXEC": "EXEC",
    "DISCARD": "DISCARD",
    "WATCH": "WATCH a b",
    "UNWATCH": "UNWATCH",
    "STATUS": "STATUS",
    "SHARD": "SHARD a",
    "LEADER": "LEADER",
    "CONSISTENCY": "CONSISTENCY",
    "TIMING": "TIMING",
    "HELP": "HELP",
    "CLEAR": "CLEAR",
    "EXIT": "QUIT",
}


def test_every_statement_names_the_command_it_came_from() -> None:
    """The executor looks up what a statement may do inside MULTI by this name."""
    assert set(ONE_OF_EACH) == {spec.name for spec in repl_grammar.COMMANDS}
    for name, source in ONE_OF_EACH.items():
        assert command_of(parse(source)[0]) == name


def test_the_multi_rules_are_drawn_from_the_table() -> None:
    rules = repl_grammar.multi_rules()
    assert "GET, PUT, DEL are queued" in rules
    assert "SCAN, EXISTS, MULTI, WATCH, UNWATCH are refused" in rules
    for spec in repl_grammar.COMMANDS:
        assert spec.name in rules
