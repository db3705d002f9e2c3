"""Google credentials for the fake: service-account keys it issues, the OAuth ``/token`` exchange, access tokens
for VMs' metadata servers, and the check of each API call's ``Authorization``."""

from __future__ import annotations

import base64
import binascii
import json
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from .errors import ApiError

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class _Key:
    email: str
    public_key: Any


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Auth:
    """Keys and tokens of one fake; ``used`` counts how API calls authenticated (anonymous / token / jwt)."""

    def __init__(self, token_uri: str, require_auth: bool = False) -> None:
        self.token_uri, self.require_auth = token_uri, require_auth
        self.used: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._tokens: dict[str, str] = {}
        self._random = random.Random()

    def service_account_info(self, project: str, secret_marker: str | None = None,
                             email: str | None = None) -> dict[str, str]:
        """A service-account key (a fresh RSA key) whose token_uri is this fake's /token."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        key_id = secrets.token_hex(20) if secret_marker is None else f"{secret_marker}-{secrets.token_hex(8)}"
        email = email or f"spot-tests@{project}.iam.gserviceaccount.com"
        with self._lock:
            self._keys[key_id] = _Key(email, key.public_key())
        return {
            "type": "service_account", "project_id": project, "private_key_id": key_id, "private_key": pem,
            "client_email": email, "client_id": str(self._random.randrange(10**20, 10**21)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
            "universe_domain": "googleapis.com",
        }

    def issue_token(self, email: str) -> dict[str, Any]:
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = email
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def oauth_token(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """``POST /token``: a JWT signed by one of this fake's keys, exchanged for an access token."""
        form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        if form.get("grant_type") != JWT_GRANT:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
        try:
            claims = self._verify_jwt(form.get("assertion", ""))
        except ValueError as err:
            return 400, {"error": "invalid_grant", "error_description": str(err)}
        return 200, self.issue_token(claims["iss"])

    def authenticate(self, headers: dict[str, str]) -> str:
        """The caller's identity (an operation's ``user``); ApiError 401 for bad credentials."""
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if auth is None:
            if self.require_auth:
                raise ApiError(401, "required", "Login Required.")
            self.used["anonymous"] += 1
            return "anonymous@example.com"
        scheme, _, token = auth.partition(" ")
        with self._lock:
            email = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if email is not None:
            self.used["token"] += 1
            return email
        try:
            claims = self._verify_jwt(token) if scheme.lower() == "bearer" else None
        except ValueError:
            claims = None
        if claims is None:
            raise ApiError(401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 "
                                             "access token, login cookie or other valid authentication credential.")
        self.used["jwt"] += 1  # a self-signed JWT: what compute_v1 sends for service-account keys
        return claims["iss"]

    def _verify_jwt(self, token: str) -> dict[str, Any]:
        """Claims of a JWT signed by one of the keys this fake issued; ValueError otherwise."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            head, body, signature = token.split(".")
            header, claims = json.loads(_b64url_decode(head)), json.loads(_b64url_decode(body))
            with self._lock:
                key = self._keys[header["kid"]]
            key.public_key.verify(_b64url_decode(signature), f"{head}.{body}".encode(), padding.PKCS1v15(),
                                  hashes.SHA256())
        except (ValueError, KeyError, TypeError, binascii.Error, InvalidSignature) as err:
            raise ValueError(f"invalid JWT ({type(err).__name__})") from None
        if claims.get("iss") != key.email:
            raise ValueError("JWT issuer is not the key's service account")
        if float(claims.get("exp", 0)) < time.time():
            raise ValueError("JWT expired")
        return claims
