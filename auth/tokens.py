"""JWTs: access tokens for API calls, and download tokens bound to one file of one user.

Both are HS256 with ``JWT_SECRET``; they differ by audience (and a ``typ`` claim), so one
kind is never accepted as the other. Validation accepts only HS256, the configured issuer
and audience, and requires every claim we rely on.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from auth.settings import Settings

ALGORITHM = "HS256"
MAX_TOKEN_CHARS = 4096
ACCESS = "access"
DOWNLOAD = "download"


class TokenError(Exception):
    """The token is not valid (expired, tampered, wrong kind …)."""


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    email: str
    role: str
    expires_at: int


@dataclass(frozen=True)
class DownloadClaims:
    user_id: str
    file_id: str
    expires_at: int


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.s.jwt_secret, algorithm=ALGORITHM)

    def _decode(self, token: str, audience: str, required: list[str]) -> dict[str, Any]:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenError("invalid token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.s.jwt_secret,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self.s.jwt_issuer,
                leeway=self.s.jwt_leeway_seconds,
                options={"require": ["iat", "nbf", "exp", "iss", "aud", "jti", "sub", *required]},
            )
        except jwt.PyJWTError as error:
            raise TokenError("invalid or expired token") from error
        if not isinstance(claims.get("sub"), str) or not str(claims["sub"]).isdigit():
            raise TokenError("invalid token")
        return claims

    def issue_access(self, user_id: int, email: str, role: str) -> tuple[str, int]:
        now = int(time.time())
        exp = now + self.s.access_token_ttl
        token = self._encode(
            {
                "sub": str(user_id),
                "email": email,
                "role": role,
                "typ": ACCESS,
                "iat": now,
                "nbf": now,
                "exp": exp,
                "iss": self.s.jwt_issuer,
                "aud": self.s.jwt_audience,
                "jti": uuid.uuid4().hex,
            }
        )
        return token, exp

    def validate_access(self, token: str) -> AccessClaims:
        claims = self._decode(token, self.s.jwt_audience, ["email", "role", "typ"])
        if claims.get("typ") != ACCESS:
            raise TokenError("invalid token")
        return AccessClaims(str(claims["sub"]), str(claims["email"]), str(claims["role"]), int(claims["exp"]))

    def issue_download(self, user_id: int, file_id: str, ttl_seconds: int) -> tuple[str, int]:
        now = int(time.time())
        ttl = self.s.download_token_ttl if ttl_seconds <= 0 else ttl_seconds
        ttl = min(ttl, self.s.download_token_max_ttl)
        exp = now + ttl
        token = self._encode(
            {
                "sub": str(user_id),
                "fid": file_id,
                "typ": DOWNLOAD,
                "iat": now,
                "nbf": now,
                "exp": exp,
                "iss": self.s.jwt_issuer,
                "aud": self.s.download_audience,
                "jti": uuid.uuid4().hex,
            }
        )
        return token, exp

    def validate_download(self, token: str) -> DownloadClaims:
        claims = self._decode(token, self.s.download_audience, ["fid", "typ"])
        if claims.get("typ") != DOWNLOAD or not isinstance(claims.get("fid"), str):
            raise TokenError("invalid token")
        return DownloadClaims(str(claims["sub"]), str(claims["fid"]), int(claims["exp"]))
