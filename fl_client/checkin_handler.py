"""The device's answer to the server's roll call (`query.checkin`).

Its own module, importing neither torch nor the encoder: on a SuperNode every message
starts a fresh ClientApp process, and a check-in only counts the device's clips, checks
its own ledger and signs the answer, so it should not pay for loading the model's
libraries (about 1.5 s of a cold process on a small CPU).
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict

from fl_client.ledger_reservations import checkin_verdict
from fl_client.local_clips import own_source, training_clip_count
from fl_client.node import device_index, device_state_dir, sign_challenge
from fl_client.recorded_footage import NoFootage
from privacy.wire.budget import BudgetPlan
from privacy.wire.checkin import Challenge, CheckinAnswer
from privacy.wire.instructions import Instructions
from privacy.wire.keys import CHALLENGE_KEY, CONFIG_KEY, DEVICE_KEY


def checkin(msg: Message, context: Context) -> Message:
    """Answer the server's roll call: who this device is and how much footage it holds.

    A node whose device index is outside the planned fleet (e.g. a federation with more
    SuperNodes than devices) answers `in-fleet = false` and is left out, not failed.
    """
    config = msg.content.config_records[CONFIG_KEY]
    instructions = Instructions.from_record(config)
    device = device_index(context)
    if not 0 <= device < instructions.fleet.num_devices:
        answer = CheckinAnswer(device=device, in_fleet=False)
        return Message(RecordDict({DEVICE_KEY: answer.to_record()}), reply_to=msg)
    try:
        source = own_source(instructions, context)
        num_clips = training_clip_count(instructions, context)
    except NoFootage as exc:  # nothing to train on: decline the round, saying why
        answer = CheckinAnswer(device=device, in_fleet=True, num_clips=0,
                               declined=f"no usable footage: {exc.reason}")
        return _signed(msg, context, answer)
    verdict = None
    if (budget := BudgetPlan.from_flat(config)) is not None:  # DP run: own ledger, or decline
        verdict = checkin_verdict(budget, context, device, device_state_dir(
            context, budget.sim_bundles_dir, device), instructions, num_clips)
    answer = CheckinAnswer(
        device=device, in_fleet=True, num_clips=num_clips,
        profile=source.profile,
        ledger=None if verdict is None else verdict.report,
        declined=None if verdict is None else verdict.declined)
    return _signed(msg, context, answer)


def _signed(msg: Message, context: Context, answer: CheckinAnswer) -> Message:
    """The check-in reply; signed last, so the signature covers the whole answer."""
    if CHALLENGE_KEY in msg.content:
        answer = sign_challenge(
            Challenge.from_record(msg.content.config_records[CHALLENGE_KEY]), context, answer)
    return Message(RecordDict({DEVICE_KEY: answer.to_record()}), reply_to=msg)
