"""The server ``ntksweep ui`` runs: MLflow's own app (``mlflow ui --app-name ntksweep``, this
package's ``mlflow.app`` entry point) with one page of ours, ``/ntksweep/open``.

MLflow 3 keeps its GenAI / model-training switch in the browser (localStorage
``mlflow.workflowType_v1``, GenAI unless the user flips it); a link's ``?workflowType=`` holds
for that page only, so clicking into a run fell back to the GenAI layout. The page sets the
switch to model training, as the UI's own toggle does, and forwards to the sweep's runs page
(``ui.runs_page``): from then on every page of the UI opens in the model-training layout.
"""

from __future__ import annotations

import json
import re

from flask import Response, request
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import create_fastapi_app

from .ui import OPEN_PATH, WORKFLOW_STORAGE, runs_page

__all__ = ["create_app"]

_ID = re.compile(r"[0-9]{1,19}")
_KEY = re.compile(r"[A-Za-z0-9_-]{1,80}")


def _open() -> Response:
    experiment, view = request.args.get("experiment", ""), request.args.get("view")
    if not _ID.fullmatch(experiment) or (view is not None and not _KEY.fullmatch(view)):
        return Response("expected ?experiment=<id>[&view=<key>]", status=400,
                        mimetype="text/plain")
    target = runs_page("", experiment, view)           # "/#/experiments/…"
    key, value = WORKFLOW_STORAGE
    page = (f"<!doctype html><meta charset=utf-8><title>ntksweep → MLflow</title><script>"
            f"try{{localStorage.setItem({json.dumps(key)},{json.dumps(json.dumps(value))})}}"
            f"catch(e){{}}location.replace({json.dumps(target)})</script>")
    return Response(page, mimetype="text/html")


def create_app():
    """MLflow's ASGI app with ``/ntksweep/open`` (a factory: uvicorn calls it)."""
    flask_app.add_url_rule(OPEN_PATH, "ntksweep_open", _open)
    return create_fastapi_app(flask_app)
