"""How the REPL and the CLI tell a failed command: a write whose outcome is unknown never
reads as a refusal or a timeout (the user must read the key before repeating it), and a plain
unavailability of a transaction means nothing of it applied."""

from __future__ import annotations

import pytest

from minikv_core.client import AsyncClient, OutcomeUnknownError, UnavailableError
from minikv_tui.commands.data import _request
from minikv_tui.errors import UserError
from minikv_tui.repl_errors import from_client_error, from_txn_error


def test_an_unknown_outcome_says_the_write_may_have_applied() -> None:
    error = OutcomeUnknownError("Socket closed; the write may have been applied")
    for told in (
        from_client_error(error, "PUT k"),
        from_client_error(error, "PUT k", cluster_down=True),
        from_txn_error(error, "EXEC"),
    ):
        assert "may or may not have been applied" in told.message
        assert "GET the key" in told.hint


def test_an_unavailable_transaction_applied_nothing() -> None:
    told = from_txn_error(UnavailableError("no leader"), "EXEC")
    assert "did not commit" in told.message and "nothing was applied" in told.hint
    down = from_txn_error(UnavailableError("no leader"), "EXEC", cluster_down=True)
    assert "the cluster does not answer" in down.message


def test_the_cli_says_a_write_may_have_applied() -> None:
    async def put(_: AsyncClient) -> None:
        raise OutcomeUnknownError("Socket closed; the write may have been applied")

    with pytest.raises(UserError, match="may or may not have been applied") as told:
        _request("127.0.0.1:1", None, 1.0, put)
    assert "minikv get" in told.value.hint
    assert told.value.exit_code == 75  # neither "absent" (1) nor "no answer" (69)
