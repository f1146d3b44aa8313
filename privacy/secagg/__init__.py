"""Secure aggregation (SecAgg+, Bell et al. 2020): the math and crypto both halves share.

The client half lives in `fl_client/secagg_client.py`, the server half in
`strategies/secagg_server.py`; both build on these modules, which is why they sit in
`privacy` (the one package both may import). Nothing here imports fl_client, fl_server,
strategies or monitoring, and no NumPy/`random` generator is used anywhere: every secret
comes from `os.urandom`, every mask from ChaCha20 keyed by an agreed secret.
"""
