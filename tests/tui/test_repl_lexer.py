"""The REPL's Pygments lexer: colours follow the parser's reading of the input, and the token
stream always adds up to the input exactly (prompt-toolkit maps it back to positions)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pygments.token import (
    Comment,
    Error,
    Keyword,
    Name,
    Number,
    Punctuation,
    String,
    Text,
    Whitespace,
    _TokenType,
)

from minikv_tui.repl_lexer import COMMAND, FILE_REFERENCE, KEY, VALUE, MinikvLexer


def lex(text: str) -> list[tuple[_TokenType, str]]:
    """Non-blank tokens with their text."""
    return [
        (kind, value)
        for _, kind, value in MinikvLexer().get_tokens_unprocessed(text)
        if kind is not Whitespace
    ]


def test_a_put_is_command_key_and_value() -> None:
    assert lex("PUT user/1 ada") == [(COMMAND, "PUT"), (KEY, "user/1"), (VALUE, "ada")]


def test_commands_are_keywords_in_any_case_aliases_included() -> None:
    assert lex("set a b")[0] == (COMMAND, "set")
    assert lex("Get a")[0] == (COMMAND, "Get")


def test_escapes_inside_double_quotes_are_marked() -> None:
    assert lex('PUT k "a\\x00b\\n"')[2:] == [
        (String.Double, '"a'),
        (String.Escape, "\\x00"),
        (String.Double, "b"),
        (String.Escape, "\\n"),
        (String.Double, '"'),
    ]


def test_single_quotes_mark_only_their_two_escapes() -> None:
    assert lex("PUT k 'it\\'s \\n'")[2:] == [
        (String.Single, "'it"),
        (String.Escape, "\\'"),
        (String.Single, "s \\n'"),
    ]


def test_at_path_is_a_file_reference_only_where_it_reads_a_file() -> None:
    assert lex("PUT k @/tmp/v.bin")[2] == (FILE_REFERENCE, "@/tmp/v.bin")
    assert lex("GET @k")[1] == (KEY, "@k")


def test_unknown_commands_and_surplus_arguments_are_errors() -> None:
    assert lex("FROB a")[0] == (Error, "FROB")
    assert lex("GET a b")[2] == (Error, "b")
    assert lex("PUT k v extra")[3] == (Error, "extra")


def test_a_command_being_typed_is_not_shown_as_an_error() -> None:
    assert lex("GE") == [(Text, "GE")]
    assert lex("GE x")[0] == (Error, "GE")


def test_transaction_commands_are_commands_and_watch_takes_any_number_of_keys() -> None:
    assert lex("MULTI; put a 1; EXEC; discard") == [
        (COMMAND, "MULTI"),
        (Punctuation, ";"),
        (COMMAND, "put"),
        (KEY, "a"),
        (VALUE, "1"),
        (Punctuation, ";"),
        (COMMAND, "EXEC"),
        (Punctuation, ";"),
        (COMMAND, "discard"),
    ]
    assert lex("WATCH a b 'c d'") == [
        (COMMAND, "WATCH"),
        (KEY, "a"),
        (KEY, "b"),
        (String.Single, "'c d'"),
    ]
    assert lex("EXEC now")[1] == (Error, "now")
    assert lex("UNWATCH a")[1] == (Error, "a")


def test_scan_limit_clause() -> None:
    assert lex("SCAN user/ LIMIT 10") == [
        (COMMAND, "SCAN"),
        (KEY, "user/"),
        (Keyword, "LIMIT"),
        (Number.Integer, "10"),
    ]
    assert lex("SCAN LIMIT x")[2] == (Error, "x")
    assert lex("SCAN a b")[2] == (Error, "b")


def test_choices_numbers_and_help_topics() -> None:
    assert lex("CONSISTENCY stale")[1] == (Name.Constant, "stale")
    assert lex("CONSISTENCY st")[1] == (Text, "st")
    assert lex("CONSISTENCY wrong")[1] == (Error, "wrong")
    assert lex("LEADER 2")[1] == (Number.Integer, "2")
    assert lex("LEADER two")[1] == (Error, "two")
    assert lex("HELP put")[1] == (COMMAND, "put")


def test_separators_comments_and_unterminated_strings() -> None:
    assert lex("GET a; # note") == [
        (COMMAND, "GET"),
        (KEY, "a"),
        (Punctuation, ";"),
        (Comment.Single, "# note"),
    ]
    assert lex('GET "abc')[1] == (Error, '"abc')


@settings(max_examples=300, derandomize=True)
@given(st.text(alphabet=st.sampled_from(list("GETPUSCANgetx @\"'\\;#\n\t0123 LIMIT")), max_size=60))
def test_the_token_stream_concatenates_to_the_input(text: str) -> None:
    tokens = list(MinikvLexer().get_tokens_unprocessed(text))
    assert "".join(value for _, _, value in tokens) == text
    positions = [position for position, _, _ in tokens]
    assert positions == sorted(positions)
    for position, _, value in tokens:
        assert text[position : position + len(value)] == value
