"""The PostgreSQL grant set of the role a run uses (`fedmsr db grants ROLE` prints it).

Migrations run as the schema's owner; the server (`fedmsr run`, the ServerApp) should
connect as a role that owns nothing, so it can neither drop nor disable the ledger's
triggers, delete a row, nor rewrite a device's spend. What that role may do is exactly what
a run writes, and no more:

* the privacy ledger: append ``privacy_events`` rows and mark them committed (the triggers
  of revision 0002 allow only reserved -> committed). The cached RDP vector in
  ``device_budgets`` is written only through ``fedmsr_record_budget`` (revision 0006, a
  SECURITY DEFINER function whose triggers refuse a vector that goes down at any order or
  moves without new event rows): the role holds no INSERT or UPDATE on that table at all;
* the run's own records (``runs``, ``rounds``, ``round_participation``) and the append-only
  logs (``audit_log``, ``information_ledger``, ``representations``, ``leakage_reports``);
* ``devices.status`` only, to move a participant from ``enrolled`` to ``active``. It cannot
  revoke or un-revoke anyone with it: the table's CHECK ties ``status = 'revoked'`` to
  ``revoked_at``, a column the role cannot write. Enrollment, caps and revocation are
  operator commands, run under the operator's (owner's) role.

Kept in code, not only in the docs, so the test that plays the restricted role uses the
grant set users are told to apply.
"""

from __future__ import annotations

import re

__all__ = ["RECORD_BUDGET_SIGNATURE", "grant_statements"]

#: The one writer of device_budgets (revision 0006_budget_writer).
RECORD_BUDGET_SIGNATURE = (
    "fedmsr_record_budget(integer, bytea, varchar, integer, timestamptz)")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def _quoted(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{what} must be a PostgreSQL identifier (letters, digits, _ and $, "
                         f"not starting with a digit, at most 63 characters), got {name!r}")
    return f'"{name}"'


def grant_statements(role: str, schema: str = "public") -> list[str]:
    """The GRANT statements that let `role` run federations against `schema`, in order."""
    r, s = _quoted(role, "role"), _quoted(schema, "schema")

    def tables(*names: str) -> str:
        return ", ".join(f"{s}.{n}" for n in names)

    logs = tables("audit_log", "information_ledger", "representations", "leakage_reports")
    return [
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        # the privacy ledger: append, mark committed; the cache only through its function
        f"GRANT INSERT ON {tables('privacy_events')} TO {r}",
        f"GRANT UPDATE (status, committed_at) ON {tables('privacy_events')} TO {r}",
        f"GRANT EXECUTE ON FUNCTION {s}.{RECORD_BUDGET_SIGNATURE} TO {r}",
        # what the rest of a run writes
        f"GRANT INSERT, UPDATE ON {tables('runs', 'rounds', 'round_participation')} TO {r}",
        f"GRANT INSERT ON {logs} TO {r}",
        f"GRANT UPDATE (status) ON {tables('devices')} TO {r}",
    ]
