"""The DP event a device reports with its update, as a `ConfigRecord`."""

from __future__ import annotations

from flwr.app import ConfigRecord

from privacy.dp_event import PoissonGaussianEvent


def dp_event_to_record(event: PoissonGaussianEvent) -> ConfigRecord:
    return ConfigRecord(event.to_dict())


def dp_event_from_record(record: ConfigRecord) -> PoissonGaussianEvent:
    """Rebuild and validate (ValueError naming the bad field)."""
    return PoissonGaussianEvent.from_dict(dict(record))
