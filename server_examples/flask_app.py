"""Flask + cirron: a JSON predict endpoint and a streaming endpoint on the threaded dev server.

Run it::

    python -m server_examples.flask_app --port 8001

then::

    curl -s -X POST localhost:8001/predict -H 'content-type: application/json' -d '{"text": "great movie"}'
    curl -sN 'localhost:8001/stream?prompt=hello&max_tokens=8'

Flask has no event loop, so the flush service runs on cirron's own background thread, started by
``ci.profile()`` when the app is created; ``ci.shutdown`` is registered with ``atexit`` and writes
what is left when the process ends (Ctrl-C or SIGTERM). A WSGI server can serve the module's
``app`` the same way (e.g. ``gunicorn -w 2 server_examples.flask_app:app``); with ``--preload``
the forked workers each start their own flush service on their first request.
"""

from __future__ import annotations

import argparse
import atexit
import json
import signal
import sys
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

import cirron as ci
from server_examples.toy_model import ToyLM, count_tokens

model = ToyLM()


@ci.inference
def predict_text(text: str) -> dict:
    with ci.scope("preprocess"):
        clean = " ".join(text.lower().split())
    ci.mark("text_chars", len(text))
    with ci.scope("model"):
        score = model.score(clean)
    ci.mark("score", score)
    return {"label": "positive" if score >= 0.5 else "negative", "score": score}


def create_app() -> Flask:
    ci.profile()  # session + background flush thread; idempotent
    atexit.register(ci.shutdown)  # ci.profile() registers it too; explicit here for readers

    app = Flask(__name__)

    @app.get("/health")
    def health() -> Response:
        h = ci.health()
        return jsonify(ok=True, profiling=h["running"], internal_errors=h["internal_errors"])

    @app.post("/predict")
    def predict() -> Response:
        return jsonify(predict_text(request.get_json(force=True)["text"]))

    @app.get("/stream")
    @ci.inference
    def stream() -> Response:
        # The span stays open until the last chunk is sent or the client goes away.
        prompt = request.args.get("prompt", "hello")
        max_tokens = int(request.args.get("max_tokens", "16"))
        ci.mark("prompt_chars", len(prompt))
        ci.mark("prompt_tokens_est", count_tokens(prompt))

        def events() -> Iterator[str]:
            for i, token in enumerate(model.generate(prompt, max_tokens)):
                yield f"data: {json.dumps({'index': i, 'token': token})}\n\n"
            yield "data: [DONE]\n\n"

        return Response(events(), mimetype="text/event-stream")

    return app


app = create_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    # SIGTERM would end the process without running atexit handlers; make it a normal exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
