#!/usr/bin/env python3
"""Mint an ES256 access token and the JWKS that verifies it, for the benchmark.

Standard library only; the signature is made by `openssl dgst -sha256 -sign` and converted from
DER to the JOSE r||s form. Not a general JWT library: it signs exactly what the benchmark needs.

Usage: es256_token.py KEY.pem KID ISSUER AUDIENCE CLIENT_ID LIFETIME_SECONDS JWKS_OUT
Prints the token on stdout and writes the JWKS ({"keys": [public JWK]}) to JWKS_OUT.
"""

import base64
import json
import subprocess
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_point(key_pem: str) -> tuple[bytes, bytes]:
    """x and y of a P-256 key: the last 65 bytes of its SubjectPublicKeyInfo are 04 || x || y."""
    der = subprocess.run(
        ["openssl", "ec", "-in", key_pem, "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    point = der[-65:]
    if point[0] != 4:
        raise SystemExit("not an uncompressed P-256 point")
    return point[1:33], point[33:65]


def der_to_jose(der: bytes) -> bytes:
    """ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } -> r || s, 32 bytes each."""

    def read_len(buf: bytes, i: int) -> tuple[int, int]:
        n = buf[i]
        if n < 0x80:
            return n, i + 1
        count = n & 0x7F
        return int.from_bytes(buf[i + 1 : i + 1 + count], "big"), i + 1 + count

    if der[0] != 0x30:
        raise SystemExit("signature is not a DER sequence")
    _, i = read_len(der, 1)
    out = b""
    for _ in range(2):
        if der[i] != 0x02:
            raise SystemExit("signature component is not a DER integer")
        n, i = read_len(der, i + 1)
        value = int.from_bytes(der[i : i + n], "big")
        out += value.to_bytes(32, "big")
        i += n
    return out


def main() -> None:
    if len(sys.argv) != 8:
        raise SystemExit(__doc__)
    key_pem, kid, issuer, audience, client_id, lifetime, jwks_out = sys.argv[1:]
    x, y = public_point(key_pem)
    jwk = {"kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y), "kid": kid, "alg": "ES256", "use": "sig"}
    with open(jwks_out, "w", encoding="utf-8") as f:
        json.dump({"keys": [jwk]}, f)

    now = int(time.time())
    header = {"alg": "ES256", "typ": "at+jwt", "kid": kid}
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": client_id,
        "client_id": client_id,
        "iat": now,
        "exp": now + int(lifetime),
        "jti": b64url(now.to_bytes(8, "big")),
    }
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    der = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key_pem],
        input=signing_input.encode(),
        check=True,
        capture_output=True,
    ).stdout
    print(signing_input + "." + b64url(der_to_jose(der)))


if __name__ == "__main__":
    main()
