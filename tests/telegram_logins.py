"""Logging in on the fake Telegram server (tests/telegram_server.py), as `init_account.py` does
it through the real client: `auth.sendCode`, `auth.signIn` with the code, and for an account
with two-step verification `account.getPassword` and `auth.checkPassword`, whose SRP proof is
checked for real (Telethon computes it from the password and the server's p, g, salts and B).
A mixin of the server, like tests/telegram_requests.py:

    server.add_account("+15550001")
    server.expect_login("+15550001", code="12345", password="s3cret")   # not logged in yet

Until the login is done, every other request of the account's session is AUTH_KEY_UNREGISTERED
(what Telegram answers a key that is not signed in).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from telethon import types
from telethon.password import big_num_for_hash, compute_hash, num_bytes_for_hash, xor
from telethon.tl import functions
from telethon.tl.types import account as tl_account
from telethon.tl.types import auth

from telegram_world import RpcFailure

# Telegram's 2048-bit safe prime for two-step verification (the one Telethon knows), and g.
SRP_P = bytes.fromhex(
    "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f48198a0aa7c14058229493d22530f4db"
    "fa336f6e0ac925139543aed44cce7c3720fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f64"
    "2477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4a4a695811051907e162753b56b0f6b41"
    "0dba74d8a84b2a14b3144e0ef1284754fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4"
    "e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f0d8115f635b105ee2e4e15d04b2454bf"
    "6f4fadf034b10403119cd8e3b92fcc5b"
)
SRP_G = 3
_LOGIN = {"SendCodeRequest", "SignInRequest", "GetPasswordRequest", "CheckPasswordRequest", "GetConfigRequest"}


def _sha256(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


class LoginRequests:
    def expect_login(self, phone: str, *, code: str = "12345", password: str | None = None) -> None:
        """`phone`'s sessions are not logged in until it signs in with `code` (and `password`)."""
        self.__dict__.setdefault("logins", {})[phone] = {"code": code, "password": password, "sent": False,
                                                         "needs_password": False}

    def _login(self, phone: str) -> dict | None:
        return self.__dict__.get("logins", {}).get(phone)

    async def handle(self, phone: str | None, request: Any) -> Any:
        inner = request
        while isinstance(inner, (functions.InvokeWithLayerRequest, functions.InitConnectionRequest,
                                 functions.InvokeWithoutUpdatesRequest)):
            inner = inner.query
        if phone is not None and self._login(phone) is not None and type(inner).__name__ not in _LOGIN:
            raise RpcFailure(401, "AUTH_KEY_UNREGISTERED")
        return await super().handle(phone, request)

    def _signed_in(self, phone: str) -> Any:
        self.__dict__["logins"].pop(phone)
        return auth.Authorization(user=self._user(phone, self.accounts[phone].user_id))

    def _req_SendCodeRequest(self, phone, request):
        login = self._login(phone)
        if login is None or request.phone_number.lstrip("+") != phone.lstrip("+"):
            raise RpcFailure(400, "PHONE_NUMBER_INVALID")
        login["sent"] = True
        return auth.SentCode(type=auth.SentCodeTypeApp(length=len(login["code"])), phone_code_hash="fake-hash")

    def _req_SignInRequest(self, phone, request):
        login = self._login(phone)
        if login is None or not login["sent"]:
            raise RpcFailure(400, "PHONE_CODE_EXPIRED")
        if request.phone_code != login["code"]:
            raise RpcFailure(400, "PHONE_CODE_INVALID")
        if login["password"] is not None:
            login["needs_password"] = True
            raise RpcFailure(401, "SESSION_PASSWORD_NEEDED")
        return self._signed_in(phone)

    def _srp(self, login: dict) -> dict:
        if "srp" not in login:
            algo = types.PasswordKdfAlgoSHA256SHA256PBKDF2HMACSHA512iter100000SHA256ModPow(
                salt1=os.urandom(8), salt2=os.urandom(16), g=SRP_G, p=SRP_P)
            p = int.from_bytes(SRP_P, "big")
            v = pow(SRP_G, int.from_bytes(compute_hash(algo, login["password"]), "big"), p)
            k = int.from_bytes(_sha256(num_bytes_for_hash(SRP_P), big_num_for_hash(SRP_G)), "big")
            b = int.from_bytes(os.urandom(256), "big")
            B = (k * v + pow(SRP_G, b, p)) % p
            login["srp"] = dict(algo=algo, v=v, b=b, B=big_num_for_hash(B), id=int.from_bytes(os.urandom(7), "big"))
        return login["srp"]

    def _req_GetPasswordRequest(self, phone, request):
        login = self._login(phone)
        if login is None or login["password"] is None:
            return tl_account.Password(new_algo=types.PasswordKdfAlgoUnknown(),
                                       new_secure_algo=types.SecurePasswordKdfAlgoUnknown(),
                                       secure_random=os.urandom(32), has_password=False)
        srp = self._srp(login)
        return tl_account.Password(new_algo=types.PasswordKdfAlgoUnknown(),
                                   new_secure_algo=types.SecurePasswordKdfAlgoUnknown(),
                                   secure_random=os.urandom(32), has_password=True, current_algo=srp["algo"],
                                   srp_B=bytes(srp["B"]), srp_id=srp["id"])

    def _req_CheckPasswordRequest(self, phone, request):
        login = self._login(phone)
        if login is None or not login["needs_password"]:
            raise RpcFailure(400, "PASSWORD_HASH_INVALID")
        srp, check = self._srp(login), request.password
        if check.srp_id != srp["id"]:
            raise RpcFailure(400, "SRP_ID_INVALID")
        p = int.from_bytes(SRP_P, "big")
        A = int.from_bytes(check.A, "big")
        u = int.from_bytes(_sha256(check.A, bytes(srp["B"])), "big")
        S = pow(A * pow(srp["v"], u, p) % p, srp["b"], p)
        algo = srp["algo"]
        p_hash, g_hash = num_bytes_for_hash(SRP_P), big_num_for_hash(SRP_G)
        expected = _sha256(xor(_sha256(p_hash), _sha256(g_hash)), _sha256(algo.salt1), _sha256(algo.salt2),
                           check.A, bytes(srp["B"]), _sha256(big_num_for_hash(S)))
        if check.M1 != expected:
            raise RpcFailure(400, "PASSWORD_HASH_INVALID")
        return self._signed_in(phone)
