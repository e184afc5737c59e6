"""Drive a real Open WebUI (0.12.4) through its HTTP API the way its web page does.

See shared/docs/open-webui.md, section "Drive it through its API as the web page does".
Request fields were checked against the 0.12.4 source (open_webui/main.py `chat_completion`,
open_webui/models/chats.py `insert_chat_turn`, open_webui/utils/middleware.py):

* `parent_id` must be *present*: `null` (with no `chat_id`) makes the server create a new chat
  and answer `{"status": true, "task_ids": [...], "chat_id": "<new uuid>"}`; on later turns it is
  the previous assistant message id, and `user_message.parentId` must name a message already in
  the chat (else 409 "Parent message no longer exists.").
* `id` is the new assistant message id; `session_id` + `chat_id` make the server run the turn as
  a background task, stream it to the socket and save it in the chat (`done: true` at the end,
  or `error: {content}` + `done: true` on failure).
* Title generation only runs on the turn that creates the chat; tags / follow-ups run after the
  answer is saved, while the chat's task is still listed by `GET /api/tasks/chat/{chat_id}`.

Uses only the standard library and `requests`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Optional

import requests

DEFAULT_TIMEOUT = 120.0  # seconds to wait for a turn
HTTP_TIMEOUT = 60.0  # seconds for a single HTTP request


class OWUIError(RuntimeError):
    """An Open WebUI call answered with an error status (or an unexpected body)."""

    def __init__(self, msg: str, status: Optional[int] = None, body: Any = None):
        super().__init__(msg)
        self.status = status
        self.body = body


def _url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _headers(token: Optional[str]) -> dict:
    h = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


def _body(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _request(method: str, base: str, path: str, token: Optional[str] = None, json: Any = None,
             timeout: float = HTTP_TIMEOUT) -> Any:
    resp = requests.request(method, _url(base, path), headers=_headers(token), json=json, timeout=timeout)
    body = _body(resp)
    if resp.status_code >= 400:
        raise OWUIError(f"{method} {path} -> HTTP {resp.status_code}: {body!r}", resp.status_code, body)
    return body


# --------------------------------------------------------------------------- auth

def signin(base: str, email: str, password: str) -> str:
    """POST /api/v1/auths/signin -> token."""
    body = _request("POST", base, "/api/v1/auths/signin", json={"email": email, "password": password})
    return body["token"]


def signup_or_signin(base: str, name: str, email: str, password: str) -> str:
    """Sign up (the first user of a fresh DATA_DIR becomes admin); if the account already
    exists (or sign-up is closed), sign in instead. Returns the bearer token."""
    try:
        body = _request("POST", base, "/api/v1/auths/signup",
                        json={"name": name, "email": email, "password": password})
        return body["token"]
    except OWUIError as signup_err:
        try:
            return signin(base, email, password)
        except OWUIError as signin_err:
            raise OWUIError(f"signup failed ({signup_err}); signin failed ({signin_err})",
                            signin_err.status, signin_err.body) from signin_err


def add_user(base: str, admin_token: str, name: str, email: str, password: str,
             role: str = "user") -> str:
    """Admin creates a user (POST /api/v1/auths/add), then that user signs in. Returns its token.
    If the user already exists, just signs in."""
    try:
        _request("POST", base, "/api/v1/auths/add", admin_token,
                 json={"name": name, "email": email, "password": password, "role": role})
    except OWUIError as add_err:
        try:
            return signin(base, email, password)
        except OWUIError:
            raise add_err
    return signin(base, email, password)


# --------------------------------------------------------------------------- models

def list_models(base: str, token: str) -> list[dict]:
    """GET /api/models -> the `data` entries (each has `id`; pass one as `model_item`)."""
    body = _request("GET", base, "/api/models", token)
    return body.get("data", []) if isinstance(body, dict) else body


def model_ids(base: str, token: str) -> list[str]:
    return [m.get("id") for m in list_models(base, token)]


# --------------------------------------------------------------------------- chats

def get_chat(base: str, token: str, chat_id: str) -> dict:
    """GET /api/v1/chats/{chat_id} -> the full chat response (the chat itself is under `chat`)."""
    return _request("GET", base, f"/api/v1/chats/{chat_id}", token)


def get_message(base: str, token: str, chat_id: str, message_id: str) -> Optional[dict]:
    chat = get_chat(base, token, chat_id) or {}
    return (((chat.get("chat") or {}).get("history") or {}).get("messages") or {}).get(message_id)


def chat_task_ids(base: str, token: str, chat_id: str) -> list[str]:
    """GET /api/tasks/chat/{chat_id} -> ids of tasks still running for the chat
    (the turn's task stays listed until its tags / follow-ups background tasks finish)."""
    body = _request("GET", base, f"/api/tasks/chat/{chat_id}", token)
    return (body or {}).get("task_ids", []) if isinstance(body, dict) else []


def wait_message(base: str, token: str, chat_id: str, message_id: str,
                 until: Callable[[dict], bool] = lambda m: bool(m.get("done")),
                 timeout: float = DEFAULT_TIMEOUT, interval: float = 0.5) -> dict:
    """Poll the saved chat until the message satisfies `until` (default: `done` is true)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = get_message(base, token, chat_id, message_id)
        if last is not None and until(last):
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"message {message_id} in chat {chat_id} not ready after {timeout}s; "
                               f"last seen: {last!r}")
        time.sleep(interval)


def wait_tasks_idle(base: str, token: str, chat_id: str, timeout: float = DEFAULT_TIMEOUT,
                    interval: float = 0.5) -> bool:
    """Poll until no task is running for the chat. Returns False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if not chat_task_ids(base, token, chat_id):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _find_model_item(base: str, token: str, model: str) -> dict:
    for m in list_models(base, token):
        if m.get("id") == model:
            return m
    raise OWUIError(f"model {model!r} is not in GET /api/models")


def chat_turn(base: str, token: str, model: str, history: list[dict], text: str,
              chat_id: Optional[str] = None, *,
              model_item: Optional[dict] = None,
              session_id: Optional[str] = None,
              background_tasks: Optional[dict] = None,
              wait_tasks: bool = True,
              timeout: float = DEFAULT_TIMEOUT,
              interval: float = 0.5,
              extra: Optional[dict] = None) -> tuple[str, dict, list[dict]]:
    """One user turn, as the web page sends it.

    history: list of {"id", "role", "content"} (as returned by a previous chat_turn; start
             with []). The ids chain the turns: the last entry's id is the parent of the new
             user message.
    chat_id: None on the first turn (the server creates the chat and answers its id).
    wait_tasks: after the answer is saved, also wait until the chat has no running task, so
             that follow-ups / tags generated after the answer are on the returned message.
    background_tasks: default = all three true on the first turn, only follow-ups later
             (as the web page does); pass a dict to send exactly that.
    extra:   more top-level fields merged into the request body (e.g. "params", "features").

    Returns (chat_id, saved assistant message dict, updated history).
    Raises OWUIError if the request is refused, TimeoutError if the answer is not saved in time.
    The saved message may carry `error` (e.g. the upstream connection failed); it is returned,
    not raised: check `msg.get("error")`.
    """
    if model_item is None:
        model_item = _find_model_item(base, token, model)
    history = list(history or [])
    # parent_id null (and no chat_id) => new chat; otherwise the previous (assistant) message.
    parent_id = history[-1]["id"] if (chat_id and history) else None
    user_id = str(uuid.uuid4())
    assistant_id = str(uuid.uuid4())
    user_message = {
        "id": user_id,
        "parentId": parent_id,
        "role": "user",
        "content": text,
        "childrenIds": [],
        "timestamp": int(time.time()),
        "models": [model],
    }
    body = {
        "model": model,
        "messages": [{"role": m["role"], "content": m.get("content", "")} for m in history]
        + [{"role": "user", "content": text}],
        "stream": True,
        "id": assistant_id,
        "parent_id": parent_id,
        "session_id": session_id or f"e2e-{uuid.uuid4().hex[:12]}",
        "user_message": user_message,
        "model_item": model_item,
        "background_tasks": background_tasks if background_tasks is not None else (
            # The 0.12.4 web page asks for title + tags only on the turn that creates the chat
            # (sending them on later turns makes the server re-generate the title), and for
            # follow-ups on every turn.
            {"title_generation": True, "tags_generation": True, "follow_up_generation": True}
            if not chat_id else {"follow_up_generation": True}
        ),
    }
    if chat_id:
        body["chat_id"] = chat_id
    if extra:
        body.update(extra)

    answer = _request("POST", base, "/api/chat/completions", token, json=body)
    if not isinstance(answer, dict) or not answer.get("chat_id"):
        raise OWUIError(f"unexpected answer from /api/chat/completions: {answer!r}", None, answer)
    chat_id = answer["chat_id"]

    msg = wait_message(base, token, chat_id, assistant_id, timeout=timeout, interval=interval)
    if wait_tasks:
        wait_tasks_idle(base, token, chat_id, timeout=timeout, interval=interval)
        msg = get_message(base, token, chat_id, assistant_id) or msg

    history += [
        {"id": user_id, "role": "user", "content": text},
        {"id": assistant_id, "role": "assistant", "content": msg.get("content", "")},
    ]
    return chat_id, msg, history


def visible(msg: dict) -> dict:
    """What a person would see on a saved assistant message."""
    return {k: msg.get(k) for k in ("content", "sources", "statusHistory", "usage", "followUps", "error")}


if __name__ == "__main__":  # tiny smoke test: python owui.py [base] [model]
    import json
    import sys

    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
    admin = signup_or_signin(base, "Admin", "admin@example.com", "admin-pass-123")
    print("admin token ok")
    models = model_ids(base, admin)
    print("models:", models)
    if len(sys.argv) > 2:
        cid, m, h = chat_turn(base, admin, sys.argv[2], [], "Say hello.")
        print("chat", cid)
        print(json.dumps(visible(m), indent=2, ensure_ascii=False))
