"""Deterministic synthetic life-log video for a simulated device fleet.

A :class:`FleetSpec` fixes a whole fleet: every device's wearer, home, daily routine and
each of its clips, as bit-identical pixels and labels, whoever generates them and in
whatever order. The server generates held-out and attacker footage from it, and each
simulated device regenerates its own clips from the spec it is sent, so the same world
serves both sides (device code reaches it through ``fl_client.clip_source``). See
``docs/synthetic-data.md``.

The package is split by concept:

* ``world``: the fleet, its people, places and routines, and the plan of each clip;
* ``raster``: the canvas and its soft-edged drawing primitives;
* ``people``: poses and hand/camera motion per activity, and drawing a person;
* ``render``: turning a planned clip into frames;
* ``fleet``: the entry points (a device's clips or metadata, a fleet's batch).

The clip containers and label vocabularies are those of every footage source
(:mod:`privacy.clips`), re-exported here for convenience.
"""

from privacy.clips import ACTIVITIES, LABEL_KEYS, OBJECTS, Clip, ClipBatch, ClipMeta, stack_clips
from privacy.synthetic.fleet import device_clips, device_metas, fleet_batch
from privacy.synthetic.world import (
    FPS,
    PROFILES,
    SHARED_LOCATIONS,
    VIEWS,
    FleetSpec,
    device_profile,
    location_name,
    num_locations,
)

__all__ = [
    "ACTIVITIES",
    "FPS",
    "LABEL_KEYS",
    "OBJECTS",
    "PROFILES",
    "SHARED_LOCATIONS",
    "VIEWS",
    "Clip",
    "ClipBatch",
    "ClipMeta",
    "FleetSpec",
    "device_clips",
    "device_metas",
    "device_profile",
    "fleet_batch",
    "location_name",
    "num_locations",
    "stack_clips",
]
