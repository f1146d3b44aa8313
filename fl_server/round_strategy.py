"""The run's strategy, from its configuration: how devices are sampled and aggregated.

`--aggregation` picks FedAvg or one of Flower's robust rules (`strategies.robust_aggregation`);
central DP replaces it with DP-FedAvg (`strategies.central_dp`: Poisson sampling, noise on
the sum, a fixed denominator). Config validation allows nothing but FedAvg under central DP.
"""

from __future__ import annotations

from fl_server.config import RunConfig
from fl_server.dp_modes import central_params
from privacy.wire.keys import ARRAYS_KEY, CONFIG_KEY, WEIGHT_KEY
from strategies.central_dp import CentralDpFedAvg
from strategies.robust_aggregation import robust_strategy
from strategies.seeded_fedavg import SeededFedAvg


def build_strategy(cfg: RunConfig) -> SeededFedAvg:
    params = central_params(cfg)
    if params is not None:
        return CentralDpFedAvg(
            params=params, seed=cfg.seed, fraction_train=1.0,
            min_train_nodes=cfg.min_train_devices, min_available_nodes=cfg.min_train_devices,
            weighted_by_key=WEIGHT_KEY, arrayrecord_key=ARRAYS_KEY, configrecord_key=CONFIG_KEY)
    return robust_strategy(cfg.aggregation, byzantine=cfg.byzantine_devices,
                           trim_fraction=cfg.trim_fraction, seed=cfg.seed,
                           fraction_train=cfg.fraction_train,
                           min_train_nodes=cfg.min_train_devices,
                           min_available_nodes=cfg.min_train_devices,
                           weighted_by_key=WEIGHT_KEY, arrayrecord_key=ARRAYS_KEY,
                           configrecord_key=CONFIG_KEY)
