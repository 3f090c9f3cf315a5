"""`minikv txn FILE|-` run as a real subprocess against real in-process nodes."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from tests.net.api_harness import configs, node_of, running


async def minikv(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    exe = shutil.which("minikv", path=str(Path(sys.executable).parent))
    assert exe is not None, "the minikv console script is not installed"
    process = await asyncio.create_subprocess_exec(
        exe,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_txn_command_runs_a_file_and_stdin_and_refuses_bad_documents(
    tmp_path: Path,
) -> None:
    async with running(configs(tmp_path, 1, shards=2, replicas=1)) as servers:
        endpoint = node_of(servers[0]).config.grpc_address
        document = {
            "compare": [{"key": "a", "target": "exists", "value": False}],
            "success": [{"op": "put", "key": "a", "value": "1"}, {"op": "get", "key": "b"}],
            "failure": [{"op": "get", "key": "a"}],
        }
        path = tmp_path / "txn.json"
        path.write_text(json.dumps(document))
        code, out, err = await minikv("txn", str(path), "--endpoints", endpoint)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("succeeded")
        assert lines[1].startswith("put     a  version ")
        assert lines[2] == "get     b  (missing)"

        code, out, err = await minikv(
            "txn", "-", "--endpoints", endpoint, "--json", stdin=json.dumps(document).encode()
        )
        assert code == 0, err
        answer = json.loads(out)
        assert answer["succeeded"] is False
        assert answer["results"][0]["value"] == "1"

        code, out, err = await minikv("txn", "-", "--endpoints", endpoint, stdin=b"{nope")
        assert code == 2 and "not valid JSON" in err
        code, out, err = await minikv(
            "txn", "-", "--endpoints", endpoint, stdin=b'{"success": [{"op": "nope"}]}'
        )
        assert code == 2 and "op must be one of" in err
        assert "Traceback" not in err
