"""Crash-safe file writes (the one implementation lives in `fl_client.atomic`, which a
device build has without fl_server)."""

from fl_client.atomic import write_bytes_atomic, write_text_atomic

__all__ = ["write_bytes_atomic", "write_text_atomic"]
