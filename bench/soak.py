#!/usr/bin/env python3
"""Soak test of `fp4serve serve` (not in CI; python3 standard library only).

Starts the server on a bundled model and, for --minutes, runs mixed load from --clients threads (greedy and
sampled /generate, streaming, /v1/chat/completions, aborts by rid, clients hanging up mid-stream, bad requests)
while a reloader switches the weights A <-> B every --reload-every seconds and injects failing reloads (a copy of B
with a truncated shard, a directory that does not exist). After every reload the served weights' digest
(/get_weights_digest) must be the digest `fp4serve digest` gives for the checkpoint the answer says is served.

Prints a table every --report-every seconds (requests served, failures expected / unexpected, reloads OK /
refused, server RSS) and a summary that flags RSS growth over the run's second half. Exit status 1 on any
unexpected failure, a digest mismatch, RSS growth or a server that died.

    nice -n 10 python3 bench/soak.py --minutes 5
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Counters:
    """Thread-safe tallies by name."""

    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}
        self.unexpected_examples = []

    def add(self, name, n=1):
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def unexpected(self, what):
        with self.lock:
            self.values["unexpected"] = self.values.get("unexpected", 0) + 1
            if len(self.unexpected_examples) < 20:
                self.unexpected_examples.append(what)

    def get(self, name):
        with self.lock:
            return self.values.get(name, 0)


class Server:
    def __init__(self, binary, model, log_path, extra):
        self.log_path = log_path
        self.log = open(log_path, "w")
        args = [binary, "serve", "--model-path", model, "--port", "0", "--weight-version", "A-0"] + extra
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = None
        deadline = time.time() + 60
        while time.time() < deadline and self.port is None:
            if self.process.poll() is not None:
                raise RuntimeError("server exited at start:\n" + open(log_path).read())
            match = re.search(r"listening on http://[^:]+:(\d+)", open(log_path).read())
            if match:
                self.port = int(match.group(1))
            time.sleep(0.1)
        if self.port is None:
            raise RuntimeError("server did not listen within 60 s")

    def rss_mb(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def alive(self):
        return self.process.poll() is None

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def request(port, method, path, body=None, timeout=120):
    """(status, parsed JSON or raw text); status 0 when the connection failed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text
    except (OSError, http.client.HTTPException) as error:
        return 0, str(error)
    finally:
        connection.close()


def stream(port, path, body, stop_after_events=None, on_event=None, timeout=120):
    """POSTs a streaming request and reads its SSE events; hangs up after stop_after_events (a client going away).
    Returns (status, events read, the last JSON event)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    events, last = 0, None
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            response.read()
            return response.status, 0, None
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                break
            last = json.loads(payload)
            events += 1
            if on_event:
                on_event(events)
            if stop_after_events is not None and events >= stop_after_events:
                response.close()  # hangs up mid-stream
                break
        return 200, events, last
    except (OSError, http.client.HTTPException, ValueError) as error:
        return 0, events, str(error)
    finally:
        connection.close()


def prompt_ids(rng, length):
    return [rng.randrange(3, 250) for _ in range(length)]


def client_loop(port, seed, deadline, counters, max_prompt_tokens):
    rng = random.Random(seed)
    actions = ["generate", "generate", "sampled", "stream", "chat", "abort", "disconnect", "bad"]
    while time.time() < deadline:
        action = rng.choice(actions)
        counters.add("requests")
        if action in ("generate", "sampled"):
            params = {"max_new_tokens": rng.randrange(1, 32), "ignore_eos": True}
            params["temperature"] = 0 if action == "generate" else 0.8
            status, answer = request(port, "POST", "/generate",
                                     {"input_ids": prompt_ids(rng, rng.randrange(1, 64)), "sampling_params": params,
                                      "return_logprob": rng.random() < 0.5})
            classify(counters, action, status, answer,
                     ok=lambda a: isinstance(a, dict) and "weight_version" in a.get("meta_info", {}))
        elif action == "stream":
            status, events, last = stream(port, "/generate", {
                "input_ids": prompt_ids(rng, rng.randrange(1, 64)),
                "sampling_params": {"max_new_tokens": rng.randrange(1, 48), "ignore_eos": True}, "stream": True})
            classify(counters, action, status, last,
                     ok=lambda a: isinstance(a, dict) and a["meta_info"]["finish_reason"]["type"] == "length")
        elif action == "chat":
            status, answer = request(port, "POST", "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "what is %d + %d?" % (rng.randrange(99), rng.randrange(99))}],
                "max_tokens": rng.randrange(1, 24), "temperature": 0})
            classify(counters, action, status, answer, ok=lambda a: isinstance(a, dict) and "choices" in a)
        elif action == "abort":
            rid = "soak-%d-%d" % (seed, counters.get("requests"))
            aborted = []

            def abort_after_two(events, rid=rid):
                if events == 2 and not aborted:
                    aborted.append(request(port, "POST", "/abort_request", {"rid": rid}))

            status, events, last = stream(port, "/generate", {
                "input_ids": prompt_ids(rng, 8), "rid": rid, "stream": True,
                "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}, on_event=abort_after_two)
            classify(counters, action, status, last,
                     ok=lambda a: isinstance(a, dict) and a["meta_info"]["finish_reason"]["type"] == "abort")
        elif action == "disconnect":
            status, events, last = stream(port, "/generate", {
                "input_ids": prompt_ids(rng, 8), "stream": True,
                "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}, stop_after_events=2)
            classify(counters, action, status, last, ok=lambda a: events == 2)
        else:
            bad = rng.choice([
                ("/generate", "{\"text\": ", 400),
                ("/generate", json.dumps({"input_ids": [1, 99999]}), 400),
                ("/generate", json.dumps({"text": "x", "sampling_params": {"top_p": 7}}), 400),
                ("/generate", json.dumps({"input_ids": [5] * (max_prompt_tokens + 1)}), 400),
                ("/v1/chat/completions", json.dumps({"messages": []}), 400),
                ("/no_such_endpoint", "{}", 404),
            ])
            status, answer = request(port, "POST", bad[0], bad[1])
            if status == bad[2] and isinstance(answer, dict) and "error" in answer:
                counters.add("failed_expected")
            else:
                counters.unexpected("bad request %s -> %s %s" % (bad[0], status, str(answer)[:200]))


def classify(counters, action, status, answer, ok):
    if status == 200 and ok(answer):
        counters.add("served")
    elif status == 503:
        counters.add("failed_expected")  # at capacity: the client is told to retry
        counters.add("busy")
    else:
        counters.unexpected("%s -> %s %s" % (action, status, str(answer)[:200]))


def digest_of(binary, directory):
    output = subprocess.run([binary, "digest", directory], check=True, capture_output=True, text=True).stdout
    return output.split()[1]


def reload_loop(port, deadline, period, checkpoints, counters):
    """Cycles through good and failing reloads; after each, the digest served must be the one the answer names."""
    good_a, good_b, truncated, missing = checkpoints
    plan = [good_b, good_a, truncated, good_b, missing, good_a]
    served, served_version = good_a, "A-0"
    step = 0
    while time.time() + period < deadline:
        time.sleep(period)
        target = plan[step % len(plan)]
        step += 1
        version = "%s-%d" % ("A" if target is good_a else "B" if target is good_b else "bad", step)
        status, answer = request(port, "POST", "/update_weights_from_disk",
                                 {"model_path": target["dir"], "weight_version": version})
        if target["good"]:
            if status == 200 and answer.get("success"):
                counters.add("reloads_ok")
                served, served_version = target, version
            else:
                counters.unexpected("reload of %s -> %s %s" % (target["dir"], status, str(answer)[:300]))
        else:
            # A directory that cannot be resolved is refused before the engine sees it; a broken one by the loader.
            if status == 400 and not answer.get("success") and target["dir"] in answer["message"]:
                counters.add("reloads_refused")
            else:
                counters.unexpected("failing reload of %s -> %s %s" % (target["dir"], status, str(answer)[:300]))
        status, weights = request(port, "GET", "/get_weights_digest")
        if status != 200 or weights.get("weights_digest") != served["digest"] or \
                weights.get("weight_version") != served_version:
            counters.unexpected("after reloading %s the server serves %s, expected digest %s (%s) version %s" % (
                target["dir"], weights, served["digest"], served["dir"], served_version))
            counters.add("digest_mismatches")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(REPO, "build", "fp4serve"))
    parser.add_argument("--model-a", default=os.path.join(REPO, "models", "qwen3-moe-tiny-nvfp4"))
    parser.add_argument("--model-b", default=os.path.join(REPO, "models", "qwen3-moe-tiny-nvfp4-b"))
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reload-every", type=float, default=5, help="seconds between reloads")
    parser.add_argument("--report-every", type=float, default=30, help="seconds between table rows")
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--max-total-tokens", type=int, default=65536, help="the server's KV cache in tokens")
    parser.add_argument("--server-args", default="", help="more `fp4serve serve` flags, space-separated")
    parser.add_argument("--rss-growth-limit", type=float, default=0.05,
                        help="flag RSS growth above this share over the run's second half")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="fp4serve_soak_")
    truncated_dir = os.path.join(work, "b_truncated")
    shutil.copytree(args.model_b, truncated_dir)
    for name in os.listdir(truncated_dir):
        if name.endswith(".safetensors"):
            path = os.path.join(truncated_dir, name)
            os.truncate(path, os.path.getsize(path) * 2 // 3)
    checkpoints = (
        {"dir": os.path.abspath(args.model_a), "good": True, "digest": digest_of(args.binary, args.model_a)},
        {"dir": os.path.abspath(args.model_b), "good": True, "digest": digest_of(args.binary, args.model_b)},
        {"dir": truncated_dir, "good": False},
        {"dir": os.path.join(work, "missing"), "good": False},
    )

    server = Server(args.binary, args.model_a, os.path.join(work, "server.log"),
                    ["--max-prompt-tokens", str(args.max_prompt_tokens), "--max-total-tokens",
                     str(args.max_total_tokens)] +
                    args.server_args.split())
    counters = Counters()
    start = time.time()
    deadline = start + args.minutes * 60
    threads = [threading.Thread(target=client_loop, args=(server.port, seed, deadline, counters,
                                                          args.max_prompt_tokens))
               for seed in range(args.clients)]
    threads.append(threading.Thread(target=reload_loop,
                                    args=(server.port, deadline, args.reload_every, checkpoints, counters)))
    for thread in threads:
        thread.start()

    print("soak: %s on %s, %d clients, %.1f min, reload every %.0f s (A<->B, truncated copy, missing dir)" % (
        os.path.basename(args.binary), os.path.basename(args.model_a), args.clients, args.minutes, args.reload_every))
    header = "| elapsed s | requests | served | failed expected | failed unexpected | reloads OK | reloads refused | RSS MB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rss = []

    def report():
        rss.append(server.rss_mb())
        print("| %d | %d | %d | %d | %d | %d | %d | %.1f |" % (
            time.time() - start, counters.get("requests"), counters.get("served"), counters.get("failed_expected"),
            counters.get("unexpected"), counters.get("reloads_ok"), counters.get("reloads_refused"), rss[-1]),
            flush=True)

    next_report = start + args.report_every
    last_report = start
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.5)
        if not server.alive():
            counters.unexpected("the server exited")
            break
        if time.time() >= next_report:
            report()
            last_report = time.time()
            next_report += args.report_every
    for thread in threads:
        thread.join()
    alive = server.alive()
    if alive and time.time() - last_report > 5:
        report()
    server.stop()

    # Growth over the second half only: the first minutes warm up (the KV cache's pages are first touched as the
    # allocator hands them out, malloc's arenas fill), a leak keeps growing.
    growth = (rss[-1] - rss[len(rss) // 2]) / rss[len(rss) // 2] if len(rss) >= 2 else 0.0
    grew = growth > args.rss_growth_limit
    print()
    print("requests %d: served %d, failed expected %d (%d 503 at capacity, the rest bad requests' 4xx), failed "
          "unexpected %d" % (counters.get("requests"), counters.get("served"), counters.get("failed_expected"),
                             counters.get("busy"), counters.get("unexpected")))
    print("reloads: %d OK, %d refused (injected failures), %d digest mismatches" % (
        counters.get("reloads_ok"), counters.get("reloads_refused"), counters.get("digest_mismatches")))
    if rss:
        print("RSS: %.1f MB at the first report, %.1f MB half way, %.1f MB at the end (second half %+.1f%%)%s" % (
            rss[0], rss[len(rss) // 2], rss[-1], 100 * growth, "  <-- RSS GROWTH" if grew else ""))
    for example in counters.unexpected_examples:
        print("unexpected: " + example)
    if not alive:
        print("the server died; its log: " + server.log_path)
    failed = counters.get("unexpected") > 0 or grew or not alive
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
