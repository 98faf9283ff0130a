#!/usr/bin/env python3
"""A voice assistant's turn over HTTP: look someone up, ask before a dangerous write, confirm it,
then undo it -- speaking each `spoken_summary` as a TTS engine would.

Runs against `pilot-bridge serve --demo` with the Python standard library only:

    pilot-bridge serve --demo &
    python3 examples/voice_turn.py

Environment: PILOT_BRIDGE_URL (default http://127.0.0.1:8080), PILOT_BRIDGE_KEY (default: the
demo key `serve --demo` prints).
"""

import json
import os
import sys
import urllib.error
import urllib.request
import uuid

BASE = os.environ.get("PILOT_BRIDGE_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("PILOT_BRIDGE_KEY", "op_live_DemoKeyForLocalTestingOnly00000000")
NATIVE = f"{BASE}/api/v1/native/outreachpilot"


def turn(body):
    """Posts one native request; returns the envelope (success or error alike)."""
    req = urllib.request.Request(
        NATIVE,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # errors use the same envelope
        return json.load(e)


def say(envelope):
    """What the assistant speaks: the reply's or the error's spoken_summary."""
    part = envelope["data"] if envelope["ok"] else envelope["error"]
    print(f"  assistant: {part['spoken_summary']}")
    return part


def main():
    print("user: Who is Sarah Chen at Notion?")
    reply = say(turn({
        "action": {"type": "lookup_person", "personName": "Sarah Chen", "company": "Notion"},
        "transcript": "Who is Sarah Chen at Notion?",
    }))
    assert reply["mode"] == "result", reply

    print("user: Add her to Seed founders.")
    # One idempotency key per user turn: a retried request replays instead of acting twice.
    key = f"turn-{uuid.uuid4()}"
    ask = say(turn({
        "action": {"type": "add_to_campaign", "contactId": reply["ids"]["contact_id"],
                   "campaignRef": "Seed founders"},
        "idempotencyKey": key,
    }))
    if ask["mode"] == "result":
        print("  (already in the campaign; nothing to confirm)")
        return 0
    assert ask["mode"] == "confirmation_required", ask

    print("user: Yes.")
    done = say(turn({"pendingActionId": ask["pending_action_id"], "confirmed": True}))
    assert done["mode"] == "result", done

    print("user: Wait, undo that.")
    undone = say(turn({"action": {"type": "undo_last"}}))
    assert undone["data"]["undone"] is True, undone
    return 0


if __name__ == "__main__":
    sys.exit(main())
