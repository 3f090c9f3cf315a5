"""Colours and one-glyph words for roles and states, per theme family.

Table cells are Rich `Text`, which cannot read Textual's CSS variables, so the few colours that
carry meaning (leader, follower, candidate, down, lag) live here, one palette per theme family:
dark, light, and a high-contrast one for projectors (pure colours on black, bold everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Palette:
    leader: str
    follower: str
    candidate: str
    learner: str
    unknown: str
    down: str
    paused: str
    partitioned: str
    up: str
    lag: str
    flash: str
    dim: str


DARK = Palette(
    leader="bold #5fd75f",
    follower="#5fafff",
    candidate="bold #ffd75f",
    learner="#d787ff",
    unknown="#808080",
    down="bold #ff5f5f",
    paused="bold #ffaf00",
    partitioned="bold #ff87d7",
    up="#5fd75f",
    lag="#ff8700",
    flash="bold reverse",
    dim="#6c6c6c",
)

LIGHT = Palette(
    leader="bold #007a00",
    follower="#0050b4",
    candidate="bold #a06000",
    learner="#8000a0",
    unknown="#707070",
    down="bold #c00000",
    paused="bold #b05000",
    partitioned="bold #b0007a",
    up="#007a00",
    lag="#c05000",
    flash="bold reverse",
    dim="#8a8a8a",
)

HIGH_CONTRAST = Palette(
    leader="bold #00ff00",
    follower="bold #00ffff",
    candidate="bold #ffff00",
    learner="bold #ff00ff",
    unknown="bold #ffffff",
    down="bold #ffffff on #d00000",
    paused="bold #000000 on #ffff00",
    partitioned="bold #000000 on #ff00ff",
    up="bold #00ff00",
    lag="bold #ffff00",
    flash="bold reverse",
    dim="#c0c0c0",
)

ROLE_LETTERS = {
    "leader": "L",
    "follower": "F",
    "candidate": "C",
    "pre-candidate": "P",
    "learner": "l",
    "unknown": "?",
}


def role_style(palette: Palette, role: str) -> str:
    if role == "leader":
        return palette.leader
    if role == "follower":
        return palette.follower
    if role in ("candidate", "pre-candidate"):
        return palette.candidate
    if role == "learner":
        return palette.learner
    return palette.unknown


def state_style(palette: Palette, state: str) -> str:
    return {
        "up": palette.up,
        "down": palette.down,
        "stopped": palette.down,
        "unreachable": palette.down,
        "paused": palette.paused,
        "partitioned": palette.partitioned,
    }.get(state, palette.unknown)
