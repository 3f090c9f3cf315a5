"""Scenario scripts (etcd's interaction tests): tests/raft/testdata/*.txt.

A script is a sequence of blocks. Each block is one command, a line `----`, and the transcript
the command must produce (the messages delivered while it ran, then any state it prints),
ended by a blank line. Lines starting with `#` between blocks are comments. To regenerate the
transcripts after an intended behaviour change, run with MINIKV_REWRITE_SCENARIOS=1 and
review the diff.

Commands (node ids are ints, lists are comma-separated):
    network voters=1,2,3 [learners=4] [pre_vote=false] [check_quorum=false] [lease=true]
            [chunk_bytes=N]
    campaign N | propose N DATA | read N CONTEXT | transfer N TARGET | restart N
    lose N COUNT            (restart N; its disk lost its newest COUNT acknowledged entries)
    conf N add_learner|add_voter|remove ID
    compact N DATA          (snapshot at N's applied index)
    join N                  (start node N with the group's bootstrap membership)
    isolate N | cut A B | hold MESSAGE_TYPE | heal   (`hold` drops a type until `heal`)
    tick [IDS] [xCOUNT] [trace]   (messages shown only with `trace`)
    status [IDS] | log N | applied N | reads N | progress N   (leader N's view of its peers)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from minikv_core.raft.node import Config
from minikv_core.raft.read_only import decode_round
from minikv_core.raft.types import (
    ConfChange,
    ConfChangeType,
    Message,
    MessageType,
    RaftError,
    ReadOnlyMode,
)
from tests.raft.harness import Network

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))
REWRITE = os.environ.get("MINIKV_REWRITE_SCENARIOS") == "1"
SEPARATOR = "----"
ENTRIES_SHOWN_MAX = 6


def format_message(m: Message) -> str:
    text = f"{m.sender}->{m.to} {m.type.name} t{m.term}"
    kind = m.type
    if kind == MessageType.APPEND:
        if len(m.entries) <= ENTRIES_SHOWN_MAX:
            shown = ",".join(f"{e.index}/{e.term}" for e in m.entries)
        else:
            first, last = m.entries[0], m.entries[-1]
            shown = f"{first.index}/{first.term}..{last.index}/{last.term} ({len(m.entries)})"
        text += f" prev={m.index}/{m.log_term} commit={m.commit} entries=[{shown}]"
    elif kind == MessageType.APPEND_RESPONSE:
        text += f" index={m.index}"
        if m.reject:
            text += f" REJECT hint={m.reject_hint}/{m.log_term}"
    elif kind in (MessageType.VOTE, MessageType.PRE_VOTE):
        text += f" last={m.index}/{m.log_term}"
        if m.context:
            text += " (transfer)"
    elif kind in (MessageType.VOTE_RESPONSE, MessageType.PRE_VOTE_RESPONSE):
        text += " REJECT" if m.reject else " granted"
    elif kind == MessageType.HEARTBEAT:
        text += f" commit={m.commit} round={decode_round(m.context)}"
    elif kind == MessageType.HEARTBEAT_RESPONSE:
        text += f" round={decode_round(m.context)}"
        if m.reject:
            text += f" REJECT last={m.reject_hint}/{m.log_term} commit={m.commit}"
    elif kind == MessageType.SNAPSHOT:
        assert m.snapshot is not None
        text += (
            f" snap={m.snapshot.index}/{m.snapshot.term} offset={m.chunk_offset}"
            f" bytes={len(m.chunk_data)}{' done' if m.chunk_done else ''}"
        )
    elif kind == MessageType.SNAPSHOT_RESPONSE:
        text += f" snap={m.index} held={m.chunk_offset}{' REJECT' if m.reject else ''}"
    elif kind in (MessageType.READ_INDEX, MessageType.READ_INDEX_RESPONSE):
        text += f" index={m.index} ctx={m.context.decode()}"
    elif kind == MessageType.TRANSFER_LEADER:
        text += f" target={m.index}"
    return text


def ids(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


class Interpreter:
    def __init__(self) -> None:
        self.net: Network | None = None

    @property
    def network(self) -> Network:
        assert self.net is not None, "the script must start with `network`"
        return self.net

    def run(self, command: str) -> list[str]:
        words = command.split()
        name, args = words[0], words[1:]
        handler: Callable[[list[str]], list[str]] = getattr(self, f"do_{name}")
        mark = len(self.net.delivered) if self.net is not None else 0
        try:
            printed = handler(args)
        except RaftError as error:
            printed = [f"error: {type(error).__name__}: {error}"]
        trace = name != "tick" or "trace" in args
        shown = (
            [format_message(m) for m in self.net.delivered[mark:]]
            if self.net is not None and trace and name != "network"
            else []
        )
        return shown + printed

    def do_network(self, args: list[str]) -> list[str]:
        options = dict(arg.split("=", 1) for arg in args)

        def configure(config: Config) -> Config:
            config = replace(
                config,
                pre_vote=options.get("pre_vote", "true") == "true",
                check_quorum=options.get("check_quorum", "true") == "true",
            )
            if options.get("lease") == "true":
                config = replace(config, read_only_mode=ReadOnlyMode.LEASE_BASED)
            if "chunk_bytes" in options:
                config = replace(config, snapshot_chunk_bytes_max=int(options["chunk_bytes"]))
            return config

        self.net = Network(
            ids(options["voters"]), ids(options.get("learners", "")), configure=configure
        )
        return []

    def do_campaign(self, args: list[str]) -> list[str]:
        self.network.campaign(int(args[0]))
        return []

    def do_propose(self, args: list[str]) -> list[str]:
        term, index = self.network.node(int(args[0])).propose(args[1].encode())
        self.network.settle()
        return [f"proposed at {index}/{term}"]

    def do_read(self, args: list[str]) -> list[str]:
        self.network.node(int(args[0])).read_index(args[1].encode())
        self.network.settle()
        return []

    def do_transfer(self, args: list[str]) -> list[str]:
        self.network.node(int(args[0])).transfer_leader(int(args[1]))
        self.network.settle()
        return []

    def do_restart(self, args: list[str]) -> list[str]:
        self.network.restart(int(args[0]))
        return []

    def do_lose(self, args: list[str]) -> list[str]:
        self.network.restart_with_lost_tail(int(args[0]), int(args[1]))
        return []

    def do_conf(self, args: list[str]) -> list[str]:
        kinds = {
            "add_learner": ConfChangeType.ADD_LEARNER,
            "add_voter": ConfChangeType.ADD_VOTER,
            "remove": ConfChangeType.REMOVE_NODE,
        }
        change = ConfChange(kinds[args[1]], int(args[2]))
        term, index = self.network.node(int(args[0])).propose_conf_change(change)
        self.network.settle()
        return [f"proposed at {index}/{term}"]

    def do_compact(self, args: list[str]) -> list[str]:
        node = self.network.node(int(args[0]))
        snapshot = node.compact(node.status().applied, args[1].encode())
        return [f"snapshot at {snapshot.metadata.index}/{snapshot.metadata.term}"]

    def do_isolate(self, args: list[str]) -> list[str]:
        self.network.isolate(int(args[0]))
        return []

    def do_cut(self, args: list[str]) -> list[str]:
        self.network.cut(int(args[0]), int(args[1]))
        return []

    def do_heal(self, args: list[str]) -> list[str]:
        self.network.heal()
        self.network.message_filter = None
        return []

    def do_hold(self, args: list[str]) -> list[str]:
        held = MessageType[args[0]]
        self.network.message_filter = lambda message: message.type != held
        return []

    def do_join(self, args: list[str]) -> list[str]:
        self.network.add_node(int(args[0]), self.network.conf_state)
        return []

    def do_tick(self, args: list[str]) -> list[str]:
        count = 1
        node_ids: list[int] | None = None
        for arg in args:
            if arg.startswith("x"):
                count = int(arg[1:])
            elif arg != "trace":
                node_ids = ids(arg)
        self.network.tick(node_ids, ticks=count)
        return []

    def do_status(self, args: list[str]) -> list[str]:
        net = self.network
        lines = []
        for node_id in ids(args[0]) if args else sorted(net.peers):
            s = net.node(node_id).status()
            learner = " learner" if s.is_learner else ""
            lines.append(
                f"{node_id}: {s.role.name}{learner} term={s.term} lead={s.leader_id} "
                f"commit={s.commit} applied={s.applied} first={s.first_index} "
                f"last={s.last_index} voters={list(s.conf_state.voters)} "
                f"learners={list(s.conf_state.learners)}"
            )
        return lines

    def do_progress(self, args: list[str]) -> list[str]:
        return [
            f"{p.node_id}: match={p.match} next={p.next} state={p.state.name}"
            for p in self.network.node(int(args[0])).status().peers
        ]

    def do_log(self, args: list[str]) -> list[str]:
        storage = self.network.peers[int(args[0])].storage
        terms = self.network.log_terms(int(args[0]))
        return [f"first={storage.first_index()} terms={terms}"]

    def do_applied(self, args: list[str]) -> list[str]:
        commands = self.network.applied_commands(int(args[0]))
        return [f"applied {[c.decode() for c in commands]}"]

    def do_reads(self, args: list[str]) -> list[str]:
        states = self.network.peers[int(args[0])].read_states
        return [f"read {s.context.decode()} at {s.index}" for s in states]


def parse(text: str) -> list[tuple[str, list[str], list[str]]]:
    """Blocks of (command, leading comment lines, expected transcript lines)."""
    blocks: list[tuple[str, list[str], list[str]]] = []
    lines = text.splitlines()
    position = 0
    comments: list[str] = []
    while position < len(lines):
        line = lines[position]
        position += 1
        if not line.strip():
            continue
        if line.startswith("#"):
            comments.append(line)
            continue
        command = line
        assert position < len(lines) and lines[position] == SEPARATOR, (
            f"expected {SEPARATOR!r} after command {command!r}"
        )
        position += 1
        expected: list[str] = []
        while position < len(lines) and lines[position].strip():
            expected.append(lines[position])
            position += 1
        blocks.append((command, comments, expected))
        comments = []
    return blocks


def render(blocks: list[tuple[str, list[str], list[str]]]) -> str:
    parts = []
    for command, comments, transcript in blocks:
        parts.append("\n".join([*comments, command, SEPARATOR, *transcript]))
    return "\n\n".join(parts) + "\n"


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_scenario_script(script: Path) -> None:
    blocks = parse(script.read_text())
    interpreter = Interpreter()
    produced = []
    for command, comments, expected in blocks:
        transcript = interpreter.run(command)
        produced.append((command, comments, transcript))
        if not REWRITE:
            assert transcript == expected, (
                f"{script.name}: command {command!r}\n"
                + "expected:\n  "
                + "\n  ".join(expected)
                + "\ngot:\n  "
                + "\n  ".join(transcript)
            )
    if REWRITE:
        script.write_text(render(produced))


def test_scenario_scripts_exist() -> None:
    assert len(SCRIPTS) >= 4, "testdata/*.txt scenario scripts are missing"
