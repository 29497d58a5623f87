"""JWT verification and issuing on top of pyjwt: pinned algorithms, one key family, a clock.

Kept apart from ``identity.py`` so the resolver chain reads without the key
handling; ``identity`` re-exports the public names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidSubjectError

from .errors import ConfigurationError, Unauthorized, ValidationError
from .settings import JWTSettings, Settings
from .types import Identity, validate_tenant_id

Clock = Callable[[], float]

#: Every algorithm tenantkit accepts, by key family. ``none`` is in no family.
FAMILIES: Mapping[str, str] = {
    **{alg: "hmac" for alg in ("HS256", "HS384", "HS512")},
    **{alg: "rsa" for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    **{alg: "ec" for alg in ("ES256", "ES256K", "ES384", "ES512", "ES521")},
    "EdDSA": "okp",
}
_PUBLIC_KEY_TYPES: Mapping[str, tuple[type[Any], ...]] = {
    "rsa": (RSAPublicKey,),
    "ec": (EllipticCurvePublicKey,),
    "okp": (Ed25519PublicKey, Ed448PublicKey),
}
#: Larger bearer values are refused before pyjwt parses them.
MAX_TOKEN_CHARS = 8192

# Most specific first: several of these subclass DecodeError or InvalidTokenError.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.InvalidSignatureError, "token signature invalid"),
    (jwt.InvalidKeyError, "token key not accepted"),
    (InvalidSubjectError, "token subject malformed"),
    (jwt.InvalidIssuedAtError, "token iat claim malformed"),
    (jwt.DecodeError, "malformed token"),
)


def key_family(algorithms: Iterable[str]) -> str:
    """Return the one key family ``algorithms`` share; ConfigurationError otherwise."""
    algs = tuple(algorithms)
    if not algs:
        raise ConfigurationError("jwt.algorithms must name at least one algorithm")
    unknown = [alg for alg in algs if alg not in FAMILIES]
    if unknown:
        raise ConfigurationError(
            f"unsupported JWT algorithm(s) {unknown}; choose from {sorted(FAMILIES)}"
        )
    families = {FAMILIES[alg] for alg in algs}
    if len(families) > 1:
        # One verifier mixing HMAC and public-key algorithms is the classic
        # key-confusion hole: the public key ends up used as an HMAC secret.
        raise ConfigurationError(
            f"jwt.algorithms {list(algs)} mix key families {sorted(families)}; "
            "pin algorithms of one family (HS* with a secret, or RS*/PS*, ES*, EdDSA "
            "with a public key)"
        )
    return families.pop()


def verification_key(settings: JWTSettings) -> Any:
    """Return the prepared key that verifies tokens under ``settings``, checked for misuse."""
    family = key_family(settings.algorithms)
    if family == "hmac":
        if not settings.secret:
            raise ConfigurationError(f"{settings.algorithms[0]} needs jwt.secret")
        if "-----BEGIN" in settings.secret or settings.secret.startswith("ssh-"):
            raise ConfigurationError(
                "jwt.secret holds a PEM/SSH key; HMAC algorithms need a shared secret, "
                "public keys go in jwt.public_key with RS256/ES256"
            )
        key = _prepare(settings.algorithms[0], settings.secret, "jwt.secret")
    else:
        if not settings.public_key:
            raise ConfigurationError(f"{settings.algorithms[0]} needs jwt.public_key (PEM)")
        key = _prepare(settings.algorithms[0], settings.public_key, "jwt.public_key")
        if not isinstance(key, _PUBLIC_KEY_TYPES[family]):
            raise ConfigurationError(
                f"jwt.public_key must be the public {family.upper()} key for "
                f"{list(settings.algorithms)}, not {type(key).__name__}"
            )
    for name in settings.algorithms:
        # Checked here once, so a weak key fails at start-up, not on every request.
        weak = get_default_algorithms()[name].check_key_length(key)
        if weak:
            raise ConfigurationError(f"the JWT key is too weak for {name}: {weak}")
    return key


def signing_key(settings: JWTSettings, private_key: str | bytes | None) -> Any:
    """Return the key that signs tokens under ``settings`` (the secret, or ``private_key``)."""
    family = key_family(settings.algorithms)
    if family == "hmac":
        if private_key is not None:
            raise ConfigurationError("HMAC tokens are signed with jwt.secret, not a private key")
        return verification_key(settings)
    if private_key is None:
        raise ConfigurationError(f"{settings.algorithms[0]} tokens need private_key (PEM)")
    return _prepare(settings.algorithms[0], private_key, "private_key")


def _prepare(alg: str, raw: str | bytes, what: str) -> Any:
    try:
        return get_default_algorithms()[alg].prepare_key(raw)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        kind = "secret" if FAMILIES[alg] == "hmac" else f"{FAMILIES[alg].upper()} key (PEM)"
        raise ConfigurationError(f"{what} is not a usable {kind} for {alg}") from exc


class TokenVerifier:
    """Verify bearer JWTs and turn their claims into an ``Identity``."""

    def __init__(self, settings: JWTSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self._key = verification_key(settings)
        self._clock = clock or time.time
        if settings.leeway_seconds < 0:
            raise ConfigurationError("jwt.leeway_seconds must not be negative")

    def identity(self, token: str) -> Identity:
        """Return the identity ``token`` proves; ``Unauthorized`` for any defect."""
        if len(token) > MAX_TOKEN_CHARS:
            raise _unauthorized("token too large")
        try:
            payload = self._decode(token)
        except jwt.PyJWTError as exc:
            raise _unauthorized(_reason(exc)) from exc
        return self._to_identity(payload)

    def _decode(self, token: str) -> dict[str, Any]:
        s = self.settings
        payload: dict[str, Any] = jwt.decode(
            token,
            self._key,
            algorithms=list(s.algorithms),
            audience=s.audience,
            issuer=s.issuer,
            # pyjwt reads the wall clock itself; the time claims are checked
            # below against the injected clock instead.
            options={
                "require": ["exp"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "enforce_minimum_key_length": True,
            },
        )
        _check_times(payload, self._clock(), float(s.leeway_seconds))
        return payload

    def _to_identity(self, payload: Mapping[str, Any]) -> Identity:
        s = self.settings
        raw_tenant = payload.get(s.tenant_claim)
        if raw_tenant is None:
            raise _unauthorized(f"token lacks the '{s.tenant_claim}' claim")
        try:
            tenant_id = validate_tenant_id(raw_tenant, field_name=s.tenant_claim)
        except ValidationError as exc:
            raise _unauthorized(f"token '{s.tenant_claim}' claim is malformed") from exc
        subject = payload.get("sub")
        return Identity(
            tenant_id=tenant_id,
            source="jwt",
            authenticated=True,
            subject=subject if isinstance(subject, str) else None,
            roles=_string_set(payload.get(s.roles_claim), s.roles_claim, split=False),
            scopes=_string_set(payload.get(s.scopes_claim), s.scopes_claim, split=True),
            claims=MappingProxyType(dict(payload)),
        )


def _check_times(payload: Mapping[str, Any], now: float, leeway: float) -> None:
    """Apply pyjwt's exp/nbf/iat rules at ``now`` (RFC 7519 NumericDate numbers only)."""
    if _numeric_date(payload, "exp") <= now - leeway:
        raise jwt.ExpiredSignatureError("Signature has expired")
    for claim in ("nbf", "iat"):
        if claim in payload and _numeric_date(payload, claim) > now + leeway:
            raise jwt.ImmatureSignatureError(f"The token is not yet valid ({claim})")


def _numeric_date(payload: Mapping[str, Any], claim: str) -> float:
    value = payload[claim]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise jwt.DecodeError(f"{claim} must be a number")
    return float(value)


def _string_set(value: object, claim: str, *, split: bool) -> frozenset[str]:
    """Read a role or scope claim: a string (space-separated if ``split``) or a list of them."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split() if split else [value]) - {""}
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value) - {""}
    raise _unauthorized(f"token '{claim}' claim must be a string or a list of strings")


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the '{exc.claim}' claim"
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "invalid token"


def _unauthorized(reason: str) -> Unauthorized:
    # RFC 6750 section 3: tell the client the token, not the request, is at fault.
    challenge = f'Bearer realm="tenantkit", error="invalid_token", error_description="{reason}"'
    return Unauthorized(reason, headers={"WWW-Authenticate": challenge})


def encode_token(
    settings: JWTSettings | Settings,
    *,
    tenant_id: str,
    subject: str,
    roles: Iterable[str] = (),
    scopes: Iterable[str] = (),
    expires_in: float | timedelta = 3600,
    private_key: str | bytes | None = None,
    clock: Clock | None = None,
    **claims: Any,
) -> str:
    """Issue a token that ``JWTResolver`` under the same settings accepts.

    Signs with the first pinned algorithm: HS* with ``settings.secret``,
    RS*/PS*/ES*/EdDSA with ``private_key`` (PEM). ``aud``/``iss`` come from the
    settings; ``roles`` becomes the roles claim (a string for one role, a list
    otherwise), ``scopes`` a space-separated scope claim. Extra ``claims`` are
    added last and may override the standard ones (tests mint expired tokens
    this way), except the tenant claim, which only ``tenant_id`` sets.
    """
    s = settings.jwt if isinstance(settings, Settings) else settings
    validate_tenant_id(tenant_id)
    if s.tenant_claim in claims:
        raise ValidationError(f"set the tenant with tenant_id=, not {s.tenant_claim}=")
    seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
    if not seconds > 0:
        raise ValidationError("expires_in must be positive", field="expires_in")
    now = int((clock or time.time)())
    payload: dict[str, Any] = {
        "sub": subject,
        s.tenant_claim: tenant_id,
        "iat": now,
        "exp": now + math.ceil(seconds),
    }
    if s.audience is not None:
        payload["aud"] = s.audience
    if s.issuer is not None:
        payload["iss"] = s.issuer
    role_list = sorted(set(roles))
    if role_list:
        payload[s.roles_claim] = role_list[0] if len(role_list) == 1 else role_list
    scope_list = sorted(set(scopes))
    if scope_list:
        payload[s.scopes_claim] = " ".join(scope_list)
    payload.update(claims)
    return jwt.encode(payload, signing_key(s, private_key), algorithm=s.algorithms[0])
