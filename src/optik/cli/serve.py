"""`optik serve poll|redis|http` and `optik redis send`: the services and their client."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import click

from optik.cli.common import OptikGroup, backend_option, fail, main, make_output, model_options, output_options


def service_options(func):
    """Options both services share: the output, logging, and the model options."""
    func = click.option("--quiet", is_flag=True, help="log only warnings and errors")(func)
    func = click.option("--verbose", is_flag=True, help="log every batch and every empty look")(func)
    return output_options(model_options(backend_option(func)))


def service_logging(verbose: bool, quiet: bool) -> None:
    """Service log lines on stderr: time, level, message (set before the first one, also the connection check's)."""
    import logging

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("optik").setLevel(level)


def max_wait_option(func):
    return click.option(
        "--max-wait-ms",
        type=click.FloatRange(min=0),
        default=10,
        show_default=True,
        help="after the first image, wait this long for more to fill the batch",
    )(func)


def health_options(func):
    """`/healthz`, `/readyz` and `/metrics` on a side port (the file drop and Redis services)."""
    func = click.option(
        "--metrics-host",
        default="127.0.0.1",
        show_default=True,
        help="address of the --metrics-port server (0.0.0.0: every interface, for a scraper or probes elsewhere)",
    )(func)
    func = click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        help="serve /healthz, /readyz and /metrics (Prometheus) on this port [default: none]",
    )(func)
    return func


def health_server(metrics, host: str, port: int | None):
    from optik.services.metrics import HealthServer

    return nullcontext() if port is None else HealthServer(metrics, host, port)


@contextmanager
def service_signals(stop):
    """SIGTERM/SIGINT go to `stop` for the whole run; one during start-up ends the process at once, saying so (exit 0)."""
    with stop.on_signals():
        yield


def start_predictor(
    model: Path,
    device: str,
    precision: str,
    batch_size: int | None,
    mode: str,
    backend: str,
    verbose: bool,
    quiet: bool,
    output_options: dict,
    expected_images: int | None = None,
    tta: str | None = None,
    metrics=None,
    calibration: Path | None = None,
):
    """Logging on stderr, the predictor loaded, its output format, then the warm-up (a service
    compiles before its first request; output options that do not fit the model fail before that);
    then `metrics` (if given) name the model and say it is ready.

    `mode` auto compiles for a service that keeps running (`expected_images` None) or a big one-off job.
    """
    import logging

    from optik.inference.runtime import COMPILE_MIN_IMAGES
    from optik.tasks.loading import load_predictor

    service_logging(verbose, quiet)
    expected_images = COMPILE_MIN_IMAGES if expected_images is None else expected_images
    predictor = load_predictor(
        model,
        device=device,
        precision=precision,
        batch_size=batch_size,
        mode=mode,
        expected_images=expected_images,
        backend=backend,
        tta=tta,
        calibration=calibration,
    )
    output = make_output(predictor.task, **output_options)
    predictor.warmup()
    logging.getLogger("optik.services").info(
        "model %s ready on %s (%s, precision %s, batch %d)",
        model,
        predictor.device,
        predictor.backend.runtime.form,
        predictor.backend.runtime.precision,
        predictor.batch_size,
    )
    if metrics is not None:
        metrics.set_model(model, predictor.task)
        metrics.set_ready(True)
    return predictor, output


@main.group(cls=OptikGroup)
def serve():
    """Serve a model through a file drop (poll), Redis (redis) or HTTP (http)."""


@serve.command("poll")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--in",
    "--prediction_in",
    "in_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder that images are dropped into",
)
@click.option(
    "--out",
    "--prediction_out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for <stem>.json (and, by default, the processed images)",
)
@click.option(
    "--tmp",
    "--prediction_tmp",
    "tmp_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="stage outputs here before renaming them into --out (same filesystem)",
)
@click.option(
    "--done",
    "done_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="move processed images here instead of --out",
)
@click.option(
    "--failed",
    "failed_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="move undecodable images here [default: OUT/failed]",
)
@click.option("--delete-input", "--delete_input", is_flag=True, help="delete processed images instead of moving them")
@click.option("--continuous", is_flag=True, help="keep looking for new images every --poll-wait seconds")
@click.option(
    "--poll-wait",
    "--poll_wait",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="seconds between looks at an empty folder (--continuous)",
)
@click.option(
    "--watch",
    "--use_watchdog",
    is_flag=True,
    help="react to file events at once (keeps running), rescanning every --watch-interval",
)
@click.option(
    "--watch-interval",
    "--watchdog_check_interval",
    type=click.FloatRange(min=0.01),
    default=10.0,
    show_default=True,
    help="seconds between rescans with --watch",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="a TIFF, GIF or other file whose format has no end to check is taken once unchanged this long",
)
@click.option(
    "--truncated-after",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="a JPEG, PNG, WebP or BMP file not whole yet is waited for until unchanged this long, then fails as truncated",
)
@health_options
@service_options
def serve_poll(
    model,
    in_dir,
    out_dir,
    tmp_dir,
    done_dir,
    failed_dir,
    delete_input,
    continuous,
    poll_wait,
    watch,
    watch_interval,
    settle,
    truncated_after,
    metrics_port,
    metrics_host,
    outputs,
    verbose,
    quiet,
    device,
    precision,
    calibration,
    batch_size,
    mode,
    tta,
    backend,
):
    """Predict images dropped into --in: write <stem>.json (or <stem>-rois.csv) to --out, then move each image on.

    Without --continuous or --watch it empties the folder once and exits.
    """
    from optik.data.decode import is_image_file
    from optik.services.loop import Stop
    from optik.services.metrics import ServiceMetrics
    from optik.services.poller import FilePoller, PollOptions, folder_lock

    options = PollOptions(
        in_dir,
        out_dir,
        tmp_dir,
        done_dir,
        failed_dir,
        delete_input,
        continuous,
        watch,
        poll_wait,
        watch_interval,
        settle,
        truncated_after,
    )
    stop, metrics = Stop(), ServiceMetrics("poll")
    one_pass = None if continuous or watch else sum(1 for p in in_dir.iterdir() if is_image_file(p.name))
    service_logging(verbose, quiet)
    # the lock before the model loads: a second poller is refused at once
    with service_signals(stop), folder_lock(in_dir), health_server(metrics, metrics_host, metrics_port):
        predictor, output = start_predictor(
            model,
            device,
            precision,
            batch_size,
            mode,
            backend,
            verbose,
            quiet,
            outputs,
            expected_images=one_pass,
            tta=tta,
            calibration=calibration,
            metrics=metrics,
        )
        stop.started()
        FilePoller(predictor, output, options, stop, metrics).run(locked=True)


def redis_options(func):
    func = click.option(
        "--redis-ssl-ca",
        type=click.Path(exists=True, dir_okay=False),
        help="CA certificate file to verify the server with",
    )(func)
    func = click.option("--redis-ssl", is_flag=True, help="connect with TLS")(func)
    func = click.option(
        "--redis-password-env",
        "--redis_password_env",
        metavar="VAR",
        help="read the password from environment variable VAR",
    )(func)
    func = click.option("--redis-password", "--redis_password", help="password (prefer --redis-password-env)")(func)
    func = click.option("--redis-username", help="ACL user name")(func)
    func = click.option("--redis-db", "--redis_db", type=click.IntRange(min=0), default=0, show_default=True)(func)
    func = click.option("--redis-port", "--redis_port", type=click.IntRange(1, 65535), default=6379, show_default=True)(
        func
    )
    func = click.option("--redis-host", "--redis_host", default="localhost", show_default=True)(func)
    func = click.option(
        "--redis-out",
        "--redis_out",
        default="predictions",
        show_default=True,
        help="channel (pubsub) or stream (stream) for the predictions",
    )(func)
    func = click.option(
        "--redis-in",
        "--redis_in",
        default="images",
        show_default=True,
        help="channel pattern (pubsub) or stream (stream) the images come from",
    )(func)
    func = click.option(
        "--mode",
        "transport",
        type=click.Choice(["pubsub", "stream"]),
        default="pubsub",
        show_default=True,
        help="pubsub: image bytes (or JSON envelopes) on a channel pattern, each reply published; stream: Redis Streams shared by a consumer group, nothing lost",
    )(func)
    return func


def connect_options(host, port, db, username, password, password_env, ssl, ssl_ca):
    import os

    from optik.services.redis_service import RedisOptions

    if password_env is not None:
        if password is not None:
            fail("give --redis-password or --redis-password-env, not both")
        if password_env not in os.environ:
            fail(f"--redis-password-env {password_env}: that environment variable is not set")
        password = os.environ[password_env]
    return RedisOptions(host, port, db, password or None, username, ssl or ssl_ca is not None, ssl_ca)


@serve.command("redis")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@redis_options
@click.option("--group", default="optik", show_default=True, help="consumer group of the workers (stream)")
@click.option("--consumer", help="this worker's name in the group (stream) [default: host-pid]")
@click.option(
    "--claim-idle-ms",
    type=click.IntRange(min=1),
    default=30000,
    show_default=True,
    help="take over entries another worker left unacknowledged this long (stream)",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="deliveries before an entry goes to <redis-in>:dead (stream)",
)
@max_wait_option
@click.option("--maxlen", type=click.IntRange(min=1), help="trim the output stream to about this many entries (stream)")
@click.option(
    "--delete-processed",
    is_flag=True,
    help="delete input entries once answered, so the input stream does not grow (stream)",
)
@health_options
@service_options
def serve_redis(
    model,
    transport,
    redis_in,
    redis_out,
    redis_host,
    redis_port,
    redis_db,
    redis_username,
    redis_password,
    redis_password_env,
    redis_ssl,
    redis_ssl_ca,
    group,
    consumer,
    claim_idle_ms,
    max_attempts,
    max_wait_ms,
    maxlen,
    delete_processed,
    metrics_port,
    metrics_host,
    outputs,
    verbose,
    quiet,
    device,
    precision,
    calibration,
    batch_size,
    mode,
    tta,
    backend,
):
    """Predict images sent through Redis and send each prediction back (--mode stream to scale out over workers and lose nothing)."""
    from optik.services.loop import Stop
    from optik.services.metrics import ServiceMetrics
    from optik.services.redis_service import PubSubService, StreamOptions, StreamService, check_auth

    connection = connect_options(
        redis_host, redis_port, redis_db, redis_username, redis_password, redis_password_env, redis_ssl, redis_ssl_ca
    )
    service_logging(verbose, quiet)
    stop, metrics = Stop(), ServiceMetrics("redis")
    with service_signals(stop), health_server(metrics, metrics_host, metrics_port):
        check_auth(connection)
        predictor, output = start_predictor(
            model,
            device,
            precision,
            batch_size,
            mode,
            backend,
            verbose,
            quiet,
            outputs,
            tta=tta,
            metrics=metrics,
            calibration=calibration,
        )
        if transport == "pubsub":
            service = PubSubService(predictor, output, connection, redis_in, redis_out, max_wait_ms, stop, metrics)
        else:
            streams = StreamOptions(
                redis_in,
                redis_out,
                group,
                claim_idle_ms=claim_idle_ms,
                max_attempts=max_attempts,
                max_wait_ms=max_wait_ms,
                maxlen=maxlen,
                delete_processed=delete_processed,
            )
            if consumer:
                streams.consumer = consumer
            service = StreamService(predictor, output, connection, streams, stop, metrics)
        stop.started()
        service.run()


@serve.command("http")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every interface)")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="port to listen on (0: a free one, named in the log)",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=32,
    show_default=True,
    help="a request body larger than this gets 413",
)
@max_wait_option
@service_options
def serve_http(
    model,
    host,
    port,
    max_body_mb,
    max_wait_ms,
    outputs,
    verbose,
    quiet,
    device,
    precision,
    calibration,
    batch_size,
    mode,
    tta,
    backend,
):
    """Predict images sent to POST /predict (image bytes, multipart files or JSON envelopes); /healthz, /readyz,
    /metrics and the OpenAPI page /docs beside it. Requests from all clients share the micro-batches."""
    from optik.services.http import HttpOptions, HttpService
    from optik.services.loop import Stop
    from optik.services.metrics import ServiceMetrics

    service_logging(verbose, quiet)
    stop, metrics = Stop(), ServiceMetrics("http")
    with (
        service_signals(stop),
        HttpService(HttpOptions(host, port, max_body_mb, max_wait_ms), stop, metrics) as service,
    ):
        predictor, output = start_predictor(
            model,
            device,
            precision,
            batch_size,
            mode,
            backend,
            verbose,
            quiet,
            outputs,
            tta=tta,
            calibration=calibration,
        )
        metrics.set_model(model, predictor.task)
        stop.started()
        service.serve(predictor, output)


@main.group("redis", cls=OptikGroup)
def redis_group():
    """Talk to a running `optik serve redis`."""


@redis_group.command("send")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@redis_options
@click.option(
    "--raw",
    is_flag=True,
    help="publish the bare image bytes (as srh-broadcast -b does) instead of a JSON envelope with an id (pubsub); replies then carry no file name",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True, help="seconds to wait for all replies"
)
def redis_send(
    images,
    transport,
    redis_in,
    redis_out,
    redis_host,
    redis_port,
    redis_db,
    redis_username,
    redis_password,
    redis_password_env,
    redis_ssl,
    redis_ssl_ca,
    raw,
    timeout,
):
    """Send IMAGES to a service and print each reply as a JSON line."""
    from optik.services.redis_client import send_images

    connection = connect_options(
        redis_host, redis_port, redis_db, redis_username, redis_password, redis_password_env, redis_ssl, redis_ssl_ca
    )
    errors = 0
    for reply in send_images(connection, list(images), redis_in, redis_out, transport, raw, timeout):
        errors += isinstance(reply, dict) and "error" in reply
        click.echo(json.dumps(reply))
    if errors:
        fail(f"{errors} of {len(images)} image(s) could not be predicted (see the error replies above)")
