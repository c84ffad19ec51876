"""The server's signing key: what a client pins to verify every payload's signature."""

from __future__ import annotations

from fastapi import APIRouter, Request

from plada.shared.schemas import SigningKeyInfo

router = APIRouter(prefix="/v1/signing-key", tags=["trust"])


@router.get("", response_model=SigningKeyInfo, summary="The public key that signs every version (pin it)")
def get_signing_key(request: Request) -> SigningKeyInfo:
    pub = request.app.state.signing_key.public
    return SigningKeyInfo(algorithm="ed25519", public_key=pub.text, key_id=pub.key_id)
