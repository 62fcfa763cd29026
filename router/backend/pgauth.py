"""Password authentication for the pipelined connections: md5 and SCRAM-SHA-256 without
channel binding, as PostgreSQL uses them (RFC 5802, RFC 7677)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata

from router.backend.errors import AuthError
from router.backend.pgtypes import I32, cstr, message

__all__ = ["MAX_ROUNDS", "AuthError", "Authentication", "ScramClient", "md5_password",
           "saslprep"]


# PostgreSQL's default is 4096; a server asking for more than this is refused.
MAX_ROUNDS = 100_000


def saslprep(password: str) -> str:
    """SASLprep (RFC 4013), which PostgreSQL applies to SCRAM passwords, with its fallback:
    a password that SASLprep refuses is used as it is."""
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in password
        if not stringprep.in_table_b1(c)
    )
    normal = unicodedata.normalize("NFKC", mapped)
    if not normal:
        return password
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
        stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
        stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(check(c) for c in normal for check in prohibited):
        return password
    if any(stringprep.in_table_d1(c) for c in normal):  # right-to-left text: RFC 3454 6
        if not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1])):
            return password
        if any(stringprep.in_table_d2(c) for c in normal):
            return password
    return normal


class ScramClient:
    """The client side of SCRAM-SHA-256 without channel binding, as PostgreSQL uses it."""

    def __init__(self, password: str, *, user: str = "", nonce: str | None = None) -> None:
        self._password = saslprep(password).encode()
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self._first_bare = f"n={user},r={self.nonce}"
        self._server_signature = b""
        self.verified = False  # the server proved it knows the password

    def first_message(self) -> bytes:
        return ("n,," + self._first_bare).encode()

    def final_message(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in text.split(","))
        nonce, salt, rounds = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not 0 < rounds <= MAX_ROUNDS:  # PBKDF2 runs on the event loop
            raise AuthError(f"SCRAM: iteration count {rounds} outside 1..{MAX_ROUNDS}")
        if not nonce.startswith(self.nonce):
            raise AuthError("SCRAM: the server's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, rounds)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth = f"{self._first_bare},{text},{without_proof}".encode()
        signature = hmac.new(stored_key, auth, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self._server_signature = hmac.new(server_key, auth, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = dict(kv.split("=", 1) for kv in server_final.decode().split(",") if "=" in kv)
        given = base64.b64decode(attrs.get("v", ""))
        if not self._server_signature or not hmac.compare_digest(given, self._server_signature):
            raise AuthError("SCRAM: the server's signature does not match")
        self.verified = True


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


class Authentication:
    """The client's side of the startup exchange: answers each AuthenticationRequest ('R')
    body with the message to send, and notes when the server said AuthenticationOk."""

    def __init__(self, user: str, password: str | None) -> None:
        self._user = user
        self._password = password
        self._scram: ScramClient | None = None
        self.done = False  # AuthenticationOk seen (only then may the server say it is ready)

    def answer(self, body: bytes) -> bytes | None:
        """The reply to send, or None. Raises AuthError when it cannot go on."""
        code = I32.unpack_from(body, 0)[0]
        if code == 0:
            if self._scram is not None and not self._scram.verified:
                # SCRAM authenticates the server too: OK without its proof is refused.
                raise AuthError("the server skipped SCRAM's final message")
            self.done = True
            return None
        password = self._password
        if password is None:
            raise AuthError(f"the server asks for a password (auth code {code})")
        if code == 3:
            return message(b"p", cstr(password))
        if code == 5:
            return message(b"p", md5_password(self._user, password, body[4:8]) + b"\x00")
        if code == 10:
            mechanisms = body[4:].split(b"\x00")
            if b"SCRAM-SHA-256" not in mechanisms:
                raise AuthError(f"no supported SASL mechanism in {mechanisms!r}")
            self._scram = ScramClient(password)
            first = self._scram.first_message()
            return message(b"p", b"SCRAM-SHA-256\x00" + I32.pack(len(first)) + first)
        if code == 11 and self._scram is not None:
            return message(b"p", self._scram.final_message(body[4:]))
        if code == 12 and self._scram is not None:
            self._scram.verify(body[4:])
            return None
        raise AuthError(f"unsupported authentication request {code}")
