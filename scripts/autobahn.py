#!/usr/bin/env python3
"""Runs Autobahn|Testsuite's fuzzing client (cases 1-7 by default) against the WebSocket endpoint.

The endpoint needs an API key and Autobahn cannot send one, so a small loopback proxy adds
`Authorization: Bearer <demo key>` to the upgrade request and then relays bytes both ways,
passing each side's end of stream on to the other (so close handshakes look as they are).

The server runs with `websocket.conformance_echo = true`: authenticated sessions echo data
messages instead of running turns, because most cases wait for their echo before they close.
Authentication, flow control, the writer and every close path are the production code.

Usage (see docs/websocket.md, "Conformance"):

    python3 scripts/autobahn.py [--bin target/debug/pilot-bridge] [--cases 1.*,2.*,...]
                                [--wstest-dir /tmp/autobahn] [--report-dir DIR] [--no-echo]

`--wstest-dir` is where `pip install --target DIR autobahntestsuite` (Python 2.7) put the suite.
Exits non-zero when any case's close behaviour is FAILED, UNCLEAN or WRONG CODE. The endpoint is
not an echo server, so only `behaviorClose` is judged.
"""

import argparse
import asyncio
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

DEMO_KEY = "op_live_DemoKeyForLocalTestingOnly00000000"
PATH = "/api/v1/native/outreachpilot/ws"
BAD = ("FAILED", "UNCLEAN", "WRONG CODE")
WSTEST = (
    "import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['wstest'] + sys.argv[2:]; "
    "from autobahntestsuite.wstest import run; run()"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def relay(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass


async def handle(client_reader, client_writer, upstream_port, key):
    try:
        head = await client_reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_writer.close()
        return
    lines = head.split(b"\r\n")
    injected = b"\r\n".join(
        [lines[0], b"Authorization: Bearer " + key.encode()] + lines[1:]
    )
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_writer.close()
        return
    up_writer.write(injected)
    await asyncio.gather(
        relay(client_reader, up_writer), relay(up_reader, client_writer)
    )
    up_writer.close()
    client_writer.close()


def start_proxy(listen_port, upstream_port, key):
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            asyncio.start_server(
                lambda r, w: handle(r, w, upstream_port, key), "127.0.0.1", listen_port
            )
        )
        ready.set()
        loop.run_until_complete(server.serve_forever())

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)


def wait_ready(port, proc, deadline_s=30):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("pilot-bridge exited early with %s" % proc.returncode)
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("pilot-bridge did not become ready")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/debug/pilot-bridge")
    ap.add_argument("--cases", default="1.*,2.*,3.*,4.*,5.*,6.*,7.*")
    ap.add_argument("--wstest-dir", default="/tmp/autobahn")
    ap.add_argument("--python2", default="/root/.pyenv/versions/2.7.18/bin/python")
    ap.add_argument("--report-dir", default=None)
    ap.add_argument("--no-echo", action="store_true",
                    help="run against the native frame protocol (echo cases then time out)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="pilot-bridge-autobahn-")
    report_dir = args.report_dir or os.path.join(work, "reports")
    data_dir = os.path.join(work, "data")
    server_port, proxy_port = free_port(), free_port()
    env = dict(os.environ, PILOT_BRIDGE_DEMO_KEY=DEMO_KEY, RUST_LOG="warn")
    config = os.path.join(work, "pilot-bridge.toml")
    with open(config, "w") as f:
        # Echo mode lets the echo-based cases finish; without it Autobahn waits 1 s for its
        # echo, gives up with its own close 1001 (which the server echoes) and reports that as
        # WRONG CODE, whatever the server did.
        f.write("[websocket]\nconformance_echo = %s\n" % ("false" if args.no_echo else "true"))
    serve = [args.bin, "serve", "--demo", "--listen", "127.0.0.1:%d" % server_port,
             "--data-dir", data_dir, "--config", config]
    log = open(os.path.join(work, "server.log"), "w")
    # Seed the demo workspace, then lift the demo org's per-minute quota (Autobahn sends
    # hundreds of text frames) before serving for real.
    seeding = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_ready(server_port, seeding)
    seeding.terminate()
    seeding.wait(15)
    subprocess.run(
        [args.bin, "org", "set", "demo", "--rate-limit", "0", "--data-dir", data_dir],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    server = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_ready(server_port, server)
        start_proxy(proxy_port, server_port, DEMO_KEY)
        spec = {
            "outdir": report_dir,
            "servers": [{"agent": "pilot-bridge",
                         "url": "ws://127.0.0.1:%d%s" % (proxy_port, PATH)}],
            "cases": args.cases.split(","),
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        spec_path = os.path.join(work, "fuzzingclient.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        started = time.time()
        subprocess.run(
            # addsitedir (not PYTHONPATH) so the .pth files of namespace packages such as
            # zope.interface are processed.
            [args.python2, "-c", WSTEST, args.wstest_dir, "-m", "fuzzingclient", "-s", spec_path],
            cwd=work, check=True,
            stdout=open(os.path.join(work, "wstest.log"), "w"), stderr=subprocess.STDOUT,
        )
        elapsed = time.time() - started
    finally:
        server.terminate()
        server.wait(15)

    with open(os.path.join(report_dir, "index.json")) as f:
        index = json.load(f)["pilot-bridge"]
    counts = collections.Counter(case["behaviorClose"] for case in index.values())
    bad = sorted(
        (cid, case["behaviorClose"], case.get("remoteCloseCode"))
        for cid, case in index.items() if case["behaviorClose"] in BAD
    )
    print("Autobahn|Testsuite fuzzingclient, cases %s: %d cases in %.0f s"
          % (args.cases, len(index), elapsed))
    for outcome, n in sorted(counts.items()):
        print("  behaviorClose %-13s %d" % (outcome, n))
    for cid, outcome, code in bad:
        print("  %s: %s (server close code %s)" % (cid, outcome, code))
    print("reports: %s" % report_dir)
    if bad and not args.no_echo:
        sys.exit(1)
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
