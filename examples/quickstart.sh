#!/usr/bin/env bash
# The API from a shell with curl: a REST read, a native lookup, a dangerous write that asks
# first, its confirmation, and an undo. Runs against `pilot-bridge serve --demo`:
#
#     pilot-bridge serve --demo &
#     bash examples/quickstart.sh
#
# Environment: PILOT_BRIDGE_URL (default http://127.0.0.1:8080), PILOT_BRIDGE_KEY (default: the
# demo key `serve --demo` prints). Needs curl; uses python3 only to pick fields out of JSON.
set -euo pipefail

BASE="${PILOT_BRIDGE_URL:-http://127.0.0.1:8080}"
KEY="${PILOT_BRIDGE_KEY:-op_live_DemoKeyForLocalTestingOnly00000000}"

# field JSON PATH...: prints one field of a JSON document (e.g. field "$r" data spoken_summary).
field() {
  python3 -c 'import json,sys
v = json.loads(sys.argv[1])
for k in sys.argv[2:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if not isinstance(v, (dict, list)) else json.dumps(v))' "$@"
}

native() {
  curl -sS -X POST "$BASE/api/v1/native/outreachpilot" \
    -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" -d "$1"
}

echo "== REST: contacts named Sarah"
r=$(curl -sS "$BASE/api/v1/contacts?search=sarah" -H "Authorization: Bearer $KEY")
echo "$(field "$r" meta total) contacts; first: $(field "$r" data 0 full_name)"

echo "== Native: who is Sarah Chen?"
r=$(native '{"action":{"type":"lookup_person","personName":"Sarah Chen","company":"Notion"}}')
field "$r" data spoken_summary

echo "== Native: pause Seed founders (asks first)"
r=$(native '{"action":{"type":"pause_campaign","campaignRef":"Seed founders"},"idempotencyKey":"quickstart-pause-'"$$"'"}')
field "$r" data spoken_summary
mode=$(field "$r" data mode)
if [ "$mode" = "confirmation_required" ]; then
  pending=$(field "$r" data pending_action_id)
  echo "== Native: yes"
  r=$(native '{"pendingActionId":"'"$pending"'","confirmed":true}')
  field "$r" data spoken_summary
  echo "== Native: undo that"
  r=$(native '{"action":{"type":"undo_last"}}')
  field "$r" data spoken_summary
fi

echo "== An error, in the same envelope"
r=$(native '{"action":{"type":"lookup_person","person_name":"Sarah"}}')
echo "$(field "$r" error code): $(field "$r" error details)"
echo "   spoken: $(field "$r" error spoken_summary)"
