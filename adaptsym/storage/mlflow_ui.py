"""MLflow's UI, opening on the runs table (the "Model training" view) instead of the GenAI overview.

MLflow 3.17's UI keeps the view in the browser, not on the server: a `workflowType` query
parameter, else `localStorage["mlflow.workflowType_v1"]`, else GenAI, whose experiment page is
an overview of LLM traces where none of our runs show. The experiment tag
`mlflow.experimentKind` is ignored by this UI version (checked in a real browser, issue 24).

`app` wraps MLflow's own ASGI app (`mlflow.server.fastapi_app:app`) and adds one line of script
to the HTML page it serves: it sets that key to "machine_learning" when the browser has none, so
a user who picks GenAI keeps that choice. Registered as the MLflow app plugin `adaptsym-runs`
(`pyproject.toml`), served by `mlflow ui|server --app-name adaptsym-runs` (`make mlflow-ui`,
`make mlflow-server`); every other request passes through untouched.
"""

from __future__ import annotations

WORKFLOW_KEY = "mlflow.workflowType_v1"  # MLflow's useLocalStorage key: f"{key}_v{version}"
DEFAULT_VIEW = "machine_learning"
SCRIPT = (f'<script>try{{if(!localStorage.getItem("{WORKFLOW_KEY}"))localStorage.setItem("{WORKFLOW_KEY}",'
          f'JSON.stringify("{DEFAULT_VIEW}"))}}catch(e){{}}</script>').encode()


def inject(body: bytes) -> bytes:
    """The page with the script first in its <head> (unchanged when it has no <head>)."""
    at = body.find(b"<head>")
    return body if at < 0 else body[: at + 6] + SCRIPT + body[at + 6:]


class RunsFirst:
    """ASGI middleware: HTML responses get `SCRIPT`; everything else streams through."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET" or "/ajax-api/" in scope.get("path", ""):
            return await self.app(scope, receive, send)
        start: dict = {}
        body: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if not headers.get(b"content-type", b"").startswith(b"text/html") or b"content-encoding" in headers:
                    start["pass"] = True
                    return await send(message)
                start.update(message)
                return None
            if start.get("pass") or message["type"] != "http.response.body":
                return await send(message)
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return None
            page = inject(b"".join(body))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(page)).encode())]})
            return await send({"type": "http.response.body", "body": page})

        return await self.app(scope, receive, capture)


def _mlflow_app():
    from mlflow.server.fastapi_app import app as mlflow_asgi

    return mlflow_asgi


class _Lazy:
    """Import MLflow's server only when uvicorn first calls the app (this module stays importable)."""

    def __init__(self):
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            self._app = RunsFirst(_mlflow_app())
        return await self._app(scope, receive, send)


app = _Lazy()
