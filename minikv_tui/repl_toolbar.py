"""The prompt, the bottom toolbar and the colours of an interactive session.

The toolbar is live context, as in pgcli and iredis: where the session points, the leader of
the shard of the last key used, the last latency, the read consistency and whether the
cluster answers. It only reads the session state: it is redrawn often and must never wait.
"""

from __future__ import annotations

from typing import Final

from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.styles import Style, merge_styles, style_from_pygments_dict
from pygments.token import (
    Comment,
    Error,
    Keyword,
    Name,
    Number,
    Punctuation,
    String,
)

from minikv_core.client import Consistency
from minikv_tui.repl_state import Connection, SessionState
from minikv_tui.repl_tokens import escape_bytes

LAST_KEY_CHARS_MAX: Final = 24

_CONNECTION_STYLE: Final = {
    Connection.CONNECTING: "class:toolbar.warn",
    Connection.CONNECTED: "class:toolbar.good",
    Connection.LOST: "class:toolbar.bad",
}

STYLE: Final = merge_styles(
    [
        style_from_pygments_dict(
            {
                Keyword: "bold ansicyan",
                Name.Variable: "ansiwhite",
                Name.Constant: "ansiyellow",
                String: "ansigreen",
                String.Escape: "bold ansiyellow",
                String.Other: "underline ansimagenta",
                Number: "ansiblue",
                Punctuation: "bold",
                Comment: "italic ansibrightblack",
                Error: "ansired",
            }
        ),
        Style.from_dict(
            {
                "prompt.name": "bold ansicyan",
                "prompt": "",
                "prompt.multi": "bold ansiyellow",
                "prompt.aborted": "bold ansired",
                "bottom-toolbar": "noreverse bg:#202020 #c0c0c0",
                "toolbar.dim": "#808080",
                "toolbar.key": "#e0e0e0",
                "toolbar.good": "bold ansigreen",
                "toolbar.warn": "bold ansiyellow",
                "toolbar.bad": "bold ansired",
            }
        ),
    ]
)


def prompt_message(state: SessionState) -> FormattedText:
    """`name> `, or inside MULTI `name(multi 2)> ` (red, and saying so, once a command failed:
    EXEC will refuse the transaction)."""
    parts = [("class:prompt.name", state.label)]
    multi = state.multi
    if multi is not None:
        if multi.aborted:
            parts.append(("class:prompt.aborted", f"(multi {len(multi.ops)}, failed)"))
        else:
            parts.append(("class:prompt.multi", f"(multi {len(multi.ops)})"))
    parts.append(("class:prompt", "> "))
    return FormattedText(parts)


def toolbar(state: SessionState) -> FormattedText:
    parts: list[tuple[str, str]] = [("class:toolbar.key", f" {state.label}")]
    if state.endpoints and state.label != state.endpoints[0]:
        parts.append(("class:toolbar.dim", f" ({state.endpoints[0]})"))
    parts.append(("class:toolbar.dim", "  │  "))
    key = state.last_key
    info = state.shard_of(key) if key is not None else None
    routing = state.routing
    if key is not None and info is not None and routing is not None:
        shown = escape_bytes(key)
        if len(shown) > LAST_KEY_CHARS_MAX:
            shown = shown[: LAST_KEY_CHARS_MAX - 1] + "…"
        parts.append(("class:toolbar.dim", f"{shown} → shard {info.shard} leader "))
        if info.leader is None:
            parts.append(("class:toolbar.warn", "none"))
        else:
            address = routing.addresses.get(info.leader, "?")
            parts.append(("class:toolbar.key", f"n{info.leader} {address}"))
    else:
        parts.append(("class:toolbar.dim", "no key used yet"))
    parts.append(("class:toolbar.dim", "  │  "))
    latency = state.last_latency_ms
    parts.append(("class:toolbar.key", f"{latency:.1f} ms" if latency is not None else "- ms"))
    parts.append(("class:toolbar.dim", "  │  "))
    mode = state.consistency
    parts.append(
        (
            "class:toolbar.key" if mode is Consistency.LINEARIZABLE else "class:toolbar.warn",
            mode.value,
        )
    )
    if state.watched:
        parts.append(("class:toolbar.dim", "  │  "))
        parts.append(("class:toolbar.warn", f"watching {len(state.watched)}"))
    parts.append(("class:toolbar.dim", "  │  "))
    parts.append((_CONNECTION_STYLE[state.connection], f"● {state.connection.value} "))
    return FormattedText(parts)
