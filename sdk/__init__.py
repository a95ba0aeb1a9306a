"""promptray's Python SDK: submit prompt-tuning jobs to a Ray cluster and follow them.

    from promptray.sdk import Client, TaskTemplate

    with Client(table="s3://bucket/prompts") as client:       # no address: an embedded local cluster
        job = client.submit_tuning(base_model="smollm2-135m", train_files=["data/train.jsonl"],
                                   tasks=[TaskTemplate(taskname="sentiment", ...)], max_steps=100)
        print(job.result().versions)

Importing it loads neither torch nor Ray; Ray is imported when the client first connects.
"""

from promptray.platform.data.templates import TaskTemplate
from promptray.sdk.client import Client, ClientSettings
from promptray.sdk.errors import (
                                  ClusterAuthError,
                                  ClusterError,
                                  ClusterStartError,
                                  ClusterUnreachableError,
                                  ConfigError,
                                  DataStagingError,
                                  JobCancelledError,
                                  JobConfigError,
                                  JobFailedError,
                                  JobNotFoundError,
                                  JobResultError,
                                  JobTimeoutError,
                                  PromptrayError,
)
from promptray.sdk.job import TuningJob
from promptray.sdk.local_cluster import LocalCluster
from promptray.sdk.models import JobStatus, JobSummary, MetricsRecord, TuningResult
from promptray.sdk.search_job import SearchJob, SearchResult
from promptray.sdk.spec import TuningRequest

__all__ = ["Client", "ClientSettings", "TuningJob", "SearchJob", "SearchResult", "TaskTemplate", "TuningRequest",
           "LocalCluster", "JobStatus", "JobSummary", "MetricsRecord", "TuningResult", "PromptrayError", "ConfigError",
           "JobConfigError", "DataStagingError", "ClusterError", "ClusterUnreachableError", "ClusterAuthError",
           "ClusterStartError", "JobNotFoundError", "JobFailedError", "JobCancelledError", "JobTimeoutError",
           "JobResultError"]
