"""CPU per synthesis message published, one `send_task` at a time against a pipelined batch.

    .venv/bin/python bench/publish.py [--messages 2000] [--redis redis://127.0.0.1:6379/14]

Publishes to a scratch Redis database (emptied before and after) from this process: what a
dispatch pass costs the API or a worker per job it sends (tasks/send.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    os.environ["VOICEFARM_REDIS_URL"] = args.redis
    import redis

    from tasks import send

    scratch = redis.Redis.from_url(args.redis)
    scratch.flushdb()
    send.warm_up()
    job = (uuid.uuid4(), "tone", "interactive", "default")
    try:
        for _ in range(50):  # connections, declarations
            send.send_synthesize(*job)
        t = time.process_time()
        for _ in range(args.messages):
            send.send_synthesize(*job)
        one = (time.process_time() - t) / args.messages * 1000
        print(f"send_synthesize, one at a time: {one:.3f} ms of CPU per message")
        for size in (1, 5, 20, 50):
            rounds = max(1, args.messages // size)
            t = time.process_time()
            for _ in range(rounds):
                send.send_synthesize_many([job] * size)
            per = (time.process_time() - t) / (rounds * size) * 1000
            print(f"send_synthesize_many, {size:2d} per batch:  {per:.3f} ms of CPU per message")
    finally:
        scratch.flushdb()


if __name__ == "__main__":
    main()
