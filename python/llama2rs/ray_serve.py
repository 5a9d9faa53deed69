"""Past one machine: the server's app as a Ray Serve deployment (``pip install "ray[serve]"``).

Ray Serve runs ``replicas`` copies of the same app (each its own process with its own memory
map of the model and its own batch) behind one HTTP route, and routes each request to a
replica with room; a Ray cluster spreads the replicas over its machines. Nothing here routes
requests itself.

    llama2rs serve MODEL --replicas 2 -t 1        # two replicas of one thread each
    serve run llama2rs.ray_serve:app_builder model=MODEL replicas=4   # Ray's own CLI, on a cluster
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["application", "app_builder", "run"]


def application(model_path: str, tokenizer: Optional[str] = None, replicas: int = 1, threads: int = 1,
                parallel: int = 8, queue: int = 64, chat_template: Optional[str] = None,
                model_name: Optional[str] = None, api_key: Optional[str] = None) -> Any:
    """A Ray Serve application: ``replicas`` replicas of ``llama2rs.server.create_app`` over
    ``model_path``, each with ``threads`` threads (and as many Ray CPUs)."""
    from ray import serve

    def build() -> Any:  # runs in each replica: its own model map, engine and thread pool
        from .model import Model
        from .server import create_app

        model = Model(model_path, tokenizer_path=tokenizer, n_threads=threads)
        return create_app(model, model_name=model_name, parallel=parallel, queue=queue, api_key=api_key,
                          chat_template=chat_template)

    deployment = serve.deployment(
        name="llama2rs", num_replicas=replicas, ray_actor_options={"num_cpus": threads},
        max_ongoing_requests=parallel + queue,  # what one replica admits; Ray queues the rest
    )(serve.ingress(build)())
    return deployment.bind()


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run llama2rs.ray_serve:app_builder model=PATH [replicas=N threads=T ...]``."""
    options: dict[str, Any] = {k: int(args[k]) for k in ("replicas", "threads", "parallel", "queue") if k in args}
    options.update({k: args[k] for k in ("tokenizer", "chat_template", "model_name", "api_key") if k in args})
    return application(args["model"], **options)


def run(model_path: str, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Start Ray (locally, unless a cluster is configured), deploy, and serve until interrupted."""
    import time

    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(model_path, **options), name="llama2rs", route_prefix="/")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
