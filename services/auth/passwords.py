"""Username and password rules, and argon2 hashing through pwdlib.

Rules raise `InvalidInput` naming the field, so a caller learns what to fix. Hashing uses pwdlib's Argon2 with
the library's default cost unless settings lower it (tests do, to stay fast).
"""
from __future__ import annotations

import re

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from services.common.errors import InvalidInput

USERNAME_MIN, USERNAME_MAX = 3, 64
PASSWORD_MIN, PASSWORD_MAX = 10, 256
USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


def validate_username(username: str, field: str = "username") -> str:
    if not username:
        raise InvalidInput(field, "is required")
    if not USERNAME_MIN <= len(username) <= USERNAME_MAX:
        raise InvalidInput(field, f"must be {USERNAME_MIN} to {USERNAME_MAX} characters long")
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInput(field, "may contain only lowercase letters a-z, digits and . _ - "
                                  "and must start with a letter or digit")
    return username


def validate_password(password: str, username: str, field: str = "password") -> str:
    """Minimum strength: length, at least two character classes, not the username."""
    if not password:
        raise InvalidInput(field, "is required")
    if len(password) < PASSWORD_MIN:
        raise InvalidInput(field, f"must be at least {PASSWORD_MIN} characters long")
    if len(password) > PASSWORD_MAX:
        raise InvalidInput(field, f"must be at most {PASSWORD_MAX} characters long")
    classes = sum([any(c.islower() for c in password), any(c.isupper() for c in password),
                   any(c.isdigit() for c in password), any(not c.isalnum() for c in password)])
    if classes < 2:
        raise InvalidInput(field, "must mix at least two of: lowercase, uppercase, digits, symbols")
    if username and username.lower() in password.lower():
        raise InvalidInput(field, "must not contain the username")
    if len(set(password)) < 4:
        raise InvalidInput(field, "is too repetitive (needs at least 4 different characters)")
    return password


class PasswordHasher:
    """pwdlib Argon2; 0 for a cost keeps the library default."""

    def __init__(self, time_cost: int = 0, memory_kib: int = 0):
        params = {}
        if time_cost:
            params["time_cost"] = time_cost
        if memory_kib:
            params["memory_cost"] = memory_kib
        self._hash = PasswordHash((Argon2Hasher(**params),))
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        return self._hash.hash(password)

    def verify(self, password: str, password_hash: str) -> tuple[bool, str | None]:
        """(matches, new hash when the stored one uses outdated parameters)."""
        return self._hash.verify_and_update(password, password_hash)

    def burn(self, password: str) -> None:
        """Verify against a dummy hash when the user does not exist: the same cost as a real check, so the
        response time does not reveal which usernames exist."""
        if self._dummy is None:
            self._dummy = self._hash.hash("dummy-password-for-timing")
        self._hash.verify(password, self._dummy)
