"""``adaptkit serve`` under load vs the FastAPI + PEFT server, measured in one run.

    python benchmarks/serve.py --json OUT.json [--model-cache DIR] [--users 200]
        [--clients 8,32] [--duration 40] [--max-tokens 24]

Loopback only, bounded in time (each phase runs ``--duration`` seconds, then waits
for what is in flight) and count. M users get all-linear rank-8 adapters with random
weights (``benchmarks/bank.py``'s ``make_adapters``). For each N in ``--clients``, N
concurrent clients send chat completions (streamed, greedy) for random users;
every ``--feedback-every``-th request to a learning user (every fourth) is followed by
an edit, whose update is then tracked to the first completion answered by the new version.
The learning users' adapters have the shape the online trainer gives a new user
(``--learner-targets online``) or all-linear on every layer (``all-linear``).

The peer, in the same run: the server a developer would write without adaptkit, FastAPI
+ PEFT, one ``set_adapter`` + ``generate`` per request (adapters loaded on first use),
under the same clients. The ceiling: the engine's own offline batches
(``Engine.generate``, ``--max-batch`` rows) on the requests of the largest phase. That
phase runs ``--rounds`` times, each round followed by its own ceiling once the server's
trainer is idle (the machine's speed drifts over minutes); the ratio is the median of
the rounds' ratios. The feedback trackers wait with ``GET /v1/feedback/{id}?wait=``
rather than polling, so the measurement adds no load of its own beyond the requests.

Keys: ``adaptkit.clients_N`` / ``peft.clients_N`` (p50/p99 latency, time to first
token, output tokens/s, 5xx, ...; the largest phase's first round), ``ceiling_rounds`` (each
round of the largest phase: its tokens/s, its ceiling, their ratio, its whole summary),
``ratios``, ``isolation`` (answers re-computed alone with the exact version the response
named), ``feedback`` (lost events, feedback-to-new-version latency), ``floors``.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bank import (
    BASE,
    PROMPTS,
    common_parser,
    make_adapters,
    progress,
    publish_users,
    scratch_home,
    user_names,
)
from safetensors.torch import load_file, save_file

EDIT = "Take your bicycle: about 15 minutes along the river."


def learns(user: str) -> bool:
    """Users who post feedback: every fourth. Their adapters start near the base (see
    ``soften``), so the gate can promote an update; the others' differ strongly from the
    base and from each other, so a row answered with another's adapter shows."""
    return int(user.removeprefix("user")) % 4 == 0


def soften(path: Path) -> None:
    weights = load_file(path / "adapter_model.safetensors")
    scaled = {k: t * 0.1 if "lora_B" in k else t for k, t in weights.items()}
    save_file(scaled, path / "adapter_model.safetensors")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


# -- the load ---------------------------------------------------------------------------


async def one_request(http: httpx.AsyncClient, url: str, user: str, prompt: str, args, stream):
    body = {
        "model": f"{BASE}:{user}",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
    }
    began = time.perf_counter()
    record = {"user": user, "prompt": prompt, "status": None, "ttft": None}
    if not stream:
        response = await http.post(f"{url}/v1/chat/completions", json=body)
        record["status"] = response.status_code
        if response.status_code == 200:
            data = response.json()
            record |= {
                "text": data["choices"][0]["message"]["content"],
                "model": data["model"],
                "id": data["id"],
                "tokens": data["usage"]["completion_tokens"],
            }
        record["latency"] = time.perf_counter() - began
        return record
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    parts: list[str] = []
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        record["status"] = response.status_code
        if response.status_code != 200:
            await response.aread()
            record["latency"] = time.perf_counter() - began
            return record
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:  # the server failed the row mid-answer
                record["status"], record["error"] = 500, chunk["error"]["message"]
                break
            record["model"], record["id"] = chunk["model"], chunk["id"]
            if chunk.get("usage"):
                record["tokens"] = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    record["ttft"] = record["ttft"] or time.perf_counter() - began
                    parts.append(choice["delta"]["content"])
    record["text"] = "".join(parts)
    record["latency"] = time.perf_counter() - began
    return record


async def track_update(http, url, user, posted_at, event_id, deadline, updates) -> None:
    """Wait for the event to be trained (the server answers a ``?wait=`` read when it
    leaves pending: no polling load on the server), then ask the new version."""
    entry = {"user": user, "event": event_id, "under_load_until": deadline}
    updates.append(entry)
    while time.perf_counter() < deadline + 240:
        read = await http.get(f"{url}/v1/feedback/{event_id}", params={"wait": 30})
        state = read.json()
        if state["state"] != "pending":
            entry |= {"state": state["state"], "version_status": state.get("version_status")}
            entry["trained_seen"] = time.perf_counter() - posted_at
            if state["state"] != "trained" or state["version_status"] != "active":
                return
            want = f"{BASE}:{user}@{state['version']}"
            body = {
                "model": f"{BASE}:{user}",
                "messages": [{"role": "user", "content": "How do I get to work?"}],
                "max_tokens": 1,
            }
            asked = time.perf_counter()
            answer = (await http.post(f"{url}/v1/chat/completions", json=body)).json()
            entry["answer_seconds"] = time.perf_counter() - asked
            if answer.get("model") == want:
                entry["seconds"] = time.perf_counter() - posted_at
                entry["answered_at"] = time.perf_counter()
            return


def update_stages(url: str) -> dict[str, tuple[float, float]]:
    """The server's ``adaptkit_update_stage_seconds``: stage -> (sum, count) so far."""
    from prometheus_client.parser import text_string_to_metric_families

    stages: dict[str, list[float]] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name != "adaptkit_update_stage_seconds":
            continue
        for sample in family.samples:
            stage = stages.setdefault(sample.labels["stage"], [0.0, 0.0])
            if sample.name.endswith("_sum"):
                stage[0] = sample.value
            elif sample.name.endswith("_count"):
                stage[1] = sample.value
    return {name: (total, count) for name, (total, count) in stages.items()}


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """Mean seconds per update of each stage between two ``update_stages`` readings."""
    means = {}
    for name, (total, count) in after.items():
        total0, count0 = before.get(name, (0.0, 0.0))
        if count > count0:
            means[name] = round((total - total0) / (count - count0), 3)
    return means


async def load(
    url: str, clients: int, users: list[str], args, *, stream: bool, feedback: bool, seed: int
):
    records: list[dict] = []
    acked: list[str] = []
    updates: list[dict] = []
    trackers: list[asyncio.Task] = []
    limits = httpx.Limits(max_connections=clients * 2 + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        began = time.perf_counter()
        deadline = began + args.duration

        async def client(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            sent = 0
            while time.perf_counter() < deadline:
                user, prompt = rng.choice(users), rng.choice(PROMPTS)
                record = await one_request(http, url, user, prompt, args, stream)
                records.append(record)
                sent += 1
                posts = feedback and learns(user) and sent % args.feedback_every == 0
                if posts and record["status"] == 200:
                    body = {"completion_id": record["id"], "key": "edit", "correction": EDIT}
                    posted = time.perf_counter()
                    ack = await http.post(f"{url}/v1/feedback", json=body)
                    if ack.status_code == 202:
                        acked.append(ack.json()["id"])
                        trackers.append(
                            asyncio.create_task(
                                track_update(
                                    http, url, user, posted, ack.json()["id"], deadline, updates
                                )
                            )
                        )

        await asyncio.gather(*[client(i) for i in range(clients)])
        wall = time.perf_counter() - began
        if trackers:
            await asyncio.wait(trackers, timeout=args.drain)
        lost = 0
        for event_id in acked:
            if (await http.get(f"{url}/v1/feedback/{event_id}")).status_code != 200:
                lost += 1
    ok = [r for r in records if r["status"] == 200]
    tokens = sum(r.get("tokens", 0) for r in ok)
    seconds = [u["seconds"] for u in updates if "seconds" in u]
    under_load = [u["seconds"] for u in updates if u.get("answered_at", 1e18) <= deadline]
    summary = {
        "clients": clients,
        "requests": len(records),
        "ok": len(ok),
        "status_5xx": sum(1 for r in records if r["status"] >= 500),
        "errors_seen": sorted({r["error"] for r in records if "error" in r})[:3],
        "status_other": sum(1 for r in records if r["status"] not in (200,) and r["status"] < 500),
        "wall_seconds": round(wall, 2),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 3),
        "latency_p50_s": percentile([r["latency"] for r in ok], 0.5),
        "latency_p99_s": percentile([r["latency"] for r in ok], 0.99),
        "ttft_p50_s": percentile([r["ttft"] for r in ok if r["ttft"] is not None], 0.5),
        "ttft_p99_s": percentile([r["ttft"] for r in ok if r["ttft"] is not None], 0.99),
    }
    if feedback:
        seen = [u["trained_seen"] for u in updates if "seconds" in u]
        asked = [u["answer_seconds"] for u in updates if "seconds" in u]
        summary["feedback"] = {
            "acknowledged": len(acked),
            "lost": lost,
            "updates_tracked": len(updates),
            "promoted_and_answered": len(seconds),
            "refused_or_skipped": sum(1 for u in updates if u.get("state") and "seconds" not in u),
            "unfinished": sum(1 for u in updates if not u.get("state")),
            "to_new_version_p50_s": percentile(seconds, 0.5),
            "to_new_version_max_s": percentile(seconds, 1.0),
            "to_new_version_under_load_p50_s": percentile(under_load, 0.5),
            "answered_under_load": len(under_load),
            # posted -> the tracker saw it trained (update wait + update + poll), and the
            # one-token request that then found the new version
            "to_trained_seen_p50_s": percentile(seen, 0.5),
            "new_version_answer_p50_s": percentile(asked, 0.5),
        }
    return summary, ok


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, url: str, *, learner: bool) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 1800  # the trainer's start generates its probes' answers
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}; see {log}")
        try:
            ready = httpx.get(f"{url}/readyz", timeout=5)
            if ready.status_code == 200 and (
                not learner or ready.json().get("learner") == "running"
            ):
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no server at {url}; see {log}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def run_peer(home: Path, port: int) -> None:
    """The FastAPI + PEFT server: per request, ``set_adapter`` + ``generate``, one at a time."""
    import threading

    import torch
    import uvicorn
    from fastapi import FastAPI
    from peft import PeftModel

    from adaptkit.base_model import load_base
    from adaptkit.home import Home
    from adaptkit.prompting import as_messages, encode_prompt, stop_token_ids
    from adaptkit.registry import Registry

    root = Home(home)
    base = load_base(BASE, home=root)
    registry = Registry(root.registry_url, root.adapters_dir)
    state: dict = {"model": None}
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"model": "loaded"}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        user = body["model"].split(":", 1)[1]
        version = registry.active_version(user)
        name = f"{user}-v{version.number}"
        ids = encode_prompt(base.tokenizer, as_messages(body["messages"]))
        with lock, torch.inference_mode():
            if state["model"] is None:
                state["model"] = PeftModel.from_pretrained(
                    base.model, str(version.blob_path), adapter_name=name
                )
            model = state["model"]
            if name not in model.peft_config:
                model.load_adapter(str(version.blob_path), adapter_name=name)
            model.set_adapter(name)
            output = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=body.get("max_tokens", 16),
                do_sample=False,
                eos_token_id=stop_token_ids(base.tokenizer),
                pad_token_id=base.tokenizer.pad_token_id or 0,
            )
        answer = output[0, len(ids) :].tolist()
        text = base.tokenizer.decode(answer, skip_special_tokens=True).strip()
        return {
            "id": f"peft-{time.time_ns()}",
            "model": f"{BASE}:{user}@{version.number}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"completion_tokens": len(answer), "prompt_tokens": len(ids)},
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- the ceiling and the isolation check ---------------------------------------------------


def ceiling(engine, answers: list[dict], args) -> dict:
    """The engine's own offline batches (``--max-batch`` rows) on the first
    ``--ceiling-requests`` requests a phase answered, with nothing else computing."""
    from adaptkit.router import Request

    requests = [Request(a["prompt"], user=a["user"]) for a in answers[: args.ceiling_requests]]
    for start_at in range(0, len(requests), args.max_batch):  # adapters into RAM first
        engine.generate(requests[start_at : start_at + args.max_batch], max_new_tokens=1)
    began, tokens = time.perf_counter(), 0
    for start_at in range(0, len(requests), args.max_batch):
        batch = requests[start_at : start_at + args.max_batch]
        tokens += sum(len(r.tokens) for r in engine.generate(batch, max_new_tokens=args.max_tokens))
    wall = time.perf_counter() - began
    return {
        "requests": len(requests),
        "output_tokens": tokens,
        "wall_seconds": round(wall, 2),
        "output_tokens_per_s": round(tokens / wall, 3),
    }


def isolation(engine, answers: list[dict], args) -> dict:
    """Every sampled answer re-computed alone with the exact version its response named."""
    from adaptkit.router import Request

    sample = random.Random(args.seed).sample(answers, min(args.isolation_sample, len(answers)))
    wrong = []
    for answer in sample:
        number = int(answer["model"].rsplit("@", 1)[1])
        alone = engine.generate(
            [Request(answer["prompt"], user=answer["user"], version=number)],
            max_new_tokens=args.max_tokens,
        )[0].text
        if alone != answer["text"] or not answer["model"].startswith(f"{BASE}:{answer['user']}@"):
            wrong.append({"user": answer["user"], "model": answer["model"]})
    return {"checked": len(sample), "cross_user_or_wrong": len(wrong), "wrong": wrong[:5]}


def wait_learned(url: str, seconds: float) -> bool:
    """Wait until the server's trainer has no pending feedback (so that it computes
    nothing while the ceiling is measured); False if it still had after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
            if line.startswith("adaptkit_feedback_pending ") and float(line.split()[1]) == 0:
                return True
        time.sleep(0.5)
    return False


def main() -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per phase")
    parser.add_argument("--drain", type=float, default=90.0, help="wait for tracked updates")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--feedback-every", type=int, default=2)
    parser.add_argument("--ceiling-requests", type=int, default=64)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the largest --clients phase, each followed by its own ceiling",
    )
    parser.add_argument("--isolation-sample", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--learner-targets",
        choices=("online", "all-linear"),
        default="online",
        help="the learning users' adapters: the shape the online trainer gives a new user "
        "(adaptkit.learning.online_lora: MLPs of the top layers) or all-linear on every "
        "layer, as the other users' (an update of that shape takes ~4x as long)",
    )
    parser.add_argument(
        "--learn-share",
        type=float,
        default=0.2,
        help="adaptkit serve --learn-share: the trainer's share of the time while the batch "
        "is at least half full",
    )
    parser.add_argument(
        "--cache-mb",
        type=int,
        default=0,
        help="adaptkit serve --cache-mb (0: enough for every user's adapter, as the ceiling's "
        "engine holds every adapter it serves)",
    )
    parser.add_argument("--peer", type=Path, default=None, help=argparse_hidden())
    parser.add_argument("--port", type=int, default=0, help=argparse_hidden())
    args = parser.parse_args()
    if args.peer is not None:
        run_peer(args.peer, args.port)
        return
    clients = [int(c) for c in args.clients.split(",")]
    # The run's settings, without this machine's paths (the output file, the model cache).
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("json", "model_cache")}
    results: dict = {"config": settings}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home, registry = scratch_home(root, args.model_cache)
        from adaptkit.bank import Engine
        from adaptkit.base_model import load_base
        from adaptkit.learning import online_lora

        progress(f"publishing {args.users} users' adapters")
        users = user_names(args.users)
        base = load_base(BASE, home=home)
        paths = dict(zip(users, make_adapters(base, root, args.users, 8, args.seed), strict=True))
        if args.learner_targets == "online":
            spec = online_lora(base.model.config.num_hidden_layers)
            (root / "online").mkdir()
            shaped = make_adapters(
                base, root / "online", args.users, spec.rank, args.seed,
                targets=spec.target_modules(base.model), layers=spec.layers(base.model),
            )  # fmt: skip
            paths |= {user: path for user, path in zip(users, shaped, strict=True) if learns(user)}
        del base
        for user in filter(learns, users):
            soften(paths[user])
        adapter_bytes = sum(f.stat().st_size for path in paths.values() for f in path.iterdir())
        publish_users(registry, paths)
        cache_mb = args.cache_mb or max(1024, round(adapter_bytes * 1.5) >> 20)
        results["config"]["server_cache_mb"] = str(cache_mb)
        log = root / "servers.log"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        progress("starting adaptkit serve")
        ours = start(
            [sys.executable, "-m", "adaptkit.cli.main", "serve", "--home", str(home.root),
             "--port", str(port), "--no-auth", "--workers", "1", "--poll-seconds", "0.5",
             "--max-batch", str(args.max_batch), "--max-queue", "1024",
             "--learn-share", str(args.learn_share), "--cache-mb", str(cache_mb)],
            log, url, learner=True,
        )  # fmt: skip
        answers: list[dict] = []
        rounds: list[dict] = []
        engine = Engine(load_base(BASE, home=home), registry, shared_dir=home.root / "none")
        try:
            for n in clients:
                for round_ in range(args.rounds if n == max(clients) else 1):
                    progress(f"adaptkit serve, {n} clients, round {round_ + 1}")
                    before = update_stages(url)
                    summary, ok = asyncio.run(
                        load(url, n, users, args, stream=True, feedback=True,
                             seed=args.seed + 100 * round_)
                    )  # fmt: skip
                    summary["feedback"]["update_stage_mean_s"] = stage_means(
                        before, update_stages(url)
                    )
                    progress(json.dumps(summary))
                    if round_ == 0:
                        results.setdefault("adaptkit", {})[f"clients_{n}"] = summary
                        answers = ok
                    if n == max(clients):
                        # The ceiling right after the round, on its requests, the server
                        # idle: the machine's speed drifts, so each round has its own.
                        learned = wait_learned(url, args.drain)
                        measured = ceiling(engine, ok, args)
                        rounds.append(
                            {
                                "output_tokens_per_s": summary["output_tokens_per_s"],
                                "ceiling_output_tokens_per_s": measured["output_tokens_per_s"],
                                "vs_ceiling": round(
                                    summary["output_tokens_per_s"]
                                    / measured["output_tokens_per_s"],
                                    3,
                                ),
                                "trainer_idle_for_ceiling": learned,
                                "ceiling": measured,
                                "load": summary,  # the round's whole summary
                            }
                        )
                        progress(json.dumps(rounds[-1]))
        except BaseException:
            # For diagnosis only (it names this machine's files): shown, not stored.
            progress("servers' log, last lines:\n" + log.read_text(errors="replace")[-4000:])
            raise
        finally:
            stop(ours)
        peer_port = free_port()
        peer_url = f"http://127.0.0.1:{peer_port}"
        progress("starting the FastAPI + PEFT peer")
        peer = start(
            [sys.executable, __file__, "--json", "-", "--peer", str(home.root),
             "--port", str(peer_port)],
            log, peer_url, learner=False,
        )  # fmt: skip
        try:
            for n in clients:
                progress(f"FastAPI + PEFT, {n} clients")
                summary, _ = asyncio.run(
                    load(peer_url, n, users, args, stream=False, feedback=False, seed=args.seed)
                )
                results.setdefault("peft", {})[f"clients_{n}"] = summary
                progress(json.dumps(summary))
        finally:
            stop(peer)
        progress("the isolation check")
        results["isolation"] = isolation(engine, answers, args)
        engine.close()
        results["ceiling_rounds"] = rounds
        # For diagnosis only (it names this machine's files): shown, not stored.
        progress("servers' log, last lines:\n" + log.read_text(errors="replace")[-2000:])
    most = f"clients_{max(clients)}"
    ours_tps = results["adaptkit"][most]["output_tokens_per_s"]
    peer_tps = results["peft"][most]["output_tokens_per_s"]
    results["ratios"] = {
        f"vs_peft_{most}": round(ours_tps / peer_tps, 3) if peer_tps else None,
        # the median over rounds of (the round's tokens/s) / (its ceiling's)
        f"vs_ceiling_{most}": statistics.median(r["vs_ceiling"] for r in rounds),
    }
    feedback8 = results["adaptkit"].get("clients_8", {}).get("feedback", {})
    # Every phase and every round of the largest (its first round is also clients_N).
    phases = [*results["adaptkit"].values(), *(r["load"] for r in rounds[1:])]
    errors = sum(p["status_5xx"] + p["status_other"] for p in phases)
    lost = sum(p["feedback"]["lost"] for p in phases)
    to_version = feedback8.get("to_new_version_p50_s")
    results["floors"] = {
        "tokens_per_s_vs_peft_at_32_ge_5": results["ratios"][f"vs_peft_{most}"] >= 5,
        "tokens_per_s_vs_ceiling_ge_0.8": results["ratios"][f"vs_ceiling_{most}"] >= 0.8,
        "errors_0": errors == 0,
        "lost_feedback_0": lost == 0,
        "cross_user_0": results["isolation"]["cross_user_or_wrong"] == 0,
        "feedback_to_version_p50_at_8_le_10s": to_version is not None and to_version <= 10,
    }
    text = json.dumps(results, indent=2)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")
    print(json.dumps({"ratios": results["ratios"], "floors": results["floors"]}, indent=2))


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
