"""Build tests/data/prev_release_home with the previous release (commit 377180a):

git worktree add --detach /tmp/prev 377180a
PYTHONPATH=/tmp/prev python tests/data/make_prev_release_home.py tests/data/prev_release_home
"""

import json
import sys
from pathlib import Path

from adaptkit.feedback import FeedbackEvent, FeedbackLog
from adaptkit.home import Home
from adaptkit.registry import Registry

out = Path(sys.argv[1])
home = Home(out).ensure()
registry = Registry(home.registry_url, home.adapters_dir)
log = FeedbackLog(registry)


def publish(user, n, **kw):
    with registry.staging(user) as staged:
        (staged / "adapter_model.safetensors").write_bytes(f"weights of {user} #{n}".encode() * 8)
        (staged / "adapter_config.json").write_text(
            json.dumps({"r": 4, "lora_alpha": 8.0 + n, "peft_type": "LORA"})
        )
        return registry.publish(
            user,
            staged,
            method="sft",
            base_model="smollm2-135m-instruct",
            data_digest=f"{n:064d}",
            metrics={"loss_last": 1.0 / n},
            config={"epochs": n},
            **kw,
        )


for n in (1, 2, 3):
    publish("alice", n)
registry.rollback("alice", 3, to=2, reason="gate: worse on held-out events")
publish("bob", 1)
publish("bob", 2, activate=False, status_reason="gate pending")
registry.ensure_user("carol")
for user in ("alice", "bob", "carol"):
    request = log.record_completion(user, f"Where should {user} eat?", "Try the noodle bar.")
    log.record(FeedbackEvent(user_id=user, kind="up", request_id=request.id))
    log.record(
        FeedbackEvent(user_id=user, kind="edit", request_id=request.id, text=f"{user} likes ramen.")
    )
log.record(FeedbackEvent(user_id="alice", kind="note", text="I am vegetarian."))
print(json.dumps({u.id: [u.active_version, u.version_count] for u in registry.users()}))
