"""docs/representations.md's payload-v1 decoder, run as printed, against fedmsr's payloads.

The doc promises a decoder that needs only numpy and the standard library: the block is
taken from the doc, its imports checked, and its output compared with
`privacy.payload.decode_payload` on payloads a real device produced (`answer_upload`)
and on every dtype the encoder writes.
"""

from __future__ import annotations

import ast
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fl_client.clip_source import SyntheticSource
from fl_client.info_ledger import InfoLedger
from fl_client.uploads import answer_upload
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.payload import decode_payload, encode_payload
from privacy.synthetic import FleetSpec
from privacy.wire.upload import UploadRequest, decode_batch, encoder_version

DOC = Path(__file__).resolve().parents[1] / "docs" / "representations.md"


def doc_block() -> str:
    match = re.search(r"<!-- payload-v1-decoder:begin -->\s*```python\n(.*?)```\s*"
                      r"<!-- payload-v1-decoder:end -->", DOC.read_text(), re.DOTALL)
    assert match, "docs/representations.md lost its payload-v1 decoder block"
    return match.group(1)


@pytest.fixture(scope="module")
def decoder():
    source = doc_block()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"numpy", "struct", "zlib"}, imported
    assert len(source.splitlines()) <= 40
    namespace: dict = {}
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102  (the doc's own code)
    return namespace["decode_payload_v1"]


def device_payloads(dtype: str) -> list[bytes]:
    """A real device's answer to an upload request: its records' payload bytes."""
    model = EncoderConfig()
    arrays = state_to_numpy(build_model(model, seed=0))
    req = UploadRequest("run-d", 1, 1, 4, dtype, encoder_version(model, arrays), 0.0, 0)
    capture = SyntheticSource(FleetSpec(seed=2, num_devices=2, days=2, clips_per_day=4), 0).capture(1, 4)
    with tempfile.TemporaryDirectory() as state:
        blob = answer_upload(req, model, arrays, capture, InfoLedger.at(Path(state)), None,
                             np.random.default_rng(0))
    return [r.payload for r in decode_batch(blob).records]


@pytest.mark.parametrize("dtype", ["int8", "float16", "float32"])
def test_doc_decoder_matches_fedmsr_on_real_payloads(decoder, dtype, one_torch_thread):
    rng = np.random.default_rng(3)
    payloads = device_payloads(dtype) + [
        encode_payload(rng.normal(0, s, d), dtype) for s, d in ((1.0, 32), (6.0, 7), (0.1, 1))]
    for blob in payloads:
        ours, theirs = decode_payload(blob), decoder(blob)
        assert theirs.dtype == np.float32 and theirs.shape == ours.shape
        assert np.array_equal(theirs, ours)


def test_doc_decoder_refuses_damaged_payloads(decoder):
    good = encode_payload(np.linspace(-2, 2, 16), "int8")
    flipped = bytearray(good)
    flipped[10] ^= 0x01
    bad_magic = b"MSRX" + good[4:]
    for blob, why in ((bytes(flipped), "checksum"), (good[:-1], "bytes"), (good[:5], "short"),
                      (bad_magic, "not a payload v1")):
        with pytest.raises(ValueError, match=why):
            decoder(blob)
