"""Message types, action names and record keys of every exchange.

Flower routes a message by its type: ``train``, ``evaluate``, or ``query.<action>`` /
``train.<action>`` for a named handler (`@app.query("checkin")`). The constants below
are the action names and the keys of the records inside a message's `RecordDict`.
"""

from __future__ import annotations

from flwr.app import MessageType

# -- actions (handler names) ---------------------------------------------------------------

#: `query.checkin`: the roll call before a round (`privacy.wire.checkin`).
CHECKIN_ACTION = "checkin"
#: `query.upload`: a batch of privatized representations (`privacy.wire.upload`).
UPLOAD_ACTION = "upload"
#: The five stages of secure aggregation (server: `strategies.secagg_workflow`, device:
#: `fl_client.secagg_handlers`).
SECAGG_ADVERTISE_ACTION = "secagg_advertise"
SECAGG_SHARE_ACTION = "secagg_share"
SECAGG_MASKED_ACTION = "secagg_masked"
SECAGG_CONSISTENCY_ACTION = "secagg_consistency"
SECAGG_UNMASK_ACTION = "secagg_unmask"


def query(action: str) -> str:
    """The message type of a named query handler."""
    return f"{MessageType.QUERY}.{action}"


def train(action: str) -> str:
    """The message type of a named train handler."""
    return f"{MessageType.TRAIN}.{action}"


CHECKIN = query(CHECKIN_ACTION)
UPLOAD = query(UPLOAD_ACTION)
SECAGG_ADVERTISE = query(SECAGG_ADVERTISE_ACTION)
SECAGG_SHARE = query(SECAGG_SHARE_ACTION)
SECAGG_MASKED = train(SECAGG_MASKED_ACTION)
SECAGG_CONSISTENCY = query(SECAGG_CONSISTENCY_ACTION)
SECAGG_UNMASK = query(SECAGG_UNMASK_ACTION)

# -- record keys -----------------------------------------------------------------------------

#: ArrayRecord: model arrays (the global model to a device, the trained one back).
ARRAYS_KEY = "arrays"
#: ConfigRecord: the round's instructions (`privacy.wire.instructions`), plus `budget.*`
#: keys in DP runs (`privacy.wire.budget`) and the round ticket (run, round, nonce).
CONFIG_KEY = "config"
#: MetricRecord: what a reply reports (training metrics, evaluation metrics).
METRICS_KEY = "metrics"
#: ConfigRecord: the DP-SGD event a device's training incurred (`privacy.wire.dp_event`).
DP_EVENT_KEY = "dp_event"
#: ConfigRecord: who answered (device index, the round echo, a check-in answer).
DEVICE_KEY = "device"
#: The metric a reply's aggregation weight travels under (Flower's `weighted_by_key`).
WEIGHT_KEY = "num-examples"
#: An evaluate reply's held-out clips that carry the utility label (the weight of its
#: `activity_acc`: devices without the label report neither).
ACTIVITY_CLIPS_KEY = "activity_clips"
#: ConfigRecord: the server's signed-check-in challenge (registry-backed runs).
CHALLENGE_KEY = "challenge"
#: ConfigRecord: an upload request; and the reply's record (and key) holding the batch.
UPLOAD_KEY = "upload"
BATCH_KEY = "batch"
#: ArrayRecord (optional, train messages): the frozen device discriminator the round's
#: identity-invariance term is taken against (`privacy.wire.instructions.discriminator_of`).
DISCRIMINATOR_KEY = "discriminator"
#: ConfigRecord: one secure-aggregation stage's protocol message (`privacy.secagg.codec`).
SECAGG_KEY = "secagg"

#: Keys of a train message's config that a device echoes in its reply's `device` record:
#: the round, the run, and a fresh per-round nonce. The server drops a reply whose echo
#: differs (an earlier round's update replayed), see `strategies.update_validation`.
ECHO_KEYS = ("server-round", "run-id", "round-nonce")
#: Setup fields naming where a registry-backed simulation keeps keys and identities.
SECAGG_CREDENTIAL_KEYS = ("bundles-dir", "identities-file")
#: Setup field naming, in simulation only, the run's per-device state root (a simulated
#: device without a bundle records its masked inputs under `<root>/<index>`).
SECAGG_SIM_STATE_KEY = "sim-state-root"
