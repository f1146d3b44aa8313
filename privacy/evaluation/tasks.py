"""Which labels the evaluation's probes and attackers predict, by name.

The synthetic benchmark knows its ground truth (activity, wearer, location, hour, indoor,
objects); an operator's labelled manifest has whatever columns it has. A :class:`Tasks`
names them once, and the DTP probes (:mod:`.dtp`), the attackers (:mod:`.leakage`), the
operating point (:mod:`.harness`) and the report (:mod:`.report`) read it:

* ``utility``: the downstream task the encoders are trained for (the DTP headline);
* ``unseen``: single-label DTP tasks no encoder is trained for;
* ``multilabel``: multi-hot DTP tasks (macro ROC AUC);
* ``private``: the attributes the privacy attacks infer, single clip and accumulated;
* ``identity``: the private attribute the table's headline identity columns (and the
  operating point) report, and the one whose fusion curve joins the set-statistics
  attack in ``identity_best``.

An attribute is read from a label array of its own name; two names are derived when a
batch has no array of that name (the synthetic fleet's case): ``identity`` is the
``wearer`` label and ``routine`` the hour of day in :data:`HOUR_BIN`-hour bins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["HOUR_BIN", "RESERVED_ATTRIBUTES", "SYNTHETIC", "Tasks", "attribute", "identity_word"]

HOUR_BIN = 4  # hours per routine bin
#: names the leakage curves use for their own attacks: no private attribute may take them
RESERVED_ATTRIBUTES: frozenset[str] = frozenset({"identity_set", "identity_best", "linkage_auc"})


def attribute(labels: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """The labels of attribute `key` (see the module docstring for derived names)."""
    if key in labels:
        return np.asarray(labels[key])
    if key == "routine" and "hour" in labels:
        return np.asarray(labels["hour"]) // HOUR_BIN
    if key == "identity" and "wearer" in labels:
        return np.asarray(labels["wearer"])
    raise KeyError(f"no label {key!r} (labels: {', '.join(sorted(labels))})")


@dataclass(frozen=True)
class Tasks:
    utility: str = "activity"
    unseen: tuple[str, ...] = ("indoor",)
    multilabel: tuple[str, ...] = ("objects",)
    private: tuple[str, ...] = ("identity", "location", "routine")
    identity: str = "identity"

    def __post_init__(self) -> None:
        if not self.private:
            raise ValueError("Tasks.private needs at least one attribute to attack")
        if self.identity not in self.private:
            raise ValueError(f"Tasks.identity {self.identity!r} must be one of the private "
                             f"attributes {self.private}")
        if self.utility in self.private:
            raise ValueError(f"the utility label {self.utility!r} cannot also be private")
        clash = RESERVED_ATTRIBUTES.intersection(self.private)
        if clash:
            raise ValueError(f"private attribute name(s) {sorted(clash)} are taken by the "
                             "leakage curves; rename the label")
        names = (self.utility, *self.unseen, *self.multilabel, *self.private)
        if len(set(names)) != len(names):
            raise ValueError(f"a label appears twice among the tasks: {names}")


#: the synthetic benchmark's tasks (what `fedmsr eval` without --dataset measures)
SYNTHETIC = Tasks()


def identity_word(tasks: Tasks) -> str:
    """How reports name the identity attribute: "identity", or "identity (wearer)"."""
    return "identity" if tasks.identity == "identity" else f"identity ({tasks.identity})"
