"""Which data each peer runs on, as this node first heard it: the fence against a node that
lost its data directory and came back empty.

Why: Raft's safety rests on every node keeping what it promised — the term it voted in and
the entries it acknowledged (Raft §5.2, §5.4). A node whose data directory is deleted or
replaced, restarted with its founding `--peers`, bootstraps afresh: it forgets its vote and
its log, yet its id still counts in every quorum it belonged to. With one more failure, a
quorum counting it could elect a leader missing acknowledged writes. etcd refuses such a
member at start ("member has already been bootstrapped"); here every node's identity carries
a random incarnation (config.NodeIdentity), sent at every peer stream's handshake, and each
node remembers, durably and before it reads a single message, the first incarnation it hears
from each node id. A stream from a known id with another incarnation is refused, and the
refused node stops itself (NodeHost.fenced). The way back is the operator's: remove the node
(`remove-node N`, `repair --dead N`) and add a new one.

The record is first-seen-wins and never rewritten for a known id: node ids are never reused
(a removed node's id stays retired), so no legitimate node changes incarnation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from minikv_core.cluster.config import IdentityError, store_atomically

_FORMAT = 1


class PeerIncarnations:
    """data_dir/peer_incarnations.json: node id -> the incarnation first heard from it."""

    def __init__(self, path: Path, node_id: int, known: dict[int, str]) -> None:
        self._path = path
        self._node_id = node_id
        self._known = known
        self._lock = asyncio.Lock()

    @classmethod
    def open(cls, path: Path, node_id: int) -> PeerIncarnations:
        """Load the record (none yet: empty). Raises IdentityError naming the file when it
        cannot be read or parsed: starting without it would lift the fence."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path, node_id, {})
        except OSError as error:
            raise IdentityError(f"cannot read {path}: {error.strerror or error}") from None
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("format") != _FORMAT:
                raise ValueError(f"unknown format {document!r:.60}")
            known = {int(k): str(v) for k, v in dict(document["peers"]).items()}
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
            raise IdentityError(
                f"{path} is malformed ({type(error).__name__}: {error}); it is written by the "
                "node and must not be edited"
            ) from None
        return cls(path, node_id, known)

    @property
    def known(self) -> dict[int, str]:
        return dict(self._known)

    async def admit(self, node_id: int, incarnation: str) -> str:
        """ "" when `node_id` may talk to this node with `incarnation` (recorded durably if it
        is the first heard from that id), else why not. Raises OSError when the record cannot
        be written: the caller refuses the stream then, since admitting an unrecorded
        incarnation would let a later one pass."""
        if not incarnation:
            return ""  # a caller that sends none (an embedder's bare transport): not fenced
        known = self._known.get(node_id)
        if known is None:
            async with self._lock:
                known = self._known.get(node_id)
                if known is None:
                    updated = {**self._known, node_id: incarnation}
                    await asyncio.to_thread(store_atomically, self._path, _encode(updated))
                    self._known = updated
                    known = incarnation
        if known == incarnation:
            return ""
        return (
            f"node {self._node_id} knew node {node_id} with other data (incarnation {known}, "
            f"now {incarnation}): node {node_id}'s data directory was lost or replaced, and a "
            "node that forgot its votes and log must not rejoin under its old id. Replace it: "
            f"start the other nodes, add a new node, then `repair --dead {node_id}` and "
            f"`remove-node {node_id}`"
        )


def _encode(known: dict[int, str]) -> bytes:
    document = {"format": _FORMAT, "peers": {str(k): v for k, v in sorted(known.items())}}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
