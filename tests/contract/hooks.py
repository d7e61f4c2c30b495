"""Schemathesis hooks for clerk-sync: a dictionary of real Clerk ids and unique
idempotency keys, so that most generated /v1 calls reach the success paths (consume,
grant, ledger pages) instead of stopping at 404 or 409.

At import, CONTRACT_USERS users are signed up through the real webhook, signed with
the service's Svix secret (CLERK_SYNC_URL, CLERK_SYNC_SECRET).
"""

import base64
import hashlib
import hmac
import json
import os
import random
import re
import time
import urllib.request
import uuid

import schemathesis

URL = os.environ["CLERK_SYNC_URL"]
SECRET = os.environ["CLERK_SYNC_SECRET"]
RUN = uuid.uuid4().hex[:8]
# Not the `random` module: Hypothesis seeds it for each example, so every case would pick
# the same user.
rng = random.SystemRandom()
IDS = [f"user_st{RUN}{i}" for i in range(int(os.environ.get("CONTRACT_USERS", "40")))]


def sign_up(clerk_id: str, n: int) -> None:
    now = int(time.time())
    body = json.dumps({
        "type": "user.created",
        "object": "event",
        "data": {
            "id": clerk_id,
            "object": "user",
            "email_addresses": [{"id": f"idn_{clerk_id}", "email_address": f"{clerk_id}@example.org",
                                 "verification": {"status": "verified", "strategy": "email_code"}}],
            "primary_email_address_id": f"idn_{clerk_id}",
            "first_name": "Contract",
            "last_name": str(n),
            "image_url": "https://img.clerk.com/x",
            "created_at": now * 1000,
            "updated_at": now * 1000,
        },
    }).encode()
    msg_id = f"msg_st_{clerk_id}"
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{msg_id}.{now}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    request = urllib.request.Request(
        URL + "/api/webhooks/clerk",
        data=body,
        method="POST",
        headers={
            "content-type": "application/json",
            "svix-id": msg_id,
            "svix-timestamp": str(now),
            "svix-signature": f"v1,{signature}",
        },
    )
    with urllib.request.urlopen(request) as response:
        answer = json.load(response)
        assert answer.get("status") == "processed", answer


for i, clerk_id in enumerate(IDS):
    sign_up(clerk_id, i)
print(f"hooks: signed up {len(IDS)} users (user_st{RUN}*)")


VALID_ID = re.compile(r"^[A-Za-z0-9_]{1,128}$")
VALID_KEY = re.compile(r"^[ -~]{1,200}$")


def valid_amount(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and float(value).is_integer() and 1 <= value <= 1_000_000


# The maps below change only values that are already valid, so a case generated to be
# invalid (schemathesis's negative tests) stays invalid.

@schemathesis.hook
def map_path_parameters(ctx, path_parameters):
    # Nine in ten calls for a user that exists; the rest keep the generated id (404s).
    clerk_id = (path_parameters or {}).get("clerk_id")
    if isinstance(clerk_id, str) and VALID_ID.match(clerk_id) and rng.random() < 0.9:
        path_parameters["clerk_id"] = rng.choice(IDS)
    return path_parameters


@schemathesis.hook
def map_body(ctx, body):
    if not isinstance(body, dict):
        return body
    key = body.get("idempotencyKey")
    # Nineteen in twenty with a fresh key; the rest keep the generated one (replays, 409s).
    if isinstance(key, str) and VALID_KEY.match(key) and rng.random() < 0.95:
        body["idempotencyKey"] = uuid.uuid4().hex
    path = ctx.operation.path
    if valid_amount(body.get("amount")) and rng.random() < 0.95:
        if path.endswith("/consume"):
            body["amount"] = rng.randint(1, 3)
        elif path.endswith("/grant"):
            body["amount"] = rng.randint(1, 50)
    return body
