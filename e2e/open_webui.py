"""A real Open WebUI (0.12.4) in front of opendify and the mock Dify: what a person sees.
Drives chats through Open WebUI's own API as its web page does (e2e/owui.py), then reads the
saved messages back: a knowledge-base answer has its `sources`, a chatflow answer its
`statusHistory` of node titles, every answer its `usage`, the follow-up suggestions are
Dify's own, and after three chat turns the user has exactly one conversation in Dify.

Needs OWUI_URL (Open WebUI pointed at opendify) and MOCK_URL (the mock Dify opendify uses),
as e2e/open-webui-run sets them up; skipped otherwise."""

import json
import os
import sys
import time

import requests

sys.path.insert(0, os.path.dirname(__file__))
import owui  # noqa: E402

OWUI_URL = os.environ.get("OWUI_URL")
MOCK_URL = os.environ.get("MOCK_URL")
if not OWUI_URL or not MOCK_URL:
    print("skipped: set OWUI_URL and MOCK_URL (see e2e/open-webui-run)")
    raise SystemExit(0)

failed = False


def check(label, condition, detail=""):
    global failed
    print(("ok   " if condition else "FAIL ") + label + ("" if condition else f": {detail}"))
    failed = failed or not condition


def dify_conversations(key, user):
    answer = requests.get(f"{MOCK_URL}/conversations", params={"user": user, "limit": 100},
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]


owui.signup_or_signin(OWUI_URL, "Admin", "admin@example.com", "admin-pass-123")
admin = owui.signin(OWUI_URL, "admin@example.com", "admin-pass-123")
stamp = str(int(time.time()))
email = f"ada-{stamp}@example.com"
owui.add_user(OWUI_URL, admin, "Ada", email, "ada-pass-123")
ada = owui.signin(OWUI_URL, email, "ada-pass-123")
ada_id = requests.get(f"{OWUI_URL}/api/v1/auths/", headers={"Authorization": f"Bearer {ada}"}, timeout=10).json()["id"]
models = owui.model_ids(OWUI_URL, ada)
check("Open WebUI lists opendify's models", {"kb", "flow", "chat"} <= set(models), models)

# A knowledge-base answer: its sources, usage, and Dify's follow-up suggestions.
_, kb, _ = owui.chat_turn(OWUI_URL, ada, "kb", [], "How much leave do I get?")
print("kb message:", json.dumps(owui.visible(kb), ensure_ascii=False)[:1500])
sources = kb.get("sources") or []
names = [s.get("source", {}).get("name") for s in sources]
check("kb: saved with one source per document", names == ["leave-policy.pdf", "payroll.md"], names)
check("kb: the passages of a document grouped",
      len(sources) > 0 and len(sources[0].get("document", [])) == 2, sources[:1])
check("kb: usage", (kb.get("usage") or {}).get("total_tokens", 0) > 0, kb.get("usage"))
check("kb: follow-ups are Dify's", (kb.get("followUps") or [""])[0].startswith("Tell me more about"),
      kb.get("followUps"))

# A chatflow answer: the status history of its nodes.
_, flow, _ = owui.chat_turn(OWUI_URL, ada, "flow", [], "[[mock:rag]] What is the payday?")
history = [s.get("description") for s in flow.get("statusHistory") or []]
print("flow statusHistory:", flow.get("statusHistory"))
check("flow: status history of node titles",
      "Searching knowledge base: Handbook" in history and "LLM" in history, history)
check("flow: the last status is done", bool(flow.get("statusHistory")) and flow["statusHistory"][-1].get("done"),
      flow.get("statusHistory"))
check("flow: usage", (flow.get("usage") or {}).get("total_tokens", 0) > 0, flow.get("usage"))

# Three chat turns (with title, tags and follow-up tasks): one conversation in Dify.
chat_id, history = None, []
for text in ["First question about Oslo", "And the second one", "A third to finish"]:
    chat_id, msg, history = owui.chat_turn(OWUI_URL, ada, "chat", history, text, chat_id)
    check(f"chat turn answered: {text}", text in (msg.get("content") or ""), owui.visible(msg))
time.sleep(1)
conversations = dify_conversations("app-mock-chat", ada_id)
print("Dify conversations of the user (chat app):", conversations)
check("after 3 turns the user has exactly 1 conversation in Dify", len(conversations) == 1, conversations)
check("... holding the 3 turns", conversations and conversations[0].get("turns") == 3, conversations)

raise SystemExit(1 if failed else 0)
