"""One local round on a device, whatever carries its result: the plain train reply or the
masked input of secure aggregation.

Both replies release the same thing, so both come from this one function: the device's
own ledger first (a DP run: it refuses past the device's cap before any clip is touched),
then local VIB training from the global arrays with this round's seed
(`fl_client.training_seed`), then what may leave the device (`fl_client.release`). The
Flower handlers only turn the typed `LocalRound` into their reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context

from fl_client.ledger_location import ledger_dir
from fl_client.ledger_reservations import reserve_for_training
from fl_client.local_clips import training_clips
from fl_client.node import device_index, device_state_dir
from fl_client.release import (
    release_weight,
    released_arrays,
    releases_private_metrics,
    reported_metrics,
)
from fl_client.trainer import train_local
from fl_client.training_seed import inputs_digest, training_secret, training_seed
from privacy.dp_event import PoissonGaussianEvent
from privacy.wire.budget import BudgetPlan
from privacy.wire.instructions import Instructions, discriminator_of, round_echo


@dataclass(frozen=True)
class LocalRound:
    """What a device's local round releases, before any encoding for the wire."""

    device: int
    #: The trained arrays (the update clipped under central DP): full model state.
    arrays: dict[str, np.ndarray]
    #: Training metrics the device may report (only plan-determined ones in DP runs).
    metrics: dict[str, float]
    #: The aggregation weight: #clips, or 1 under central DP (user level).
    weight: int
    #: The DP-SGD event the training incurred (None without DP-SGD).
    dp_event: PoissonGaussianEvent | None
    #: The train message's round ticket, echoed back so the server can drop replays.
    echo: Mapping[str, Any]


def run_local_round(config: ConfigRecord, global_arrays: dict[str, np.ndarray],
                    context: Context, discriminator: ArrayRecord | None = None) -> LocalRound:
    """Train on this device's clips from `global_arrays`, as the train message's
    instructions record `config` says (instructions, budget plan in DP runs, round ticket);
    `discriminator`: the message's frozen device discriminator record, which a round with
    an identity-invariance weight needs (`privacy.wire.instructions.discriminator_of`)."""
    instructions = Instructions.from_record(config)
    adversary = discriminator_of(discriminator, instructions.train)
    device = device_index(context)
    clips = training_clips(instructions, context)
    secret, run_id, inputs = None, "", b""
    if (budget := BudgetPlan.from_flat(config)) is not None:  # own ledger first
        state_dir = device_state_dir(context, budget.sim_bundles_dir, device)
        # The release is recorded on the digest its noise seed comes from.
        inputs = inputs_digest(global_arrays, instructions,
                               None if adversary is None else adversary.to_arrays())
        reserve_for_training(budget, context, device, state_dir, instructions,
                             int(clips.x.shape[0]), inputs)
        secret = training_secret(ledger_dir(context, budget, device, state_dir))
        run_id = budget.run_id
    seed = training_seed(instructions, device, secret, run_id, inputs)
    train_cfg = dataclasses.replace(instructions.train, seed=seed, utility=clips.utility)
    result = train_local(instructions.model, global_arrays, clips.x, clips.y, train_cfg, adversary)
    return LocalRound(
        device=device,
        arrays=released_arrays(instructions, global_arrays, result.arrays),
        metrics=reported_metrics(result.metrics, releases_private_metrics(instructions)),
        weight=release_weight(instructions, result.num_examples),
        dp_event=result.dp_event,
        echo=round_echo(config),
    )
