"""The wire contract between a device and the server.

Everything the two sides say to each other is defined here, once: message types and
action names (`keys`), record keys, codecs for model arrays and DP events, the typed
payloads of each exchange (check-in, train instructions, budget plan, upload batches)
and the round history the server writes. Both sides import this package; it imports
neither of them (it lives in `privacy`, which imports no other fedmsr package), so a
device build needs no server code and the server never imports the device's ClientApp
module to learn a key name.

Why one place: a key spelled twice drifts (a renamed key on one side silently turns a
field into "missing"), and every change of the wire format is a compatibility decision
that should be visible in one diff.
"""
