"""Sign as a CDS Client does (#trusting-cds-clients): load the key, pick the algorithm, make JWTs.

Also the other side of the key: ``jwk_set`` prints the public JWK Set a service trusts.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.cli.exit_codes import EXIT_USAGE
from cds_service.errors import CliError

JWT_LIFETIME_S = 300  # spec #trusting-cds-clients: short-lived; Inferno and the sandbox use 5 min


def load_private_key(path: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Read an unencrypted PEM RSA or EC private key (``--jwt-key``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read --jwt-key {path}: {exc.strerror}", EXIT_USAGE) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CliError(
            f"--jwt-key {path} is not an unencrypted PEM private key ({exc})", EXIT_USAGE
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CliError(
            f"--jwt-key {path}: only RSA and EC keys can sign CDS Hooks JWTs", EXIT_USAGE
        )
    return key


def default_algorithm(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """Spec #jwt-signing-algorithm recommends ES384 and RS384; pick the one the key fits."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
        key.curve.name, "ES384"
    )


def client_jwt(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    iss: str,
    kid: str,
    audience: str,
    algorithm: str | None = None,
    jku: str | None = None,
) -> str:
    """Sign the JWT a CDS client sends: aud is the endpoint URL, jti fresh per call (#trusting)."""
    now = int(time.time())
    claims = {
        "iss": iss,
        "aud": audience,
        "iat": now,
        "exp": now + JWT_LIFETIME_S,
        "jti": str(uuid.uuid4()),
    }
    headers: dict[str, Any] = {"kid": kid, "typ": "JWT"}
    if jku:
        headers["jku"] = jku
    return jwt.encode(claims, key, algorithm=algorithm or default_algorithm(key), headers=headers)


@dataclass(frozen=True)
class JwtSigner:
    """Make one token per endpoint called (discovery and service have different audiences)."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None
    iss: str | None
    kid: str | None
    algorithm: str | None
    jku: str | None
    fixed: str | None

    def headers(self, audience: str) -> dict[str, str]:
        """The Authorization header for a call to ``audience``; none without a key or token."""
        if self.fixed:
            return {"Authorization": f"Bearer {self.fixed}"}
        if self.key is None or not self.iss or not self.kid:
            return {}
        token = client_jwt(
            self.key,
            iss=self.iss,
            kid=self.kid,
            audience=audience,
            algorithm=self.algorithm,
            jku=self.jku,
        )
        return {"Authorization": f"Bearer {token}"}


def jwk_set(path: str, kid: str, alg: str | None) -> dict[str, Any]:
    """The public JWK Set for a PEM key, the file a service's CDS_JWT_ISSUERS can point at."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc
    public: Any
    try:
        public = serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError):
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise CliError(f"{path} is not a PEM key", EXIT_USAGE) from exc
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        alg = alg or "RS384"
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        alg = alg or {"secp256r1": "ES256", "secp521r1": "ES512"}.get(public.curve.name, "ES384")
    else:
        raise CliError(f"{path}: only RSA and EC keys can sign CDS Hooks JWTs", EXIT_USAGE)
    return {"keys": [{**jwk, "kid": kid, "alg": alg, "use": "sig"}]}
