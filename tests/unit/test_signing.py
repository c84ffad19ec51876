"""Ed25519 signatures over payload content addresses: sign, pin, refuse; the key file is created once."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from plada.client import PladaClient
from plada.shared.errors import SignatureError
from plada.shared.payload import Payload, encode_payload, payload_sha256
from plada.shared.signing import PublicKey, load_or_create_key

SHA = "ab" * 32


def test_sign_verify_and_every_way_to_fail(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    other = load_or_create_key(tmp_path / "other")
    sig = key.sign(SHA)
    pub = PublicKey.parse(key.public.text)
    pub.verify(SHA, sig)
    with pytest.raises(SignatureError, match="unsigned"):
        pub.verify(SHA, None)
    with pytest.raises(SignatureError, match="not by the pinned key"):
        pub.verify(SHA, other.sign(SHA))
    with pytest.raises(SignatureError, match="does not verify"):
        pub.verify("cd" * 32, sig)  # a signature for another payload
    forged = sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")
    with pytest.raises(SignatureError, match="does not verify"):
        pub.verify(SHA, forged)
    for bad in ("", "ed25519:", "rsa:AAAA", "ed25519:not-base64!!", "ed25519:" + "A" * 10):
        with pytest.raises(SignatureError, match="not a plada public key"):
            PublicKey.parse(bad)


def test_key_file_is_private_stable_and_created_once_under_a_race(tmp_path: Path) -> None:
    path = tmp_path / "data" / "signing.key"
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path).public.text)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and load_or_create_key(path).public.text == keys[0]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name != "signing.key"]  # no temp files left
    path.write_bytes(b"short")
    with pytest.raises(SignatureError, match="damaged"):
        load_or_create_key(path)


def _serving(data: bytes, signature: str | None) -> httpx.MockTransport:
    sha = payload_sha256(data)

    def handler(_r: httpx.Request) -> httpx.Response:
        headers = {"ETag": f'"{sha}"', "X-Plada-Version": "1"} | ({"X-Plada-Signature": signature} if signature else {})
        return httpx.Response(200, content=data, headers=headers)

    return httpx.MockTransport(handler)


def test_client_with_a_pinned_key_refuses_unsigned_and_missigned(tmp_path: Path) -> None:
    data = encode_payload(
        Payload(
            indices=np.array([1, 2]),
            labels=np.array([0, 1]),
            classes=("a", "b"),
            pool_id="cd" * 32,
            n_pool=10,
            task="t",
            version=1,
        )
    )
    key, other = load_or_create_key(tmp_path / "k"), load_or_create_key(tmp_path / "o")
    good = key.sign(payload_sha256(data))
    with PladaClient(
        "http://x.test", cache_dir=tmp_path / "c1", transport=_serving(data, good), trust=key.public.text
    ) as c:
        assert c.fetch("t").sha256 == payload_sha256(data)
        assert c.cache.signature(payload_sha256(data)) == good
    for i, sig in enumerate((None, other.sign(payload_sha256(data)))):
        with (
            PladaClient(
                "http://x.test", cache_dir=tmp_path / f"c{i + 2}", transport=_serving(data, sig), trust=key.public
            ) as c,
            pytest.raises(SignatureError),
        ):
            c.fetch("t")
        assert c.cache.entries() == []  # nothing refused is cached
    # without a pinned key, signatures are kept but not required
    with PladaClient("http://x.test", cache_dir=tmp_path / "c9", transport=_serving(data, None)) as c:
        assert c.fetch("t").version == 1
