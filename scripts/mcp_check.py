#!/usr/bin/env python3
"""Checks /mcp with an independent client: the official MCP Python SDK (`pip install "mcp>=2,<3"`).

Starts `pilot-bridge serve --demo` on a free loopback port in a fresh data directory, then over
Streamable HTTP with the demo key: initializes, lists the tools (18, read-only hints on the
reads), calls a read, asks for a dangerous write and confirms it (and sees the second
confirmation replayed), and sees `isError` for bad arguments. The SDK validates each successful
result against the tool's declared outputSchema. Exits non-zero on the first failed check.

Usage: python3 scripts/mcp_check.py [--bin target/debug/pilot-bridge]
"""

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

DEMO_KEY = "op_live_DemoKeyForLocalTestingOnly00000000"
READS = {"lookup_person", "lookup_company", "recent_signals", "campaign_stats", "reply_inbox"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, deadline_s=30):
    end = time.time() + deadline_s
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit("pilot-bridge exited early")
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("pilot-bridge did not become ready")


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)
    print("ok   " + what)


def text_of(result):
    return result.content[0].text if result.content else ""


async def run(url):
    headers = {"Authorization": "Bearer " + DEMO_KEY}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                check(init.server_info.name == "pilot-bridge", "initialize: server is pilot-bridge")

                tools = (await session.list_tools()).tools
                names = [t.name for t in tools]
                check(len(tools) == 18 and names[-1] == "confirm_pending_action",
                      "tools/list: 17 actions and confirm_pending_action")
                check(all((t.annotations.read_only_hint is True) == (t.name in READS) for t in tools),
                      "tools/list: readOnlyHint exactly on the 5 reads")

                r = await session.call_tool("lookup_person", {"personName": "Sarah Chen"})
                s = r.structured_content or {}
                check(not r.is_error and s.get("mode") == "result", "read: lookup_person answers")
                check(text_of(r) == s.get("spoken_summary"), "read: first text block is the spoken summary")

                r = await session.call_tool(
                    "add_to_campaign", {"personName": "John Smith", "campaignRef": "Seed founders"})
                s = r.structured_content or {}
                pid = s.get("pending_action_id")
                check(not r.is_error and s.get("mode") == "confirmation_required" and pid,
                      "write: add_to_campaign asks for confirmation")
                r = await session.call_tool(
                    "confirm_pending_action", {"pendingActionId": pid, "confirmed": True})
                check(not r.is_error and (r.structured_content or {}).get("mode") == "result",
                      "write: confirm_pending_action runs it")
                r = await session.call_tool(
                    "confirm_pending_action", {"pendingActionId": pid, "confirmed": True})
                check((r.structured_content or {}).get("mode") == "duplicate",
                      "write: a second confirmation is replayed, not run again")

                r = await session.call_tool("lookup_person", {"personNmae": "Sarah Chen"})
                err = (r.structured_content or {}).get("error", {})
                check(r.is_error and err.get("code") == "VALIDATION_ERROR",
                      "bad arguments: isError with VALIDATION_ERROR")
                check(text_of(r) == err.get("spoken_summary"), "bad arguments: the spoken error first")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/debug/pilot-bridge")
    args = ap.parse_args()
    port = free_port()
    work = tempfile.mkdtemp(prefix="pilot-bridge-mcp-")
    env = dict(os.environ, PILOT_BRIDGE_DEMO_KEY=DEMO_KEY, RUST_LOG="warn")
    serve = [args.bin, "serve", "--demo", "--data-dir", os.path.join(work, "data"),
             "--listen", "127.0.0.1:%d" % port]
    server = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(work, "server.log"), "w"))
    try:
        wait_ready(port, server)
        asyncio.run(run("http://127.0.0.1:%d/mcp" % port))
        print("MCP check passed (Python SDK)")
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
