"""Unlinkable collection of representations: an ESA / Prochlo-style shuffler.

Three parties, three keys. The device seals each record to the *analyzer* (inner layer),
then the list of its M inner ciphertexts to the *shuffler* (outer layer). The server only
relays outer blobs it cannot read; the shuffler opens the outer layer, forgets the sender
and releases the inner ciphertexts of a whole collection in a random order once enough
distinct senders contributed; the analyzer opens what comes out and stores it with no
sender. Nothing here does I/O: `sealed` is the sealed box, `records` the fixed-size plaintext
formats and the collection label, `shuffler` the shuffler's state machine (its memory of
closed collections and seen blobs goes to a journal the caller supplies), `analyzer` the
analyzer's open, `pin` what a device is provisioned with: the one shuffler key it seals to
(Bittau et al., "Prochlo", SOSP 2017).
"""
