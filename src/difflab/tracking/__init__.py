"""The one package that talks to MLflow; callers write `from difflab import tracking; tracking.log_image(...)`.

Runs are addressed by id, never through a shared "active run" across threads:
each task opens its own run context by id, so Prefect may run tasks anywhere.
Default store: sqlite:///mlflow.db with artifacts under ./mlruns; MLFLOW_TRACKING_URI
(or the config) points everything at a tracking server instead.

One job per module:
    store   where runs are kept: configure, probe, the sqlite store's locks, experiments
    runs    the run lifecycle: run, flow_run, stop reasons, end_interrupted_runs (the run doctor that
            ends dead processes' runs is ops/runs.py, called at a run's start through set_run_start_hook)
    log     the log_* calls (params, metrics, images, files, datasets, the write-up page)
    query   reading runs back: get_run, search_runs, artifacts, metric history, URLs
    models  logged models (the pyfunc MLflow serves) and the registry
Tag, image and artifact names live in `difflab.names`; they are re-exported here for callers.
"""

from difflab.errors import TrackingUnreachable
from difflab.names import (CACHE_KEY_TAG, CHECKPOINT_TAG, ERROR_TAG, EXPERIMENT_KIND_TAG, HOST_TAG, PID_START_TAG,
                           PID_TAG, PREFECT_FLOW_RUN_TAG, REPORT_ARTIFACT, REUSED_TAG, STAGE_TAG)
from difflab.provenance import cache_key, code_version, git_commit
from difflab.tracking.log import (copy_stepped_images, log_dataset, log_dict, log_file, log_image, log_metrics,
                                  log_model, log_params, log_report_page, log_series, log_tags, log_text,
                                  save_training_view)
from difflab.tracking.models import (MODEL_METADATA_KEY, PYFUNC_LOADER, ModelNotFound, _load_pyfunc,
                                     find_logged_model, latest_model_version, link_model_metrics, load_pyfunc,
                                     log_generator, logged_model, logged_model_metrics, model_version_by_alias,
                                     model_versions_of_run, register_logged_model, set_model_alias,
                                     tag_model_version)
from difflab.tracking.query import (artifact_paths, artifact_url, child_runs, download, find_cached_run, find_run,
                                    get_run, metric_history, newest_run, run_url, running_runs, search_runs,
                                    split_stepped, ui_hint)
from difflab.tracking.runs import (end_interrupted_runs, end_run, flow_run, in_flow_run, process_tags, run,
                                   set_run_start_hook, stop_reason)
from difflab.tracking.store import (DEFAULT_ARTIFACT_DIR, DEFAULT_TRACKING_URI, EXPERIMENT_KIND, HEALTHY_AUTH_CODES,
                                    UI_MODEL_TRAINING, StoreLocked, configure, current_uri, experiment_id,
                                    is_locked_store, is_unreachable, locked_store_line, probe, store_holders,
                                    tracking_uri)

__all__ = [
    "TrackingUnreachable", "CACHE_KEY_TAG", "CHECKPOINT_TAG", "ERROR_TAG", "EXPERIMENT_KIND_TAG", "HOST_TAG",
    "PID_START_TAG", "PID_TAG", "PREFECT_FLOW_RUN_TAG", "REPORT_ARTIFACT", "REUSED_TAG", "STAGE_TAG", "cache_key",
    "code_version", "git_commit", "copy_stepped_images", "save_training_view", "log_dataset", "log_dict", "log_file", "log_image",
    "log_metrics", "log_model", "log_params", "log_report_page", "log_series", "log_tags", "log_text",
    "MODEL_METADATA_KEY", "PYFUNC_LOADER", "ModelNotFound", "_load_pyfunc", "find_logged_model",
    "latest_model_version", "link_model_metrics", "load_pyfunc", "log_generator", "logged_model",
    "logged_model_metrics", "model_version_by_alias", "model_versions_of_run", "register_logged_model",
    "set_model_alias", "tag_model_version", "artifact_paths", "artifact_url", "child_runs", "download",
    "find_cached_run", "find_run", "get_run", "metric_history", "newest_run", "run_url", "search_runs", "split_stepped",
    "ui_hint", "running_runs", "end_interrupted_runs", "end_run", "flow_run", "in_flow_run", "process_tags", "run",
    "set_run_start_hook", "stop_reason", "DEFAULT_ARTIFACT_DIR",
    "DEFAULT_TRACKING_URI", "EXPERIMENT_KIND", "HEALTHY_AUTH_CODES", "UI_MODEL_TRAINING", "StoreLocked",
    "configure", "current_uri", "experiment_id", "is_locked_store", "is_unreachable", "locked_store_line", "probe",
    "store_holders", "tracking_uri",
]
